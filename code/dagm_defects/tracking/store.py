"""A job's embedded MLflow store as a folder (``output/data/mlflow``: ``mlflow.db`` and
``artifacts/``), wherever it lies now.

The store records its artefact folder as an absolute path, the one the job wrote
(``/opt/ml/output/data/mlflow/artifacts`` in SageMaker). Once the job's ``output.tar.gz``
is unpacked elsewhere, :func:`relocate` points the store at its own ``artifacts/`` again,
so ``mlflow ui`` shows the runs' files and ``dagm-runs upload`` finds them.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import sys
import tempfile
from importlib import metadata
from pathlib import Path
from urllib.parse import urlparse

DATABASE = "mlflow.db"
ARTIFACTS = "artifacts"
TEMPLATE_ENV = "DAGM_MLFLOW_TEMPLATE"


class StoreError(RuntimeError):
    """A folder that is not a job's MLflow store."""


def database(store_dir: str | Path) -> Path:
    path = Path(store_dir) / DATABASE
    if not path.is_file():
        raise StoreError(f"{store_dir} holds no MLflow store (no {DATABASE}): give a job's output/data/mlflow directory")
    return path.resolve()


def store_uri(store_dir: str | Path) -> str:
    return f"sqlite:///{database(store_dir)}"


def recorded_root(store_dir: str | Path) -> str | None:
    """The artefact folder the store's experiments name (the job's, until relocated)."""
    with sqlite3.connect(database(store_dir)) as db:
        row = db.execute("SELECT artifact_location FROM experiments WHERE artifact_location LIKE ? LIMIT 1",
                         (f"%/{ARTIFACTS}",)).fetchone()
    return row[0] if row else None


def relocate(store_dir: str | Path) -> int:
    """Point the store's experiments and runs at its own artefact folder; the number of
    rows changed (0 when it already does)."""
    old = recorded_root(store_dir)
    new = (Path(store_dir).resolve() / ARTIFACTS).as_uri()
    if old is None or old == new:
        return 0
    # MLflow's tracking API cannot move artefacts: these two columns are where its SQL
    # store keeps them (experiments.artifact_location, runs.artifact_uri).
    with sqlite3.connect(database(store_dir)) as db:
        changed = db.execute("UPDATE experiments SET artifact_location = ? WHERE artifact_location = ?",
                             (new, old)).rowcount
        changed += db.execute("UPDATE runs SET artifact_uri = ? || substr(artifact_uri, ?) WHERE artifact_uri LIKE ?",
                              (new, len(old) + 1, old + "/%")).rowcount
    return changed


def local_path(uri: str) -> Path:
    return Path(urlparse(uri).path)


def template_path() -> Path:
    """An empty store with MLflow's schema, made once per MLflow version (`make venv`, the
    training image's build): copying it saves each job MLflow's ~100 schema migrations,
    about 2 CPU-seconds."""
    default = Path(sys.prefix, "share", "dagm-defects", f"mlflow-{metadata.version('mlflow-skinny')}.db")
    return Path(os.environ.get(TEMPLATE_ENV) or default)


def make_template(path: Path) -> Path:
    from mlflow.tracking import MlflowClient

    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        MlflowClient(tracking_uri=f"sqlite:///{Path(tmp, DATABASE)}").search_experiments()
        shutil.copyfile(Path(tmp, DATABASE), path.with_name(path.name + ".tmp"))
    os.replace(path.with_name(path.name + ".tmp"), path)
    return path


def seed_from_template(store_dir: str | Path) -> bool:
    """Start a new store from the template when there is one; MLflow creates the schema
    itself otherwise (and checks a copied one is at its version either way)."""
    target, template = Path(store_dir) / DATABASE, template_path()
    if target.exists() or not template.is_file():
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(template, target)
    return True


def main(argv: list[str] | None = None) -> int:
    """python -m dagm_defects.tracking.store [PATH]: write the template store (default: template_path())."""
    args = sys.argv[1:] if argv is None else argv
    print(f"MLflow template store: {make_template(Path(args[0]) if args else template_path())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
