"""Registered models through dagm-deploy and dagm-registry on the local AWS: only an
Approved package is deployed and a refusal changes nothing; the group's newest Approved
version serves, through the canary under client load, and `status` names it; a duplicate
or stale approval changes nothing and rejecting the serving version returns the endpoint
to the previous Approved one; throttled registry calls are ridden out, or end with the
endpoint on its old model; a deploy that waits for another's lock deploys what is newest
once it holds it. (The approval events starting the deploys: test_retrain.py.)"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from botocore.exceptions import ClientError

from conftest import aws_client, aws_env, model_tarball, upload
from test_deploy import DEPLOY, FAST, ROLE, Load, run, variants_of

pytestmark = pytest.mark.slow

REGISTRY = [sys.executable, "-m", "dagm_deploy.registry_cli"]
IMAGE = "dagm-defects-serve@sha256:" + "ab" * 32


@pytest.fixture(scope="module")
def model_data(local_aws, trained_job) -> str:
    return upload(local_aws, "registered/model.tar.gz", model_tarball(trained_job.model_dir))


def register(url: str, group: str, model_data: str, status: str, **evidence) -> str:
    """A new version of `group`; `evidence`: more of CreateModelPackage's fields (metadata, metrics)."""
    sagemaker = aws_client(url, "sagemaker")
    try:
        sagemaker.describe_model_package_group(ModelPackageGroupName=group)
    except ClientError:
        sagemaker.create_model_package_group(ModelPackageGroupName=group)
    return sagemaker.create_model_package(
        ModelPackageGroupName=group, ModelApprovalStatus=status,
        InferenceSpecification={"Containers": [{"Image": IMAGE, "ModelDataUrl": model_data}],
                                "SupportedContentTypes": ["image/png"], "SupportedResponseMIMETypes": ["application/json"]},
        **evidence)["ModelPackageArn"]


def deploy(url: str, endpoint: str, *source: str, lock_table: str = "dagm-deploy-locks"):
    return run(url, *DEPLOY, "deploy", "--endpoint", endpoint, "--role", ROLE, "--lock-table", lock_table,
               "--steps", "50,100", *FAST, *source)


def serving(url: str, endpoint: str) -> list[dict]:
    return json.loads(run(url, *DEPLOY, "status", "--endpoint", endpoint).stdout)["variants"]


def names(url: str, endpoint: str) -> dict[str, list[str]]:
    """What a deploy to `endpoint` would have made: models, configs, alarms."""
    sagemaker, cloudwatch = aws_client(url, "sagemaker"), aws_client(url, "cloudwatch")
    return {"models": [m["ModelName"] for m in sagemaker.list_models()["Models"] if m["ModelName"].startswith(endpoint)],
            "configs": [c["EndpointConfigName"] for c in sagemaker.list_endpoint_configs()["EndpointConfigs"]
                        if c["EndpointConfigName"].startswith(endpoint)],
            "alarms": [a["AlarmName"] for a in cloudwatch.describe_alarms(AlarmNamePrefix=endpoint)["MetricAlarms"]]}


def test_only_an_approved_package_is_deployed_and_a_refusal_changes_nothing(local_aws, model_data):
    pending = register(local_aws, "reg-refused", model_data, "PendingManualApproval")
    rejected = register(local_aws, "reg-refused", model_data, "Rejected")
    for source, status in (([ "--model-package", pending], "PendingManualApproval"),
                           (["--model-package", rejected], "Rejected"),
                           (["--model-package-group", "reg-refused"], "no Approved version (versions: 2 Rejected, "
                                                                     "1 PendingManualApproval)")):
        refused = deploy(local_aws, "reg-refused", *source, lock_table="reg-refused-locks")
        assert refused.returncode == 1 and status in refused.stderr, refused.stdout + refused.stderr
    both = deploy(local_aws, "reg-refused", "--model-package", pending, "--image", IMAGE, "--model-data", model_data,
                  lock_table="reg-refused-locks")
    assert both.returncode == 1 and "not --model-data/--image and --model-package" in both.stderr, both.stderr
    assert names(local_aws, "reg-refused") == {"models": [], "configs": [], "alarms": []}
    assert "reg-refused" not in [e["EndpointName"] for e in aws_client(local_aws, "sagemaker").list_endpoints()["Endpoints"]]
    with pytest.raises(ClientError, match="ResourceNotFoundException"):  # not even the lock's table was made
        aws_client(local_aws, "dynamodb").describe_table(TableName="reg-refused-locks")


