"""Training jobs that really run: CreateTrainingJob lays out an /opt/ml tree (config files,
each channel's objects copied from the local S3), runs the training image's `train`
entry command on it (docker/entrypoint.sh train, from .venv), and uploads
`model/` as `S3OutputPath/JOB/output/model.tar.gz` (and `output/data` as
`output.tar.gz`), as SageMaker does. The job is `InProgress` meanwhile, then
`Completed`, or `Failed` with the first line of the job's failure file.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import tarfile
import threading
from pathlib import Path

from moto.s3.models import s3_backends

from local_aws.hosting import REPO

ENTRYPOINT = REPO / "docker" / "entrypoint.sh"
# CreateTrainingJob's Environment (the API's TrainingEnvironmentMap).
ENVIRONMENT_ITEMS, ENVIRONMENT_LENGTH = 100, 512
ENVIRONMENT_KEY = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
# What the container sees of this process's environment: a SageMaker host passes none of
# its own MLflow settings, only the job's Environment.
HOST_ONLY = ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME")


def environment_problem(environment: dict) -> str | None:
    """Why `environment` is not a valid Environment map, as SageMaker's validation says it."""
    if not isinstance(environment, dict):
        return "Environment must be a map of strings"
    if len(environment) > ENVIRONMENT_ITEMS:
        return f"Environment has {len(environment)} entries; at most {ENVIRONMENT_ITEMS} are allowed"
    for key, value in environment.items():
        if not ENVIRONMENT_KEY.fullmatch(key) or len(key) > ENVIRONMENT_LENGTH:
            return (f"Environment key '{key[:64]}' must match [a-zA-Z_][a-zA-Z0-9_]* and be at most "
                    f"{ENVIRONMENT_LENGTH} characters")
        if not isinstance(value, str) or len(value) > ENVIRONMENT_LENGTH:
            return f"Environment value of '{key}' must be a string of at most {ENVIRONMENT_LENGTH} characters"
    return None


def _split(uri: str) -> tuple[str, str]:
    bucket, _, key = uri[len("s3://"):].partition("/")
    return bucket, key


def _download(s3, uri: str, target: Path) -> int:
    bucket_name, prefix = _split(uri)
    count = 0
    for key in list(s3.get_bucket(bucket_name).keys.keys()):
        if key.startswith(prefix) and not key.endswith("/"):
            path = target / key[len(prefix):].lstrip("/") if key != prefix else target / Path(key).name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(s3.get_object(bucket_name, key).value)
            count += 1
    return count


def _tarball(directory: Path) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for path in sorted(directory.rglob("*")):
            if path.is_file():
                tar.add(path, arcname=path.relative_to(directory).as_posix())
    return out.getvalue()


def _layout(job, s3, base: Path) -> None:
    config = base / "input" / "config"
    config.mkdir(parents=True)
    (config / "hyperparameters.json").write_text(json.dumps(job.hyper_parameters or {}))
    channels = {}
    for channel in job.input_data_config or []:
        name = channel["ChannelName"]
        uri = channel["DataSource"]["S3DataSource"]["S3Uri"]
        if not _download(s3, uri, base / "input" / "data" / name):
            raise ValueError(f"channel {name}: no objects under {uri}")
        channels[name] = {"ContentType": channel.get("ContentType", "image/png"), "TrainingInputMode": "File",
                          "S3DistributionType": "FullyReplicated", "RecordWrapperType": "None"}
    (config / "inputdataconfig.json").write_text(json.dumps(channels))
    (config / "resourceconfig.json").write_text(json.dumps(
        {"current_host": "localhost", "hosts": ["localhost"], "network_interface_name": "lo"}))
    for sub in ("model", "output/data", "checkpoints"):
        (base / sub).mkdir(parents=True, exist_ok=True)


def start(job, account_id: str, work: Path) -> None:
    job.training_job_status, job.secondary_status, job.failure_reason = "InProgress", "Training", None
    s3 = s3_backends[account_id]["aws"]
    base = work / f"training-{job.training_job_name}"

    def fail(reason: str) -> None:
        job.training_job_status, job.secondary_status, job.failure_reason = "Failed", "Failed", reason

    def run() -> None:
        try:
            _layout(job, s3, base)
        except Exception as exc:  # a missing bucket or empty channel fails the job, as on SageMaker
            fail(f"ClientError: {exc}")
            return
        limit = (job.stopping_condition or {}).get("MaxRuntimeInSeconds", 86400)
        with open(base / "train.log", "w") as log:
            try:
                host = {k: v for k, v in os.environ.items() if k not in HOST_ONLY}
                code = subprocess.run([str(ENTRYPOINT), "train"], stdout=log, stderr=subprocess.STDOUT,
                                      env={**host, **job.environment, "SAGEMAKER_BASE_DIR": str(base),
                                           "TRAINING_JOB_NAME": job.training_job_name},
                                      timeout=limit).returncode
            except subprocess.TimeoutExpired:
                fail(f"MaxRuntimeExceeded: the job ran longer than {limit} s")
                return
        if code != 0:
            failure = base / "output" / "failure"
            first = failure.read_text().strip().splitlines()[:1] if failure.exists() else []
            fail(f"AlgorithmError: {first[0] if first else f'exit code {code}'}")
            return
        bucket, key = _split(job.model_artifacts["S3ModelArtifacts"])
        s3.put_object(bucket, key, _tarball(base / "model"))
        s3.put_object(bucket, key.rsplit("/", 1)[0] + "/output.tar.gz", _tarball(base / "output" / "data"))
        job.training_job_status, job.secondary_status = "Completed", "Completed"

    def guarded() -> None:
        try:
            run()
        except Exception as exc:  # e.g. a missing output bucket: the job fails and says why
            fail(f"ClientError: writing to {job.output_data_config.get('S3OutputPath')}: {exc}")

    threading.Thread(target=guarded, name=f"training-{job.training_job_name}", daemon=True).start()
