"""The retraining quality gate on evaluation.json files as training writes them: every
label budget of the test set is judged on image-level AP, a test set without a defective
image is refused rather than passed, and the table says how the test images were
labelled (tests/test_retrain.py runs the gate inside the whole flow)."""

from __future__ import annotations

import json

import numpy as np

from dagm_defects.evaluation.report import EVALUATION_FILE, write_report
from dagm_deploy.quality_gate import judge

from test_evaluation_report import labelled_set


def evaluation(out, labels_known: str = "mixed", **changes) -> dict:
    """evaluation.json of the 11-image set: `mixed` (3 masks, 2 image-level), `image-level`
    (no masks at all) or `good-only` (the defective images dropped)."""
    given, has_mask = labelled_set()
    if labels_known == "image-level":
        given["true_masks"][:] = 0
        has_mask = given["labels"] == 0
    if labels_known == "good-only":
        keep = np.flatnonzero(given["labels"] == 0)
        arrays = ("labels", "scores", "class_ids", "images", "true_masks", "seg_maps")
        given = {**given, **{k: given[k][keep] for k in arrays}, "keys": [given["keys"][i] for i in keep]}
        has_mask = has_mask[keep]
    write_report(out, **{**given, **changes}, has_mask=has_mask)
    return json.loads((out / EVALUATION_FILE).read_text())


def test_a_mixed_label_budget_is_judged_on_image_ap_and_the_table_says_how_it_was_labelled(tmp_path):
    candidate = evaluation(tmp_path / "c")
    verdict = judge(candidate, margin=0.02, min_ap=0.9)
    assert verdict.passed and verdict.reasons == []
    table = verdict.table().splitlines()
    assert table[0] == ("test labels: 11 images, 6 good, 3 defective with a mask, 2 defective image-level only; "
                        "pixel metrics cover only the 9 test images whose pixels are known (6 good, 3 defective "
                        "with a mask); the 2 defective images labelled at image level only are left out")
    assert table[1] == "candidate pixel metrics over 9 images: AP 1.000, Dice 1.000 at 0.5"


def test_image_level_labels_alone_pass_the_gate_without_pixel_metrics(tmp_path):
    candidate = evaluation(tmp_path / "c", "image-level")
    assert candidate["pixel"] is None
    baseline = evaluation(tmp_path / "b", "image-level", scores=np.where(labelled_set()[0]["labels"], 0.6, 0.4))
    verdict = judge({**candidate, "baseline": baseline}, margin=0.02, min_ap=0.9)
    assert verdict.passed, verdict.reasons
    assert verdict.table().splitlines()[0].endswith(
        "no pixel metrics: no defective test image has a mask; all 5 are labelled at image level only")
    assert [row["class"] for row in verdict.comparison] == ["3", "overall"]


def test_a_test_set_without_a_defective_image_is_refused_not_passed(tmp_path):
    candidate = evaluation(tmp_path / "c", "good-only")
    assert candidate["overall"]["ap"] is None and candidate["overall"]["n"] == 6
    reason = "the test set has no defective image (6 good ones): no AP shows that the candidate finds defects"
    first = judge(candidate, margin=0.02, min_ap=0.9)
    assert not first.passed and first.reasons == [reason]
    # Beside a serving model scored on the same good-only images, every AP is n/a on both
    # sides: without this rule no row would fail, and the gate would pass it.
    against = judge({**candidate, "baseline": evaluation(tmp_path / "b", "good-only")}, margin=0.02, min_ap=0.9)
    assert not against.passed and against.reasons == [reason]
    assert "no pixel metrics: no defective test image has a mask" in against.table()


def test_an_evaluation_from_before_the_labels_block_still_judges(tmp_path):
    candidate = evaluation(tmp_path / "c")
    older = {k: v for k, v in candidate.items() if k not in ("labels", "pixel")}
    verdict = judge(older, margin=0.02, min_ap=0.9)
    assert verdict.passed and verdict.table().splitlines()[0] == "class  candidate  serving   delta"
