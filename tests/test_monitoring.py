"""Learning from live traffic, end to end on the local AWS with the template's own
resources (tools/retraining_stack.py): an endpoint deployed with data capture, the
hourly MonitorSchedule fired through the local AWS's schedules, its Monitor build
(deploy/monitor-buildspec.yml: dagm-drift --capture) quiet on clean images and raising
CapturedDriftAlarm on brighter ones, whose alarm starts the Retrain build as the live
DriftAlarm does; then dagm-label-draft turns the captured images into a profile that
`dagm-retrain validate` refuses until labelled and accepts once labelled (image-level
labels, no masks), and
`dagm-retrain run` retrains on it and registers the model for approval, as the template's
Retrain build does (tests/test_retrain.py approves one and rolls one out)."""

from __future__ import annotations

import base64
import csv
import io
import json
import subprocess
import sys
import time
import urllib.request
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from conftest import REPO, TINY_HPS, aws_client, aws_env, model_tarball, png, upload
from test_deploy import ROLE, deploy_command, run, variants_of
from test_drift import brighter, split_images

pytestmark = pytest.mark.slow

BUCKET, ENDPOINT = "dagm-watch", "watched-line"
CAPTURE = f"s3://{BUCKET}/capture"
STACK = REPO / "tools" / "retraining_stack.py"
LABEL_DRAFT = [sys.executable, "-m", "dagm_deploy.label_draft"]
RETRAIN = [sys.executable, "-m", "dagm_deploy.retrain"]


def fire(url: str, rule: str) -> None:
    request = urllib.request.Request(f"{url}/_local_aws/schedules", method="POST",
                                     data=json.dumps({"rule": rule}).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status in (200, 202)


def builds(url: str, project: str) -> list[dict]:
    codebuild = aws_client(url, "codebuild")
    ids = codebuild.list_builds_for_project(projectName=project)["ids"]
    return codebuild.batch_get_builds(ids=ids)["builds"] if ids else []


def finished_build(url: str, project: str, count: int, timeout: float = 120) -> dict:
    """The project's `count`-th build, once it has finished."""
    deadline = time.monotonic() + timeout
    while True:
        done = [b for b in builds(url, project) if b["buildStatus"] != "IN_PROGRESS"]
        if len(done) >= count:
            return done[0] if len(done) == 1 else sorted(done, key=lambda b: b["startTime"])[count - 1]
        assert time.monotonic() < deadline, f"{project}: build {count} did not finish"
        time.sleep(0.5)


def alarm_state(url: str, name: str, wanted: str, timeout: float = 30) -> str:
    cloudwatch, deadline = aws_client(url, "cloudwatch"), time.monotonic() + timeout
    while (state := cloudwatch.describe_alarms(AlarmNames=[name])["MetricAlarms"][0]["StateValue"]) != wanted:
        if time.monotonic() > deadline:
            return state
        time.sleep(0.5)
    return state


def captured_records(url: str) -> int:
    s3 = aws_client(url, "s3")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="capture/").get("Contents", [])]
    return sum(len(s3.get_object(Bucket=BUCKET, Key=k)["Body"].read().splitlines()) for k in keys)


def send(url: str, images, expected_records: int) -> None:
    runtime = aws_client(url, "sagemaker-runtime")
    for image in images:
        runtime.invoke_endpoint(EndpointName=ENDPOINT, ContentType="image/png", Body=png(image))
    deadline = time.monotonic() + 30  # the capture is flushed every 2 s
    while captured_records(url) < expected_records:
        assert time.monotonic() < deadline, f"{captured_records(url)} of {expected_records} records captured"
        time.sleep(0.5)


@pytest.fixture(scope="module")
def stack(local_aws, trained_job, tiny_dataset) -> dict:
    aws_client(local_aws, "s3").create_bucket(Bucket=BUCKET)
    for path in sorted(p for p in tiny_dataset.rglob("*") if p.is_file()):
        upload(local_aws, "dagm/" + path.relative_to(tiny_dataset).as_posix(), path.read_bytes(), bucket=BUCKET)
    topic = aws_client(local_aws, "sns").create_topic(Name="dagm-watch")["TopicArn"]
    made = subprocess.run([sys.executable, str(STACK), "--bucket", BUCKET, "--endpoint", ENDPOINT, "--topic", topic,
                           "--parameter", "ProjectName=watch"], capture_output=True, text=True, env=aws_env(local_aws))
    assert made.returncode == 0, made.stderr
    model = upload(local_aws, "models/v1/model.tar.gz", model_tarball(trained_job.model_dir), bucket=BUCKET)
    deployed = run(local_aws, *deploy_command(local_aws, ENDPOINT, "v1", model, "--capture-uri", CAPTURE))
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    return {**json.loads(made.stdout), "topic": topic}


