"""The local AWS (`python -m local_aws`, what `make local-aws` runs) over real HTTP with
boto3 only: endpoints backed by real `serve` processes, InvokeEndpoint routed by weights
and TargetVariant, UpdateEndpoint, the AWS/SageMaker metrics in CloudWatch, and the
injected faults (/_local_aws/faults) that failure-path tests use."""

from __future__ import annotations

import io
import json
import tarfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
from botocore.exceptions import ClientError, ReadTimeoutError

from conftest import aws_client as client
from conftest import ONCE, TINY_HPS, inline_build_project, listed_faults, model_tarball, noise_png, upload

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
                 output: str = "s3://dagm-models/jobs", environment: dict | None = None) -> None:
    client(url, "sagemaker").create_training_job(
        TrainingJobName=name, RoleArn=ROLE, HyperParameters=hyperparameters, Environment=environment or {},
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
    environment = {"MLFLOW_EXPERIMENT_NAME": "line-7", "DAGM_IMAGE_URI": "dagm-defects-train:latest"}
    training_job(local_aws, "tiny-1", data_uri, TINY_HPS, environment=environment)
    job = wait_job(local_aws, "tiny-1")
    assert job["TrainingJobStatus"] == "Completed", job.get("FailureReason")
    assert job["Environment"] == environment
    bucket, _, key = job["ModelArtifacts"]["S3ModelArtifacts"][len("s3://"):].partition("/")
    artefact = client(local_aws, "s3").get_object(Bucket=bucket, Key=key)["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(artefact)) as tar:
        assert sorted(tar.getnames()) == ["model.json", "model.pt"]
    # The job saw its Environment: its MLflow run is in that experiment, named for the job.
    output = client(local_aws, "s3").get_object(Bucket=bucket, Key=key.rsplit("/", 1)[0] + "/output.tar.gz")
    with tarfile.open(fileobj=io.BytesIO(output["Body"].read())) as tar:
        assert json.load(tar.extractfile("mlflow/run.json"))["experiment"] == "line-7"
        report = json.load(tar.extractfile("report.json"))
    assert report["job"]["name"] == "tiny-1"

    sagemaker = client(local_aws, "sagemaker")
    for bad, message in (({"1BAD": "x"}, "Environment key '1BAD' must match"),
                         ({"K": "v" * 513}, "Environment value of 'K' must be a string of at most 512")):
        with pytest.raises(ClientError, match=message):
            sagemaker.create_training_job(
                TrainingJobName="tiny-env", RoleArn=ROLE, Environment=bad,
                AlgorithmSpecification={"TrainingImage": "dagm-defects-train:latest", "TrainingInputMode": "File"},
                OutputDataConfig={"S3OutputPath": "s3://dagm-models/jobs"},
                ResourceConfig={"InstanceType": "ml.g5.xlarge", "InstanceCount": 1, "VolumeSizeInGB": 30},
                StoppingCondition={"MaxRuntimeInSeconds": 600})

    training_job(local_aws, "tiny-bad", data_uri, {**TINY_HPS, "epochs": "many"})
    failed = wait_job(local_aws, "tiny-bad")
    assert failed["TrainingJobStatus"] == "Failed" and "epochs" in failed["FailureReason"]


# Fault injection (tools/local_aws/faults.py).


def error_of(call, *args, **kwargs) -> tuple[str, int]:
    """The ClientError's code and HTTP status of a call expected to fail."""
    with pytest.raises(ClientError) as error:
        call(*args, **kwargs)
    return error.value.response["Error"]["Code"], error.value.response["ResponseMetadata"]["HTTPStatusCode"]


# One call per wire format botocore parses errors in; each call would succeed without the fault.
WIRE_FORMATS = {
    "json": ("sagemaker", "list_endpoints", {}, "ThrottlingException", 400),
    "rpc-v2-cbor": ("cloudwatch", "describe_alarms", {}, "InternalFailure", 500),
    "query": ("sts", "get_caller_identity", {}, "Throttling", 400),
    "rest-xml": ("s3", "list_buckets", {}, "SlowDown", 503),
    "rest-json": ("sagemaker-runtime", "invoke_endpoint", {"EndpointName": "nowhere", "Body": b"{}"},
                  "ServiceUnavailable", 503),
}


def test_a_build_started_by_a_rule_reports_its_real_state(local_aws):
    """BatchGetBuilds: IN_PROGRESS while the buildspec runs, then FAILED for a failing
    command (moto alone answers SUCCEEDED to any build the moment it is asked)."""
    codebuild, events = client(local_aws, "codebuild"), client(local_aws, "events")
    project = inline_build_project(local_aws, "state-build", ["sleep 2", "exit 3"])
    events.put_rule(Name="state-build", EventPattern=json.dumps({"source": ["test.state-build"]}))
    events.put_targets(Rule="state-build", Targets=[{"Id": "build", "Arn": project, "RoleArn": ROLE}])
    events.put_events(Entries=[{"Source": "test.state-build", "DetailType": "go", "Detail": "{}"}])
    deadline = time.monotonic() + 30
    while not (ids := codebuild.list_builds_for_project(projectName="state-build")["ids"]):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert codebuild.batch_get_builds(ids=ids)["builds"][0]["buildStatus"] == "IN_PROGRESS"
    while (build := codebuild.batch_get_builds(ids=ids)["builds"][0])["buildStatus"] == "IN_PROGRESS":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert (build["buildStatus"], build["currentPhase"], build["buildComplete"]) == ("FAILED", "COMPLETED", True)


@pytest.mark.parametrize("protocol", WIRE_FORMATS)
def test_an_injected_error_reaches_boto3_in_each_wire_format(local_aws, faults, protocol):
    service, method, kwargs, code, status = WIRE_FORMATS[protocol]
    action = "".join(part.title() for part in method.split("_"))
    faults.add(service=service, action=action, error=code)
    assert error_of(getattr(client(local_aws, service, ONCE), method), **kwargs) == (code, status)
    assert faults.fired() == [1]


def test_the_fault_api_refuses_a_fault_it_cannot_apply(local_aws, faults):
    import urllib.error

    for wrong in ({"action": "ListEndpoints"}, {"error": "ThrottlingException", "tims": 2},
                  {"endpoint": "faulty", "variant": "A", "status": 200}):
        with pytest.raises(urllib.error.HTTPError) as refused:
            faults.add(**wrong)
        assert refused.value.code == 400
    assert listed_faults(local_aws) == []


def test_a_throttled_call_then_skip_and_times(local_aws, faults):
    sagemaker = client(local_aws, "sagemaker", ONCE)
    # Passed on, DescribeEndpoint of a missing endpoint is moto's ValidationError.
    faults.add(service="sagemaker", action="DescribeEndpoint", endpoint="elsewhere", error="ThrottlingException",
               times=0)
    faults.add(service="sagemaker", action="DescribeEndpoint", endpoint="nowhere", error="ThrottlingException",
               skip=1, times=2)
    codes = [error_of(sagemaker.describe_endpoint, EndpointName="nowhere")[0] for _ in range(4)]
    assert codes == ["ValidationException", "ThrottlingException", "ThrottlingException", "ValidationException"]
    assert [(f["matched"], f["fired"]) for f in listed_faults(local_aws)] == [(0, 0), (4, 2)]

    # botocore retries a throttled call itself: aws_client's one retry absorbs a fault that
    # fires once, and the fault counts both attempts.
    faults.clear()
    faults.add(action="DescribeEndpoint", error="ThrottlingException")
    assert error_of(client(local_aws, "sagemaker").describe_endpoint, EndpointName="nowhere")[0] == "ValidationException"
    assert [(f["matched"], f["fired"]) for f in listed_faults(local_aws)] == [(2, 1)]


def test_a_throttled_dynamodb_put_item_writes_nothing(local_aws, faults):
    dynamodb = client(local_aws, "dynamodb", ONCE)
    dynamodb.create_table(TableName="fault-items", BillingMode="PAY_PER_REQUEST",
                          KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
                          AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}])
    faults.add(service="dynamodb", action="PutItem", error="ProvisionedThroughputExceededException")
    item = {"id": {"S": "one"}}
    assert error_of(dynamodb.put_item, TableName="fault-items", Item=item) == (
        "ProvisionedThroughputExceededException", 400)
    assert "Item" not in dynamodb.get_item(TableName="fault-items", Key=item)
    dynamodb.put_item(TableName="fault-items", Item=item)  # the fault fired its one time
    assert dynamodb.get_item(TableName="fault-items", Key=item)["Item"] == item
    dynamodb.delete_table(TableName="fault-items")


