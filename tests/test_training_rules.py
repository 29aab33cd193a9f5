"""The rule book on its own: each rule's trigger and its quiet side, fed the facts the loop
gives it (whole training jobs with broken recipes: test_training_observed.py)."""

from __future__ import annotations

import math

import pytest

from dagm_defects.training.hyperparameters import HyperparameterError, parse_hyperparameters
from dagm_defects.training.rules import RULES, EpochFacts, RuleBook, StepFacts


def epoch(n: int, train_loss: float, val_loss: float | None = 0.3, val_ap: float | None = 0.9, **overrides) -> EpochFacts:
    facts = dict(epoch=n, train_loss=train_loss, val_loss=val_loss, val_ap=val_ap, val_chance_ap=0.13, steps=50,
                 data_seconds=0.5, step_seconds=20.0, utilization=0.9, utilization_source="the 2 CPU core(s)",
                 peak_memory_bytes=2 * 2**30, memory_limit_bytes=16 * 2**30, memory_source="the host's memory")
    return EpochFacts(**{**facts, **overrides})


def statuses(book: RuleBook) -> dict[str, str]:
    return {row["name"]: row["status"] for row in book.to_list()}


def healthy_run(book: RuleBook, epochs: int = 10) -> None:
    for n in range(1, epochs + 1):
        for step in range(20):
            book.check_step(StepFacts(n, n * 20 + step, 1.0 / n, {"conv.weight": 0.5, "fc.bias": 0.01}))
        book.check_epoch(epoch(n, 1.0 / n, val_loss=0.3 / n, val_ap=min(1.0, 0.8 + 0.03 * n)))


def test_a_healthy_run_leaves_every_rule_quiet():
    book = RuleBook()
    healthy_run(book)
    assert book.fired() == []
    assert set(statuses(book).values()) == {"quiet"}
    assert [row["name"] for row in book.to_list()] == list(RULES)


def test_a_nan_loss_fires_at_its_step_and_stops_only_when_asked():
    quiet_book, stopping_book = RuleBook(), RuleBook(stopping=("loss_not_finite",))
    assert quiet_book.check_step(StepFacts(2, 13, math.nan)) is None
    reason = stopping_book.check_step(StepFacts(2, 13, math.nan))
    assert reason == "rule loss_not_finite fired at epoch 2 step 13: loss nan at this step"
    row = next(r for r in quiet_book.to_list() if r["name"] == "loss_not_finite")
    assert (row["status"], row["epoch"], row["step"], row["stops_job"]) == ("fired", 2, 13, False)
    # A rule fires once: its first evidence stays.
    quiet_book.check_step(StepFacts(3, 40, math.inf))
    assert next(r for r in quiet_book.to_list() if r["name"] == "loss_not_finite")["epoch"] == 2


def test_exploding_and_vanishing_gradients_name_the_layer():
    book = RuleBook()
    book.check_step(StepFacts(1, 0, 0.5, {"a.weight": 0.3, "b.weight": 3e5}))
    book.check_step(StepFacts(1, 10, 0.5, {"a.weight": math.nan}))
    for step in (20, 30):
        book.check_step(StepFacts(1, step, 0.5, {"a.weight": 1e-9, "b.weight": 2e-9}))
    assert "vanishing_gradients" not in book.fired()  # two samples; three are needed
    book.check_step(StepFacts(1, 40, 0.5, {"a.weight": 1e-9, "b.weight": 2e-9}))
    rows = {r["name"]: r for r in book.to_list()}
    assert rows["exploding_gradients"]["evidence"] == "gradient norm of b.weight is 3e+05 (threshold 100)"
    assert rows["vanishing_gradients"]["step"] == 40 and "b.weight" in rows["vanishing_gradients"]["evidence"]


def test_loss_not_decreasing_needs_a_whole_window_without_a_new_best():
    book = RuleBook()
    for n, loss in enumerate([1.0, 0.8, 0.9, 0.85, 0.81, 0.82], start=1):
        book.check_epoch(epoch(n, loss))
    assert "loss_not_decreasing" in book.fired()
    assert statuses(book)["loss_not_decreasing"] == "fired"
    recovering = RuleBook()
    for n, loss in enumerate([1.0, 0.8, 0.9, 0.85, 0.81, 0.79], start=1):
        recovering.check_epoch(epoch(n, loss))
    assert "loss_not_decreasing" not in recovering.fired()
    # Genuine Class 8, the CPU recipe, seed 2 (bench-real, 2026-12-05): a three-epoch plateau
    # on the way down, which a window of 3 took for a stall.
    plateau = RuleBook()
    for n, loss in enumerate([0.8836, 0.2372, 0.1524, 0.0515, 0.058, 0.0554, 0.0583, 0.045, 0.0301, 0.0298], start=1):
        plateau.check_epoch(epoch(n, loss, val_ap=1.0))
    assert plateau.fired() == []