def test_the_scheduled_monitor_judges_captured_images_and_raises_its_alarm(local_aws, stack, tiny_dataset):
    monitor, alarm = stack["monitor_project"], stack["captured_alarm"]
    assert stack["rules"]["MonitorSchedule"] == "rate(1 hour)"
    clean = [image for images in split_images(tiny_dataset, "Test").values() for image in images][:12]
    send(local_aws, clean, 12)
    fire(local_aws, "MonitorSchedule")
    quiet = finished_build(local_aws, monitor, 1)
    assert quiet["buildStatus"] == "SUCCEEDED"
    assert alarm_state(local_aws, alarm, "OK") == "OK"
    s3 = aws_client(local_aws, "s3")
    reports = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix=f"monitoring/{ENDPOINT}/").get("Contents", [])]
    (violations_key,) = [k for k in reports if k.endswith("constraint_violations.json")]
    assert json.loads(s3.get_object(Bucket=BUCKET, Key=violations_key)["Body"].read())["violations"] == []

    retrain_builds = len(builds(local_aws, stack["project"]))
    send(local_aws, [brighter(image) for image in clean for _ in range(4)], 60)
    fire(local_aws, "MonitorSchedule")
    drifted = finished_build(local_aws, monitor, 2)
    assert drifted["buildStatus"] == "SUCCEEDED"  # drift is the alarm's to act on, not a failed build
    assert alarm_state(local_aws, alarm, "ALARM") == "ALARM"
    # RetrainOnDrift starts the Retrain build on the captured drift as on the live one.
    deadline = time.monotonic() + 30
    while len(builds(local_aws, stack["project"])) == retrain_builds:
        assert time.monotonic() < deadline, "the captured drift alarm started no Retrain build"
        time.sleep(0.5)