def test_the_newest_approved_version_serves_and_a_rejection_returns_to_the_previous(local_aws, model_data):
    first = register(local_aws, "reg-flow", model_data, "Approved")
    metrics = {"ModelQuality": {"Statistics": {"ContentType": "application/json",
                                               "S3Uri": "s3://dagm-models/models/job-2/evaluation.json"}}}
    metadata = {"test-ap": "0.9512", "training-job": "dagm-train-2"}
    second = register(local_aws, "reg-flow", model_data, "PendingManualApproval", ModelMetrics=metrics,
                      CustomerMetadataProperties=metadata)
    created = deploy(local_aws, "reg-flow", "--model-package-group", "reg-flow")
    assert created.returncode == 0, created.stdout + created.stderr
    [variant] = serving(local_aws, "reg-flow")
    assert (variant["model_package"], variant["model_package_version"], variant["approval"]) == (first, 1, "Approved")
    assert (variant["image"], variant["model_data"]) == (IMAGE, model_data)

    approved = run(local_aws, *REGISTRY, "approve", "--model-package", second, "--note", "reviewed")
    assert approved.returncode == 0 and "reg-flow version 2: PendingManualApproval -> Approved" in approved.stdout
    shown = run(local_aws, *REGISTRY, "show", "--model-package", second)
    assert shown.returncode == 0, shown.stderr
    evidence = json.loads(shown.stdout)
    assert (evidence["ModelPackageArn"], evidence["ModelPackageVersion"], evidence["ModelApprovalStatus"],
            evidence["ApprovalDescription"]) == (second, 2, "Approved", "reviewed")
    assert evidence["InferenceSpecification"]["Containers"] == [{"Image": IMAGE, "ModelDataUrl": model_data}]
    assert evidence["ModelMetrics"] == metrics and evidence["CustomerMetadataProperties"] == metadata
    with Load(local_aws, "reg-flow") as load:
        forward = deploy(local_aws, "reg-flow", "--model-package-group", "reg-flow")
        again = deploy(local_aws, "reg-flow", "--model-package-group", "reg-flow")  # a duplicate event
        stale = run(local_aws, *REGISTRY, "approve", "--model-package", first)  # an older version approved again
        after_stale = deploy(local_aws, "reg-flow", "--model-package-group", "reg-flow")
        listed = run(local_aws, *REGISTRY, "list", "--group", "reg-flow").stdout
        rejected = run(local_aws, *REGISTRY, "reject", "--model-package", second, "--note", "misses scratches")
        back = deploy(local_aws, "reg-flow", "--model-package-group", "reg-flow")
    for result in (forward, again, stale, after_stale, rejected, back):
        assert result.returncode == 0, result.stdout + result.stderr
    assert "v-reg-flow-2 at 50%" in forward.stdout and "already serves all traffic" in again.stdout
    assert "already serves all traffic" in after_stale.stdout
    assert [line.split()[:2] for line in listed.splitlines()[1:]] == [["2", "Approved"], ["1", "Approved"]]
    assert "v-reg-flow-1 at 50%" in back.stdout  # the rollback goes through the canary too
    assert variants_of(local_aws, "reg-flow") == {"v-reg-flow-1": 1.0}
    assert serving(local_aws, "reg-flow")[0]["model_package"] == first
    assert not load.failures, load.failures[:5]
    assert {"v-reg-flow-1", "v-reg-flow-2"} <= set(load.variants)


def test_throttled_registry_calls_are_ridden_out_or_leave_the_old_model(local_aws, model_data, faults):
    first = register(local_aws, "reg-throttled", model_data, "Approved")
    assert deploy(local_aws, "reg-throttled", "--model-package", first).returncode == 0
    second = register(local_aws, "reg-throttled", model_data, "Approved")
    # Twice: botocore's standard retries (5 attempts) ride it out.
    faults.add(service="sagemaker", action="DescribeModelPackage", error="ThrottlingException", times=2)
    faults.add(service="sagemaker", action="ListModelPackages", error="ThrottlingException", times=2)
    ridden = deploy(local_aws, "reg-throttled", "--model-package-group", "reg-throttled")
    assert ridden.returncode == 0, ridden.stdout + ridden.stderr
    assert faults.fired() == [2, 2]
    assert serving(local_aws, "reg-throttled")[0]["model_package"] == second
    faults.clear()

    register(local_aws, "reg-throttled", model_data, "Approved")
    # Throttled for good once the lock is held (the registry is read again there).
    faults.add(service="sagemaker", action="ListModelPackages", error="ThrottlingException", skip=1, times=0)
    stopped = deploy(local_aws, "reg-throttled", "--model-package-group", "reg-throttled")
    assert stopped.returncode == 1 and "ThrottlingException" in stopped.stderr, stopped.stdout + stopped.stderr
    faults.clear()
    assert variants_of(local_aws, "reg-throttled") == {"v-reg-throttled-2": 1.0}
    held = aws_client(local_aws, "dynamodb").get_item(TableName="dagm-deploy-locks",
                                                       Key={"Endpoint": {"S": "reg-throttled"}}).get("Item")
    assert held is None


def test_a_deploy_waits_for_the_lock_then_reads_the_registry_again(local_aws, model_data):
    first = register(local_aws, "reg-queued", model_data, "Approved")
    dynamodb = aws_client(local_aws, "dynamodb")
    assert deploy(local_aws, "reg-queued", "--model-package", first).returncode == 0  # makes the lock table too
    holder = {"Endpoint": {"S": "reg-queued"}, "Owner": {"S": "elsewhere/1/abc"},
              "Since": {"N": f"{time.time():.3f}"}, "Expires": {"N": f"{time.time() + 120:.3f}"}}
    dynamodb.put_item(TableName="dagm-deploy-locks", Item=holder)
    refused = deploy(local_aws, "reg-queued", "--model-package-group", "reg-queued")
    assert refused.returncode == 1 and "elsewhere/1/abc" in refused.stderr, refused.stderr

    waiting = subprocess.Popen([*DEPLOY, "deploy", "--endpoint", "reg-queued", "--role", ROLE, "--steps", "100",
                                "--model-package-group", "reg-queued", "--lock-wait", "60", *FAST],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=aws_env(local_aws))
    time.sleep(3)
    second = register(local_aws, "reg-queued", model_data, "Approved")  # approved while it waits
    dynamodb.delete_item(TableName="dagm-deploy-locks", Key={"Endpoint": {"S": "reg-queued"}})
    output, _ = waiting.communicate(timeout=240)
    assert waiting.returncode == 0, output
    assert "waiting for the deploy lock held by elsewhere/1/abc" in output
    assert f"the registry changed meanwhile: deploying {second}" in output
    assert serving(local_aws, "reg-queued")[0]["model_package"] == second
