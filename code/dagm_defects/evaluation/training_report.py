"""A training job's report, as Debugger's training report was: ``report.json`` and a
self-contained ``report.html`` (inline CSS and PNGs, nothing fetched) with the rules'
verdicts, loss and metric curves, PR/ROC curves, the per-class table and where the step
time went.

    python -m dagm_defects.evaluation.training_report report.json   # re-render report.html
"""

from __future__ import annotations

import base64
import html
import json
import math
import sys
import tempfile
from pathlib import Path

from dagm_defects.evaluation import plots

REPORT_JSON = "report.json"
REPORT_HTML = "report.html"
PR_ROC_FILE = "pr_roc.png"
USAGE = "usage: python -m dagm_defects.evaluation.training_report REPORT_JSON"
# The keys the page reads; a JSON file without them is some other document.
REPORT_KEYS = ("job", "mlflow", "hyperparameters", "dataset", "epochs", "rules", "profile", "evaluation", "curves")
LOSS_KEYS = ("train_loss", "seg_loss", "dec_loss", "val_loss")
SCORE_KEYS = ("val_ap", "val_auroc")
# Rule statuses mapped to CSS classes, so a status is never written into markup as it came.
STATUS_CLASSES = {"fired": "fired", "quiet": "quiet", "not evaluated": "not-evaluated"}
_STYLE = """body{font:14px/1.4 system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;
vertical-align:top}th{background:#f3f3f3}.fired{color:#b00;font-weight:bold}.quiet{color:#070}
.not-evaluated{color:#888}img{max-width:100%}code{font-size:12px}"""


def _strict(value):
    """NaN and infinity become null, so the file is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(v) for v in value]
    return value


def _e(value) -> str:
    if isinstance(value, (dict, list)):
        value = json.dumps(value, separators=(",", ":"), sort_keys=True)
    return html.escape("n/a" if value is None else str(value))


def _num(value, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _percent(share: float | None) -> str:
    return "n/a" if share is None else f"{100 * share:.1f} %"


def _bytes(count: int | None) -> str:
    if count is None:
        return "n/a"
    # Binary units: memory limits are set in them, so a 16 GiB limit reads as 16.0, not 17.2.
    return f"{count / 2**30:.2f} GiB" if count >= 2**30 else f"{count / 2**20:.0f} MiB"


def _png(draw, alt: str) -> str:
    """An inline <img> of the figure `draw(path)` writes; plot_pr_roc only writes to a path."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "figure.png"
        draw(path)
        data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _table(header: list[str], rows: list[list[str]]) -> str:
    """Cells are HTML already (escaped by the caller), so they may hold markup of our own."""
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _key_values(facts: dict | None) -> str:
    return _table(["", ""], [[_e(k), _e(v)] for k, v in (facts or {}).items()])


# ---------------------------------------------------------------- figures


def _draw_curves(epochs: list[dict], path: Path) -> None:
    plt = plots._pyplot()
    fig, (losses, scores) = plt.subplots(1, 2, figsize=(10, 3.5), layout="constrained")
    try:
        _plot_series(losses, epochs, LOSS_KEYS)
        _plot_series(scores, epochs, SCORE_KEYS)
        losses.set(title="losses", xlabel="epoch", yscale="log" if _spans_decades(epochs) else "linear")
        scores.set(title="validation", xlabel="epoch", ylim=(0, 1.02))
        plots._save(fig, path)
    finally:
        plt.close(fig)


def _plot_series(ax, epochs: list[dict], keys: tuple[str, ...]) -> None:
    """One line per key over the epochs that have a value; markers so one epoch still shows."""
    for key in keys:
        points = [(e["epoch"], e[key]) for e in epochs if e.get(key) is not None]
        if points:
            ax.plot(*zip(*points), marker="o", label=key)
    from matplotlib.ticker import MaxNLocator

    # Whole epochs only: a fractional tick would suggest a measurement between them. One tick
    # is allowed, or a single epoch's axis falls back to ticks at 0.96, 0.98, ...
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="best", fontsize=8)


def _spans_decades(epochs: list[dict]) -> bool:
    values = [e[k] for e in epochs for k in ("train_loss", "val_loss") if e.get(k)]
    return bool(values) and max(values) / max(min(values), 1e-12) > 100


