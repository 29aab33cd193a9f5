"""Rules that watch a training job from inside its own loop, as SageMaker Debugger's
built-in rules did from its hooks (smdebug no longer supports current torch).

Each rule sees cheap facts the loop has anyway: every step's loss, per-layer gradient
norms on sampled steps, and once per epoch the epoch's losses, validation figures, where
the step time went and how the host was used. A rule that fires records when and why;
the rules named by the ``stop_on_rules`` hyperparameter also stop the job.

The defaults stay quiet on the committed recipes (CPU and GPU) and fire on deliberately
broken ones (tests/test_training_rules.py). Every parameter can be changed per job
through the ``rule_parameters`` hyperparameter, as Debugger's ``rule_parameters`` could.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass(frozen=True)
class StepFacts:
    epoch: int
    step: int
    loss: float
    # Per-parameter gradient norms, on sampled steps only (None on the others).
    grad_norms: dict[str, float] | None = None


@dataclass(frozen=True)
class EpochFacts:
    epoch: int
    train_loss: float
    val_loss: float | None
    val_ap: float | None
    # The validation set's defective share: the AP a model that guesses would score.
    val_chance_ap: float
    steps: int
    data_seconds: float
    step_seconds: float
    utilization: float | None
    utilization_source: str
    peak_memory_bytes: int | None
    memory_limit_bytes: int | None
    memory_source: str


@dataclass(frozen=True)
class RuleSpec:
    name: str
    description: str
    defaults: dict[str, float]


SPECS = (
    RuleSpec("loss_not_finite", "the training loss is NaN or infinite", {}),
    RuleSpec("loss_not_decreasing",
             "the epoch's training loss has not fallen below its best of `window` epochs earlier",
             {"window": 4, "min_delta": 0.0}),
    RuleSpec("validation_not_improving",
             "validation AP has made no new best (by `min_delta`) for `patience` epochs and is below "
             "`saturated`, or after `patience` epochs is still within `chance_margin` of guessing",
             {"patience": 4, "min_delta": 0.001, "saturated": 0.995, "chance_margin": 0.1}),
    RuleSpec("overfitting",
             "over `window` epochs the training loss fell while the validation loss (the window's median "
             "and its last epoch) rose above its earlier best by more than `rise` (relative) and `min_rise` "
             "(absolute)",
             {"window": 3, "rise": 0.1, "min_rise": 0.02}),
    RuleSpec("exploding_gradients", "a layer's gradient norm is above `threshold` or not finite",
             {"threshold": 100.0}),
    RuleSpec("vanishing_gradients",
             "every layer's gradient norm is below `threshold` on `samples` sampled steps in a row",
             {"threshold": 1e-7, "samples": 3}),
    RuleSpec("data_loader_starving",
             "more than `max_share` of an epoch's step time went to waiting for data",
             {"max_share": 0.3, "min_steps": 3}),
    RuleSpec("low_utilization",
             "the host's CPU cores (or the GPU) were busy less than `min_share` of an epoch's training time",
             {"min_share": 0.3, "min_seconds": 1.0}),
    RuleSpec("memory_near_limit",
             "peak memory above `max_fraction` of the limit (the cgroup's or the host's; the GPU's on "
             "CUDA; `limit_bytes` overrides it when > 0)",
             {"max_fraction": 0.9, "limit_bytes": 0}),
)
RULES = {spec.name: spec for spec in SPECS}


class RuleStopped(Exception):
    """A rule named in ``stop_on_rules`` fired; the message is the one-line reason."""


@dataclass
class Verdict:
    spec: RuleSpec
    parameters: dict[str, float]
    stops_job: bool
    evaluated: bool = False
    epoch: int | None = None
    step: int | None = None
    evidence: str = ""

    @property
    def fired(self) -> bool:
        return self.epoch is not None

    def to_dict(self) -> dict:
        status = "fired" if self.fired else ("quiet" if self.evaluated else "not evaluated")
        return {"name": self.spec.name, "description": self.spec.description, "status": status,
                "stops_job": self.stops_job, "parameters": self.parameters, "epoch": self.epoch,
                "step": self.step, "evidence": self.evidence}


@dataclass
class _History:
    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float | None] = field(default_factory=list)
    val_ap: list[float | None] = field(default_factory=list)
    vanishing_run: int = 0
    largest_norm: tuple[float, str, int, int] = (0.0, "", 0, 0)


class RuleBook:
    """Every rule's verdict for one job. ``check_step``/``check_epoch`` return the reason a
    stopping rule gives (the first to fire), or None."""

    def __init__(self, parameters: dict[str, dict[str, float]] | None = None,
                 stopping: tuple[str, ...] = ()) -> None:
        parameters = parameters or {}
        self.verdicts = {
            spec.name: Verdict(spec, {**spec.defaults, **parameters.get(spec.name, {})},
                               stops_job=spec.name in stopping)
            for spec in SPECS
        }
        self._history = _History()

    def _fire(self, name: str, epoch: int, step: int | None, evidence: str) -> str | None:
        verdict = self.verdicts[name]
        verdict.evaluated = True
        if verdict.fired:
            return None
        verdict.epoch, verdict.step, verdict.evidence = epoch, step, evidence
        if not verdict.stops_job:
            return None
        where = f"epoch {epoch}" + (f" step {step}" if step is not None else "")
        return f"rule {name} fired at {where}: {evidence}"

    def _quiet(self, *names: str) -> None:
        for name in names:
            self.verdicts[name].evaluated = True

    def check_step(self, facts: StepFacts) -> str | None:
        reasons = [self._loss_finite(facts)]
        if facts.grad_norms:
            reasons += [self._exploding(facts), self._vanishing(facts)]
        return next((r for r in reasons if r), None)

    def check_epoch(self, facts: EpochFacts) -> str | None:
        history = self._history
        history.train_loss.append(facts.train_loss)
        history.val_loss.append(facts.val_loss)
        history.val_ap.append(facts.val_ap)
        reasons = [self._loss_decreasing(facts), self._validation_improving(facts), self._overfitting(facts),
                   self._data_loader(facts), self._utilization(facts), self._memory(facts)]
        return next((r for r in reasons if r), None)

    def to_list(self) -> list[dict]:
        return [verdict.to_dict() for verdict in self.verdicts.values()]

    def fired(self) -> list[str]:
        return [name for name, verdict in self.verdicts.items() if verdict.fired]

    # Step rules.

    def _loss_finite(self, facts: StepFacts) -> str | None:
        if math.isfinite(facts.loss):
            self._quiet("loss_not_finite")
            return None
        return self._fire("loss_not_finite", facts.epoch, facts.step, f"loss {facts.loss} at this step")

    def _exploding(self, facts: StepFacts) -> str | None:
        threshold = self.verdicts["exploding_gradients"].parameters["threshold"]
        name, norm = max(facts.grad_norms.items(), key=lambda item: _nan_high(item[1]))
        if math.isfinite(norm) and norm <= threshold:
            history = self._history
            if norm >= history.largest_norm[0] and not self.verdicts["exploding_gradients"].fired:
                history.largest_norm = (norm, name, facts.epoch, facts.step)
                largest, layer, epoch, step = history.largest_norm
                # Quiet, but with the figure that shows how far from the threshold the job stayed.
                self.verdicts["exploding_gradients"].evidence = (
                    f"largest gradient norm seen: {largest:.3g} ({layer}, epoch {epoch} step {step})")
            self._quiet("exploding_gradients")
            return None
        return self._fire("exploding_gradients", facts.epoch, facts.step,
                          f"gradient norm of {name} is {norm:.4g} (threshold {threshold:g})")

    def _vanishing(self, facts: StepFacts) -> str | None:
        parameters = self.verdicts["vanishing_gradients"].parameters
        name, norm = max(facts.grad_norms.items(), key=lambda item: _nan_high(item[1]))
        history = self._history
        history.vanishing_run = history.vanishing_run + 1 if norm < parameters["threshold"] else 0
        if history.vanishing_run < parameters["samples"]:
            self._quiet("vanishing_gradients")
            return None
        return self._fire("vanishing_gradients", facts.epoch, facts.step,
                          f"the largest layer gradient norm ({name}) is {norm:.3g} on "
                          f"{history.vanishing_run} sampled steps in a row (threshold {parameters['threshold']:g})")

    # Epoch rules.

    def _loss_decreasing(self, facts: EpochFacts) -> str | None:
        parameters = self.verdicts["loss_not_decreasing"].parameters
        window = int(parameters["window"])
        losses = self._history.train_loss
        if len(losses) <= window:
            return None
        before = min(_nan_high(v) for v in losses[:-window])
        recent = min(_nan_high(v) for v in losses[-window:])
        if recent < before * (1 - parameters["min_delta"]):
            self._quiet("loss_not_decreasing")
            return None
        return self._fire("loss_not_decreasing", facts.epoch, None,
                          f"best training loss of the last {window} epochs is {recent:.4g}, "
                          f"not below the earlier best {before:.4g}")

    def _validation_improving(self, facts: EpochFacts) -> str | None:
        parameters = self.verdicts["validation_not_improving"].parameters
        patience = int(parameters["patience"])
        aps = [(-1.0 if v is None or math.isnan(v) else v) for v in self._history.val_ap]
        if len(aps) < patience:
            return None
        best = max(aps)
        margin = parameters["chance_margin"]
        if best < facts.val_chance_ap + margin:
            return self._fire("validation_not_improving", facts.epoch, None,
                              f"best validation AP after {len(aps)} epochs is {best:.3f}, within {margin:g} "
                              f"of guessing ({facts.val_chance_ap:.3f}, the defective share)")
        if len(aps) > patience:
            earlier = max(aps[:-patience])
            if best < parameters["saturated"] and max(aps[-patience:]) < earlier + parameters["min_delta"]:
                return self._fire("validation_not_improving", facts.epoch, None,
                                  f"validation AP has not passed {earlier:.4f} for {patience} epochs "
                                  f"(last {', '.join(f'{v:.4f}' for v in aps[-patience:])})")
        self._quiet("validation_not_improving")
        return None

    def _overfitting(self, facts: EpochFacts) -> str | None:
        parameters = self.verdicts["overfitting"].parameters
        window = int(parameters["window"])
        train, val = self._history.train_loss, self._history.val_loss
        if len(train) <= window or any(v is None for v in val):
            return None
        # The window's median and its last epoch both above the earlier best: one noisy epoch
        # (early validation losses jump while BatchNorm's statistics settle) neither fires
        # the rule nor hides a trend.
        recent = sorted(val[-window:])[window // 2]
        best = min(val[:-window])
        train_fell = train[-1] < train[-1 - window]
        risen = all(v - best > parameters["min_rise"] and v - best > parameters["rise"] * best
                    for v in (recent, val[-1]))
        if not (train_fell and risen):
            self._quiet("overfitting")
            return None
        return self._fire("overfitting", facts.epoch, None,
                          f"training loss fell {train[-1 - window]:.4f} -> {train[-1]:.4f} over {window} epochs while "
                          f"the validation loss (median {recent:.4f}) rose above its earlier best {best:.4f}")

    def _data_loader(self, facts: EpochFacts) -> str | None:
        parameters = self.verdicts["data_loader_starving"].parameters
        if facts.steps < parameters["min_steps"] or facts.step_seconds <= 0:
            return None
        share = facts.data_seconds / facts.step_seconds
        if share <= parameters["max_share"]:
            self._quiet("data_loader_starving")
            return None
        return self._fire("data_loader_starving", facts.epoch, None,
                          f"{share:.0%} of the epoch's step time ({facts.data_seconds:.2f} of "
                          f"{facts.step_seconds:.2f} s) was spent waiting for data")

    def _utilization(self, facts: EpochFacts) -> str | None:
        parameters = self.verdicts["low_utilization"].parameters
        if facts.utilization is None or facts.step_seconds < parameters["min_seconds"]:
            return None
        if facts.utilization >= parameters["min_share"]:
            self._quiet("low_utilization")
            return None
        return self._fire("low_utilization", facts.epoch, None,
                          f"{facts.utilization_source} busy {facts.utilization:.0%} of the epoch's training time")

    def _memory(self, facts: EpochFacts) -> str | None:
        parameters = self.verdicts["memory_near_limit"].parameters
        limit = int(parameters["limit_bytes"]) or facts.memory_limit_bytes
        if not limit or facts.peak_memory_bytes is None:
            return None
        source = "the limit_bytes parameter" if parameters["limit_bytes"] else facts.memory_source
        share = facts.peak_memory_bytes / limit
        if share <= parameters["max_fraction"]:
            self._quiet("memory_near_limit")
            return None
        return self._fire("memory_near_limit", facts.epoch, None,
                          f"peak memory {facts.peak_memory_bytes / 2**20:.0f} MiB is {share:.0%} of "
                          f"{limit / 2**20:.0f} MiB ({source})")


def _nan_high(value: float) -> float:
    # A NaN loss or norm must count as the worst value, not compare false everywhere.
    return math.inf if math.isnan(value) else value
