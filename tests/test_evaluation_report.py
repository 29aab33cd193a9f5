"""evaluation.json and masks.png on a test set labelled with every budget: good images,
defective ones with masks, and defective ones labelled at image level (no mask, or an
all-zero one). Pixel metrics cover only the images whose pixels are known, and say so."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
from PIL import Image

from dagm_defects.evaluation.report import EVALUATION_FILE, write_report

SIZE, MAP = 32, 8  # a map cell covers 4 x 4 image pixels, as the model's downsampling does


def labelled_set(image_level: int = 2):
    """6 good, 3 defective with a mask (a 2 x 2-cell square each), `image_level` defective
    without; maps that find each masked defect exactly, and light up everywhere on the
    image-level ones (a defect is there, nobody drew where)."""
    n_good, n_masked = 6, 3
    labels = np.array([0] * n_good + [1] * (n_masked + image_level))
    n = len(labels)
    masks = np.zeros((n, SIZE, SIZE), np.uint8)
    maps = np.zeros((n, MAP, MAP), np.float32)
    for i in range(n_good, n_good + n_masked):
        masks[i, 8:16, 8:16] = 1
        maps[i, 2:4, 2:4] = 0.9
    maps[n_good + n_masked:] = 0.95
    rng = np.random.default_rng(0)
    images = rng.integers(60, 120, (n, SIZE, SIZE), dtype=np.uint8)
    scores = np.where(labels == 1, 0.9, 0.1)
    has_mask = np.array([True] * (n_good + n_masked) + [False] * image_level)
    return dict(labels=labels, scores=scores, class_ids=np.array([3] * n), threshold=0.5, images=images,
                true_masks=masks, seg_maps=maps, keys=[f"Class3/Test/{i:04d}.PNG" for i in range(n)],
                source="test split"), has_mask


def read(out) -> dict:
    return json.loads((out / EVALUATION_FILE).read_text())


def lime_pixels(path) -> int:
    """Pixels of the true-mask outline's colour in the plot (the images are grey)."""
    rgb = np.asarray(Image.open(path).convert("RGB")).astype(int)
    return int(((rgb[..., 1] > 200) & (rgb[..., 0] < 100) & (rgb[..., 2] < 100)).sum())


def test_pixel_metrics_cover_only_the_images_with_masks_and_say_so(tmp_path):
    given, has_mask = labelled_set()
    written = write_report(tmp_path, **given, has_mask=has_mask, empty_masks=1)
    assert read(tmp_path) == json.loads(json.dumps(written))
    labels = written["labels"]
    assert {k: labels[k] for k in ("images", "good", "defective_with_mask", "defective_image_level",
                                   "empty_masks")} == {"images": 11, "good": 6, "defective_with_mask": 3,
                                                       "defective_image_level": 2, "empty_masks": 1}
    assert labels["pixel_metrics"] == ("pixel metrics cover only the 9 test images whose pixels are known (6 good, "
                                       "3 defective with a mask); the 2 defective images labelled at image level "
                                       "only (1 of them with an all-zero mask) are left out")
    # Counted as clean pixels, the image-level maps (0.95 everywhere) would be false alarms
    # ranked above every true defect cell (0.9): AP would fall far under 1.
    assert written["pixel"] == {"images": 9, "defective_images": 3, "map_size": [MAP, MAP], "ap": 1.0,
                                "dice": 1.0, "dice_cut": 0.5}
    # The image-level AP is the usual one, over every image.
    assert written["overall"]["n"] == 11 and written["overall"]["n_defective"] == 5


def test_without_has_mask_an_all_zero_mask_on_a_defective_image_is_image_level(tmp_path):
    given, has_mask = labelled_set()
    inferred = write_report(tmp_path / "inferred", **given)
    told = write_report(tmp_path / "told", **given, has_mask=has_mask)
    assert inferred["labels"] == told["labels"] and inferred["pixel"] == told["pixel"]
    assert inferred["labels"]["defective_image_level"] == 2 and inferred["labels"]["empty_masks"] == 0
    assert "(1 of them" not in inferred["labels"]["pixel_metrics"]


def test_dice_is_the_overlap_of_the_cut_map_with_the_pooled_mask(tmp_path):
    given, has_mask = labelled_set(image_level=0)
    # The first masked image: 2 of its 4 cells found, plus 2 cells outside: Dice 2*2/(4+4).
    given["seg_maps"][6] = 0
    given["seg_maps"][6, 2, 2:4] = 0.9
    given["seg_maps"][6, 5, 5:7] = 0.7
    # A mask drawn 1 pixel wide still marks its whole cell, as training's max-pooled target does.
    given["true_masks"][7] = 0
    given["true_masks"][7, 9, 9] = 1
    given["seg_maps"][7] = 0
    given["seg_maps"][7, 2, 2] = 0.6
    written = write_report(tmp_path, **given, has_mask=has_mask)
    assert written["pixel"]["dice"] == round((0.5 + 1.0 + 1.0) / 3, 6)
    assert 0 < written["pixel"]["ap"] < 1
    assert written["labels"]["pixel_metrics"] == "pixel metrics cover all 9 test images (3 defective with a mask)"


def test_no_mask_on_any_defective_image_means_no_pixel_metrics_and_the_report_says_so(tmp_path):
    given, _ = labelled_set()
    given["true_masks"][:] = 0
    written = write_report(tmp_path, **given, has_mask=given["labels"] == 0)
    assert written["pixel"] is None
    assert written["labels"]["defective_with_mask"] == 0 and written["labels"]["defective_image_level"] == 5
    assert written["labels"]["pixel_metrics"] == ("no pixel metrics: no defective test image has a mask; "
                                                  "all 5 are labelled at image level only")
    assert written["overall"]["ap"] == 1.0


def test_the_masks_plot_draws_no_true_mask_for_an_image_level_label(tmp_path):
    given, has_mask = labelled_set(image_level=0)
    write_report(tmp_path / "masked", **given, has_mask=has_mask)
    assert lime_pixels(tmp_path / "masked" / "masks.png") > 0
    # The same masks, but the caller says none of them is pixel truth: no outline at all.
    write_report(tmp_path / "image-level", **given, has_mask=given["labels"] == 0)
    assert lime_pixels(tmp_path / "image-level" / "masks.png") == 0


def test_the_table_command_reads_an_evaluation_with_labels_and_pixel_blocks(tmp_path):
    given, has_mask = labelled_set()
    write_report(tmp_path, **given, has_mask=has_mask)
    table = subprocess.run([sys.executable, "-m", "dagm_defects.evaluation.report", str(tmp_path / EVALUATION_FILE)],
                           capture_output=True, text=True, timeout=120)
    assert table.returncode == 0, table.stderr
    assert [line.split()[0] for line in table.stdout.splitlines()[2:]] == ["3", "all"]
