"""``/opt/ml/output/data``: evaluation.json and the plots a person looks at first."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from dagm_defects.evaluation import metrics, plots

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
) -> dict:
    """Write the evaluation and its plots; return the summary that was written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = metrics.summarize(labels, scores, class_ids, threshold)
    summary["source"] = source
    summary["scores"] = {key: round(float(s), 6) for key, s in zip(keys, scores)}
    (out_dir / EVALUATION_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    plots.plot_pr_roc(metrics.curves(labels, scores, class_ids), out_dir / "pr_roc.png")
    plots.plot_confusion(summary, out_dir / "confusion.png")
    chosen = plots.pick_examples(labels, scores, threshold, max_items=16)
    plots.plot_mask_grid(
        [images[i] for i in chosen],
        [true_masks[i] * 255 if labels[i] else None for i in chosen],
        [seg_maps[i] for i in chosen],
        [float(scores[i]) for i in chosen],
        [int(labels[i]) for i in chosen],
        out_dir / "masks.png",
        threshold,
        titles=[keys[i] for i in chosen],
    )
    return summary
