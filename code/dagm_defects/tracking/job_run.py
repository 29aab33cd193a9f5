"""A training job's MLflow run, written to the job's embedded store by a thread of its
own: the loop hands it parameters, metrics and files and never waits on MLflow (importing
it and creating the store take seconds), and nothing MLflow does can fail the job.

When the job ends, the run is closed and, with a tracking server configured, copied
there within a bounded time; a server that is down or slow costs a warning naming it,
and the run stays in the store for ``dagm-runs upload``.
"""

from __future__ import annotations

import json
import os
import queue
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from dagm_defects.progress import write_line
from dagm_defects.tracking.settings import TrackingSettings, server_client

# MLflow's REST API limits (log_batch): longer parameter values are cut, with a mark.
_PARAM_VALUE_LIMIT = 6000
_CLOSE_SECONDS = 120.0


@dataclass
class RunRecord:
    """What the job's outputs and the model's metadata say about the run."""

    run_id: str | None
    experiment: str
    store_uri: str
    server_uri: str | None = None
    server_run_id: str | None = None
    warning: str | None = None

    def to_dict(self) -> dict:
        return {"run_id": self.run_id, "experiment": self.experiment, "store_uri": self.store_uri,
                "tracking_uri": self.server_uri, "server_run_id": self.server_run_id, "warning": self.warning}


def _param_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"), sort_keys=True)
    return text if len(text) <= _PARAM_VALUE_LIMIT else text[: _PARAM_VALUE_LIMIT - 3] + "..."


