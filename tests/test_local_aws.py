"""The local AWS (`python -m local_aws`, what `make local-aws` runs) over real HTTP with
boto3 only: endpoints backed by real `serve` processes, InvokeEndpoint routed by weights
and TargetVariant, UpdateEndpoint, and the AWS/SageMaker metrics in CloudWatch."""

from __future__ import annotations

import io
import json
import tarfile
import time
from collections import Counter
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from conftest import aws_client as client
from conftest import TINY_HPS, model_tarball, noise_png, upload

pytestmark = pytest.mark.slow

ROLE = "arn:aws:iam::123456789012:role/sagemaker-execution"




def register_model(url: str, name: str, data: bytes) -> None:
    client(url, "sagemaker").create_model(
        ModelName=name, ExecutionRoleArn=ROLE,
        PrimaryContainer={"Image": "dagm-defects-serve:latest", "ModelDataUrl": upload(url, f"{name}/model.tar.gz", data)})


def endpoint_config(url: str, name: str, weights: dict[str, tuple[str, float]]) -> None:
    client(url, "sagemaker").create_endpoint_config(EndpointConfigName=name, ProductionVariants=[
        {"VariantName": variant, "ModelName": model, "InitialVariantWeight": weight, "InitialInstanceCount": 1,
         "InstanceType": "ml.m5.large"} for variant, (model, weight) in weights.items()])


def wait_status(url: str, endpoint: str, wanted: str = "InService", timeout: float = 120) -> dict:
    sagemaker = client(url, "sagemaker")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        described = sagemaker.describe_endpoint(EndpointName=endpoint)
        if described["EndpointStatus"] == wanted:
            return described
        assert described["EndpointStatus"] != "Failed", described.get("FailureReason")
        time.sleep(0.5)
    raise AssertionError(f"{endpoint} not {wanted}: {described}")


def invoke(url: str, endpoint: str, **extra) -> tuple[str, dict]:
    reply = client(url, "sagemaker-runtime").invoke_endpoint(
        EndpointName=endpoint, ContentType="image/png", Body=noise_png(), **extra)
    return reply["InvokedProductionVariant"], json.loads(reply["Body"].read())


def test_endpoint_serves_real_predictions_and_publishes_metrics(local_aws, trained_job):
    register_model(local_aws, "trained-1", model_tarball(trained_job.model_dir))
    endpoint_config(local_aws, "cfg-1", {"A": ("trained-1", 1.0)})
    client(local_aws, "sagemaker").create_endpoint(EndpointName="dagm", EndpointConfigName="cfg-1")
    assert client(local_aws, "sagemaker").describe_endpoint(EndpointName="dagm")["EndpointStatus"] == "Creating"
    wait_status(local_aws, "dagm")

    variant, answer = invoke(local_aws, "dagm")
    assert variant == "A"
    (prediction,) = answer["predictions"]
    assert 0.0 <= prediction["score"] <= 1.0 and isinstance(prediction["defective"], bool)

    bad = client(local_aws, "sagemaker-runtime")
    with pytest.raises(ClientError) as error:
        bad.invoke_endpoint(EndpointName="dagm", ContentType="image/png", Body=b"not a png")
    assert error.value.response["Error"]["Code"] == "ModelError"
    assert error.value.response["OriginalStatusCode"] == 400

    cloudwatch = client(local_aws, "cloudwatch")
    stats = {}
    for metric in ("Invocations", "Invocation4XXErrors", "Invocation5XXErrors"):
        points = cloudwatch.get_metric_statistics(
            Namespace="AWS/SageMaker", MetricName=metric, Statistics=["Sum"], Period=60,
            StartTime=time.time() - 600, EndTime=time.time() + 60,
            Dimensions=[{"Name": "EndpointName", "Value": "dagm"}, {"Name": "VariantName", "Value": "A"}])
        stats[metric] = sum(p["Sum"] for p in points["Datapoints"])
    assert stats == {"Invocations": 2.0, "Invocation4XXErrors": 1.0, "Invocation5XXErrors": 0.0}


def test_weights_target_variant_and_update_endpoint(local_aws, trained_job, untrained_model):
    register_model(local_aws, "old", model_tarball(trained_job.model_dir))
    register_model(local_aws, "new", model_tarball(untrained_model))
    endpoint_config(local_aws, "one", {"old": ("old", 1.0)})
    sagemaker = client(local_aws, "sagemaker")
    sagemaker.create_endpoint(EndpointName="canary", EndpointConfigName="one")
    wait_status(local_aws, "canary")

    # A canary config: the new variant at weight 0 gets no traffic until asked for by name.
    endpoint_config(local_aws, "two", {"old": ("old", 1.0), "new": ("new", 0.0)})
    sagemaker.update_endpoint(EndpointName="canary", EndpointConfigName="two")
    with pytest.raises(ClientError, match="in-progress"):
        sagemaker.update_endpoint(EndpointName="canary", EndpointConfigName="two")
    described = wait_status(local_aws, "canary")
    assert described["EndpointConfigName"] == "two"
    assert {v["VariantName"]: v["CurrentWeight"] for v in described["ProductionVariants"]} == {"old": 1.0, "new": 0.0}
    assert Counter(invoke(local_aws, "canary")[0] for _ in range(10)) == {"old": 10}
    assert invoke(local_aws, "canary", TargetVariant="new")[0] == "new"

    sagemaker.update_endpoint_weights_and_capacities(EndpointName="canary", DesiredWeightsAndCapacities=[
        {"VariantName": "old", "DesiredWeight": 1.0}, {"VariantName": "new", "DesiredWeight": 1.0}])
    seen = Counter(invoke(local_aws, "canary")[0] for _ in range(40))
    assert seen["old"] > 5 and seen["new"] > 5

    sagemaker.update_endpoint_weights_and_capacities(EndpointName="canary", DesiredWeightsAndCapacities=[
        {"VariantName": "old", "DesiredWeight": 0.0}, {"VariantName": "new", "DesiredWeight": 1.0}])
    assert Counter(invoke(local_aws, "canary")[0] for _ in range(10)) == {"new": 10}


