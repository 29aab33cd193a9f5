"""Image-level metrics for binary defect classification, in pure numpy.

``y_true`` holds 1 for a defective image and 0 for a good one; ``scores`` holds the model's
defect probability. An image is predicted defective when ``score >= threshold``, the same
convention as the thresholds that ``precision_recall_curve`` and ``roc_curve`` return.

The curve functions follow scikit-learn's semantics (tied scores form one operating point)
so numbers can be compared with published results; scikit-learn itself is not a dependency
of the images.

Single-class inputs, which happen for a class whose test split holds no defect:
``average_precision`` is NaN without positives (and 1.0 without negatives, as every cut
is then perfectly precise); ``auroc`` is NaN whenever either class is missing, since no
positive-negative pair exists to rank. ``summarize`` and ``curves`` turn NaN and infinity
into ``None`` so their results go straight into JSON.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike

# Returned when the validation data cannot inform a choice: the natural cut for a probability.
DEFAULT_THRESHOLD = 0.5

# F1 values of distinct cuts are ratios of small integers; ones that are equal on paper can
# differ in the last bit, and must still count as a tie.
_F1_TIE_TOLERANCE = 1e-12


def _validate(y_true: ArrayLike, scores: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true)
    s = np.asarray(scores, dtype=float)
    if y.ndim != 1:
        raise ValueError(f"y_true must be 1-D, got shape {y.shape}")
    if s.ndim != 1:
        raise ValueError(f"scores must be 1-D, got shape {s.shape}")
    if y.shape != s.shape:
        raise ValueError(f"y_true and scores differ in length: {y.size} labels, {s.size} scores")
    if y.size == 0:
        raise ValueError("y_true and scores are empty")
    bad = np.setdiff1d(np.unique(y), [0, 1])
    if bad.size:
        raise ValueError(f"y_true must hold only 0 and 1, found {bad[:5].tolist()}")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores must be finite, found NaN or infinity")
    return y.astype(np.int64), s


def _validate_groups(groups: Sequence[int] | ArrayLike, n: int) -> np.ndarray:
    g = np.asarray(groups)
    if g.ndim != 1:
        raise ValueError(f"groups must be 1-D, got shape {g.shape}")
    if g.size != n:
        raise ValueError(f"groups and y_true differ in length: {g.size} groups, {n} labels")
    if not _is_integral(g):
        raise ValueError(f"groups must be integer class ids, got {g.dtype} values")
    return g.astype(np.int64)


def _is_integral(values: np.ndarray) -> bool:
    if np.issubdtype(values.dtype, np.integer):
        return True
    # Ids that went through a float column (pandas, JSON) are still ids if whole.
    if np.issubdtype(values.dtype, np.floating):
        return bool(np.all(np.isfinite(values)) and np.all(values == np.round(values)))
    return False


def _binary_clf_curve(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """False and true positive counts at each distinct score, highest score first."""
    order = np.argsort(s, kind="mergesort")[::-1]
    s_sorted = s[order]
    # Only the last position of a run of equal scores is an attainable cut: a threshold
    # cannot separate images that scored the same.
    cut_ends = np.r_[np.flatnonzero(np.diff(s_sorted)), s.size - 1]
    tps = np.cumsum(y[order])[cut_ends]
    fps = 1 + cut_ends - tps
    return fps, tps, s_sorted[cut_ends]


def precision_recall_curve(
    y_true: ArrayLike, scores: ArrayLike
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision and recall at every distinct score, as ``sklearn.metrics.precision_recall_curve``.

    ``thresholds`` increase; ``precision[i]`` and ``recall[i]`` belong to ``thresholds[i]``,
    and the last entries are the (precision 1, recall 0) end point that has no threshold.
    Without positives recall is 1 everywhere, as in scikit-learn.
    """
    y, s = _validate(y_true, scores)
    fps, tps, thresholds = _binary_clf_curve(y, s)
    precision = tps / (tps + fps)
    recall = tps / tps[-1] if tps[-1] > 0 else np.ones(tps.shape)
    return np.r_[precision[::-1], 1.0], np.r_[recall[::-1], 0.0], thresholds[::-1]


