"""Where a training job's MLflow run goes, read once from the job's environment.

Every job writes its run to an embedded store inside ``/opt/ml/output/data/mlflow``
(SQLite and an artefact folder: SageMaker uploads them with the job's output, and the
stock ``mlflow ui`` opens them). ``MLFLOW_TRACKING_URI`` names a server (a URL, or a
SageMaker managed MLflow tracking server's ARN through the sagemaker-mlflow plugin) the
finished run is then uploaded to, within ``DAGM_MLFLOW_UPLOAD_SECONDS``.
"""

from __future__ import annotations

import logging
import os
import subprocess
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

DEFAULT_EXPERIMENT = "dagm-defects"
STORE_DIR = "mlflow"
DEFAULT_UPLOAD_SECONDS = 120.0
# MLflow's own defaults (120 s a request, 7 retries with backoff) could hold a job's end
# for many minutes against a server that does not answer.
REQUEST_TIMEOUT_SECONDS = "10"
REQUEST_RETRIES = "2"


class TrackingConfigError(ValueError):
    """A tracking setting in the job's environment that cannot be used."""


@dataclass(frozen=True)
class TrackingSettings:
    enabled: bool
    store_dir: str
    experiment: str
    # The SageMaker training job's name (TRAINING_JOB_NAME); None for a job run by hand.
    job_name: str | None
    started_utc: str
    server_uri: str | None = None
    upload_seconds: float = DEFAULT_UPLOAD_SECONDS
    code_version: str = ""
    commit: str = ""
    image: str = ""

    @property
    def run_name(self) -> str:
        return self.job_name or f"local-{self.started_utc}"

    @property
    def store_uri(self) -> str:
        return f"sqlite:///{Path(self.store_dir, 'mlflow.db')}"

    @property
    def artifact_root(self) -> str:
        return str(Path(self.store_dir, "artifacts"))

    @property
    def record_file(self) -> Path:
        """What the job's outputs say about its run (ids, store, upload)."""
        return Path(self.store_dir, "run.json")

    def to_dict(self) -> dict:
        return asdict(self)


def _commit() -> str:
    """The image's build revision, else the checkout's HEAD when the code runs from one."""
    revision = os.environ.get("DAGM_REVISION", "")
    if revision and revision != "unknown":
        return revision
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                                text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return result.stdout.strip() if result.returncode == 0 else ""


def _upload_seconds() -> float:
    text = os.environ.get("DAGM_MLFLOW_UPLOAD_SECONDS", "")
    if not text:
        return DEFAULT_UPLOAD_SECONDS
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds <= 3600:
        raise TrackingConfigError(f"DAGM_MLFLOW_UPLOAD_SECONDS must be a number of seconds > 0 and <= 3600, "
                                  f"got {text!r}")
    return seconds


def tracking_settings(enabled: bool, output_data_dir: str, experiment: str | None, job_name: str | None,
                      started_utc: str) -> TrackingSettings:
    """The job's tracking settings; the hyperparameter `mlflow_experiment` wins over
    ``MLFLOW_EXPERIMENT_NAME``."""
    server = os.environ.get("MLFLOW_TRACKING_URI", "").strip() or None
    store_dir = str(Path(output_data_dir, STORE_DIR))
    if server and server.startswith(("sqlite:", "file:")) and store_dir in server:
        server = None  # pointing at the job's own store is no server
    return TrackingSettings(
        enabled=enabled,
        store_dir=store_dir,
        experiment=experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME", "").strip() or DEFAULT_EXPERIMENT,
        job_name=job_name or None,
        started_utc=started_utc,
        server_uri=server,
        upload_seconds=_upload_seconds(),
        code_version=metadata.version("dagm-defects"),
        commit=_commit() if enabled else "",
        image=os.environ.get("DAGM_IMAGE_URI", ""),
    )


def server_client(uri: str):
    """An MLflow client for a tracking server, with bounded requests (10 s, 2 retries,
    unless MLflow's own MLFLOW_HTTP_REQUEST_* are set)."""
    import mlflow
    from mlflow.tracking import MlflowClient

    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", REQUEST_TIMEOUT_SECONDS)
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", REQUEST_RETRIES)
    # The sagemaker-mlflow plugin takes its ARN header from the process-wide tracking URI,
    # not the client's, and for any other URI logs a failed header lookup on every request.
    mlflow.set_tracking_uri(uri)
    if not uri.startswith("arn:"):
        logging.getLogger("mlflow.tracking.request_header.registry").setLevel(logging.ERROR)
    return MlflowClient(tracking_uri=uri)
