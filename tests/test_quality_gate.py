"""The retraining quality gate on evaluation.json files as training writes them: a test set
with defective images is judged on image-level AP and on the good images rejected at the
served threshold, one without (a good-only line) on those false rejects alone, an older
file without them as before; the table says how the test images were labelled and what
the threshold rejects and lets through (tests/test_retrain.py runs the gate inside the
whole flow)."""

from __future__ import annotations

import json

import numpy as np

from dagm_defects.evaluation.report import EVALUATION_FILE, write_report
from dagm_defects.training.threshold import rates_at
from dagm_deploy.quality_gate import NO_AP, false_rejects, judge

from test_evaluation_report import labelled_set


def evaluation(out, labels_known: str = "mixed", rejected: int = 0, **changes) -> dict:
    """evaluation.json of the 11-image set: `mixed` (3 masks, 2 image-level), `image-level`
    (no masks at all) or `good-only` (the defective images dropped), with `at_threshold` as
    training measures it on the test images; the first `rejected` good images score above
    the threshold, below every defect (so AP stays 1)."""
    given, has_mask = labelled_set()
    if labels_known == "image-level":
        given["true_masks"][:] = 0
        has_mask = given["labels"] == 0
    if labels_known == "good-only":
        keep = np.flatnonzero(given["labels"] == 0)
        arrays = ("labels", "scores", "class_ids", "images", "true_masks", "seg_maps")
        given = {**given, **{k: given[k][keep] for k in arrays}, "keys": [given["keys"][i] for i in keep]}
        has_mask = has_mask[keep]
    given = {**given, **changes}
    scores = given["scores"].copy()
    scores[np.flatnonzero(given["labels"] == 0)[:rejected]] = 0.7
    at_threshold = rates_at(given["labels"], scores, given["threshold"])
    write_report(out, **{**given, "scores": scores}, extra={"at_threshold": at_threshold}, has_mask=has_mask)
    return json.loads((out / EVALUATION_FILE).read_text())


def older(evaluation: dict, *blocks: str) -> dict:
    """The same file as a job that predates `blocks` wrote it."""
    return {k: v for k, v in evaluation.items() if k not in blocks}


def test_a_mixed_label_budget_is_judged_on_image_ap_and_the_table_says_how_it_was_labelled(tmp_path):
    candidate = evaluation(tmp_path / "c")
    verdict = judge(candidate, margin=0.02, min_ap=0.9, max_false_reject=0.02)
    assert verdict.passed and verdict.reasons == []
    table = verdict.table().splitlines()
    assert table[0] == ("test labels: 11 images, 6 good, 3 defective with a mask, 2 defective image-level only; "
                        "pixel metrics cover only the 9 test images whose pixels are known (6 good, 3 defective "
                        "with a mask); the 2 defective images labelled at image level only are left out")
    assert table[1] == "candidate pixel metrics over 9 images: AP 1.000, Dice 1.000 at 0.5"
    assert table[-1] == ("at the served threshold 0.5000: false rejects 0 of 6 good test images (0 %, at most 2 % "
                         "allowed); recall 100 % (escapes 0 of 5 defective test images)")


def test_image_level_labels_alone_pass_the_gate_without_pixel_metrics(tmp_path):
    candidate = evaluation(tmp_path / "c", "image-level")
    assert candidate["pixel"] is None
    baseline = evaluation(tmp_path / "b", "image-level", scores=np.where(labelled_set()[0]["labels"], 0.6, 0.4))
    verdict = judge({**candidate, "baseline": baseline}, margin=0.02, min_ap=0.9, max_false_reject=0.02)
    assert verdict.passed, verdict.reasons
    assert verdict.table().splitlines()[0].endswith(
        "no pixel metrics: no defective test image has a mask; all 5 are labelled at image level only")
    assert [row["class"] for row in verdict.comparison] == ["3", "overall"]