class JobTracker:
    def __init__(self, settings: TrackingSettings) -> None:
        self.settings = settings
        self._tasks: queue.Queue[tuple[Callable, tuple] | None] = queue.Queue()
        self._created = threading.Event()
        self._client = None
        self._run_id: str | None = None
        self.failure: str | None = None
        self._thread = threading.Thread(target=self._work, name="mlflow-run", daemon=True)

    @classmethod
    def start(cls, settings: TrackingSettings, params: dict[str, Any], tags: dict[str, str]) -> "JobTracker":
        tracker = cls(settings)
        tracker._thread.start()
        tracker._submit(tracker._create, params, tags)
        return tracker

    def _submit(self, task: Callable, *args) -> None:
        self._tasks.put((task, args))

    def _work(self) -> None:
        while (item := self._tasks.get()) is not None:
            task, args = item
            if self.failure is None:
                try:
                    task(*args)
                except Exception as exc:  # tracking must never end a training job
                    self.failure = f"{type(exc).__name__}: {exc}"
                    write_line(f"warning: MLflow tracking stopped ({self.failure}); training goes on "
                               f"without it", sys.stderr)
            if task == self._create:
                self._created.set()

    def _create(self, params: dict[str, Any], tags: dict[str, str]) -> None:
        # Carriage-return progress bars do not belong in a job log.
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        from mlflow.tracking import MlflowClient

        from dagm_defects.tracking.store import seed_from_template

        settings = self.settings
        Path(settings.artifact_root).mkdir(parents=True, exist_ok=True)
        seed_from_template(settings.store_dir)
        client = MlflowClient(tracking_uri=settings.store_uri)
        experiment = client.get_experiment_by_name(settings.experiment)
        experiment_id = experiment.experiment_id if experiment else client.create_experiment(
            settings.experiment, artifact_location=Path(settings.artifact_root).as_uri())
        run = client.create_run(experiment_id, run_name=settings.run_name, tags=tags)
        self._client, self._run_id = client, run.info.run_id
        self._log_params(params)

    @property
    def run_id(self) -> str | None:
        """The local run's id once the run exists (waits for its creation, boundedly)."""
        self._created.wait(_CLOSE_SECONDS)
        return self._run_id

    def log_params(self, params: dict[str, Any]) -> None:
        self._submit(self._log_params, params)

    def _log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(key, _param_value(value)) for key, value in sorted(params.items())]
        for start in range(0, len(items), 100):
            self._client.log_batch(self._run_id, params=items[start:start + 100])

    def log_dataset(self, name: str, digest: str, source: str, profile: dict, context: str) -> None:
        """The data as MLflow's dataset input (the UI's "Datasets used")."""
        self._submit(self._log_dataset, name, digest, source, profile, context)

    def _log_dataset(self, name: str, digest: str, source: str, profile: dict, context: str) -> None:
        from mlflow.entities import Dataset, DatasetInput, InputTag

        dataset = Dataset(name=name, digest=digest, source_type="local", source=json.dumps({"uri": source}),
                          profile=json.dumps(profile))
        self._client.log_inputs(self._run_id, [DatasetInput(dataset, [InputTag("mlflow.data.context", context)])])

    def log_metrics(self, metrics: dict[str, float | None], step: int) -> None:
        timestamp = int(time.time() * 1000)
        self._submit(self._log_metrics, {k: v for k, v in metrics.items() if v is not None}, step, timestamp)

    def _log_metrics(self, metrics: dict[str, float], step: int, timestamp: int) -> None:
        from mlflow.entities import Metric

        self._client.log_batch(self._run_id, metrics=[Metric(k, float(v), timestamp, step) for k, v in metrics.items()])

    def set_tags(self, tags: dict[str, str]) -> None:
        self._submit(lambda: [self._client.set_tag(self._run_id, k, v) for k, v in tags.items()])

    def log_files(self, paths: list[Path], artifact_path: str | None = None) -> None:
        """Copies the files now (the job may change them later) and logs the copies."""
        staging = Path(tempfile.mkdtemp(prefix="mlflow-files-"))
        for path in paths:
            if path.is_file():
                (staging / path.name).write_bytes(path.read_bytes())
        self._submit(self._log_dir, staging, artifact_path)

    def _log_dir(self, directory: Path, artifact_path: str | None) -> None:
        self._client.log_artifacts(self._run_id, str(directory), artifact_path)

    def log_model(self, model_dir: Path, image_size: tuple[int, int]) -> None:
        self._submit(self._log_model, model_dir, image_size)

    def _log_model(self, model_dir: Path, image_size: tuple[int, int]) -> None:
        from dagm_defects.tracking.mlflow_model import save_mlflow_model

        with tempfile.TemporaryDirectory(prefix="mlflow-model-") as tmp:
            path = save_mlflow_model(Path(tmp, "model"), model_dir, image_size)
            self._client.log_artifacts(self._run_id, str(path), "model")

    def finish(self, status: str) -> RunRecord:
        """Close the run (FINISHED, FAILED or KILLED), upload it when a server is set, and
        write the job's record of it."""
        settings = self.settings
        self._submit(lambda: self._client.set_terminated(self._run_id, status=status))
        self._tasks.put(None)
        self._thread.join(_CLOSE_SECONDS)
        record = RunRecord(self._run_id, settings.experiment, settings.store_uri, settings.server_uri)
        if self.failure or self._thread.is_alive():
            record.warning = f"the run in {settings.store_uri} is incomplete: {self.failure or 'still writing'}"
        elif settings.server_uri:
            self._upload(record)
        Path(settings.store_dir).mkdir(parents=True, exist_ok=True)
        Path(settings.record_file).write_text(json.dumps(record.to_dict(), indent=2) + "\n")
        return record

    def _upload(self, record: RunRecord) -> None:
        settings = self.settings
        outcome: dict[str, Any] = {}

        def upload() -> None:
            try:
                from dagm_defects.tracking.transfer import copy_run

                server = server_client(settings.server_uri)
                outcome["run_id"] = copy_run(self._client, self._run_id, server, settings.server_uri)
            except Exception as exc:
                outcome["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"

        worker = threading.Thread(target=upload, name="mlflow-upload", daemon=True)
        worker.start()
        worker.join(settings.upload_seconds)
        if "run_id" in outcome:
            record.server_run_id = outcome["run_id"]
            write_line(f"MLflow run uploaded to {settings.server_uri}: run {record.server_run_id}")
            return
        why = outcome.get("error") or f"no answer within {settings.upload_seconds:g} s"
        record.warning = (f"the MLflow run was not uploaded to {settings.server_uri} ({why}); it is kept in "
                          f"{settings.store_dir}; upload it with: dagm-runs upload --store {settings.store_dir} "
                          f"--tracking-uri {settings.server_uri}")
        write_line(f"warning: {record.warning}", sys.stderr)