def _draw_profile(seconds: dict[str, float], path: Path) -> None:
    plt = plots._pyplot()
    fig, ax = plt.subplots(figsize=(8, 2.2), layout="constrained")
    try:
        names = list(seconds)
        ax.barh(names, [seconds[n] for n in names], color="tab:blue")
        ax.invert_yaxis()
        ax.set(xlabel="seconds", title="where the training steps' time went")
        plots._save(fig, path)
    finally:
        plt.close(fig)


# ---------------------------------------------------------------- sections


def _header(report: dict) -> str:
    job, run = report["job"], report.get("mlflow") or {}
    rows = [["job", _e(job["name"])], ["status", _e(job["status"])], ["started (UTC)", _e(job["started_utc"])],
            ["finished (UTC)", _e(job["finished_utc"])], ["seconds", _num(job["seconds"], 1)],
            ["device", _e(job["device"])]]
    if job.get("failure_reason"):
        rows.append(["failure reason", _e(job["failure_reason"])])
    for key, label in (("run_id", "MLflow run"), ("experiment", "MLflow experiment"), ("tracking_uri", "tracking URI")):
        if run.get(key):
            rows.append([label, _e(run[key])])
    return _table(["", ""], rows)


def _when(rule: dict) -> str:
    parts = [f"{name} {rule[name]}" for name in ("epoch", "step") if rule.get(name) is not None]
    return " ".join(parts) or "n/a"


def _rule_row(rule: dict) -> list[str]:
    css = STATUS_CLASSES.get(rule["status"], "not-evaluated")
    return [f"<b>{_e(rule['name'])}</b><br><small>{_e(rule.get('description'))}</small>",
            f'<span class="{css}">{_e(rule["status"])}</span>',
            "yes" if rule["stops_job"] else "no",
            _e(_when(rule)), _e(rule.get("evidence") or ""), f"<code>{_e(rule.get('parameters') or {})}</code>"]


def _rules(rules: list[dict]) -> str:
    fired = sum(rule["status"] == "fired" for rule in rules)
    return (f"<p>{fired} of {len(rules)} rules fired.</p>"
            + _table(["rule", "status", "stops the job", "when", "evidence", "parameters"],
                     [_rule_row(rule) for rule in rules]))


def _training_curves(epochs: list[dict]) -> str:
    if not epochs:
        return "<p>No epoch finished.</p>"
    return _png(lambda path: _draw_curves(epochs, path), "losses and validation metrics per epoch")


def _evaluation(report: dict, figures: Path | None) -> str:
    summary = report.get("evaluation")
    if not summary:
        return "<p>No evaluation: the job stopped before it.</p>"
    parts = []
    drawn = figures / PR_ROC_FILE if figures else None
    if drawn and drawn.is_file():
        # The job's evaluation drew these curves already (evaluation/report.py): the same
        # figure, without drawing it twice.
        data = base64.b64encode(drawn.read_bytes()).decode("ascii")
        parts.append(f'<img alt="precision-recall and ROC curves" src="data:image/png;base64,{data}">')
    elif report.get("curves"):
        parts.append(_png(lambda path: plots.plot_pr_roc(report["curves"], path), "precision-recall and ROC curves"))
    blocks = [*summary["per_class"].items(), ("all", summary["overall"])]
    rows = [[_e(name), _e(b["n"]), _e(b["n_defective"]),
             *(_num(b.get(k)) for k in ("ap", "auroc", "accuracy", "precision", "recall"))] for name, b in blocks]
    if summary.get("supervision"):
        parts.append(f"<p>Supervision {_e(summary['supervision']['description'])}.</p>")
    parts.append(f"<p>Decision threshold {_num(summary['threshold'])}; {_e(summary.get('source', 'test set'))}.</p>")
    parts.append(_table(["class", "n", "defective", "AP", "AUROC", "accuracy", "precision", "recall"], rows))
    if summary.get("threshold_choice"):
        parts.append(_threshold(summary["threshold_choice"], summary.get("at_threshold")))
    return "".join(parts)


def _outcome(point: dict) -> list[str]:
    return [f"{_e(point['false_rejects'])} of {_e(point['good'])} ({_percent(point['false_reject_rate'])})",
            f"{_e(point['escapes'])} of {_e(point['defective'])}", _percent(point["recall"])]


