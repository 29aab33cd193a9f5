"""The model registry of the local AWS (tools/local_aws/registry.py) over real HTTP
with boto3 only: approval status and version numbers, updates that keep what they are not
given, the API model's limits, state-change events reaching EventBridge rules' targets (an
SQS queue, a CodeBuild build), deletes, and an endpoint of a model made from a package."""

from __future__ import annotations

import json
import time

import pytest
from botocore.exceptions import ClientError

from conftest import aws_client as client
from conftest import inline_build_project, model_tarball, noise_png, upload

pytestmark = pytest.mark.slow

ROLE = "arn:aws:iam::123456789012:role/sagemaker-execution"
IMAGE = "dagm-defects-serve:local"


def inference(**container) -> dict:
    return {"Containers": [{"Image": IMAGE, **container}], "SupportedContentTypes": ["image/png"],
            "SupportedResponseMIMETypes": ["application/json"]}


def new_group(url: str, group: str):
    """A sagemaker client, once `group` exists."""
    sagemaker = client(url, "sagemaker")
    sagemaker.create_model_package_group(ModelPackageGroupName=group)
    return sagemaker


def register(sagemaker, group: str, **extra) -> str:
    return sagemaker.create_model_package(ModelPackageGroupName=group, **{"InferenceSpecification": inference(),
                                                                           **extra})["ModelPackageArn"]


def error_of(call, **kwargs) -> tuple[str, str]:
    with pytest.raises(ClientError) as error:
        call(**kwargs)
    return error.value.response["Error"]["Code"], error.value.response["Error"]["Message"]


def approval_pattern(group: str) -> dict:
    return {"source": ["aws.sagemaker"], "detail-type": ["SageMaker Model Package State Change"],
            "detail": {"ModelPackageGroupName": [group], "ModelApprovalStatus": ["Approved", "Rejected"]}}


@pytest.fixture
def rule(local_aws):
    """Put a rule on `pattern` with `targets` on the default bus; gone when the test ends."""
    events = client(local_aws, "events")
    made = []

    def put(name: str, pattern: dict, targets: list[dict]) -> None:
        events.put_rule(Name=name, EventPattern=json.dumps(pattern))
        events.put_targets(Rule=name, Targets=targets)
        made.append((name, [t["Id"] for t in targets]))

    yield put
    for name, ids in made:
        events.remove_targets(Rule=name, Ids=ids)
        events.delete_rule(Name=name)


def test_a_version_waits_for_approval_and_its_number_is_never_reused(local_aws):
    sagemaker = new_group(local_aws, "reg-versions")
    first, second = register(sagemaker, "reg-versions"), register(sagemaker, "reg-versions")
    described = sagemaker.describe_model_package(ModelPackageName=first)
    assert (described["ModelApprovalStatus"], described["ModelPackageVersion"]) == ("PendingManualApproval", 1)

    sagemaker.delete_model_package(ModelPackageName=second)
    third = register(sagemaker, "reg-versions", ModelApprovalStatus="Approved")
    described = sagemaker.describe_model_package(ModelPackageName=third)
    assert (described["ModelApprovalStatus"], described["ModelPackageVersion"]) == ("Approved", 3)
    assert third.endswith("/3") and third != second

    unversioned = sagemaker.create_model_package(ModelPackageName="reg-unversioned",
                                                 InferenceSpecification=inference())["ModelPackageArn"]
    assert "ModelApprovalStatus" not in sagemaker.describe_model_package(ModelPackageName=unversioned)


def test_an_update_changes_only_what_it_is_given(local_aws):
    sagemaker = new_group(local_aws, "reg-update")
    arn = register(sagemaker, "reg-update", CustomerMetadataProperties={"a": "1", "b": "2"})
    sagemaker.update_model_package(ModelPackageArn=arn, ModelApprovalStatus="Approved",
                                   ApprovalDescription="looked at the report")
    sagemaker.update_model_package(ModelPackageArn=arn, CustomerMetadataProperties={"b": "20", "c": "3"},
                                   CustomerMetadataPropertiesToRemove=["a"])
    described = sagemaker.describe_model_package(ModelPackageName=arn)
    assert described["CustomerMetadataProperties"] == {"b": "20", "c": "3"}
    assert (described["ModelApprovalStatus"], described["ApprovalDescription"]) == ("Approved", "looked at the report")
    assert described["LastModifiedTime"] >= described["CreationTime"]

    code, message = error_of(sagemaker.update_model_package, ModelPackageArn=arn, ModelApprovalStatus="Maybe")
    assert code == "ValidationException" and "Maybe" in message
    assert sagemaker.describe_model_package(ModelPackageName=arn)["ModelApprovalStatus"] == "Approved"


