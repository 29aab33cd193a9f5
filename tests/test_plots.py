"""Each report figure is a readable, non-blank PNG, written deterministically."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from dagm_defects.evaluation import metrics, plots

SIZE = 128
PRED_SIZE = 32  # coarser than the image, as a segmentation head's output is


def _ellipse_mask(rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[:SIZE, :SIZE]
    cy, cx = rng.integers(30, SIZE - 30, 2)
    ry, rx = rng.integers(6, 20, 2)
    return (((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1).astype(np.uint8)


def _coarse(mask: np.ndarray) -> np.ndarray:
    factor = SIZE // PRED_SIZE
    return mask.reshape(PRED_SIZE, factor, PRED_SIZE, factor).mean(axis=(1, 3))


@pytest.fixture(scope="module")
def dataset():
    """Three classes of textured images, half defective, with imperfect scores."""
    rng = np.random.default_rng(0)
    images, true_masks, pred_masks, labels, scores, groups = [], [], [], [], [], []
    for cls in (1, 2, 3):
        for k in range(8):
            defective = k % 2
            image = rng.normal(128, 20, (SIZE, SIZE))
            mask = _ellipse_mask(rng) if defective else None
            if defective:
                image[mask > 0] -= 60
            score = float(np.clip(rng.normal(0.75 if defective else 0.25, 0.2), 0, 1))
            pred = score * _coarse(mask) if defective else np.zeros((PRED_SIZE, PRED_SIZE))
            images.append(np.clip(image, 0, 255).astype(np.uint8))
            true_masks.append(mask)
            pred_masks.append(pred)
            labels.append(defective)
            scores.append(score)
            groups.append(cls)
    return images, true_masks, pred_masks, labels, scores, groups


def _check_png(path, min_width=400, min_height=300):
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.width >= min_width and image.height >= min_height
        pixels = np.asarray(image.convert("L"), dtype=float)
    assert pixels.std() > 0


def test_plot_pr_roc(dataset, tmp_path):
    _, _, _, labels, scores, groups = dataset
    curves = metrics.curves(labels, scores, groups)
    path = plots.plot_pr_roc(curves, tmp_path / "sub" / "pr_roc.png")
    assert path == tmp_path / "sub" / "pr_roc.png"
    _check_png(path)


def test_plot_pr_roc_tolerates_a_class_without_defects(tmp_path):
    curves = metrics.curves([0, 1, 0, 0], [0.2, 0.9, 0.1, 0.4], [1, 1, 2, 2])
    _check_png(plots.plot_pr_roc(curves, tmp_path / "pr_roc.png"))


def test_plot_confusion(dataset, tmp_path):
    _, _, _, labels, scores, groups = dataset
    threshold = metrics.choose_threshold(labels, scores)
    summary = metrics.summarize(labels, scores, groups, threshold)
    _check_png(plots.plot_confusion(summary, tmp_path / "confusion.png"))


def test_plot_mask_grid(dataset, tmp_path):
    images, true_masks, pred_masks, labels, scores, _ = dataset
    titles = [f"image {i}" for i in range(len(images))]
    path = plots.plot_mask_grid(images, true_masks, pred_masks, scores, labels,
                                tmp_path / "masks.png", threshold=0.5, titles=titles)
    _check_png(path, min_width=800, min_height=600)


def test_plot_mask_grid_without_true_masks_and_few_items(dataset, tmp_path):
    images, _, pred_masks, labels, scores, _ = dataset
    path = plots.plot_mask_grid(images[:3], None, [None, *pred_masks[1:3]], scores[:3],
                                labels[:3], tmp_path / "few.png", threshold=0.5, max_items=2)
    _check_png(path, min_width=300, min_height=200)


def test_plot_mask_grid_rejects_misaligned_inputs(dataset, tmp_path):
    images, true_masks, pred_masks, labels, scores, _ = dataset
    with pytest.raises(ValueError, match="scores has 2 entries"):
        plots.plot_mask_grid(images, true_masks, pred_masks, scores[:2], labels,
                             tmp_path / "x.png", threshold=0.5)


def test_figures_are_deterministic(dataset, tmp_path):
    _, _, _, labels, scores, groups = dataset
    summary = metrics.summarize(labels, scores, groups, 0.5)
    first = plots.plot_confusion(summary, tmp_path / "a.png").read_bytes()
    second = plots.plot_confusion(summary, tmp_path / "b.png").read_bytes()
    assert first == second


def test_pick_examples_mixes_outcomes():
    # Kinds by index: 0-2 caught defects, 3-5 passed good, 6 false alarm, 7 missed defect.
    labels = [1, 1, 1, 0, 0, 0, 0, 1]
    scores = [0.9, 0.8, 0.7, 0.1, 0.2, 0.3, 0.6, 0.4]
    assert plots.pick_examples(labels, scores, 0.5, 4) == [0, 3, 6, 7]
    assert plots.pick_examples(labels, scores, 0.5, 6) == [0, 1, 3, 4, 6, 7]
    assert plots.pick_examples(labels, scores, 0.5, 100) == [0, 1, 2, 3, 4, 5, 6, 7]


def test_importing_plots_does_not_import_matplotlib():
    code = "import sys, dagm_defects.evaluation.plots; assert 'matplotlib' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