def test_validation_not_improving_near_chance_and_after_a_plateau_but_not_when_saturated():
    chance = RuleBook()
    for n in range(1, 5):
        chance.check_epoch(epoch(n, 1.0 / n, val_ap=0.15 + 0.01 * n))
    assert chance.fired() == ["validation_not_improving"]
    assert "of guessing (0.130" in chance.to_list()[2]["evidence"]

    plateau, saturated = RuleBook(), RuleBook()
    for n, ap in enumerate([0.7, 0.9, 0.89, 0.9, 0.88, 0.895], start=1):
        plateau.check_epoch(epoch(n, 1.0 / n, val_ap=ap))
    for n, ap in enumerate([0.9, 1.0, 0.999, 1.0, 0.998, 0.999], start=1):
        saturated.check_epoch(epoch(n, 1.0 / n, val_ap=ap))
    assert plateau.fired() == ["validation_not_improving"] and saturated.fired() == []


def test_overfitting_is_training_loss_falling_while_validation_loss_rises():
    book = RuleBook()
    for n, (train, val) in enumerate([(1.0, 0.5), (0.6, 0.4), (0.4, 0.45), (0.3, 0.55), (0.2, 0.7)], start=1):
        book.check_epoch(epoch(n, train, val_loss=val))
    assert "overfitting" in book.fired()
    noisy = RuleBook()
    for n, (train, val) in enumerate([(1.0, 0.5), (0.6, 0.4), (0.4, 0.41), (0.3, 0.39), (0.2, 0.42)], start=1):
        noisy.check_epoch(epoch(n, train, val_loss=val))
    assert "overfitting" not in noisy.fired()
    # Genuine Class 8, the CPU recipe, seed 1 (bench-real, 2026-12-05): early validation
    # losses jump while the model settles, and then fall for good.
    settling = RuleBook()
    losses = [(1.1094, 0.6082), (0.9084, 0.7545), (0.29, 5.9289), (0.1723, 0.1102), (0.0976, 0.0327),
              (0.0502, 1.7158), (0.0552, 0.0119), (0.043, 0.0099), (0.0385, 0.0064), (0.0346, 0.0063)]
    for n, (train, val) in enumerate(losses, start=1):
        settling.check_epoch(epoch(n, train, val_loss=val, val_ap=1.0))
    assert settling.fired() == []


def test_host_rules_data_waiting_utilization_and_memory():
    book = RuleBook()
    reason = book.check_epoch(epoch(1, 1.0, data_seconds=12.0, utilization=0.1, peak_memory_bytes=15 * 2**30))
    assert reason is None  # none of them stops the job unless asked
    assert {"data_loader_starving", "low_utilization", "memory_near_limit"} <= set(book.fired())
    evidence = {r["name"]: r["evidence"] for r in book.to_list()}
    assert evidence["data_loader_starving"].startswith("60% of the epoch's step time (12.00 of 20.00 s)")
    assert evidence["low_utilization"] == "the 2 CPU core(s) busy 10% of the epoch's training time"
    assert evidence["memory_near_limit"] == "peak memory 15360 MiB is 94% of 16384 MiB (the host's memory)"
    # A short epoch or few steps say too little to judge.
    short = RuleBook()
    short.check_epoch(epoch(1, 1.0, steps=2, step_seconds=0.5, data_seconds=0.4, utilization=0.05))
    assert short.fired() == [] and statuses(short)["low_utilization"] == "not evaluated"


def test_rule_parameters_change_thresholds_and_limit():
    book = RuleBook({"memory_near_limit": {"limit_bytes": 2 * 2**30 + 1}, "exploding_gradients": {"threshold": 1.0}})
    book.check_step(StepFacts(1, 0, 0.5, {"a.weight": 2.0}))
    book.check_epoch(epoch(1, 1.0))
    assert set(book.fired()) == {"exploding_gradients", "memory_near_limit"}
    assert "(the limit_bytes parameter)" in next(r for r in book.to_list() if r["name"] == "memory_near_limit")["evidence"]


def test_hyperparameters_name_rules_and_their_parameters():
    hp = parse_hyperparameters({"stop_on_rules": "loss_not_finite, overfitting",
                                "rule_parameters": '{"overfitting": {"window": 2}}'})
    assert hp.stop_on_rules == ("loss_not_finite", "overfitting")
    assert hp.rule_parameters == {"overfitting": {"window": 2.0}}
    assert parse_hyperparameters({"stop_on_rules": "true"}).stop_on_rules == tuple(RULES)
    assert parse_hyperparameters({}).stop_on_rules == () and parse_hyperparameters({}).tracking is True
    with pytest.raises(HyperparameterError, match="'stop_on_rules' must be .* got \"overfit\""):
        parse_hyperparameters({"stop_on_rules": "overfit"})
    for bad in ('{"overfitting": {"windw": 2}}', '{"nope": {"window": 2}}', "[1]", '{"overfitting": {"window": "2"}}'):
        with pytest.raises(HyperparameterError, match="'rule_parameters' must be a JSON object"):
            parse_hyperparameters({"rule_parameters": bad})
