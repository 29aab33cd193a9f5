"""A SageMaker training job with our training image: start it, wait for it, read the
evaluation.json it wrote (inside output.tar.gz, next to model.tar.gz)."""

from __future__ import annotations

import io
import json
import os
import tarfile
import time

from botocore.exceptions import ClientError

from dagm_deploy.s3_objects import split


RUN_RECORD = "mlflow/run.json"


class JobFailed(Exception):
    """The one-line reason a job gives no usable model."""


# The stage's MLflow settings, passed on to the job it starts.
TRACKING_VARIABLES = ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME")


def job_environment(image: str) -> dict[str, str]:
    """The job's environment: the stage's MLflow tracking settings, and the image the job runs
    (its MLflow run records it)."""
    return {**{name: os.environ[name] for name in TRACKING_VARIABLES if os.environ.get(name)}, "DAGM_IMAGE_URI": image}


def start(sagemaker, name: str, image: str, role: str, channels: dict[str, str], output: str,
          hyperparameters: dict[str, str], instance_type: str, max_runtime: int) -> None:
    """`channels`: name -> s3:// prefix (or one object, as for a model.tar.gz)."""
    sagemaker.create_training_job(
        TrainingJobName=name, RoleArn=role, HyperParameters=hyperparameters, Environment=job_environment(image),
        AlgorithmSpecification={"TrainingImage": image, "TrainingInputMode": "File"},
        InputDataConfig=[{"ChannelName": channel, "ContentType": "image/png", "DataSource": {"S3DataSource": {
            "S3DataType": "S3Prefix", "S3Uri": uri, "S3DataDistributionType": "FullyReplicated"}}}
            for channel, uri in channels.items()],
        OutputDataConfig={"S3OutputPath": output},
        ResourceConfig={"InstanceType": instance_type, "InstanceCount": 1, "VolumeSizeInGB": 50},
        StoppingCondition={"MaxRuntimeInSeconds": max_runtime},
    )


def wait(sagemaker, name: str, poll_seconds: float) -> str:
    """The job's model.tar.gz URI once it completed."""
    while (job := sagemaker.describe_training_job(TrainingJobName=name))["TrainingJobStatus"] in ("InProgress", "Stopping"):
        time.sleep(poll_seconds)
    if job["TrainingJobStatus"] != "Completed":
        raise JobFailed(f"training job {name} {job['TrainingJobStatus'].lower()}: {job.get('FailureReason', 'no reason given')}")
    return job["ModelArtifacts"]["S3ModelArtifacts"]


def evaluation(s3, name: str, model_data: str) -> tuple[dict, bytes]:
    """The job's evaluation.json, with "mlflow": its run record (None when the job ran with
    tracking=false); and the file's bytes as the job wrote them."""
    bucket, key = split(output_uri(model_data))
    try:
        archive = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            written = tar.extractfile("evaluation.json").read()
            result = json.loads(written)
            names = tar.getnames()
            result["mlflow"] = json.load(tar.extractfile(RUN_RECORD)) if RUN_RECORD in names else None
        float(result["overall"]["ap"])
    except (ClientError, tarfile.TarError, KeyError, ValueError, TypeError, AttributeError) as exc:
        raise JobFailed(f"training job {name}: no readable evaluation.json in s3://{bucket}/{key} ({exc})") from None
    return result, written


def output_uri(model_data: str) -> str:
    """output.tar.gz, which SageMaker writes beside model.tar.gz."""
    return model_data.rsplit("/", 1)[0] + "/output.tar.gz"


def publish_evaluation(s3, model_data: str, written: bytes) -> str:
    """The job's evaluation.json as its own object beside output.tar.gz (the registry's
    ModelMetrics point at it); its URI."""
    uri = model_data.rsplit("/", 1)[0] + "/evaluation.json"
    bucket, key = split(uri)
    s3.put_object(Bucket=bucket, Key=key, Body=written, ContentType="application/json")
    return uri