def test_defective_test_images_with_a_fine_ap_still_fail_on_false_rejects(tmp_path):
    candidate = evaluation(tmp_path / "c", rejected=1)
    assert candidate["overall"]["ap"] == 1.0 and candidate["at_threshold"]["false_rejects"] == 1
    reason = ("the false-reject rate 16.7 % (1 of 6 good test images rejected at the served threshold 0.5000) "
              "is above --max-false-reject 0.02 (2 %)")
    first = judge(candidate, margin=0.02, min_ap=0.9, max_false_reject=0.02)
    assert not first.passed and first.reasons == [reason]
    # Beside a serving model it does no worse than on AP: the false rejects alone refuse it.
    against = judge({**candidate, "baseline": evaluation(tmp_path / "b")}, margin=0.02, min_ap=0.9,
                    max_false_reject=0.02)
    assert not against.passed and against.reasons == [reason]
    assert all(row["delta"] in (0, None) for row in against.comparison)
    assert ("false rejects 1 of 6 good test images (16.7 %, at most 2 % allowed); recall 100 % (escapes 0 of 5 "
            "defective test images)") in against.table()
    # A reason on AP comes first, the false rejects after it.
    both = judge(candidate, margin=0.02, min_ap=1.01, max_false_reject=0.02)
    assert both.reasons == ["no serving model to compare with, and the overall test AP 1.0 is below 1.01", reason]


def test_a_good_only_test_set_is_judged_on_false_rejects_alone(tmp_path):
    candidate = evaluation(tmp_path / "c", "good-only")
    assert candidate["overall"]["ap"] is None and candidate["overall"]["n"] == 6
    verdict = judge(candidate, margin=0.02, min_ap=0.9, max_false_reject=0.02)
    assert verdict.passed and verdict.reasons == []
    assert verdict.notes == ["at the served threshold 0.5000: false rejects 0 of 6 good test images (0 %, at most "
                             "2 % allowed); recall not measured: no defective test image", NO_AP]
    table = verdict.table()
    assert "AP cannot be measured without defective test images" in table
    assert "overall    n/a       n/a     n/a" in table
    # Beside a serving model scored on the same good-only images every AP is n/a on both
    # sides: the false rejects decide.
    against = judge({**candidate, "baseline": evaluation(tmp_path / "b", "good-only")}, margin=0.02, min_ap=0.9,
                    max_false_reject=0.02)
    assert against.passed and NO_AP in against.notes


def test_a_good_only_test_set_above_the_false_reject_limit_fails_naming_rate_and_limit(tmp_path):
    candidate = evaluation(tmp_path / "c", "good-only", rejected=1)
    verdict = judge(candidate, margin=0.02, min_ap=0.9, max_false_reject=0.02)
    assert not verdict.passed
    assert verdict.reasons == ["the false-reject rate 16.7 % (1 of 6 good test images rejected at the served "
                               "threshold 0.5000) is above --max-false-reject 0.02 (2 %)"]
    assert NO_AP in verdict.table()
    # At most the limit passes: one of six is exactly 1/6.
    assert judge(candidate, margin=0.02, min_ap=0.9, max_false_reject=1 / 6).passed
    assert not judge(evaluation(tmp_path / "two", "good-only", rejected=2), margin=0.02, min_ap=0.9,
                     max_false_reject=1 / 6).passed


def test_a_good_only_test_set_without_false_rejects_measured_is_refused(tmp_path):
    candidate = older(evaluation(tmp_path / "c", "good-only"), "at_threshold")
    verdict = judge(candidate, margin=0.02, min_ap=0.9, max_false_reject=0.02)
    assert not verdict.passed
    assert verdict.reasons == ["the test set has no defective image (6 good ones), so AP cannot be measured, and "
                               "evaluation.json has no at_threshold (written before training measured false "
                               "rejects): nothing shows how the candidate treats good parts"]
    # dagm-train-stage judges a good-only set with the same function.
    assert false_rejects(candidate, 0.02)[0] == verdict.reasons


def test_an_evaluation_from_before_the_labels_and_at_threshold_blocks_still_judges(tmp_path):
    # Its false rejects are unknown, so even this many cannot fail it: AP alone, as before.
    candidate = older(evaluation(tmp_path / "c", rejected=3), "labels", "pixel", "at_threshold")
    verdict = judge(candidate, margin=0.02, min_ap=0.9, max_false_reject=0.02)
    assert verdict.passed and verdict.table().splitlines()[0] == "class  candidate  serving   delta"
    assert verdict.notes == ["false rejects not judged: evaluation.json has no at_threshold "
                             "(written before training measured them)"]
    assert not judge(candidate, margin=0.02, min_ap=1.01, max_false_reject=0.02).passed