def test_captured_images_drafted_for_labelling_validate_once_labelled_and_retrain(local_aws, stack, tiny_dataset):
    clean = [image for images in split_images(tiny_dataset, "Test").values() for image in images][:6]
    send(local_aws, [brighter(image) for image in clean], captured_records(local_aws) + 6)
    s3 = aws_client(local_aws, "s3")
    # A white image stamped two hours ago beside the newest captures: the farthest image of
    # all, and outside the --minutes window, so never drafted.
    newest = max(s3.list_objects_v2(Bucket=BUCKET, Prefix="capture/")["Contents"], key=lambda o: o["LastModified"])
    stale = {"captureData": {"endpointInput": {
                 "observedContentType": "image/png", "mode": "INPUT", "encoding": "BASE64",
                 "data": base64.b64encode(png(np.full((128, 128), 255, np.uint8))).decode()}},
             "eventMetadata": {"eventId": "stale", "inferenceTime":
                               f"{datetime.now(timezone.utc) - timedelta(hours=2):%Y-%m-%dT%H:%M:%SZ}"},
             "eventVersion": "0"}
    s3.put_object(Bucket=BUCKET, Key=newest["Key"].rsplit("/", 1)[0] + "/stale.jsonl", Body=json.dumps(stale).encode())
    out = f"s3://{BUCKET}/labelling/batch-1/"
    drafted = run(local_aws, *LABEL_DRAFT, "--endpoint", ENDPOINT, "--capture", CAPTURE, "--out", out,
                  "--minutes", "60", "--drifted", "4", "--uncertain", "2")
    assert drafted.returncode == 0, drafted.stderr
    assert f"6 of {captured_records(local_aws) - 1} captured images drafted" in drafted.stdout, drafted.stdout
    draft = s3.get_object(Bucket=BUCKET, Key="labelling/batch-1/profile-draft.csv")["Body"].read().decode()
    rows = list(csv.DictReader(io.StringIO(draft)))
    assert len(rows) == 6 and all(r["label"] == "" and r["class"] in ("1", "2") for r in rows)
    selection = json.loads(s3.get_object(Bucket=BUCKET, Key="labelling/batch-1/selection.json")["Body"].read())
    assert [s["why"] for s in selection] == ["drifted"] * 4 + ["uncertain"] * 2
    assert selection[0]["drift_distance"] >= selection[3]["drift_distance"]
    assert "stale" not in {s["eventId"] for s in selection}
    for row in rows:  # each drafted image is there, as the endpoint decoded it
        s3.head_object(Bucket=BUCKET, Key=row["image_key"])

    unlabelled = run(local_aws, *RETRAIN, "validate", "--profile", f"{out}profile-draft.csv")
    assert unlabelled.returncode == 1 and "label" in unlabelled.stdout, unlabelled.stdout + unlabelled.stderr
    labelled = io.StringIO()
    writer = csv.DictWriter(labelled, fieldnames=["image_key", "label", "class", "mask_key"], lineterminator="\n")
    writer.writeheader()
    # Filled in with labels alone: two defective images, neither with a mask (image-level).
    writer.writerows({**row, "label": "defective" if n < 2 else "good"} for n, row in enumerate(rows))
    upload(local_aws, "profiles-labelled/batch-1.csv", labelled.getvalue().encode(), bucket=BUCKET)
    valid = run(local_aws, *RETRAIN, "validate", "--profile", f"s3://{BUCKET}/profiles-labelled/batch-1.csv")
    assert valid.returncode == 0, valid.stdout + valid.stderr
    assert json.loads(valid.stdout)["labels"] == {"good": 4, "defective_with_mask": 0, "defective_image_level": 2,
                                                  "empty_masks": 0,
                                                  "budget": "image-level: no defective image has a mask"}

    sns, sqs = aws_client(local_aws, "sns"), aws_client(local_aws, "sqs")
    inbox = sqs.create_queue(QueueName="dagm-watch-inbox")["QueueUrl"]
    inbox_arn = sqs.get_queue_attributes(QueueUrl=inbox, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    sns.subscribe(TopicArn=stack["topic"], Protocol="sqs", Endpoint=inbox_arn)
    group, profile = stack["model_package_group"], f"s3://{BUCKET}/profiles-labelled/batch-1.csv"
    retrained = run(local_aws, *RETRAIN, "run", "--profile", profile, "--data", f"s3://{BUCKET}/dagm/",
                    "--endpoint", ENDPOINT, "--role", ROLE, "--training-image", "dagm-defects-train:latest",
                    "--topic", stack["topic"], "--model-package-group", group, "--margin", "1",
                    "--max-false-reject", "1",
                    "--hyperparameters", json.dumps(TINY_HPS), "--poll-seconds", "0.3", timeout=600)
    assert retrained.returncode == 0, retrained.stdout + retrained.stderr
    outcome = json.loads(s3.get_object(Bucket=BUCKET, Key="processed/profiles-labelled/batch-1.csv.result.json")
                         ["Body"].read())
    assert outcome["outcome"] == "registered" and outcome["dataset"]["added"] == 6, outcome
    assert "2 defective image-level only" in retrained.stdout, retrained.stdout
    assert outcome["gate"]["passed"] and outcome["gate"]["margin"] == 1.0, outcome["gate"]
    package = aws_client(local_aws, "sagemaker").describe_model_package(ModelPackageName=outcome["model_package"])
    assert (package["ModelPackageGroupName"], package["ModelApprovalStatus"]) == (group, "PendingManualApproval")
    assert package["CustomerMetadataProperties"]["profile"] == profile
    [notice] = [json.loads(m["Body"]) for m in sqs.receive_message(QueueUrl=inbox, MaxNumberOfMessages=10)["Messages"]]
    assert notice["Subject"] == f"DAGM retraining: model from profiles-labelled/batch-1.csv awaits approval in {group}"
    assert json.loads(notice["Message"].split("\n", 1)[1])["model_package"] == outcome["model_package"]
    # Registered, not deployed: approving it deploys it (tests/test_retrain.py).
    assert variants_of(local_aws, ENDPOINT) == {"v-v1": 1.0}
