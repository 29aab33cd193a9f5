"""``/opt/ml/output/data``: evaluation.json and the plots a person looks at first."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from dagm_defects.evaluation import metrics, pixel, plots

EVALUATION_FILE = "evaluation.json"


def write_report(
    out_dir: str | Path,
    labels: np.ndarray,
    scores: np.ndarray,
    class_ids: np.ndarray,
    threshold: float,
    images: np.ndarray,
    true_masks: np.ndarray,
    seg_maps: np.ndarray,
    keys: list[str],
    source: str,
    extra: dict | None = None,
    has_mask: np.ndarray | None = None,
    empty_masks: int = 0,
) -> dict:
    """Write the evaluation (plus `extra` keys) and its plots; return what was written.

    `has_mask`: per image, whether its pixel truth is known (a good image, or a defective
    one with a mask); None infers it from `true_masks`. `empty_masks`: how many defective
    images had an all-zero mask file, counted as image-level labels. Pixel metrics (the
    `pixel` block) cover only the images with pixel truth; `labels` says how many that is.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    known = pixel.known_pixels(labels, true_masks, has_mask)
    summary = metrics.summarize(labels, scores, class_ids, threshold)
    summary["source"] = source
    summary["labels"] = pixel.label_counts(labels, known, empty_masks)
    summary["pixel"] = pixel.pixel_metrics(labels, true_masks, seg_maps, known)
    summary["scores"] = {key: round(float(s), 6) for key, s in zip(keys, scores)}
    summary.update(extra or {})
    (out_dir / EVALUATION_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    plots.plot_pr_roc(metrics.curves(labels, scores, class_ids), out_dir / "pr_roc.png")
    plots.plot_confusion(summary, out_dir / "confusion.png")
    chosen = plots.pick_examples(labels, scores, threshold, max_items=16)
    # An image-level label has no outline to draw; its heading says why there is none.
    image_level = [bool(labels[i]) and not known[i] for i in chosen]
    plots.plot_mask_grid(
        [images[i] for i in chosen],
        [true_masks[i] * 255 if labels[i] and known[i] else None for i in chosen],
        [seg_maps[i] for i in chosen],
        [float(scores[i]) for i in chosen],
        [int(labels[i]) for i in chosen],
        out_dir / "masks.png",
        threshold,
        titles=[f"{keys[i]} (image-level label, no mask)" if level else keys[i]
                for i, level in zip(chosen, image_level)],
    )
    return summary


def format_table(summary: dict) -> str:
    """The per-class results as a fixed-width table for a terminal."""

    def fmt(value) -> str:
        return "   n/a" if value is None else f"{value:6.3f}"

    lines = [f"threshold {summary['threshold']:.3f}  ({summary.get('source', 'test set')})",
             "class      n  defect     AP  AUROC    acc   prec    rec"]
    blocks = [*summary["per_class"].items(), ("all", summary["overall"])]
    for name, b in blocks:
        lines.append(
            f"{name:>5} {b['n']:6d} {b['n_defective']:7d} {fmt(b['ap'])} {fmt(b['auroc'])} "
            f"{fmt(b['accuracy'])} {fmt(b['precision'])} {fmt(b['recall'])}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Print an evaluation.json as a table: python -m dagm_defects.evaluation.report FILE"""
    import sys

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print(main.__doc__, file=sys.stderr)
        return 64
    print(format_table(json.loads(Path(args[0]).read_text())))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
