"""Serverless endpoints on the local AWS (tools/local_aws/serverless.py): InService
with no process, a cold start on the first invocation (ModelSetupTime published), scale to
zero after the idle time, ProvisionedConcurrency kept warm, MaxConcurrency and the 4 MB
payload limit enforced, and the API's refusals of what serverless endpoints exclude.

This module runs its own local AWS with LOCAL_AWS_SERVERLESS_IDLE_SECONDS small, so that
scale to zero happens within a test."""

from __future__ import annotations

import json
import threading
import time

import pytest
from botocore.exceptions import ClientError

from conftest import ONCE, model_tarball, noise_png, processes_tagged, running_local_aws, upload
from conftest import aws_client as client

pytestmark = pytest.mark.slow

ROLE = "arn:aws:iam::123456789012:role/sagemaker-execution"
IDLE_S = 3
TAG = "LOCAL_AWS_SERVERLESS_TEST_TAG"  # in the model's Environment: finds its processes
SERVERLESS = {"MemorySizeInMB": 2048, "MaxConcurrency": 1}


@pytest.fixture(scope="module")
def local_aws(tmp_path_factory):
    """A local AWS of the module's own, with a serverless idle time of IDLE_S."""
    with running_local_aws(tmp_path_factory, LOCAL_AWS_SERVERLESS_IDLE_SECONDS=str(IDLE_S)) as url:
        yield url


def tagged(tag: str) -> list:
    return processes_tagged(TAG, tag)


