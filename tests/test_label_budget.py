"""The label-budget benchmark's training sets (bench/label_budget.py): each budget keeps what
it says and nothing of the held-out test part, the choice follows its seed, and without its
data the benchmark says so and writes no record."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from dagm_defects.data.labels import parse_labels
from dagm_defects.data.reader import read_index
from label_budget import BudgetError, SetSpec, build_budget, build_test, job_result, split_set


def labels(channel: Path, class_id: int, split: str):
    rows, problems = parse_labels((channel / f"Class{class_id}" / split / "Label" / "Labels.txt").read_text())
    assert problems == []
    return rows


def trained_on(channel: Path) -> set[Path]:
    """The source files (images and masks) behind a channel's symlinks."""
    return {path.resolve() for path in channel.rglob("*.PNG")}


@pytest.fixture
def held_out(make_dataset, tmp_path):
    """Class 8 with a Train split only (as ../shared/data/dagm-real), its test part held out."""
    root = make_dataset("source", classes=(8,), images_per_split=60)
    for path in sorted((root / "Class8" / "Test").rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    (root / "Class8" / "Test").rmdir()
    spec = SetSpec("dagm", 8, None, root)
    train, test, source = split_set(spec, root, seed=0)
    return spec, root, train, test, source, tmp_path / "out"


def test_masks_budget_keeps_every_defective_row_and_only_k_masks(held_out):
    spec, _, train, _, _, out = held_out
    defective = sorted(row.image for row in train.rows if row.defective)
    assert len(defective) > 2
    channel, labelled = build_budget(spec, train, "masks-2", out, seed=0)
    rows = labels(channel, 8, "Train")
    assert [row.image for row in rows] == [row.image for row in train.rows]  # every image kept
    assert sorted(row.image for row in rows if row.defective) == defective
    masked = [row for row in rows if row.mask]
    assert len(masked) == 2 and all(row.defective for row in masked)
    assert sorted(p.name for p in (channel / "Class8" / "Train" / "Label").glob("*.PNG")) == sorted(
        row.mask for row in masked)
    assert labelled == {"good": len(rows) - len(defective), "defective": len(defective), "masks": 2}
    # The job's reader takes it: image-level rows without a mask, every symlink resolving.
    samples = read_index(channel)
    assert sum(s.mask_path is not None for s in samples) == 2 and sum(s.defective for s in samples) == len(defective)


def test_defects_budget_keeps_k_defective_images_with_their_masks_and_every_good_one(held_out):
    spec, _, train, _, _, out = held_out
    channel, labelled = build_budget(spec, train, "defects-1", out, seed=0)
    rows = labels(channel, 8, "Train")
    good = sorted(row.image for row in train.rows if not row.defective)
    assert sorted(row.image for row in rows if not row.defective) == good
    (kept,) = [row for row in rows if row.defective]
    source = next(row for row in train.rows if row.image == kept.image)
    assert kept.mask == source.mask and kept.mask is not None
    assert (channel / "Class8" / "Train" / "Label" / kept.mask).resolve() == (
        train.directory / "Label" / kept.mask).resolve()
    assert labelled == {"good": len(good), "defective": 1, "masks": 1}


def test_the_held_out_test_part_is_in_no_training_set(held_out):
    spec, root, train, test, source, out = held_out
    assert "held out" in source and "never trained on" in source
    assert {row.defective for row in test.rows} == {False, True}  # stratified: both kinds tested
    everything = {row.image for row in [*train.rows, *test.rows]}
    assert len(everything) == len(train.rows) + len(test.rows) == len(read_index(root))
    test_channel = build_test(spec, test, out)
    tested = trained_on(test_channel)
    assert len(read_index(test_channel)) == len(test.rows)
    for budget in ("masks-0", "masks-2", "masks-all", "defects-0", "defects-1", "defects-all"):
        channel, _ = build_budget(spec, train, budget, out, seed=0)
        assert trained_on(channel).isdisjoint(tested), budget
        assert {row.image for row in labels(channel, 8, "Train")}.isdisjoint({row.image for row in test.rows})


def test_the_same_seed_gives_the_same_choice(held_out):
    spec, root, train, test, _, out = held_out
    again_train, again_test, _ = split_set(spec, root, seed=0)
    assert (again_train, again_test) == (train, test)
    for budget in ("masks-2", "defects-1"):
        first = labels(build_budget(spec, train, budget, out / "first", seed=0)[0], 8, "Train")
        second = labels(build_budget(spec, train, budget, out / "second", seed=0)[0], 8, "Train")
        assert first == second, budget
    # A smaller budget's choice is part of a larger one's.
    small = {r.image for r in labels(build_budget(spec, train, "defects-1", out, seed=0)[0], 8, "Train") if r.defective}
    large = {r.image for r in labels(build_budget(spec, train, "defects-3", out, seed=0)[0], 8, "Train") if r.defective}
    assert small < large


def test_a_set_with_a_test_split_is_tested_on_it_whole(make_dataset, tmp_path):
    """As magnetic-tile: train on ClassN/Train, test on every ClassN/Test image."""
    root = make_dataset("tile", classes=(1,), images_per_split=12)
    spec = SetSpec("tile", 1, "Test", root)
    train, test, source = split_set(spec, root, seed=0)
    assert source == "Class1/Test"
    assert len(train.rows) == len(test.rows) == 12
    channel = build_test(spec, test, tmp_path / "out")
    assert {s.image_path.name for s in read_index(channel)} == {p.name for p in (root / "Class1" / "Test").glob("*.PNG")}


def test_a_budget_larger_than_the_data_is_refused_by_name(held_out):
    spec, _, train, _, _, out = held_out
    with pytest.raises(BudgetError, match=r"defects-1000 asks for 1000 but the training part has only \d+ defective"):
        build_budget(spec, train, "defects-1000", out)


def test_without_its_data_the_benchmark_says_so_and_writes_no_record(tmp_path):
    record = tmp_path / "label-budget.json"
    result = subprocess.run([sys.executable, "bench/label_budget.py", "--data-dagm", str(tmp_path / "none"),
                             "--data-tile", str(tmp_path / "none"), "--record", str(record)],
                            capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "bench-labels: dagm skipped, no " in result.stdout and "bench-labels: tile skipped, no " in result.stdout
    assert not record.exists()


def test_an_unknown_budget_is_refused_before_anything_runs(tmp_path):
    result = subprocess.run([sys.executable, "bench/label_budget.py", "--budgets", "masks-3", "--out", str(tmp_path)],
                            capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 2
    assert "--budgets: unknown masks-3; known: masks-0," in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_budget_reads_its_figures_from_the_jobs_outputs(tmp_path):
    """evaluation.json's counts and threshold; the supervision mode from evaluation.json, else model.json."""
    (tmp_path / "output" / "data").mkdir(parents=True)
    (tmp_path / "model").mkdir()
    overall = {"n": 240, "n_defective": 45, "ap": 0.97123, "auroc": 0.99, "recall": 0.93333, "tp": 42, "fn": 3,
               "fp": 4, "tn": 191}
    evaluation = {"threshold": 0.41234, "overall": overall, "source": "test channel"}
    (tmp_path / "output" / "data" / "evaluation.json").write_text(json.dumps(evaluation))
    (tmp_path / "model" / "model.json").write_text(json.dumps({"supervision": {"mode": "weak", "masks": 0}}))
    assert job_result(tmp_path) == {
        "supervision": "weak", "evaluated_on": "test channel", "ap": 0.9712, "auroc": 0.99, "recall": 0.9333,
        "test_defective": 45, "false_reject_rate": 0.0205, "false_rejects": 4, "test_good": 195, "threshold": 0.4123}
    (tmp_path / "output" / "data" / "evaluation.json").write_text(json.dumps({**evaluation, "supervision": "mixed"}))
    assert job_result(tmp_path)["supervision"] == "mixed"
    (tmp_path / "model" / "model.json").unlink()
    (tmp_path / "output" / "data" / "evaluation.json").write_text(json.dumps(evaluation))
    assert job_result(tmp_path)["supervision"] is None
