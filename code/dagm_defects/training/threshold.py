"""The served threshold: set from a false-reject budget on held-out good images, then
checked against every held-out defect.

Held-out good images are plentiful and held-out defects few: a cut tuned on five
validation defects (best F1) lands wherever those five happen to score, and on real
photographs passed every second unseen defect. A plant states what it can afford instead:
reject at most `max_false_reject` of good parts. The cut sits above the good images' score
tail that the budget allows, halfway (in log-odds) to the next score above it, so an
unseen good image slightly above the tail is not rejected for nothing. The recall behind
it is reported with its count, and a table of other budgets shows the trade-off, for a
quality engineer who wants another point.

Training images are fitted, so their good scores run low: a cut among them would reject
more unseen good parts than the budget says. Held-out good images alone set it; when they
are too few to resolve the budget (fewer than 1 / max_false_reject), the cut rejects none
of them and the report says so. With fewer than MIN_DEFECTS held-out defects, the training
images' defects join the recall check, said too.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

MIN_DEFECTS = 10
BUDGETS = (0.001, 0.005, 0.01, 0.02, 0.05, 0.1)
# Log-odds above the highest allowed good score when no score lies above it: e (2.7x) times
# the odds of that score.
_OPEN_MARGIN = 1.0
_EPS = 1e-7


def _logit(p: np.ndarray | float) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), _EPS, 1 - _EPS)
    return np.log(p) - np.log1p(-p)


def _sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


def cut_for_budget(good: np.ndarray, others: np.ndarray, budget: float) -> float:
    """The threshold that rejects at most floor(budget * len(good)) of `good` scores, placed
    halfway in log-odds to the next higher score among `good` and `others`."""
    good = np.sort(np.asarray(good, dtype=np.float64))[::-1]
    if good.size == 0:
        return 0.5
    allowed = int(math.floor(budget * good.size + 1e-9))
    if allowed >= good.size:
        return float(np.clip(good[-1], 0.0, 1.0))
    tail = good[allowed]
    above = np.concatenate([good[:allowed], np.asarray(others, dtype=np.float64)])
    above = above[above > tail]
    low = float(_logit(tail))
    high = float(_logit(above.min())) if above.size else low + 2 * _OPEN_MARGIN
    cut = _sigmoid(min((low + high) / 2, low + _OPEN_MARGIN))
    # At the top of a saturated range the midpoint can round onto the tail score itself.
    return float(np.nextafter(tail, 1.0)) if cut <= tail else cut


def _rates(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict:
    good, defective = scores[labels == 0], scores[labels == 1]
    false_rejects, escapes = int((good >= threshold).sum()), int((defective < threshold).sum())
    return {
        "threshold": round(float(threshold), 6),
        "good": int(good.size), "false_rejects": false_rejects,
        "false_reject_rate": false_rejects / good.size if good.size else None,
        "defective": int(defective.size), "escapes": escapes,
        "recall": (defective.size - escapes) / defective.size if defective.size else None,
    }


@dataclass
class ThresholdChoice:
    threshold: float
    max_false_reject: float
    # Which images set and checked it, and their counts and outcomes at the threshold.
    source: str
    at_threshold: dict
    operating_points: list[dict]
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def choose_threshold(validation: tuple[np.ndarray, np.ndarray], max_false_reject: float,
                     training: tuple[np.ndarray, np.ndarray] | None = None) -> ThresholdChoice:
    """The threshold for `max_false_reject` from (labels, scores) of the held-out images;
    `training` (labels, scores) joins where the held-out set is too small (see
    `needs_training_scores`)."""
    labels, scores = (np.asarray(a) for a in validation)
    good, defective = scores[labels == 0], scores[labels == 1]
    notes: list[str] = []
    sources = ["held-out validation images"]
    if good.size < math.ceil(1 / max_false_reject - 1e-9):
        notes.append(f"only {good.size} held-out good images: too few to resolve a {max_false_reject:.1%} "
                     f"false-reject budget, so the threshold rejects none of them (the least they can show "
                     f"is 1 in {good.size + 1})")
    if training is not None:
        t_labels, t_scores = (np.asarray(a) for a in training)
        # Fitted scores flatter the good side, so training good images set the cut only
        # when no held-out good image exists; their defects only widen the recall check.
        if good.size == 0:
            good = t_scores[t_labels == 0]
            notes.append("no held-out good image: the training images' good scores set the threshold")
        if defective.size < MIN_DEFECTS:
            notes.append(f"only {defective.size} held-out defective images: the training images' defects "
                         "join the recall check")
            defective = np.concatenate([defective, t_scores[t_labels == 1]])
        sources.append("training images")
    elif defective.size < MIN_DEFECTS:
        notes.append(f"only {defective.size} held-out defective images: recall from so few is not to be trusted")
    checked_labels = np.r_[np.zeros(good.size, np.int64), np.ones(defective.size, np.int64)]
    checked = np.r_[good, defective]
    threshold = cut_for_budget(good, defective, max_false_reject)
    points = [{"max_false_reject": b, **_rates(checked_labels, checked, cut_for_budget(good, defective, b))}
              for b in sorted({*BUDGETS, max_false_reject})]
    return ThresholdChoice(threshold, max_false_reject, " and ".join(sources),
                           _rates(checked_labels, checked, threshold), points, notes)


def needs_training_scores(labels: np.ndarray) -> bool:
    """Whether the held-out set has no good image or too few defects for the recall check."""
    labels = np.asarray(labels)
    return not (labels == 0).any() or int((labels == 1).sum()) < MIN_DEFECTS


def rates_at(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict:
    """Counts and rates of `labels`/`scores` at `threshold` (the test set's, for the report)."""
    return _rates(np.asarray(labels), np.asarray(scores), threshold)