def test_a_delay_makes_a_read_time_out(local_aws, faults):
    faults.add(service="sagemaker", action="ListEndpoints", delay_s=2)
    impatient = client(local_aws, "sagemaker", ONCE, read_timeout=0.5)
    started = time.monotonic()
    with pytest.raises(ReadTimeoutError):
        impatient.list_endpoints()
    assert time.monotonic() - started < 1.5
    impatient.list_endpoints()  # the fault fired its one time


@pytest.fixture(scope="module")
def faulty(local_aws, untrained_model) -> str:
    """One endpoint for the variant-fault tests: variant A takes the traffic, B (weight 0)
    answers TargetVariant calls."""
    register_model(local_aws, "faulty-model", model_tarball(untrained_model))
    endpoint_config(local_aws, "faulty-cfg", {"A": ("faulty-model", 1.0), "B": ("faulty-model", 0.0)})
    client(local_aws, "sagemaker").create_endpoint(EndpointName="faulty", EndpointConfigName="faulty-cfg")
    wait_status(local_aws, "faulty")
    return "faulty"


def timed_invoke(url: str, endpoint: str, **extra) -> tuple[str, float]:
    started = time.monotonic()
    variant, _ = invoke(url, endpoint, **extra)
    return variant, time.monotonic() - started


def test_a_throttled_update_endpoint_weights_leaves_the_weights(local_aws, faulty, faults):
    faults.add(service="sagemaker", action="UpdateEndpointWeightsAndCapacities", endpoint=faulty,
               error="ThrottlingException")
    sagemaker = client(local_aws, "sagemaker", ONCE)
    assert error_of(sagemaker.update_endpoint_weights_and_capacities, EndpointName=faulty,
                    DesiredWeightsAndCapacities=[{"VariantName": "B", "DesiredWeight": 1.0}]) == (
        "ThrottlingException", 400)
    weights = {v["VariantName"]: v["CurrentWeight"]
               for v in sagemaker.describe_endpoint(EndpointName=faulty)["ProductionVariants"]}
    assert weights == {"A": 1.0, "B": 0.0}