@pytest.mark.parametrize("group, given, problem", [
    ("reg-long-value", {"CustomerMetadataProperties": {"k": "v" * 257}}, "1 to 256 characters"),
    ("reg-long-key", {"CustomerMetadataProperties": {"k" * 129: "v"}}, "1 to 128 characters"),
    ("reg-bad-key", {"CustomerMetadataProperties": {"owner!": "v"}}, "'owner!' may hold only"),
    ("reg-many-keys", {"CustomerMetadataProperties": {f"k{i}": "v" for i in range(51)}}, "1 to 50 entries"),
    ("reg-long-description", {"ModelPackageDescription": "d" * 1025}, "at most 1024 characters"),
])
def test_what_the_api_model_does_not_allow_is_refused(local_aws, group, given, problem):
    sagemaker = new_group(local_aws, group)
    code, message = error_of(sagemaker.create_model_package, ModelPackageGroupName=group,
                             InferenceSpecification=inference(), **given)
    assert code == "ValidationException" and problem in message
    assert sagemaker.list_model_packages(ModelPackageGroupName=group)["ModelPackageSummaryList"] == []
    if "CustomerMetadataProperties" in given:
        arn = register(sagemaker, group, CustomerMetadataProperties={"kept": "yes"})
        code, message = error_of(sagemaker.update_model_package, ModelPackageArn=arn, **given)
        assert code == "ValidationException" and problem in message
        assert sagemaker.describe_model_package(ModelPackageName=arn)["CustomerMetadataProperties"] == {"kept": "yes"}


def received(sqs, queue_url: str) -> list[dict]:
    messages = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1).get("Messages", [])
    return [json.loads(m["Body"]) for m in messages]


def test_an_approval_sends_one_event_to_a_rules_queue(local_aws, rule):
    sqs = client(local_aws, "sqs")
    queue_url = sqs.create_queue(QueueName="reg-events")["QueueUrl"]
    queue = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    rule("reg-events", approval_pattern("reg-events"), [{"Id": "queue", "Arn": queue}])
    sagemaker = new_group(local_aws, "reg-events")
    arn = register(sagemaker, "reg-events")
    assert received(sqs, queue_url) == []  # PendingManualApproval: the rule does not match

    started = time.time()
    sagemaker.update_model_package(ModelPackageArn=arn, ModelApprovalStatus="Approved")
    [event] = received(sqs, queue_url)
    assert (event["source"], event["detail-type"]) == ("aws.sagemaker", "SageMaker Model Package State Change")
    assert event["resources"] == [arn]
    detail = event["detail"]
    assert (detail["ModelPackageArn"], detail["ModelPackageVersion"], detail["ModelPackageGroupName"]) == (
        arn, 1, "reg-events")
    assert (detail["ModelApprovalStatus"], detail["ModelPackageStatus"]) == ("Approved", "Completed")
    assert detail["InferenceSpecification"] == inference()
    # Epoch milliseconds, as SageMaker's events give times.
    assert isinstance(detail["CreationTime"], int) and abs(detail["CreationTime"] / 1000 - started) < 60
    assert detail["LastModifiedTime"] >= detail["CreationTime"]
    assert received(sqs, queue_url) == []


