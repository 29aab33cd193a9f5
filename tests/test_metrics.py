"""Image-level metrics against hand-computed cases and their defining properties."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from dagm_defects.evaluation import metrics as m

# Two positives among five distinct scores, ranked 1st and 4th.
# AP: recall 1/2 at precision 1/1, then recall 2/2 at precision 2/4 -> 0.5 + 0.25.
# AUROC: the 0.9 positive beats all 3 negatives, the 0.6 one beats 1 -> 4/6.
HAND_Y = [1, 0, 0, 1, 0]
HAND_S = [0.9, 0.8, 0.7, 0.6, 0.5]

# A positive and a negative tied at 0.5. A tie is one operating point, not "positive first":
# AP = 0.5 * 1 + 0.5 * 2/3 (it would be 1.0 if the tie were broken in the positive's favour);
# AUROC = (1 + 0.5 + 2) / 4 with the tied pair counting one half.
TIE_Y = [0, 1, 0, 1]
TIE_S = [0.2, 0.5, 0.5, 0.8]


def test_perfect_separation_scores_one():
    y, s = [0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]
    assert m.average_precision(y, s) == 1.0
    assert m.auroc(y, s) == 1.0


def test_reversed_ranking_has_zero_auroc_and_ap_of_its_late_hits():
    # The positives come 3rd and 4th: recall 1/2 at precision 1/3, then 2/2 at 2/4.
    assert m.auroc([1, 1, 0, 0], [0.1, 0.2, 0.8, 0.9]) == 0.0
    assert m.average_precision([1, 1, 0, 0], [0.1, 0.2, 0.8, 0.9]) == pytest.approx(5 / 12)


def test_hand_computed_ap_and_auroc():
    assert m.average_precision(HAND_Y, HAND_S) == pytest.approx(0.75)
    assert m.auroc(HAND_Y, HAND_S) == pytest.approx(4 / 6)


def test_ties_count_as_one_operating_point():
    assert m.average_precision(TIE_Y, TIE_S) == pytest.approx(5 / 6)
    assert m.auroc(TIE_Y, TIE_S) == pytest.approx(0.875)


def test_constant_scores_give_chance_values():
    y = [1, 0, 0, 0]
    assert m.auroc(y, [0.5] * 4) == 0.5
    assert m.average_precision(y, [0.5] * 4) == pytest.approx(0.25)


def test_auroc_matches_pairwise_count():
    rng = np.random.default_rng(7)
    y = rng.integers(0, 2, 60)
    s = np.round(rng.random(60), 1)  # one decimal: many ties
    pos, neg = s[y == 1], s[y == 0]
    pairs = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    assert m.auroc(y, s) == pytest.approx(pairs.mean())


def test_precision_recall_curve_with_ties():
    precision, recall, thresholds = m.precision_recall_curve(TIE_Y, TIE_S)
    np.testing.assert_allclose(thresholds, [0.2, 0.5, 0.8])
    np.testing.assert_allclose(precision, [0.5, 2 / 3, 1.0, 1.0])
    np.testing.assert_allclose(recall, [1.0, 1.0, 0.5, 0.0])


def test_roc_curve_with_ties():
    fpr, tpr, thresholds = m.roc_curve(TIE_Y, TIE_S, drop_intermediate=False)
    np.testing.assert_array_equal(thresholds, [np.inf, 0.8, 0.5, 0.2])
    np.testing.assert_allclose(fpr, [0, 0, 0.5, 1])
    np.testing.assert_allclose(tpr, [0, 0.5, 1, 1])


def test_roc_drop_intermediate_keeps_only_corners():
    y, s = [1, 1, 1, 0, 0], [0.9, 0.8, 0.7, 0.2, 0.1]
    # As in scikit-learn, the highest score's point is kept: the pruning runs before the
    # (0, 0) point is prepended. 0.8 and 0.2 lie on straight segments and go.
    fpr, tpr, thresholds = m.roc_curve(y, s)
    np.testing.assert_allclose(fpr, [0, 0, 0, 1])
    np.testing.assert_allclose(tpr, [0, 1 / 3, 1, 1])
    np.testing.assert_array_equal(thresholds, [np.inf, 0.9, 0.7, 0.1])


def test_trapezoid_area_of_roc_equals_auroc():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 80)
    s = np.round(rng.random(80), 2)
    fpr, tpr, _ = m.roc_curve(y, s)
    area = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
    assert area == pytest.approx(m.auroc(y, s))


# A class without defects is routine (its test split may hold none): no warning for it.
@pytest.mark.filterwarnings("error")
def test_single_class_values():
    assert math.isnan(m.average_precision([0, 0, 0], [0.1, 0.5, 0.9]))
    assert m.average_precision([1, 1], [0.1, 0.9]) == 1.0
    assert math.isnan(m.auroc([0, 0], [0.1, 0.9]))
    assert math.isnan(m.auroc([1, 1], [0.1, 0.9]))
    _, tpr, _ = m.roc_curve([0, 0], [0.1, 0.9])
    assert np.all(np.isnan(tpr))


# ---------------------------------------------------------------- threshold choice


def test_threshold_on_separable_data_splits_the_gap_by_the_classes_spreads():
    # Equal spreads: the middle of the gap.
    assert m.choose_threshold([0, 0, 1, 1], [0.1, 0.3, 0.7, 0.9]) == pytest.approx(0.5)
    # Positives spread 0.175, negatives 0.075: the gap (0.2, 0.6) is cut 0.3 of the way up.
    assert m.choose_threshold([0, 0, 1, 1], [0.05, 0.2, 0.6, 0.95]) == pytest.approx(0.32)


def test_threshold_leaves_a_recall_margin_when_defects_vary_more():
    """Good images alike, defects from faint to blatant (as on genuine DAGM): a defect
    fainter than any that validation showed still clears the threshold."""
    good = [0.02, 0.03, 0.04, 0.05, 0.06]
    defects = [0.55, 0.7, 0.8, 0.9, 0.99]
    t = m.choose_threshold([0] * 5 + [1] * 5, good + defects)
    assert 0.06 < t < 0.2
    assert m.confusion([0, 1], [0.06, 0.3], t)["recall"] == 1.0


def test_threshold_on_non_separable_data_maximises_f1():
    # Cutting below 0.4 flags three positives and one negative: F1 = 6/7, the best cut.
    # Any threshold in (0.1, 0.4] makes those predictions.
    y, s = [0, 1, 0, 1, 1], [0.1, 0.4, 0.5, 0.7, 0.9]
    t = m.choose_threshold(y, s)
    assert 0.1 < t <= 0.4
    assert m.confusion(y, s, t)["f1"] == pytest.approx(6 / 7)


def test_threshold_f1_tie_goes_to_widest_interval():
    # Flagging only 0.9 (interval (0.8, 0.9]) and flagging all four (interval [0, 0.4])
    # both give F1 = 2/3; the second leaves the larger margin.
    t = m.choose_threshold([1, 0, 0, 1], [0.9, 0.8, 0.7, 0.4])
    assert 0 < t <= 0.4 and m.confusion([1, 0, 0, 1], [0.9, 0.8, 0.7, 0.4], t)["tp"] == 2


def test_threshold_separating_tied_scores_is_impossible():
    # Positive and negative tied at 0.6: the threshold can only flag both or neither.
    t = m.choose_threshold([0, 0, 1, 1], [0.1, 0.6, 0.6, 0.9])
    assert 0.1 < t <= 0.6
    assert m.confusion([0, 0, 1, 1], [0.1, 0.6, 0.6, 0.9], t)["tp"] == 2


def test_threshold_without_one_class_is_default():
    assert m.choose_threshold([0, 0, 0], [0.2, 0.9, 0.4]) == 0.5
    assert m.choose_threshold([1, 1], [0.2, 0.9]) == 0.5


def test_threshold_stays_in_unit_interval():
    assert m.choose_threshold([1, 1, 0], [0.0, 0.0, 0.0]) == 0.0
    assert m.choose_threshold([0, 1], [0.0, 1.0]) == 0.5
    with pytest.raises(ValueError, match="probabilities"):
        m.choose_threshold([0, 1], [-0.5, 1.5])


# ---------------------------------------------------------------- confusion


def test_confusion_counts_and_ratios():
    c = m.confusion(HAND_Y, HAND_S, 0.65)  # flags 0.9, 0.8, 0.7
    assert (c["tp"], c["fp"], c["tn"], c["fn"]) == (1, 2, 1, 1)
    assert all(isinstance(c[k], int) for k in ("tp", "fp", "tn", "fn"))
    assert c["accuracy"] == pytest.approx(2 / 5)
    assert c["precision"] == pytest.approx(1 / 3)
    assert c["recall"] == pytest.approx(1 / 2)
    assert c["f1"] == pytest.approx(2 / 5)


def test_confusion_threshold_is_inclusive():
    assert m.confusion([1], [0.5], 0.5)["tp"] == 1


def test_confusion_without_predicted_positives():
    quiet_on_good = m.confusion([0, 0], [0.1, 0.2], 0.5)
    assert (quiet_on_good["precision"], quiet_on_good["recall"]) == (1.0, 1.0)
    assert quiet_on_good["f1"] == 1.0
    missed = m.confusion([1, 0], [0.1, 0.2], 0.5)
    assert (missed["precision"], missed["recall"], missed["f1"]) == (0.0, 0.0, 0.0)


# ---------------------------------------------------------------- pinned figures


def fixed_set() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """500 images in 10 classes; scores on a 0.01 grid, so many tie; class 10 has no defect."""
    rng = np.random.default_rng(0)
    classes = rng.integers(1, 11, 500)
    scores = np.round(rng.random(500), 2)
    labels = (rng.random(500) < scores).astype(int)  # defects score higher, as from a useful model
    labels[classes == 10] = 0
    return labels, scores, classes


def pinned(value):
    return pytest.approx(value, rel=1e-12, abs=1e-12)


def test_the_reported_figures_on_a_fixed_set_are_pinned():
    """The figures of evaluation.json as the numpy implementation computed them before
    scikit-learn replaced it: a change in our code or a scikit-learn release that moves
    what users read fails here."""
    labels, scores, classes = fixed_set()
    threshold = m.choose_threshold(labels, scores)
    assert threshold == pinned(0.42520156705346085)
    summary = m.summarize(labels, scores, classes, threshold)
    overall = summary["overall"]
    assert {k: overall[k] for k in ("n", "n_defective", "tp", "fp", "tn", "fn")} == {
        "n": 500, "n_defective": 223, "tp": 187, "fp": 111, "tn": 166, "fn": 36}
    assert [overall[k] for k in ("ap", "auroc", "accuracy", "precision", "recall", "f1")] == pinned(
        [0.7274517244857779, 0.7945880753104207, 0.706, 0.62751677852349, 0.8385650224215246,
         0.7178502879078695])
    per_class = summary["per_class"]
    assert [per_class[c]["ap"] for c in per_class][:9] == pinned(
        [0.7631257552553263, 0.8059816988288124, 0.8585047634598391, 0.7130448273585528,
         0.8786038642365425, 0.7650953837933905, 0.9278575279444262, 0.8646240518351862,
         0.833894008621689])
    assert [per_class[c]["auroc"] for c in per_class][:9] == pinned(
        [0.8061868686868687, 0.8263888888888888, 0.79125, 0.7693333333333333, 0.8199588477366255,
         0.762962962962963, 0.9379370629370629, 0.8164285714285714, 0.8131127450980392])
    assert (per_class["10"]["ap"], per_class["10"]["auroc"], per_class["10"]["f1"]) == (None, None, 0.0)


def test_the_curves_on_a_fixed_set_are_pinned():
    overall = m.curves(*fixed_set())["overall"]
    # 98 distinct scores: a PR point each plus the (1, 0) end; ROC keeps 95 corners and (0, 0).
    assert [len(overall[k]) for k in ("precision", "pr_thresholds", "fpr", "roc_thresholds")] == [99, 98, 96, 96]
    assert overall["precision"][:3] == pinned([0.446, 0.44779116465863456, 0.45417515274949083])
    assert overall["pr_thresholds"][:3] == pinned([0.0, 0.01, 0.02])
    assert overall["fpr"][:4] == pinned([0.0, 0.0036101083032490976, 0.010830324909747292, 0.010830324909747292])
    assert overall["tpr"][:4] == pinned([0.0, 0.004484304932735426, 0.02242152466367713, 0.053811659192825115])
    assert overall["roc_thresholds"][:4] == [None, 1.0, 0.99, 0.98]


# ---------------------------------------------------------------- summarize and curves

GROUP_Y = [0, 1, 0, 1, 0, 0, 0, 1, 1, 0]
GROUP_S = [0.1, 0.9, 0.2, 0.8, 0.3, 0.7, 0.6, 0.4, 0.95, 0.05]
GROUPS = [1, 1, 1, 1, 2, 2, 2, 10, 10, 10]  # class 2 has no defect


def test_summarize_structure():
    summary = m.summarize(GROUP_Y, GROUP_S, GROUPS, 0.5)
    assert summary["threshold"] == 0.5
    assert list(summary["per_class"]) == ["1", "2", "10"]
    keys = ["n", "n_defective", "ap", "auroc", "accuracy", "precision", "recall", "f1",
            "tp", "fp", "tn", "fn"]
    for block in [summary["overall"], *summary["per_class"].values()]:
        assert list(block) == keys
        assert block["tp"] + block["fp"] + block["tn"] + block["fn"] == block["n"]
    assert summary["overall"]["n"] == 10
    assert summary["overall"]["n_defective"] == 4
    assert summary["per_class"]["1"]["ap"] == 1.0
    assert summary["per_class"]["2"]["fp"] == 2  # 0.7 and 0.6 flagged, no defect there


def test_summarize_is_json_with_none_for_nan():
    summary = m.summarize(GROUP_Y, GROUP_S, GROUPS, 0.5)
    text = json.dumps(summary, allow_nan=False)
    assert json.loads(text) == summary
    assert summary["per_class"]["2"]["ap"] is None
    assert summary["per_class"]["2"]["auroc"] is None


def test_summarize_accepts_whole_float_groups():
    summary = m.summarize(GROUP_Y, GROUP_S, np.asarray(GROUPS, dtype=float), 0.5)
    assert list(summary["per_class"]) == ["1", "2", "10"]


def test_curves_are_json_lists():
    result = m.curves(GROUP_Y, GROUP_S, GROUPS)
    json.dumps(result, allow_nan=False)
    assert list(result["per_class"]) == ["1", "2", "10"]
    overall = result["overall"]
    assert overall["ap"] == pytest.approx(m.average_precision(GROUP_Y, GROUP_S))
    assert overall["roc_thresholds"][0] is None  # the inf of the (0, 0) point
    assert len(overall["precision"]) == len(overall["recall"]) == len(overall["pr_thresholds"]) + 1
    assert len(overall["fpr"]) == len(overall["tpr"]) == len(overall["roc_thresholds"])
    assert all(v is None for v in result["per_class"]["2"]["tpr"])


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("y", "s", "message"),
    [
        ([0, 1, 1], [0.1, 0.2], "differ in length"),
        ([[0, 1]], [[0.1, 0.2]], "1-D"),
        ([0, 1], [[0.1], [0.2]], "scores must be 1-D"),
        ([0, 2], [0.1, 0.2], "only 0 and 1"),
        ([0, 1], [0.1, float("nan")], "finite"),
        ([], [], "empty"),
    ],
)
@pytest.mark.parametrize(
    "function",
    [m.precision_recall_curve, m.roc_curve, m.average_precision, m.auroc, m.choose_threshold],
)
def test_invalid_inputs_are_named(function, y, s, message):
    with pytest.raises(ValueError, match=message):
        function(y, s)


def test_invalid_groups_are_named():
    with pytest.raises(ValueError, match="groups and y_true differ in length"):
        m.summarize([0, 1], [0.1, 0.9], [1], 0.5)
    with pytest.raises(ValueError, match="integer class ids"):
        m.curves([0, 1], [0.1, 0.9], ["a", "b"])
    with pytest.raises(ValueError, match="threshold must be finite"):
        m.confusion([0, 1], [0.1, 0.9], float("nan"))
