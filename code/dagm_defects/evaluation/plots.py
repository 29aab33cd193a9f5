"""Report figures for an evaluation run: PR/ROC curves, confusion matrix, example masks.

Each function writes one PNG and returns its path. matplotlib is imported inside the
functions, with the non-interactive Agg backend, so importing this module costs nothing
and works on a headless training or serving container. The same inputs give the same bytes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

DPI = 100
OVERALL_COLOR = "black"
TRUE_MASK_COLOR = "lime"
CORRECT_COLOR = "tab:green"
WRONG_COLOR = "tab:red"
# Opacity of the predicted-probability overlay at probability 1: enough to see the
# defect region, little enough to still see the texture under it.
PRED_MAX_ALPHA = 0.7
ITEMS_PER_ROW = 4


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    return path


def _class_keys(blocks: dict) -> list[str]:
    """Class ids in numeric order, so class 10 follows class 9 rather than class 1."""
    return sorted(blocks, key=_numeric_first)


def _numeric_first(key: str) -> tuple:
    return (0, int(key), "") if key.isdigit() else (1, 0, key)


def _class_colors(keys: Sequence[str]) -> dict[str, tuple]:
    from matplotlib import colormaps

    # DAGM has 10 classes, which tab10 covers with colours that are all distinct.
    cmap = colormaps["tab10" if len(keys) <= 10 else "tab20"]
    return {key: cmap(i % cmap.N) for i, key in enumerate(keys)}


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _as_float_array(values: Sequence[float | None]) -> np.ndarray:
    return np.array([math.nan if v is None else v for v in values], dtype=float)


# ---------------------------------------------------------------- PR and ROC curves


def plot_pr_roc(curves_dict: dict, path: str | Path, title: str | None = None) -> Path:
    """Two panels, precision-recall and ROC, from ``metrics.curves``.

    One line per class and a thicker black line for all classes together; the legends give
    each line's AP or AUROC. A class with an undefined value (no defect or no good image)
    keeps its legend entry, marked n/a, without a line.
    """
    plt = _pyplot()
    fig, (ax_pr, ax_roc) = plt.subplots(1, 2, figsize=(13, 6.2), layout="constrained")
    try:
        _draw_pr(ax_pr, curves_dict)
        _draw_roc(ax_roc, curves_dict)
        fig.suptitle(title or "Image-level defect detection", fontsize=14)
        return _save(fig, path)
    finally:
        plt.close(fig)


def _curve_series(curves_dict: dict):
    """(label stem, block, line style) per class and then overall, in drawing order."""
    per_class = curves_dict.get("per_class", {})
    keys = _class_keys(per_class)
    colors = _class_colors(keys)
    for key in keys:
        style = {"color": colors[key], "linewidth": 1.4, "alpha": 0.9, "zorder": 3}
        yield f"class {key}", per_class[key], style
    # Drawn under the class lines, which it would otherwise hide where they coincide.
    overall = {"color": OVERALL_COLOR, "linewidth": 3.5, "alpha": 0.55, "zorder": 2}
    yield "all classes", curves_dict["overall"], overall


def _draw_pr(ax, curves_dict: dict) -> None:
    for stem, block, style in _curve_series(curves_dict):
        label = f"{stem}: AP {_fmt(block['ap'])}"
        if block["ap"] is None:
            ax.plot([], [], label=label, **style)
            continue
        recall = _as_float_array(block["recall"])
        precision = _as_float_array(block["precision"])
        ax.plot(recall, precision, drawstyle="steps-post", label=label, **style)
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="Recall (defects found)",
           ylabel="Precision (alarms that are defects)", title="Precision-recall")
    _finish_axes(ax, legend_loc="lower left")


def _draw_roc(ax, curves_dict: dict) -> None:
    ax.plot([0, 1], [0, 1], linestyle="--", color="0.6", linewidth=1, label="chance", zorder=1)
    for stem, block, style in _curve_series(curves_dict):
        label = f"{stem}: AUROC {_fmt(block['auroc'])}"
        if block["auroc"] is None:
            ax.plot([], [], label=label, **style)
            continue
        ax.plot(_as_float_array(block["fpr"]), _as_float_array(block["tpr"]), label=label, **style)
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="False positive rate (good images flagged)",
           ylabel="True positive rate (defects found)", title="ROC")
    _finish_axes(ax, legend_loc="lower right")


def _finish_axes(ax, legend_loc: str) -> None:
    ax.set_aspect("equal")
    ax.grid(True, alpha=0.3)
    ax.legend(loc=legend_loc, fontsize=8.5, framealpha=0.9)


# ---------------------------------------------------------------- confusion matrix


def plot_confusion(summary_dict: dict, path: str | Path, title: str | None = None) -> Path:
    """The overall 2x2 confusion matrix beside a per-class table, from ``metrics.summarize``.

    Cells show counts and their share of the true class (the row), shaded by that share,
    so a reader sees the miss and false-alarm rates without arithmetic.
    """
    plt = _pyplot()
    fig, (ax_matrix, ax_table) = plt.subplots(
        1, 2, figsize=(14, 5.2), layout="constrained", gridspec_kw={"width_ratios": [1, 1.9]}
    )
    try:
        _draw_matrix(ax_matrix, summary_dict)
        _draw_class_table(ax_table, summary_dict)
        fig.suptitle(title or f"Decisions at threshold {summary_dict['threshold']:.3f}",
                     fontsize=14)
        return _save(fig, path)
    finally:
        plt.close(fig)


def _draw_matrix(ax, summary_dict: dict) -> None:
    overall = summary_dict["overall"]
    counts = np.array([[overall["tn"], overall["fp"]], [overall["fn"], overall["tp"]]])
    row_totals = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, row_totals, out=np.zeros(counts.shape), where=row_totals > 0)
    ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    names = ("good", "defective")
    for (row, col), count in np.ndenumerate(counts):
        share = shares[row, col]
        ax.text(col, row, f"{count}\n{share:.1%} of {names[row]}", ha="center", va="center",
                fontsize=13, color="white" if share > 0.6 else "black")
    ax.set_xticks([0, 1], names)
    ax.set_yticks([0, 1], names)
    ax.set(xlabel="Predicted", ylabel="True",
           title=f"All classes: accuracy {overall['accuracy']:.1%}, "
                 f"recall {overall['recall']:.1%}, precision {overall['precision']:.1%}")
    ax.title.set_fontsize(10.5)


_TABLE_COLUMNS = ("class", "n", "defective", "TP", "FP", "TN", "FN",
                  "accuracy", "precision", "recall", "F1", "AP", "AUROC")


def _table_row(name: str, block: dict) -> list[str]:
    counts = [str(block[k]) for k in ("n", "n_defective", "tp", "fp", "tn", "fn")]
    ratios = [_fmt(block[k]) for k in ("accuracy", "precision", "recall", "f1", "ap", "auroc")]
    return [name, *counts, *ratios]


def _draw_class_table(ax, summary_dict: dict) -> None:
    per_class = summary_dict.get("per_class", {})
    keys = _class_keys(per_class)
    rows = [_table_row(key, per_class[key]) for key in keys]
    rows.append(_table_row("all", summary_dict["overall"]))
    ax.axis("off")
    table = ax.table(cellText=rows, colLabels=_TABLE_COLUMNS, loc="center", cellLoc="center")
    table.auto_set_font_size(False)
    table.set_fontsize(9.5)
    # Columns sized to their widest text, so headers like "precision" stay inside the cell.
    table.auto_set_column_width(list(range(len(_TABLE_COLUMNS))))
    table.scale(1, 1.45)
    _shade_table(table, rows)
    ax.set_title("Per class (errors in red)", fontsize=10.5)


def _shade_table(table, rows: list[list[str]]) -> None:
    fp_col, fn_col = _TABLE_COLUMNS.index("FP"), _TABLE_COLUMNS.index("FN")
    for col in range(len(_TABLE_COLUMNS)):
        table[0, col].set_facecolor("0.85")
        table[0, col].set_text_props(weight="bold")
        table[len(rows), col].set_text_props(weight="bold")
    for row, values in enumerate(rows, start=1):
        for col in (fp_col, fn_col):
            if values[col] != "0":
                table[row, col].set_facecolor("#f7c6c6")


# ---------------------------------------------------------------- example masks


def pick_examples(
    labels: Sequence[int], scores: Sequence[float], threshold: float, max_items: int
) -> list[int]:
    """Indices of at most ``max_items`` examples, mixing the four kinds of outcome.

    Takes caught defects, passed good images, false alarms and missed defects in turn, each
    in input order, so a grid shows both classes and both right and wrong decisions when
    they exist. The result is grouped by kind, in that order.
    """
    kinds = _outcome_kinds(labels, scores, threshold)
    queues = [[i for i, k in enumerate(kinds) if k == kind] for kind in range(4)]
    chosen: list[int] = []
    while len(chosen) < max_items and any(queues):
        for queue in queues:
            if queue and len(chosen) < max_items:
                chosen.append(queue.pop(0))
    return sorted(chosen, key=lambda i: (kinds[i], i))


def _outcome_kinds(labels: Sequence[int], scores: Sequence[float], threshold: float) -> list[int]:
    """0 caught defect, 1 passed good image, 2 false alarm, 3 missed defect."""
    kinds = []
    for label, score in zip(labels, scores):
        flagged = score >= threshold
        if label:
            kinds.append(0 if flagged else 3)
        else:
            kinds.append(2 if flagged else 1)
    return kinds


def plot_mask_grid(
    images: Sequence[np.ndarray],
    true_masks: Sequence[np.ndarray | None] | None,
    pred_masks: Sequence[np.ndarray | None],
    scores: Sequence[float],
    labels: Sequence[int],
    path: str | Path,
    threshold: float,
    titles: Sequence[str] | None = None,
    max_items: int = 16,
) -> Path:
    """A grid of test images, each as a pair: true defect outline and predicted probability.

    ``images`` are greyscale HxW arrays; ``true_masks`` the matching binary masks (``None``
    for all or for any good image); ``pred_masks`` probability maps in [0, 1] of any
    resolution, stretched over the image for display (``None`` where there is none).
    Each pair's heading gives the optional title, the true label, the score and the verdict
    at ``threshold``, in green when right and red when wrong. At most ``max_items`` are
    shown, chosen by ``pick_examples``.
    """
    n = _check_grid_inputs(images, true_masks, pred_masks, scores, labels, titles)
    if true_masks is None:
        true_masks = [None] * n
    chosen = pick_examples(labels, scores, threshold, max_items)
    plt = _pyplot()
    n_cols = min(ITEMS_PER_ROW, len(chosen))
    n_rows = math.ceil(len(chosen) / n_cols)
    fig = plt.figure(figsize=(4.6 * n_cols, 2.9 * n_rows + 0.6), layout="constrained")
    try:
        cells = fig.subfigures(n_rows, n_cols, squeeze=False).ravel()
        for cell, i in zip(cells, chosen):
            _draw_example(cell, images[i], true_masks[i], pred_masks[i], float(scores[i]),
                          int(labels[i]), threshold, titles[i] if titles else None)
        for cell in cells[len(chosen):]:
            cell.set_visible(False)
        fig.suptitle(f"Left: image, true defect outlined in green.   Right: predicted defect "
                     f"probability in red (more opaque = more likely).   Threshold "
                     f"{threshold:.3f}", fontsize=11)
        return _save(fig, path)
    finally:
        plt.close(fig)


def _check_grid_inputs(images, true_masks, pred_masks, scores, labels, titles) -> int:
    n = len(images)
    if n == 0:
        raise ValueError("plot_mask_grid needs at least one image")
    named = {"pred_masks": pred_masks, "scores": scores, "labels": labels}
    if true_masks is not None:
        named["true_masks"] = true_masks
    if titles is not None:
        named["titles"] = titles
    for name, values in named.items():
        if len(values) != n:
            raise ValueError(f"{name} has {len(values)} entries for {n} images")
    return n


def _draw_example(cell, image, true_mask, pred_mask, score, label, threshold, title) -> None:
    ax_true, ax_pred = cell.subplots(1, 2)
    image = np.asarray(image)
    _show_image(ax_true, image)
    _show_true_mask(ax_true, true_mask)
    _show_image(ax_pred, image)
    _show_pred_mask(ax_pred, pred_mask, image.shape[:2])
    flagged = score >= threshold
    right = flagged == bool(label)
    verdict = "defective" if flagged else "good"
    truth = "defective" if label else "good"
    heading = (f"true {truth}, score {score:.3f}\n"
               f"-> {verdict} ({'right' if right else 'WRONG'})")
    if title:
        heading = f"{title}\n{heading}"
    cell.suptitle(heading, fontsize=10, color=CORRECT_COLOR if right else WRONG_COLOR,
                  fontweight="normal" if right else "bold")


def _show_image(ax, image: np.ndarray) -> None:
    limits = {"vmin": 0, "vmax": 255} if image.dtype == np.uint8 else {}
    ax.imshow(image, cmap="gray", interpolation="antialiased", **limits)
    ax.set_axis_off()


def _show_true_mask(ax, mask: np.ndarray | None) -> None:
    if mask is None or not np.any(mask):
        return
    ax.contour(np.asarray(mask) > 0, levels=[0.5], colors=[TRUE_MASK_COLOR], linewidths=1.5)


def _show_pred_mask(ax, pred_mask: np.ndarray | None, shape: tuple[int, int]) -> None:
    if pred_mask is None:
        ax.text(0.5, 0.5, "no mask", transform=ax.transAxes, ha="center", color="white")
        return
    from matplotlib.colors import LinearSegmentedColormap

    height, width = shape
    # Transparent at 0 so low probabilities leave the image untouched.
    cmap = LinearSegmentedColormap.from_list(
        "defect_probability", [(1, 0, 0, 0), (1, 0, 0, PRED_MAX_ALPHA)]
    )
    # The extent stretches a coarse map over the image's pixel grid; bilinear
    # interpolation upsamples it smoothly rather than in visible blocks.
    ax.imshow(np.asarray(pred_mask, dtype=float), cmap=cmap, vmin=0, vmax=1,
              extent=(-0.5, width - 0.5, height - 0.5, -0.5), interpolation="bilinear")