def roc_curve(
    y_true: ArrayLike, scores: ArrayLike, drop_intermediate: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """False and true positive rates, as ``sklearn.metrics.roc_curve``.

    ``thresholds`` decrease and start at ``inf`` for the (0, 0) point. ``drop_intermediate``
    removes points on straight segments, which change nothing in the plotted curve or its
    area. A rate whose class is absent is NaN throughout.
    """
    y, s = _validate(y_true, scores)
    fps, tps, thresholds = _binary_clf_curve(y, s)
    if drop_intermediate and fps.size > 2:
        corner = np.logical_or(np.diff(fps, 2), np.diff(tps, 2))
        keep = np.flatnonzero(np.r_[True, corner, True])
        fps, tps, thresholds = fps[keep], tps[keep], thresholds[keep]
    fps = np.r_[0, fps]
    tps = np.r_[0, tps]
    thresholds = np.r_[np.inf, thresholds]
    return _rate(fps), _rate(tps), thresholds


def _rate(counts: np.ndarray) -> np.ndarray:
    if counts[-1] == 0:
        return np.full(counts.shape, np.nan)
    return counts / counts[-1]


def average_precision(y_true: ArrayLike, scores: ArrayLike) -> float:
    """Step-wise AP, ``sum_n (R_n - R_{n-1}) P_n``, as ``sklearn.metrics.average_precision_score``.

    NaN when there are no positives: there is no recall to average over.
    """
    y, s = _validate(y_true, scores)
    if not y.any():
        return math.nan
    precision, recall, _ = precision_recall_curve(y, s)
    return float(-np.sum(np.diff(recall) * precision[:-1]))


def auroc(y_true: ArrayLike, scores: ArrayLike) -> float:
    """Area under the ROC curve, the Mann-Whitney U statistic over ``n_pos * n_neg``.

    A tied positive-negative pair counts one half. NaN when either class is missing.
    """
    y, s = _validate(y_true, scores)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = _average_ranks(s)
    u = ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks in ascending order, tied values sharing the mean of their ranks."""
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_values)) + 1]
    stops = np.r_[starts[1:], values.size]
    ranks = np.empty(values.size)
    ranks[order] = np.repeat((starts + 1 + stops) / 2, stops - starts)
    return ranks


def choose_threshold(y_true: ArrayLike, scores: ArrayLike) -> float:
    """The decision threshold to freeze from validation data: best F1, then margins that
    follow each class's spread.

    Every threshold between two neighbouring distinct scores gives the same predictions, so
    F1 picks an interval rather than a number; should distinct cuts tie on F1, the widest
    interval wins, then the higher one. Within the interval the threshold divides it in
    proportion to the spread (standard deviation) of each class's scores: the class whose
    validation scores vary more is the likelier to have unseen members beyond the edge of
    what validation showed, so it gets the larger margin. Defects range from blatant to
    faint while good images of one surface look alike, so on DAGM the cut moves towards
    the good images: the recall margin that a small validation set needs (on genuine
    Class 8, a midpoint that 30 validation defects had set gave recall 0.79 on Test).

    Without positives or without negatives F1 cannot rank thresholds; the result is then
    ``DEFAULT_THRESHOLD`` (0.5). Scores must be probabilities; the result lies in [0, 1].
    """
    y, s = _validate(y_true, scores)
    if np.any((s < 0) | (s > 1)):
        raise ValueError("scores must be probabilities in [0, 1] to choose a threshold")
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == y.size:
        return DEFAULT_THRESHOLD
    fps, tps, upper = _binary_clf_curve(y, s)
    f1 = 2 * tps / (tps + fps + n_pos)
    # Below the lowest score lies the whole [0, lowest] interval, which predicts the same.
    lower = np.r_[upper[1:], 0.0]
    best = np.flatnonzero(f1 >= f1.max() - _F1_TIE_TOLERANCE)
    pick = best[np.argmax(upper[best] - lower[best])]
    negative_spread, positive_spread = float(s[y == 0].std()), float(s[y == 1].std())
    spread = negative_spread + positive_spread
    share = negative_spread / spread if spread > 0 else 0.5
    return _inside(float(lower[pick]), float(upper[pick]), share)


def _inside(lower: float, upper: float, share: float) -> float:
    """The point `share` of the way from `lower` to `upper`, strictly above `lower`."""
    point = lower + share * (upper - lower)
    # Near ``lower`` the point can round down to it, which would flip the images at
    # ``lower`` to defective; ``upper`` predicts exactly as intended.
    return point if point > lower else upper


def confusion(y_true: ArrayLike, scores: ArrayLike, threshold: float) -> dict:
    """Counts and ratios of ``score >= threshold`` against the truth.

    Conventions where a ratio has no denominator, chosen so that a model that raises no
    alarm on a set without defects scores perfectly and one that misses everything scores 0:
    precision without predicted positives is 1.0 if there are no positives, else 0.0;
    recall without positives is 1.0; F1 is 0.0 when precision and recall are both 0.
    """
    y, s = _validate(y_true, scores)
    if not math.isfinite(threshold):
        raise ValueError(f"threshold must be finite, got {threshold}")
    predicted = s >= threshold
    actual = y == 1
    tp = int(np.sum(predicted & actual))
    fp = int(np.sum(predicted & ~actual))
    tn = int(np.sum(~predicted & ~actual))
    fn = int(np.sum(~predicted & actual))
    return {"tp": tp, "fp": fp, "tn": tn, "fn": fn, **_ratios(tp, fp, tn, fn)}


def _ratios(tp: int, fp: int, tn: int, fn: int) -> dict:
    positives = tp + fn
    if tp + fp:
        precision = tp / (tp + fp)
    else:
        precision = 1.0 if positives == 0 else 0.0
    recall = tp / positives if positives else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "accuracy": (tp + tn) / (tp + fp + tn + fn),
        "precision": precision,
        "recall": recall,
        "f1": f1,
    }


def summarize(
    y_true: ArrayLike, scores: ArrayLike, groups: Sequence[int] | ArrayLike, threshold: float
) -> dict:
    """Ranking and thresholded metrics, overall and per class, ready for ``json.dump``.

    ``groups`` holds each image's class id. Per-class keys are the ids as strings, in
    numeric order. Undefined values (NaN AP or AUROC of a single-class subset) are ``None``.
    """
    y, s = _validate(y_true, scores)
    g = _validate_groups(groups, y.size)
    return {
        "threshold": float(threshold),
        "overall": _summary_block(y, s, threshold),
        "per_class": {
            str(c): _summary_block(y[g == c], s[g == c], threshold) for c in np.unique(g)
        },
    }


def _summary_block(y: np.ndarray, s: np.ndarray, threshold: float) -> dict:
    counts = confusion(y, s, threshold)
    block = {
        "n": int(y.size),
        "n_defective": int(y.sum()),
        "ap": average_precision(y, s),
        "auroc": auroc(y, s),
        **{k: counts[k] for k in ("accuracy", "precision", "recall", "f1")},
        **{k: counts[k] for k in ("tp", "fp", "tn", "fn")},
    }
    return {k: _finite_or_none(v) for k, v in block.items()}


def curves(y_true: ArrayLike, scores: ArrayLike, groups: Sequence[int] | ArrayLike) -> dict:
    """PR and ROC curves, overall and per class, as JSON-ready lists for ``plots.plot_pr_roc``.

    Returns ``{"overall": {...}, "per_class": {"1": {...}, ...}}``; each block holds ``n``,
    ``n_defective``, ``ap``, ``auroc``, ``precision``, ``recall``, ``pr_thresholds``,
    ``fpr``, ``tpr`` and ``roc_thresholds``. Non-finite entries (the ``inf`` first ROC
    threshold, rates of an absent class) are ``None``.
    """
    y, s = _validate(y_true, scores)
    g = _validate_groups(groups, y.size)
    return {
        "overall": _curve_block(y, s),
        "per_class": {str(c): _curve_block(y[g == c], s[g == c]) for c in np.unique(g)},
    }


def _curve_block(y: np.ndarray, s: np.ndarray) -> dict:
    precision, recall, pr_thresholds = precision_recall_curve(y, s)
    fpr, tpr, roc_thresholds = roc_curve(y, s)
    return {
        "n": int(y.size),
        "n_defective": int(y.sum()),
        "ap": _finite_or_none(average_precision(y, s)),
        "auroc": _finite_or_none(auroc(y, s)),
        "precision": _list_or_none(precision),
        "recall": _list_or_none(recall),
        "pr_thresholds": _list_or_none(pr_thresholds),
        "fpr": _list_or_none(fpr),
        "tpr": _list_or_none(tpr),
        "roc_thresholds": _list_or_none(roc_thresholds),
    }


def _finite_or_none(value: float | int) -> float | int | None:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _list_or_none(values: np.ndarray) -> list[float | None]:
    return [float(v) if math.isfinite(v) else None for v in values]