def wait_until(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        assert time.monotonic() < deadline, f"not {what} within {timeout} s"
        time.sleep(0.2)
    return result


def model(url: str, name: str, model_url: str) -> None:
    client(url, "sagemaker").create_model(ModelName=name, ExecutionRoleArn=ROLE, PrimaryContainer={
        "Image": "dagm-defects-serve:latest", "ModelDataUrl": model_url, "Environment": {TAG: name}})


def endpoint(url: str, name: str, variant: dict) -> None:
    sagemaker = client(url, "sagemaker")
    sagemaker.create_endpoint_config(EndpointConfigName=name, ProductionVariants=[
        {"VariantName": "main", "ModelName": name, **variant}])
    sagemaker.create_endpoint(EndpointName=name, EndpointConfigName=name)


def wait_in_service(url: str, name: str, timeout: float = 240) -> dict:
    sagemaker = client(url, "sagemaker")
    deadline = time.monotonic() + timeout
    while (described := sagemaker.describe_endpoint(EndpointName=name))["EndpointStatus"] == "Creating":
        assert time.monotonic() < deadline, described
        time.sleep(0.3)
    assert described["EndpointStatus"] == "InService", described.get("FailureReason")
    return described


@pytest.fixture(scope="module")
def endpoints(local_aws, trained_job) -> dict[str, dict]:
    """A serverless endpoint (MaxConcurrency 1), one with provisioned concurrency, and a
    real-time endpoint of the same model; each {"described": DescribeEndpoint right after InService}."""
    model_url = upload(local_aws, "serverless/model.tar.gz", model_tarball(trained_job.model_dir))
    variants = {"cold": {"ServerlessConfig": SERVERLESS},
                "warm": {"ServerlessConfig": {"MemorySizeInMB": 1024, "MaxConcurrency": 2,
                                              "ProvisionedConcurrency": 1}},
                "realtime": {"InstanceType": "ml.m5.large", "InitialInstanceCount": 1}}
    for name, variant in variants.items():
        model(local_aws, name, model_url)
        endpoint(local_aws, name, variant)
    described = {name: wait_in_service(local_aws, name) for name in variants}
    return {name: {"described": described[name], "processes_then": len(tagged(name))} for name in variants}


def invoke(url: str, name: str, body: bytes | None = None, retries: dict | None = None) -> list[dict]:
    reply = client(url, "sagemaker-runtime", retries).invoke_endpoint(
        EndpointName=name, ContentType="image/png", Body=body or noise_png(4))
    assert reply["InvokedProductionVariant"] == "main"
    return json.loads(reply["Body"].read())["predictions"]


def setup_times(url: str, name: str) -> list[float]:
    points = client(url, "cloudwatch").get_metric_statistics(
        Namespace="AWS/SageMaker", MetricName="ModelSetupTime", Statistics=["SampleCount", "Minimum"], Period=60,
        StartTime=time.time() - 600, EndTime=time.time() + 60,
        Dimensions=[{"Name": "EndpointName", "Value": name}, {"Name": "VariantName", "Value": "main"}])["Datapoints"]
    assert all(p["Unit"] == "Microseconds" for p in points)
    return [p["Minimum"] for p in points for _ in range(int(p["SampleCount"]))]


def test_the_api_refuses_what_serverless_endpoints_exclude(local_aws):
    sagemaker = client(local_aws, "sagemaker")
    model(local_aws, "excluded", "s3://dagm-models/none.tar.gz")
    sagemaker.create_model(ModelName="excluded-pipeline", ExecutionRoleArn=ROLE, Containers=[
        {"Image": "dagm-defects-serve:latest"}, {"Image": "dagm-defects-serve:latest"}])
    serverless = {"VariantName": "main", "ModelName": "excluded", "ServerlessConfig": SERVERLESS}
    refused = {
        "MemorySizeInMB": [{**serverless, "ServerlessConfig": {"MemorySizeInMB": 1500, "MaxConcurrency": 1}}],
        "ProvisionedConcurrency": [{**serverless, "ServerlessConfig": {**SERVERLESS, "ProvisionedConcurrency": 2}}],
        "takes no InstanceType": [{**serverless, "InstanceType": "ml.m5.large"}],
        "multiple production variants": [serverless, {"VariantName": "other", "ModelName": "excluded",
                                                      "InstanceType": "ml.m5.large", "InitialInstanceCount": 1}],
        "inference pipelines": [{**serverless, "ModelName": "excluded-pipeline"}],
    }
    for message, variants in refused.items():
        with pytest.raises(ClientError, match=message) as error:
            sagemaker.create_endpoint_config(EndpointConfigName="excluded", ProductionVariants=variants)
        assert error.value.response["Error"]["Code"] == "ValidationException"
    with pytest.raises(ClientError, match="DataCaptureConfig"):
        sagemaker.create_endpoint_config(EndpointConfigName="excluded", ProductionVariants=[serverless],
                                         DataCaptureConfig={
                                             "InitialSamplingPercentage": 100, "DestinationS3Uri": "s3://dagm-capture",
                                             "CaptureOptions": [{"CaptureMode": "Input"}]})
    names = [c["EndpointConfigName"] for c in sagemaker.list_endpoint_configs()["EndpointConfigs"]]
    assert "excluded" not in names


def test_scale_to_zero_cold_starts_and_model_setup_time(local_aws, endpoints):
    (variant,) = endpoints["cold"]["described"]["ProductionVariants"]
    assert variant["CurrentServerlessConfig"] == variant["DesiredServerlessConfig"] == SERVERLESS
    assert "CurrentInstanceCount" not in variant
    assert endpoints["cold"]["processes_then"] == 0  # InService, nothing running
    assert setup_times(local_aws, "cold") == []

    started = time.monotonic()
    answer = invoke(local_aws, "cold")
    cold = time.monotonic() - started
    assert answer == invoke(local_aws, "realtime")
    assert tagged("cold")
    (setup,) = setup_times(local_aws, "cold")
    assert 1e5 < setup <= cold * 1e6  # microseconds: more than 0.1 s, within the first call

    started = time.monotonic()
    assert invoke(local_aws, "cold") == answer  # warm: no new setup
    assert time.monotonic() - started < cold / 2
    assert len(setup_times(local_aws, "cold")) == 1

    wait_until(lambda: not tagged("cold"), IDLE_S + 30, "scaled to zero")
    assert invoke(local_aws, "cold") == answer
    assert len(setup_times(local_aws, "cold")) == 2


def test_provisioned_concurrency_stays_warm_and_deletion_stops_it(local_aws, endpoints):
    assert endpoints["warm"]["processes_then"] > 0  # started with the endpoint
    time.sleep(IDLE_S + 2)
    assert tagged("warm")
    assert invoke(local_aws, "warm") == invoke(local_aws, "realtime")
    assert len(setup_times(local_aws, "warm")) == 1  # the endpoint's start, not the call's
    client(local_aws, "sagemaker").delete_endpoint(EndpointName="warm")
    assert tagged("warm") == []


def test_invocations_beyond_max_concurrency_are_throttled(local_aws, endpoints, faults):
    invoke(local_aws, "cold")  # warm, so that the delay below is the whole call
    faults.add(endpoint="cold", variant="main", delay_s=2)
    outcomes: list[str] = []
    barrier = threading.Barrier(3)

    def call():
        barrier.wait()
        try:
            invoke(local_aws, "cold", retries=ONCE)
            outcomes.append("answered")
        except ClientError as exc:
            outcomes.append(exc.response["Error"]["Code"])

    threads = [threading.Thread(target=call) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(outcomes) == ["ThrottlingException", "ThrottlingException", "answered"]
    faults.clear()
    invoke(local_aws, "cold", retries=ONCE)  # the place is free again


def test_a_body_over_4_mb_is_refused(local_aws, endpoints):
    with pytest.raises(ClientError) as error:
        invoke(local_aws, "cold", body=b"\0" * (5 * 1024 * 1024), retries=ONCE)
    assert error.value.response["Error"]["Code"] == "ValidationError"
    assert "4 MB" in error.value.response["Error"]["Message"]
