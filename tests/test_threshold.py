"""The served threshold: a false-reject budget on held-out good images, checked on defects."""

from __future__ import annotations

import numpy as np
import pytest

from dagm_defects.training.threshold import choose_threshold, cut_for_budget, needs_training_scores


def test_the_cut_rejects_no_more_good_images_than_the_budget_allows():
    rng = np.random.default_rng(0)
    good = rng.uniform(0.0, 0.3, 200)
    defective = rng.uniform(0.6, 1.0, 20)
    for budget in (0.005, 0.01, 0.05, 0.1):
        cut = cut_for_budget(good, defective, budget)
        assert (good >= cut).sum() == int(budget * 200)
    # Everything above the allowed tail is a defect here, so recall stays whole.
    assert (defective >= cut_for_budget(good, defective, 0.01)).all()


def test_the_cut_sits_between_the_good_tail_and_the_next_score_not_on_the_tail():
    good = np.array([0.1, 0.2, 0.3])
    cut = cut_for_budget(good, np.array([0.9]), 0.01)
    assert 0.3 < cut < 0.9
    # With nothing above the tail, the cut keeps a fixed margin in log-odds.
    alone = cut_for_budget(good, np.array([]), 0.01)
    assert 0.3 < alone < 0.6


def test_five_lucky_validation_defects_no_longer_set_the_cut():
    """A best-F1 cut from five defects that all scored 0.99 would sit near 0.99 and let
    through any unseen defect scoring 0.9; the budget on 200 good images does not."""
    rng = np.random.default_rng(1)
    good = rng.uniform(0.0, 0.2, 200)
    labels = np.r_[np.zeros(200), np.ones(5)]
    scores = np.r_[good, np.full(5, 0.99)]
    choice = choose_threshold((labels, scores), 0.01)
    assert choice.threshold < 0.5
    assert choice.at_threshold["recall"] == 1.0 and choice.at_threshold["false_rejects"] == 2
    assert any("only 5 held-out defective images" in note for note in choice.notes)


def test_too_few_held_out_good_images_reject_none_of_them_and_say_so():
    """Fitted training scores never set the cut: among 100 training good images scoring
    low, a 1 % cut would sit below the held-out tail and reject more unseen parts."""
    labels, scores = np.r_[np.zeros(20), np.ones(12)], np.r_[np.linspace(0, 0.2, 20), np.full(12, 0.95)]
    assert not needs_training_scores(labels)
    assert needs_training_scores(np.r_[np.zeros(100), np.ones(9)]) and needs_training_scores(np.ones(20))
    choice = choose_threshold((labels, scores), 0.01)
    assert choice.threshold > 0.2 and choice.at_threshold["false_rejects"] == 0
    assert choice.source == "held-out validation images"
    assert choice.notes == ["only 20 held-out good images: too few to resolve a 1.0% false-reject budget, so the "
                            "threshold rejects none of them (the least they can show is 1 in 21)"]


def test_few_held_out_defects_are_checked_with_the_training_defects_but_never_its_good_images():
    labels, scores = np.r_[np.zeros(200), np.ones(3)], np.r_[np.linspace(0, 0.2, 200), np.full(3, 0.9)]
    training = (np.r_[np.zeros(500), np.ones(30)], np.r_[np.full(500, 0.01), np.full(30, 0.97)])
    choice = choose_threshold((labels, scores), 0.01, training)
    assert choice.source == "held-out validation images and training images"
    assert choice.at_threshold["good"] == 200 and choice.at_threshold["defective"] == 33
    assert choice.at_threshold["false_rejects"] == 2
    assert choice.notes == ["only 3 held-out defective images: the training images' defects join the recall check"]


def test_the_operating_points_trade_false_rejects_for_escapes():
    rng = np.random.default_rng(2)
    labels = np.r_[np.zeros(500), np.ones(50)]
    scores = np.r_[rng.beta(2, 8, 500), rng.beta(8, 2, 50)]
    points = choose_threshold((labels, scores), 0.02).operating_points
    budgets = [p["max_false_reject"] for p in points]
    assert budgets == sorted(budgets) and 0.02 in budgets
    thresholds = [p["threshold"] for p in points]
    assert thresholds == sorted(thresholds, reverse=True)
    for point in points:
        assert point["false_reject_rate"] <= point["max_false_reject"]
    assert points[0]["escapes"] >= points[-1]["escapes"]


@pytest.mark.parametrize("budget", [0.01, 0.1])
def test_saturated_scores_still_give_a_cut_above_the_tail(budget):
    good = np.full(10, 1.0 - 1e-9)
    cut = cut_for_budget(good, np.array([]), budget)
    assert cut <= 1.0 and (good >= cut).sum() <= int(budget * 10)
