"""Copy a finished run from a job's embedded store to a tracking server: parameters,
tags, every metric's whole history, artefacts and end state. The job does it when it
ends; ``dagm-runs upload`` does it later for runs a server did not take.

MLflow cannot create a run under a given id, so the server's run gets a new one; both
runs name each other (tags ``dagm.local_run_id`` there, ``dagm.uploaded_to`` here), and
a run already on a server is not copied there twice.
"""

from __future__ import annotations

from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from dagm_defects.tracking.store import local_path

UPLOADED_TAG = "dagm.uploaded_to"
LOCAL_RUN_TAG = "dagm.local_run_id"
# MLflow's log_batch limits (REST API docs): 1000 metrics, 100 params, 100 tags a call.
_METRICS_PER_CALL, _PARAMS_PER_CALL = 1000, 100


def _chunks(items: list, size: int):
    for start in range(0, len(items), size):
        yield items[start:start + size]


def uploaded_run(source: MlflowClient, run_id: str, server_uri: str) -> str | None:
    """The server run a local run was copied to, or None."""
    for entry in source.get_run(run_id).data.tags.get(UPLOADED_TAG, "").split():
        uri, _, remote_id = entry.rpartition("#")
        if uri == server_uri:
            return remote_id
    return None


def copy_run(source: MlflowClient, run_id: str, server: MlflowClient, server_uri: str) -> str:
    """Copy run `run_id` of `source` to `server`; return the server's run id."""
    done = uploaded_run(source, run_id, server_uri)
    if done:
        return done
    run = source.get_run(run_id)
    experiment_name = source.get_experiment(run.info.experiment_id).name
    experiment = server.get_experiment_by_name(experiment_name)
    experiment_id = experiment.experiment_id if experiment else server.create_experiment(experiment_name)
    tags = {k: v for k, v in run.data.tags.items() if k != UPLOADED_TAG}
    remote = server.create_run(experiment_id, start_time=run.info.start_time,
                               tags={**tags, LOCAL_RUN_TAG: run_id}, run_name=run.info.run_name)
    remote_id = remote.info.run_id
    params = [Param(k, v) for k, v in run.data.params.items()]
    for chunk in _chunks(params, _PARAMS_PER_CALL):
        server.log_batch(remote_id, params=chunk)
    history = [Metric(m.key, m.value, m.timestamp, m.step)
               for key in sorted(run.data.metrics) for m in source.get_metric_history(run_id, key)]
    for chunk in _chunks(history, _METRICS_PER_CALL):
        server.log_batch(remote_id, metrics=chunk)
    artifacts = local_path(run.info.artifact_uri)
    if artifacts.is_dir() and any(artifacts.iterdir()):
        server.log_artifacts(remote_id, str(artifacts))
    server.set_terminated(remote_id, status=run.info.status, end_time=run.info.end_time)
    previous = run.data.tags.get(UPLOADED_TAG, "")
    source.set_tag(run_id, UPLOADED_TAG, f"{previous} {server_uri}#{remote_id}".strip())
    return remote_id


