"""``dagm-runs``: the training jobs' MLflow runs from a terminal.

    dagm-runs compare [--store DIR | --tracking-uri URI] [--experiment NAME] [--metric test_ap]
                      [--against RUN_ID] [--json]
    dagm-runs upload --store DIR --tracking-uri URI [--run-id ID]
    dagm-runs relocate --store DIR

``--store`` is a job's embedded store (``/opt/ml/output/data/mlflow``, also inside the
job's ``output.tar.gz``); without it, ``--tracking-uri`` or ``MLFLOW_TRACKING_URI`` names
the server. ``compare`` lists an experiment's runs side by side with their key figures
and marks the best by ``--metric`` (and the difference to ``--against``, say the run of
the model now serving); ``upload`` copies a store's runs to a server that missed them;
``relocate`` makes a store unpacked from a job's ``output.tar.gz`` find its files (upload
does it itself), so ``mlflow ui`` shows them.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from datetime import datetime, timezone
from pathlib import Path

from dagm_defects.tracking.settings import DEFAULT_EXPERIMENT, server_client
from dagm_defects.tracking.store import StoreError, relocate, store_uri

COLUMNS = ("val_ap", "test_ap", "test_auroc", "test_recall", "test_precision")
EXIT_ERROR = 1


class RunsError(RuntimeError):
    """What the command cannot do, in one line."""


def _store_uri(store: str) -> str:
    try:
        return store_uri(store)
    except StoreError as exc:
        raise RunsError(str(exc)) from None


def _client(store: str | None, tracking_uri: str | None):
    from mlflow.tracking import MlflowClient

    if store:
        return MlflowClient(tracking_uri=_store_uri(store)), _store_uri(store)
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        raise RunsError("give --store DIR or --tracking-uri URI (or set MLFLOW_TRACKING_URI)")
    return server_client(uri), uri


def _finite(value) -> float | None:
    return value if isinstance(value, (int, float)) and math.isfinite(value) else None


def run_rows(client, experiment: str) -> list[dict]:
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise RunsError(f"no experiment named {experiment!r} in this store")
    rows = []
    for run in client.search_runs([found.experiment_id], order_by=["attributes.start_time DESC"], max_results=1000):
        m = run.data.metrics
        end = run.info.end_time or 0
        rows.append({
            "run_id": run.info.run_id, "name": run.info.run_name, "status": run.info.status,
            "started_utc": datetime.fromtimestamp(run.info.start_time / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M"),
            "seconds": (end - run.info.start_time) / 1000 if end else None,
            "epochs": int(run.data.params.get("epochs", 0)) or None,
            **{key: _finite(m.get(key)) for key in COLUMNS},
            "rules_fired": run.data.tags.get("dagm.rules_fired", ""),
        })
    return rows


def mark_best(rows: list[dict], metric: str) -> str | None:
    scored = [row for row in rows if row.get(metric) is not None and row["status"] == "FINISHED"]
    best = max(scored, key=lambda row: (row[metric], row["started_utc"]), default=None)
    for row in rows:
        row["best"] = row is best
    return best["run_id"] if best else None


def _cell(value) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def format_rows(rows: list[dict], metric: str, against: dict | None) -> str:
    header = ["", "run", "name", "status", "started (UTC)", "epochs", *COLUMNS, "seconds", "rules fired"]
    if against:
        header.insert(-2, f"{metric} vs {against['run_id'][:8]}")
    table = [header]
    for row in rows:
        cells = ["*" if row["best"] else "", row["run_id"][:8], row["name"] or "", row["status"], row["started_utc"],
                 _cell(row["epochs"]), *(_cell(row[key]) for key in COLUMNS), _cell(row["seconds"] and round(row["seconds"])),
                 row["rules_fired"] or "-"]
        if against:
            delta = None if row.get(metric) is None or against.get(metric) is None else row[metric] - against[metric]
            cells.insert(-2, "-" if delta is None else f"{delta:+.3f}")
        table.append(cells)
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in table)


def compare(args) -> int:
    client, _ = _client(args.store, args.tracking_uri)
    rows = run_rows(client, args.experiment)
    if not rows:
        raise RunsError(f"experiment {args.experiment!r} has no runs")
    best = mark_best(rows, args.metric)
    against = None
    if args.against:
        against = next((row for row in rows if row["run_id"].startswith(args.against)), None)
        if against is None:
            raise RunsError(f"no run {args.against!r} in experiment {args.experiment!r}")
    if args.json:
        print(json.dumps({"experiment": args.experiment, "metric": args.metric, "best_run_id": best,
                          "against": against and against["run_id"], "runs": rows}, indent=2))
    else:
        print(format_rows(rows, args.metric, against))
        print(f"* best by {args.metric}" if best else f"no finished run has {args.metric}")
    return 0


def upload(args) -> int:
    from mlflow.tracking import MlflowClient

    from dagm_defects.tracking.transfer import copy_run

    source = MlflowClient(tracking_uri=_store_uri(args.store))
    relocate(args.store)  # a store unpacked from a job's output.tar.gz
    server = server_client(args.tracking_uri)
    if args.run_id:
        run_ids = [args.run_id]
    else:
        experiments = [e.experiment_id for e in source.search_experiments()]
        run_ids = [run.info.run_id for run in source.search_runs(experiments, max_results=1000)]
    if not run_ids:
        raise RunsError(f"{args.store} holds no runs")
    for run_id in run_ids:
        remote = copy_run(source, run_id, server, args.tracking_uri)
        print(f"{run_id} -> {args.tracking_uri} run {remote}")
    return 0


def relocate_store(args) -> int:
    _store_uri(args.store)
    where = Path(args.store).resolve() / "artifacts"
    print(f"{args.store}: runs now read their files from {where}" if relocate(args.store)
          else f"{args.store}: its runs already read their files from {where}")
    return 0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="dagm-runs", description=__doc__.splitlines()[0])
    commands = top.add_subparsers(dest="command", required=True)
    cmp = commands.add_parser("compare", help="an experiment's runs side by side, the best marked")
    cmp.add_argument("--store", help="a job's embedded store (output/data/mlflow)")
    cmp.add_argument("--tracking-uri", help="a tracking server (default: $MLFLOW_TRACKING_URI)")
    cmp.add_argument("--experiment", default=os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT)
    cmp.add_argument("--metric", default="test_ap", choices=COLUMNS, help="what 'best' means (higher is better)")
    cmp.add_argument("--against", help="a run id (or its start) to show each run's difference to")
    cmp.add_argument("--json", action="store_true", help="the rows as JSON")
    cmp.set_defaults(handler=compare)
    up = commands.add_parser("upload", help="copy a store's runs to a tracking server")
    up.add_argument("--store", required=True)
    up.add_argument("--tracking-uri", required=True)
    up.add_argument("--run-id", help="only this run")
    up.set_defaults(handler=upload)
    moved = commands.add_parser("relocate", help="point a store unpacked from a job's output.tar.gz at its own files")
    moved.add_argument("--store", required=True)
    moved.set_defaults(handler=relocate_store)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.handler(args)
    except RunsError as exc:
        print(f"dagm-runs: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except Exception as exc:  # a server that refuses or is away: say which, in one line
        where = getattr(args, "tracking_uri", None) or getattr(args, "store", None)
        print(f"dagm-runs: {args.command} failed against {where}: {type(exc).__name__}: "
              f"{str(exc).splitlines()[0] if str(exc) else ''}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    raise SystemExit(main())
