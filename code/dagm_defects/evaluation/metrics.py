"""Image-level metrics for binary defect classification, on scikit-learn.

``y_true`` holds 1 for a defective image and 0 for a good one; ``scores`` holds the model's
defect probability. An image is predicted defective when ``score >= threshold``, the same
convention as the thresholds that ``precision_recall_curve`` and ``roc_curve`` return.

The curves, AP and AUROC are ``sklearn.metrics``' own (tied scores form one operating
point, AP is the step-wise sum), so numbers compare with published results. This module
adds what scikit-learn leaves to the caller: inputs checked with errors that name the
problem, the decision threshold frozen from validation data, and JSON-ready summaries.
Only the training image installs scikit-learn; serving and the deploy tools never import
this module.

Single-class inputs, which happen for a class whose test split holds no defect:
``average_precision`` is NaN without positives (scikit-learn would answer 0.0, which reads
as a model that found nothing) and 1.0 without negatives, as every cut is then perfectly
precise; ``auroc`` is NaN whenever either class is missing, since no positive-negative
pair exists to rank. These cases return quietly: they are expected, not mistakes.
``summarize`` and ``curves`` turn NaN and infinity into ``None`` so their results go
straight into JSON.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from contextlib import contextmanager

import numpy as np
from numpy.typing import ArrayLike
from sklearn import metrics as sk
from sklearn.exceptions import UndefinedMetricWarning

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


@contextmanager
def _single_class_allowed():
    """Silence scikit-learn's warnings about a missing class: the docstrings define those cases."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        warnings.filterwarnings("ignore", "No positive class found", UserWarning)
        yield


def precision_recall_curve(
    y_true: ArrayLike, scores: ArrayLike
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision and recall at every distinct score: ``sklearn.metrics.precision_recall_curve``.

    ``thresholds`` increase; ``precision[i]`` and ``recall[i]`` belong to ``thresholds[i]``,
    and the last entries are the (precision 1, recall 0) end point that has no threshold.
    Without positives recall is 1 everywhere.
    """
    y, s = _validate(y_true, scores)
    with _single_class_allowed():
        return sk.precision_recall_curve(y, s)


def roc_curve(
    y_true: ArrayLike, scores: ArrayLike, drop_intermediate: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """False and true positive rates: ``sklearn.metrics.roc_curve``.

    ``thresholds`` decrease and start at ``inf`` for the (0, 0) point. ``drop_intermediate``
    removes points on straight segments, which change nothing in the plotted curve or its
    area. A rate whose class is absent is NaN throughout.
    """
    y, s = _validate(y_true, scores)
    with _single_class_allowed():
        return sk.roc_curve(y, s, drop_intermediate=drop_intermediate)


def average_precision(y_true: ArrayLike, scores: ArrayLike) -> float:
    """Step-wise AP, ``sum_n (R_n - R_{n-1}) P_n``: ``sklearn.metrics.average_precision_score``.

    NaN when there are no positives: there is no recall to average over.
    """
    y, s = _validate(y_true, scores)
    if not y.any():
        return math.nan
    return float(sk.average_precision_score(y, s))


def auroc(y_true: ArrayLike, scores: ArrayLike) -> float:
    """Area under the ROC curve: ``sklearn.metrics.roc_auc_score``.

    Equal to the share of positive-negative pairs ranked right, a tied pair counting one
    half. NaN when either class is missing.
    """
    y, s = _validate(y_true, scores)
    if y.all() or not y.any():
        return math.nan
    return float(sk.roc_auc_score(y, s))


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
    _, fps, _, tps, upper = sk.confusion_matrix_at_thresholds(y, s)
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
    tn, fp, fn, tp = (int(n) for n in sk.confusion_matrix(y, (s >= threshold).astype(np.int64),
                                                          labels=[0, 1]).ravel())
    return {"tp": tp, "fp": fp, "tn": tn, "fn": fn, **_ratios(tp, fp, tn, fn)}


def _ratios(tp: int, fp: int, tn: int, fn: int) -> dict:
    # scikit-learn's zero_division is one constant; the conventions above depend on the case.
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
