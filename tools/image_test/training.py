"""The training image run as SageMaker runs it: a tiny synthetic job, and a bad
hyperparameter."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from image_test.engines import REPO, Engine, wait_for
from image_test.steps import check, log, run

TINY_HPS = {"epochs": "2", "batch_size": "8", "image_size": "128", "data_workers": "1"}


def tiny_job(work: Path, hyperparameters: dict[str, str]) -> tuple[Path, list[tuple[Path, str, bool]]]:
    """An /opt/ml job tree (local_test/opt_ml_layout.py) with its channels as mounts."""
    data = work / "data"
    if not data.exists():
        run([sys.executable, "-m", "dagm_synth", "--classes", "1", "--images-per-split", "16",
             "--size", "128", "--seed", "3", "--workers", "1", str(data)], quiet=True)
    job = Path(tempfile.mkdtemp(prefix="opt_ml-", dir=work))
    run([sys.executable, str(REPO / "local_test" / "opt_ml_layout.py"), str(data), str(job),
         json.dumps(hyperparameters)], quiet=True)
    mounts = [(job, "/opt/ml", False)]
    for link in sorted((job / "input" / "data").iterdir()):
        mounts.append((link.resolve(), f"/opt/ml/input/data/{link.name}", True))
        link.unlink()
        link.mkdir()
    return job, mounts


def test_train(engine: Engine, work: Path) -> Path:
    job, mounts = tiny_job(work, TINY_HPS)
    code = wait_for(engine, "train", engine.start("train", ["train"], env={}, mounts=mounts), 1800)
    check(code == 0, f"train exited {code}: {(job / 'output' / 'failure').read_text()[:2000] if (job / 'output' / 'failure').exists() else ''}")
    for name in ("model.pt", "model.json"):
        check((job / "model" / name).is_file(), f"train wrote no model/{name}")
    evaluation = job / "output" / "data" / "evaluation.json"
    check(evaluation.is_file(), "train wrote no output/data/evaluation.json")
    report = json.loads(evaluation.read_text())
    # The job's MLflow run in its embedded store, and the training report beside it.
    record = job / "output" / "data" / "mlflow" / "run.json"
    check(record.is_file() and json.loads(record.read_text())["run_id"] and json.loads(record.read_text())["warning"] is None,
          f"train left no complete MLflow run ({record.read_text()[:500] if record.exists() else 'no run.json'})")
    for name in ("report.html", "report.json"):
        check((job / "output" / "data" / name).is_file(), f"train wrote no output/data/{name}")
    log(f"   train: exit 0, model.pt and model.json, evaluation.json ({', '.join(sorted(report)[:6])}, ...), "
        f"MLflow run {json.loads(record.read_text())['run_id']}, report.html")
    return job / "model"


def test_failing_train(engine: Engine, work: Path) -> None:
    job, mounts = tiny_job(work, {**TINY_HPS, "epochs": "many"})
    code = wait_for(engine, "train", engine.start("train", ["train"], env={}, mounts=mounts), 600)
    failure = job / "output" / "failure"
    check(code != 0, "train with epochs='many' exited 0")
    check(failure.is_file() and "epochs" in failure.read_text(),
          f"train with epochs='many' wrote no output/failure naming it ({failure.read_text()[:500] if failure.exists() else 'absent'})")
    log(f"   failing train: exit {code}, output/failure: {failure.read_text().strip().splitlines()[0][:160]}")