def test_a_broken_model_fails_creation_and_rolls_an_update_back(local_aws, trained_job, tmp_path):
    register_model(local_aws, "good", model_tarball(trained_job.model_dir))
    register_model(local_aws, "broken", b"this is not a tar.gz")
    endpoint_config(local_aws, "good-cfg", {"main": ("good", 1.0)})
    endpoint_config(local_aws, "broken-cfg", {"main": ("broken", 1.0)})
    sagemaker = client(local_aws, "sagemaker")

    sagemaker.create_endpoint(EndpointName="doomed", EndpointConfigName="broken-cfg")
    deadline = time.monotonic() + 120
    while (described := sagemaker.describe_endpoint(EndpointName="doomed"))["EndpointStatus"] == "Creating":
        assert time.monotonic() < deadline
        time.sleep(0.5)
    assert described["EndpointStatus"] == "Failed"
    assert "not a readable tar.gz" in described["FailureReason"]

    sagemaker.create_endpoint(EndpointName="steady", EndpointConfigName="good-cfg")
    wait_status(local_aws, "steady")
    sagemaker.update_endpoint(EndpointName="steady", EndpointConfigName="broken-cfg")
    time.sleep(0.5)
    described = wait_status(local_aws, "steady")
    assert described["EndpointConfigName"] == "good-cfg"
    assert "update rolled back" in described["FailureReason"]
    assert invoke(local_aws, "steady")[0] == "main"
    sagemaker.delete_endpoint(EndpointName="steady")
    with pytest.raises(ClientError):
        invoke(local_aws, "steady")


def upload_tree(url: str, root: Path, prefix: str) -> str:
    for path in sorted(root.rglob("*")):
        if path.is_file():
            uri = upload(url, f"{prefix}/{path.relative_to(root).as_posix()}", path.read_bytes(), bucket="dagm-data")
    return uri.split(prefix)[0] + prefix


def wait_job(url: str, name: str, timeout: float = 300) -> dict:
    sagemaker = client(url, "sagemaker")
    deadline = time.monotonic() + timeout
    while (job := sagemaker.describe_training_job(TrainingJobName=name))["TrainingJobStatus"] == "InProgress":
        assert time.monotonic() < deadline, job
        time.sleep(1)
    return job


def training_job(url: str, name: str, data_uri: str, hyperparameters: dict,
                 output: str = "s3://dagm-models/jobs") -> None:
    client(url, "sagemaker").create_training_job(
        TrainingJobName=name, RoleArn=ROLE, HyperParameters=hyperparameters,
        AlgorithmSpecification={"TrainingImage": "dagm-defects-train:latest", "TrainingInputMode": "File"},
        InputDataConfig=[{"ChannelName": "train", "DataSource": {"S3DataSource": {
            "S3DataType": "S3Prefix", "S3Uri": data_uri, "S3DataDistributionType": "FullyReplicated"}}}],
        OutputDataConfig={"S3OutputPath": output},
        ResourceConfig={"InstanceType": "ml.g5.xlarge", "InstanceCount": 1, "VolumeSizeInGB": 30},
        StoppingCondition={"MaxRuntimeInSeconds": 600})


def test_training_jobs_really_train_and_fail_with_the_jobs_reason(local_aws, tiny_dataset):
    data_uri = upload_tree(local_aws, tiny_dataset, "tiny")
    training_job(local_aws, "tiny-nowhere", data_uri, TINY_HPS, output="s3://no-such-bucket/jobs")
    lost = wait_job(local_aws, "tiny-nowhere")
    assert lost["TrainingJobStatus"] == "Failed" and "no-such-bucket" in lost["FailureReason"]

    upload(local_aws, "jobs/.keep", b"")  # the output bucket
    training_job(local_aws, "tiny-1", data_uri, TINY_HPS)
    job = wait_job(local_aws, "tiny-1")
    assert job["TrainingJobStatus"] == "Completed", job.get("FailureReason")
    bucket, _, key = job["ModelArtifacts"]["S3ModelArtifacts"][len("s3://"):].partition("/")
    artefact = client(local_aws, "s3").get_object(Bucket=bucket, Key=key)["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(artefact)) as tar:
        assert sorted(tar.getnames()) == ["model.json", "model.pt"]

    training_job(local_aws, "tiny-bad", data_uri, {**TINY_HPS, "epochs": "many"})
    failed = wait_job(local_aws, "tiny-bad")
    assert failed["TrainingJobStatus"] == "Failed" and "epochs" in failed["FailureReason"]