def finished_build(codebuild, project: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while not (ids := codebuild.list_builds_for_project(projectName=project)["ids"]):
        assert time.monotonic() < deadline, f"no build of {project}"
        time.sleep(0.2)
    while (build := codebuild.batch_get_builds(ids=ids)["builds"][0])["buildStatus"] == "IN_PROGRESS":
        assert time.monotonic() < deadline, build
        time.sleep(0.2)
    return build


def test_a_rejection_starts_a_codebuild_target_with_the_package_arn(local_aws, rule, tmp_path):
    written = tmp_path / "package.txt"
    codebuild = client(local_aws, "codebuild")
    project = inline_build_project(local_aws, "reg-build", [f'printf %s "$PACKAGE" > {written}'])
    rule("reg-build", approval_pattern("reg-build"), [{
        "Id": "build", "Arn": project, "RoleArn": ROLE, "InputTransformer": {
            "InputPathsMap": {"arn": "$.detail.ModelPackageArn"},
            "InputTemplate": '{"environmentVariablesOverride": [{"name": "PACKAGE", "value": "<arn>", '
                             '"type": "PLAINTEXT"}]}'}}])
    sagemaker = new_group(local_aws, "reg-build")
    arn = register(sagemaker, "reg-build")
    time.sleep(0.5)
    assert codebuild.list_builds_for_project(projectName="reg-build")["ids"] == []

    sagemaker.update_model_package(ModelPackageArn=arn, ModelApprovalStatus="Rejected")
    build = finished_build(codebuild, "reg-build")
    assert build["buildStatus"] == "SUCCEEDED", build
    assert written.read_text() == arn


def test_versions_and_groups_are_deleted_as_aws_deletes_them(local_aws):
    sagemaker = new_group(local_aws, "reg-delete")
    first, second = register(sagemaker, "reg-delete"), register(sagemaker, "reg-delete")
    code, message = error_of(sagemaker.delete_model_package_group, ModelPackageGroupName="reg-delete")
    assert code == "ConflictException" and "versions 1, 2" in message

    sagemaker.delete_model_package(ModelPackageName=first)
    sagemaker.delete_model_package(ModelPackageName=second)
    assert sagemaker.list_model_packages(ModelPackageGroupName="reg-delete")["ModelPackageSummaryList"] == []
    for call, kwargs in ((sagemaker.describe_model_package, {"ModelPackageName": first}),
                         (sagemaker.delete_model_package, {"ModelPackageName": first})):
        assert error_of(call, **kwargs)[0] == "ValidationException"

    group_arn = sagemaker.describe_model_package_group(ModelPackageGroupName="reg-delete")["ModelPackageGroupArn"]
    sagemaker.delete_model_package_group(ModelPackageGroupName=group_arn)
    for call in (sagemaker.describe_model_package_group, sagemaker.delete_model_package_group):
        assert error_of(call, ModelPackageGroupName="reg-delete")[0] == "ValidationException"

    sagemaker.create_model_package(ModelPackageName="reg-delete-unversioned", InferenceSpecification=inference())
    sagemaker.delete_model_package(ModelPackageName="reg-delete-unversioned")
    assert error_of(sagemaker.describe_model_package, ModelPackageName="reg-delete-unversioned")[0] == \
        "ValidationException"


def wait_endpoint(sagemaker, name: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while (described := sagemaker.describe_endpoint(EndpointName=name))["EndpointStatus"] == "Creating":
        assert time.monotonic() < deadline, described
        time.sleep(0.5)
    return described


def host(sagemaker, name: str, container: dict) -> dict:
    """A model of `container` behind an endpoint of its name; the endpoint once created (or failed)."""
    sagemaker.create_model(ModelName=name, ExecutionRoleArn=ROLE, PrimaryContainer=container)
    sagemaker.create_endpoint_config(EndpointConfigName=name, ProductionVariants=[{
        "VariantName": "A", "ModelName": name, "InitialInstanceCount": 1, "InstanceType": "ml.m5.large"}])
    sagemaker.create_endpoint(EndpointName=name, EndpointConfigName=name)
    return wait_endpoint(sagemaker, name)


def test_a_model_made_from_a_package_is_hosted(local_aws, trained_job):
    data = upload(local_aws, "reg-hosted/model.tar.gz", model_tarball(trained_job.model_dir))
    sagemaker = new_group(local_aws, "reg-hosted")
    # The package's container cannot serve as it is: the model's Environment must win.
    arn = register(sagemaker, "reg-hosted", ModelApprovalStatus="Approved",
                   InferenceSpecification=inference(ModelDataUrl=data, Environment={"DAGM_DEVICE": "tpu"}))
    code, _ = error_of(sagemaker.create_model, ModelName="reg-hosted-nowhere", ExecutionRoleArn=ROLE,
                       PrimaryContainer={"ModelPackageName": arn.rsplit("/", 1)[0] + "/99"})
    assert code == "ValidationException"

    given = {"ModelPackageName": arn, "Environment": {"DAGM_DEVICE": "cpu"}}
    described = host(sagemaker, "reg-hosted", given)
    assert described["EndpointStatus"] == "InService", described.get("FailureReason")
    assert sagemaker.describe_model(ModelName="reg-hosted")["PrimaryContainer"] == given
    reply = client(local_aws, "sagemaker-runtime").invoke_endpoint(
        EndpointName="reg-hosted", ContentType="image/png", Body=noise_png())
    (prediction,) = json.loads(reply["Body"].read())["predictions"]
    assert 0.0 <= prediction["score"] <= 1.0
    sagemaker.delete_endpoint(EndpointName="reg-hosted")

    # Without the model's Environment, the package container's reaches the serve process.
    failed = host(sagemaker, "reg-hosted-bare", {"ModelPackageName": arn})
    assert failed["EndpointStatus"] == "Failed" and "DAGM_DEVICE" in failed["FailureReason"]
