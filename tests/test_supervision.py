"""Every label budget trains end to end through local_test/train_local.sh: masks on some,
none or all defective images, and no defective image at all."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dagm_defects.data.arrays import ArraySet
from dagm_defects.data.labels import LabelRow, parse_labels, write_labels
from dagm_defects.training.loop import Objective, mixed_loss
from dagm_defects.training.supervision import SupervisionError, resolve_supervision

from conftest import TINY_HPS, model_tarball, run_training

HPS = {**TINY_HPS, "epochs": "2"}


def _relabel(root: Path, keep_masks: int | None = None, keep_defects: int | None = None,
             empty_masks: int = 0) -> dict:
    """Rewrite Class1/Train's Labels.txt: the first `keep_masks` defective rows keep their
    mask (None: all), `keep_defects` defective rows stay at all (None: all), and the first
    `empty_masks` masked rows get an all-zero mask file. Returns the counts written."""
    label_dir = root / "Class1" / "Train" / "Label"
    rows, problems = parse_labels((label_dir / "Labels.txt").read_text())
    assert not problems
    out, defective = [], 0
    for row in rows:
        if row.defective:
            if keep_defects is not None and defective >= keep_defects:
                continue
            masked = keep_masks is None or defective < keep_masks
            if masked and defective < empty_masks:
                shape = Image.open(label_dir / row.mask).size
                Image.new("L", shape).save(label_dir / row.mask)
            row = LabelRow(row.number, True, row.image, row.mask if masked else None)
            defective += 1
        out.append(row)
    write_labels(label_dir / "Labels.txt", out)
    return {"good": sum(not r.defective for r in out), "defective": defective}


def _dataset(make_dataset) -> Path:
    root = make_dataset(classes=(1,), images_per_split=24, size=128)
    return root


def _supervision(job) -> dict:
    return json.loads((job.work / "output" / "data" / "evaluation.json").read_text())["supervision"]


@pytest.mark.slow
def test_image_level_labels_alone_train_weakly(make_dataset, tmp_path):
    root = _dataset(make_dataset)
    counts = _relabel(root, keep_masks=0)
    job = run_training(root, tmp_path / "ml", HPS)
    assert job.returncode == 0, job.output[-3000:]
    line = job.tokens("event=supervision")[0]
    assert line["mode"] == "weak" and line["masks"] == "0"
    supervision = _supervision(job)
    assert supervision["mode"] == "weak" and supervision["requested"] == "auto"
    assert supervision["image_level"] == supervision["defective"] > 0
    # The validation split holds some of the defective rows out of training.
    assert supervision["defective"] < counts["defective"]
    meta = json.loads((job.model_dir / "model.json").read_text())
    assert meta["supervision"]["mode"] == "weak"


@pytest.mark.slow
def test_a_few_masks_train_mixed_and_empty_masks_count_as_image_level(make_dataset, tmp_path):
    root = _dataset(make_dataset)
    _relabel(root, keep_masks=3, empty_masks=1)
    job = run_training(root, tmp_path / "ml", {**HPS, "validation_fraction": "0.1"})
    assert job.returncode == 0, job.output[-3000:]
    supervision = _supervision(job)
    assert supervision["mode"] == "mixed"
    assert 1 <= supervision["masks"] <= 2, supervision
    assert supervision["image_level"] == supervision["defective"] - supervision["masks"]
    assert "empty mask" in job.output and "warning" not in job.output.lower()


@pytest.mark.slow
def test_good_images_only_train_on_synthetic_defects_and_report_false_rejects(make_dataset, tmp_path):
    root = _dataset(make_dataset)
    _relabel(root, keep_defects=0)
    job = run_training(root, tmp_path / "ml", HPS)
    assert job.returncode == 0, job.output[-3000:]
    assert _supervision(job)["mode"] == "good-only"
    # The epochs are watched on synthetic defects: a real AP, not the -1 of an empty class.
    for epoch in job.tokens("epoch="):
        assert 0.0 <= float(epoch["val_ap"]) <= 1.0
    evaluation = json.loads((job.work / "output" / "data" / "evaluation.json").read_text())
    at = evaluation["at_threshold"]
    assert at["good"] == evaluation["overall"]["n"] - evaluation["overall"]["n_defective"]
    assert at["false_reject_rate"] == at["false_rejects"] / at["good"]
    # The Test split still has defects: AP and AUROC are measured on them.
    assert evaluation["overall"]["n_defective"] > 0 and evaluation["overall"]["auroc"] is not None
    choice = evaluation["threshold_choice"]
    assert choice["max_false_reject"] == 0.01 and choice["notes"]
    assert "training images" in choice["source"]
    # The training report shows the mode and the trade-off a quality engineer may pick from.
    page = (job.work / "output" / "data" / "report.html").read_text()
    assert "Supervision good-only: " in page and "operating point" in page
    assert page.count("budget ") >= len(choice["operating_points"])


@pytest.mark.slow
def test_warm_start_from_a_good_only_model_continues_in_mixed_mode(make_dataset, tmp_path):
    root = _dataset(make_dataset)
    first = root.parent / "good-only"
    shutil.copytree(root, first)
    _relabel(first, keep_defects=0)
    job = run_training(first, tmp_path / "first", HPS)
    assert job.returncode == 0, job.output[-3000:]
    counts = _relabel(root, keep_masks=1)
    channel = tmp_path / "model-channel"
    channel.mkdir()
    (channel / "model.tar.gz").write_bytes(model_tarball(job.model_dir))
    # A validation channel keeps every defective row of the train channel in training.
    second = run_training(root, tmp_path / "second", {**HPS, "warm_start": "true"},
                          env={"EXTRA_CHANNELS": f"model={channel},validation={first}"})
    assert second.returncode == 0, second.output[-3000:]
    assert second.tokens("event=warm_start")
    supervision = _supervision(second)
    assert supervision["mode"] == "mixed" and supervision["masks"] == 1
    assert supervision["defective"] == counts["defective"] > 1


@pytest.mark.slow
def test_forcing_full_supervision_on_image_level_labels_fails_naming_the_count(make_dataset, tmp_path):
    root = _dataset(make_dataset)
    _relabel(root, keep_masks=1)
    job = run_training(root, tmp_path / "ml", {**HPS, "supervision": "full", "validation_fraction": "0.1"})
    assert job.returncode != 0
    assert job.failure.startswith("supervision 'full' needs a mask for every defective training image")
    assert "Traceback" not in job.failure


def _arrays(labels, has_mask) -> ArraySet:
    n = len(labels)
    return ArraySet(samples=[None] * n, images=np.zeros((n, 8, 8), np.uint8), masks=np.zeros((n, 8, 8), np.uint8),
                    labels=np.array(labels), class_ids=np.ones(n, np.int64), has_mask=np.array(has_mask))


@pytest.mark.parametrize(("labels", "has_mask", "mode"), [
    ([0, 1, 1], [True, True, True], "full"),
    ([0, 1, 1], [True, True, False], "mixed"),
    ([0, 1, 1], [True, False, False], "weak"),
    ([0, 0], [True, True], "good-only"),
])
def test_auto_reads_the_mode_off_the_labels(labels, has_mask, mode):
    assert resolve_supervision("auto", _arrays(labels, has_mask)).mode == mode


def test_forced_modes_that_the_labels_cannot_give_are_refused():
    with pytest.raises(SupervisionError, match="needs defective training images"):
        resolve_supervision("mixed", _arrays([0, 0], [True, True]))
    forced = resolve_supervision("weak", _arrays([0, 1], [True, True]))
    assert forced.masks == 0 and forced.image_level == 1


def test_dynamic_balancing_moves_weight_from_segmentation_to_classification():
    mixed = resolve_supervision("auto", _arrays([0, 1, 1], [True, True, False]))
    assert mixed.loss_weights(0.0) == (1.0, 0.0) and mixed.loss_weights(1.0) == (0.0, 1.0)
    assert mixed.loss_weights(0.25) == (0.75, 0.25)
    # Most defects without a mask: the early, segmentation-heavy part would have little to learn.
    scarce = resolve_supervision("auto", _arrays([0, 1, 1, 1], [True, True, False, False]))
    assert scarce.mode == "mixed" and scarce.loss_weights(0.0) == (1.0, 1.0)
    good_only = resolve_supervision("auto", _arrays([0, 0], [True, True]))
    assert good_only.loss_weights(0.5) == (0.5, 0.5)
    weak = resolve_supervision("auto", _arrays([0, 1], [True, False]))
    assert weak.loss_weights(0.0) == weak.loss_weights(1.0) == (1.0, 1.0)


def test_an_image_level_defect_trains_only_its_most_defect_like_cell():
    """A masked image's every cell gets a segmentation gradient; an image-level one only the
    cell it scores highest (multiple-instance learning); the decision loss reaches both."""
    seg = torch.zeros(2, 1, 4, 4)
    seg[1, 0, 2, 3] = 0.5
    seg.requires_grad_(True)
    dec = torch.zeros(2, requires_grad=True)
    masks = torch.ones(2, 1, 32, 32, dtype=torch.uint8)
    loss, _, _ = mixed_loss(seg, dec, masks, torch.ones(2), torch.tensor([True, False]), Objective(1.0))
    loss.backward()
    assert (seg.grad[0] != 0).all()
    touched = (seg.grad[1, 0] != 0).nonzero().tolist()
    assert touched == [[2, 3]] and seg.grad[1, 0, 2, 3] < 0
    assert (dec.grad != 0).all()
