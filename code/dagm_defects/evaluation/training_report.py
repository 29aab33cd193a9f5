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


def _png(draw) -> str:
    """An <img> of the figure `draw(path)` writes."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "figure.png"
        draw(path)
        data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="" src="data:image/png;base64,{data}">'


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _draw_curves(epochs: list[dict], path: Path) -> None:
    plt = plots._pyplot()
    fig, (losses, scores) = plt.subplots(1, 2, figsize=(10, 3.5))
    x = [e["epoch"] for e in epochs]
    for key in ("train_loss", "seg_loss", "dec_loss", "val_loss"):
        points = [(xi, e.get(key)) for xi, e in zip(x, epochs) if e.get(key) is not None]
        if points:
            losses.plot(*zip(*points), marker="o", label=key)
    for key in ("val_ap", "val_auroc"):
        points = [(xi, e.get(key)) for xi, e in zip(x, epochs) if e.get(key) is not None]
        if points:
            scores.plot(*zip(*points), marker="o", label=key)
    losses.set(title="losses", xlabel="epoch", yscale="log" if _spans_decades(epochs) else "linear")
    scores.set(title="validation", xlabel="epoch", ylim=(0, 1.02))
    for ax in (losses, scores):
        ax.legend(loc="best", fontsize=8)
        ax.grid(alpha=0.3)
    plots._save(fig, path)
    plt.close(fig)


def _spans_decades(epochs: list[dict]) -> bool:
    values = [e[k] for e in epochs for k in ("train_loss", "val_loss") if e.get(k)]
    return bool(values) and max(values) / max(min(values), 1e-12) > 100


def _draw_profile(seconds: dict[str, float], path: Path) -> None:
    plt = plots._pyplot()
    fig, ax = plt.subplots(figsize=(8, 2.2))
    names = list(seconds)
    ax.barh(names, [seconds[n] for n in names], color="tab:blue")
    ax.invert_yaxis()
    ax.set(xlabel="seconds", title="where the training steps' time went")
    plots._save(fig, path)
    plt.close(fig)


def _header(report: dict) -> str:
    job, run = report["job"], report.get("mlflow") or {}
    rows = [["job", _e(job["name"])], ["status", _e(job["status"])], ["started (UTC)", _e(job["started_utc"])],
            ["finished (UTC)", _e(job["finished_utc"])], ["seconds", _num(job["seconds"], 1)],
            ["device", _e(job["device"])]]
    if job.get("failure_reason"):
        rows.append(["failure reason", _e(job["failure_reason"])])
    if run.get("run_id"):
        rows += [["MLflow run", _e(run["run_id"])], ["MLflow experiment", _e(run.get("experiment"))],
                 ["tracking URI", _e(run.get("tracking_uri"))]]
    return _table(["", ""], rows)


def _rules(rules: list[dict]) -> str:
    fired = sum(rule["status"] == "fired" for rule in rules)
    rows = [[f"<b>{_e(r['name'])}</b><br><small>{_e(r['description'])}</small>",
             f'<span class="{r["status"].replace(" ", "-")}">{_e(r["status"])}</span>',
             "yes" if r["stops_job"] else "no",
             _e(None if r["epoch"] is None else f"epoch {r['epoch']}" + (f" step {r['step']}" if r["step"] is not None
                                                                       else "")),
             _e(r["evidence"] or ""), f"<code>{_e(r['parameters'])}</code>"] for r in rules]
    return (f"<p>{fired} of {len(rules)} rules fired.</p>"
            + _table(["rule", "status", "stops the job", "when", "evidence", "parameters"], rows))


def _evaluation(report: dict) -> str:
    summary = report.get("evaluation")
    if not summary:
        return "<p>No evaluation: the job stopped before it.</p>"
    parts = []
    if report.get("curves"):
        parts.append(_png(lambda path: plots.plot_pr_roc(report["curves"], path)))
    blocks = [*summary["per_class"].items(), ("all", summary["overall"])]
    rows = [[_e(name), _e(b["n"]), _e(b["n_defective"]), *(_num(b.get(k)) for k in
             ("ap", "auroc", "accuracy", "precision", "recall"))] for name, b in blocks]
    parts.append(f"<p>Decision threshold {_num(summary['threshold'])}; {_e(summary.get('source', 'test set'))}.</p>")
    parts.append(_table(["class", "n", "defective", "AP", "AUROC", "accuracy", "precision", "recall"], rows))
    return "".join(parts)


def _profile(profile: dict) -> str:
    seconds = profile["seconds"]
    total = sum(seconds.values()) or 1.0
    rows = [[_e(k), _num(v, 2), f"{100 * v / total:.1f} %"] for k, v in seconds.items()]
    facts = [["steps", _e(profile["steps"])], ["device", _e(profile["device"])],
             ["CPU utilisation (whole job)", _e(None if profile.get("cpu_utilization") is None
                                                else f"{100 * profile['cpu_utilization']:.0f} %")],
             ["peak memory", _e(None if profile.get("peak_memory_bytes") is None
                                else f"{profile['peak_memory_bytes'] / 2**20:.0f} MiB")],
             ["memory limit", _e(None if profile.get("memory_limit_bytes") is None
                                 else f"{profile['memory_limit_bytes'] / 2**20:.0f} MiB")]]
    figure = _png(lambda path: _draw_profile(seconds, path)) if profile["steps"] else ""
    return figure + _table(["phase", "seconds", "share"], rows) + _table(["", ""], facts)


def render_html(report: dict) -> str:
    epochs = report["epochs"]
    curves = (_png(lambda path: _draw_curves(epochs, path)) if epochs else "<p>No epoch finished.</p>")
    kv = lambda d: _table(["", ""], [[_e(k), _e(v)] for k, v in (d or {}).items()])  # noqa: E731
    sections = [
        ("Training job", _header(report)), ("Rules", _rules(report["rules"])), ("Training curves", curves),
        ("Evaluation", _evaluation(report)), ("Profile", _profile(report["profile"])),
        ("Dataset", kv(report["dataset"])), ("Hyperparameters", kv(report["hyperparameters"])),
    ]
    body = "".join(f"<h2>{_e(title)}</h2>{content}" for title, content in sections)
    return (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>Training report: {_e(report['job']['name'])}"
            f"</title><style>{_STYLE}</style></head><body><h1>Training report</h1>{body}</body></html>\n")


def write_training_report(out_dir: str | Path, report: dict) -> tuple[Path, Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = _strict(report)
    json_path, html_path = out_dir / REPORT_JSON, out_dir / REPORT_HTML
    json_path.write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
    html_path.write_text(render_html(report))
    return json_path, html_path


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
        return 64
    path = Path(args[0])
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        print(f"error: {path} cannot be read as a training report: {exc}", file=sys.stderr)
        return 1
    write_training_report(path.parent, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