def test_a_slowed_variant(local_aws, faulty, faults):
    invoke(local_aws, faulty)  # warm
    faults.add(endpoint=faulty, variant="A", delay_s=1.5)
    assert timed_invoke(local_aws, faulty)[0] == "A"
    variant, slow = timed_invoke(local_aws, faulty)
    assert variant == "A" and slow >= 1.5
    variant, fast = timed_invoke(local_aws, faulty, TargetVariant="B")
    assert variant == "B" and fast < 1.5
    faults.add(endpoint=faulty, variant="B", delay_s=1.5)
    assert timed_invoke(local_aws, faulty, TargetVariant="B")[1] >= 1.5
    assert faults.fired() == [2, 1]  # every call routed to the variant


def invocation_errors(url: str, endpoint: str, variant: str) -> dict[str, float]:
    cloudwatch = client(url, "cloudwatch")
    sums = {}
    for metric in ("Invocations", "Invocation5XXErrors"):
        points = cloudwatch.get_metric_statistics(
            Namespace="AWS/SageMaker", MetricName=metric, Statistics=["Sum"], Period=60,
            StartTime=time.time() - 600, EndTime=time.time() + 60,
            Dimensions=[{"Name": "EndpointName", "Value": endpoint}, {"Name": "VariantName", "Value": variant}])
        sums[metric] = sum(p["Sum"] for p in points["Datapoints"])
    return sums


def test_a_variant_answering_500_is_a_model_error_in_the_metrics(local_aws, faulty, faults):
    before = invocation_errors(local_aws, faulty, "A")
    faults.add(endpoint=faulty, variant="A", status=500, times=1)
    with pytest.raises(ClientError) as error:
        invoke(local_aws, faulty)
    assert error.value.response["Error"]["Code"] == "ModelError"
    assert error.value.response["OriginalStatusCode"] == 500
    assert invoke(local_aws, faulty)[0] == "A"  # fired its one time
    after = invocation_errors(local_aws, faulty, "A")
    assert after["Invocations"] - before["Invocations"] == 2
    assert after["Invocation5XXErrors"] - before["Invocation5XXErrors"] == 1

    # An API fault on InvokeEndpoint answers before the endpoint: the model never sees it.
    faults.add(service="sagemaker-runtime", action="InvokeEndpoint", endpoint=faulty, error="ThrottlingException",
               times=0)  # invoke() retries once
    assert error_of(invoke, local_aws, faulty) == ("ThrottlingException", 400)
    assert invocation_errors(local_aws, faulty, "A") == after


def test_a_hung_variant_answers_once_the_fault_is_removed(local_aws, faulty, faults):
    hang = faults.add(endpoint=faulty, variant="A", hang=True)
    impatient = client(local_aws, "sagemaker-runtime", ONCE, read_timeout=1)
    with pytest.raises(ReadTimeoutError):
        impatient.invoke_endpoint(EndpointName=faulty, ContentType="image/png", Body=noise_png())
    assert invoke(local_aws, faulty, TargetVariant="B")[0] == "B"  # the other variant answers

    replies = []
    waiting = threading.Thread(target=lambda: replies.append(timed_invoke(local_aws, faulty)))
    waiting.start()
    waiting.join(1.5)
    assert waiting.is_alive() and not replies
    faults.remove(hang)
    waiting.join(30)
    assert replies and replies[0][0] == "A" and replies[0][1] >= 1.5


@pytest.mark.parametrize("path", ["/_local_aws/async/queue", "/_local_aws/images/crop", "/_local_aws/schedules/x"])
def test_a_control_api_answers_only_its_own_path(local_aws, path):
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{local_aws}{path}", timeout=10)
    assert refused.value.code == 404
    assert json.loads(refused.value.read()) == {"error": f"{path}: no such call"}