def _threshold(choice: dict, test: dict | None) -> str:
    """How the threshold was set, and the other points a quality engineer could pick."""
    parts = [f"<h3>Threshold</h3><p>At most {_percent(choice['max_false_reject'])} of good images rejected, "
             f"set on {_e(choice['source'])}.</p>"]
    parts += [f"<p><b>Note:</b> {_e(note)}.</p>" for note in choice["notes"]]
    rows = [["chosen, on the images that set it", _num(choice["threshold"], 4), *_outcome(choice["at_threshold"])]]
    if test:
        rows.append(["chosen, on the test images", _num(test["threshold"], 4), *_outcome(test)])
    rows += [[f"budget {_percent(point['max_false_reject'])}", _num(point["threshold"], 4), *_outcome(point)]
             for point in choice["operating_points"]]
    return parts[0] + "".join(parts[1:]) + _table(["operating point", "threshold", "false rejects", "escapes",
                                                   "recall"], rows)


def _profile(profile: dict) -> str:
    seconds = profile["seconds"]
    total = sum(seconds.values())
    rows = [[_e(k), _num(v, 2), _percent(v / total if total else None)] for k, v in seconds.items()]
    facts = [["steps", _e(profile["steps"])], ["device", _e(profile["device"])],
             ["CPU utilisation (whole job)", _percent(profile.get("cpu_utilization"))],
             ["peak memory", _bytes(profile.get("peak_memory_bytes"))],
             ["memory limit", _bytes(profile.get("memory_limit_bytes"))]]
    if profile.get("gpu_busy_share") is not None:
        facts.append(["GPU busy", _percent(profile["gpu_busy_share"])])
    # Without a step every bar is zero: a figure would say nothing the table does not.
    figure = _png(lambda path: _draw_profile(seconds, path), "seconds per step phase") if total else ""
    return figure + _table(["phase", "seconds", "share"], rows) + _table(["", ""], facts)


def render_html(report: dict, figures: Path | None = None) -> str:
    """The page for a report as ``write_training_report`` stores it (NaN already null);
    `figures` is a folder that may hold the evaluation's pr_roc.png."""
    sections = [
        ("Training job", _header(report)), ("Rules", _rules(report["rules"])),
        ("Training curves", _training_curves(report["epochs"])), ("Evaluation", _evaluation(report, figures)),
        ("Profile", _profile(report["profile"])), ("Dataset", _key_values(report["dataset"])),
        ("Hyperparameters", _key_values(report["hyperparameters"])),
    ]
    body = "".join(f"<h2>{_e(title)}</h2>{content}" for title, content in sections)
    return (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>Training report: {_e(report['job']['name'])}"
            f"</title><style>{_STYLE}</style></head><body><h1>Training report</h1>{body}</body></html>\n")


def write_training_report(out_dir: str | Path, report: dict) -> tuple[Path, Path]:
    """Write ``report.json`` (strict JSON) and ``report.html`` into ``out_dir``; their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = _strict(report)
    json_path, html_path = out_dir / REPORT_JSON, out_dir / REPORT_HTML
    json_path.write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
    html_path.write_text(render_html(report, out_dir))
    return json_path, html_path


def _read_report(path: Path) -> dict:
    try:
        report = json.loads(path.read_text())
    except OSError as exc:
        # strerror alone: the OS's message would name the file a second time.
        raise ValueError(f"{path} cannot be read as a training report: {exc.strerror or exc}") from exc
    except ValueError as exc:
        raise ValueError(f"{path} cannot be read as a training report: {exc}") from exc
    missing = [key for key in REPORT_KEYS if key not in report] if isinstance(report, dict) else ["all"]
    if missing:
        raise ValueError(f"{path} is not a training report: it lacks {', '.join(missing)}")
    return report


def main(argv: list[str] | None = None) -> int:
    """Render report.html next to the given JSON file; the JSON itself is left as it is."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print(USAGE, file=sys.stderr)
        return 64
    path = Path(args[0])
    try:
        report = _read_report(path)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    (path.parent / REPORT_HTML).write_text(render_html(_strict(report), path.parent))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
