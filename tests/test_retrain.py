"""dagm-retrain run on the local AWS: a broken profile is rejected with its whole
report and nothing lost, a candidate that fails the gate is not deployed (and is
registered Rejected with the gate's reasons), and a valid profile ends as a rolled-out
model trained on the old data plus the new rows; and the same flow started the way
pipeline.yml starts it, by uploading a profile: the model is registered
PendingManualApproval with its job's evaluation, nothing is deployed until
`dagm-registry approve`, whose event starts the Deploy build and its canary."""

from __future__ import annotations

import io
import json
import re
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from PIL import Image

from dagm_defects.data.labels import parse_labels
from dagm_defects.data.profile import validate_profile
from dagm_defects.data.reader import read_index
from dagm_deploy import dataset_prep, s3_objects
from dagm_synth import generate_dataset

from conftest import REPO, TINY_HPS, aws_client, build_log, model_tarball, png, upload
from test_deploy import DEPLOY, ROLE, Load, deploy_command, run, variants_of

pytestmark = pytest.mark.slow

RETRAIN = [sys.executable, "-m", "dagm_deploy.retrain"]
STACK = REPO / "tools" / "retraining_stack.py"
BUCKET = "dagm-quality"
ENDPOINT = "retrained"
FAST = ["--steps", "50,100", "--bake-seconds", "1", "--poll-seconds", "0.3", "--alarm-period", "10"]


@dataclass
class World:
    url: str
    topic: str
    queue: str
    new_rows: list[str]  # CSV rows of the new images, uploaded under incoming/
    incoming: list[str]  # every key under incoming/: they must all stay

    def messages(self) -> list[dict]:
        sqs, found = aws_client(self.url, "sqs"), []
        while batch := sqs.receive_message(QueueUrl=self.queue, MaxNumberOfMessages=10).get("Messages", []):
            for message in batch:
                found.append(json.loads(message["Body"]))
                sqs.delete_message(QueueUrl=self.queue, ReceiptHandle=message["ReceiptHandle"])
        return found

    def keys(self, prefix: str = "") -> list[str]:
        listed = aws_client(self.url, "s3").list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])
        return [item["Key"] for item in listed]

    def read(self, key: str) -> bytes:
        return aws_client(self.url, "s3").get_object(Bucket=BUCKET, Key=key)["Body"].read()

    def retrain(self, profile_key: str, text: str, *extra: str):
        upload(self.url, profile_key, text.encode(), bucket=BUCKET)
        return self.run_flow("--profile", f"s3://{BUCKET}/{profile_key}", *extra)

    def run_flow(self, *extra: str):
        return run(self.url, *RETRAIN, "run", "--data", f"s3://{BUCKET}/dagm/", "--endpoint", ENDPOINT,
                   "--role", ROLE, "--training-image", "dagm-defects-train:latest", "--topic", self.topic, *FAST,
                   *extra)


def _upload_tree(url: str, root: Path, prefix: str) -> None:
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        upload(url, prefix + path.relative_to(root).as_posix(), path.read_bytes(), bucket=BUCKET)


@pytest.fixture(scope="module")
def world(local_aws, tiny_dataset, trained_job, tmp_path_factory) -> World:
    _upload_tree(local_aws, tiny_dataset, "dagm/")
    new = tmp_path_factory.mktemp("new") / "data"
    generate_dataset(new, classes=[1, 2], images_per_split=6, size=128, seed=11, workers=1)
    rows = []
    for class_id in (1, 2):
        train = new / f"Class{class_id}" / "Train"
        _upload_tree(local_aws, train, f"incoming/Class{class_id}/")
        labels = parse_labels((train / "Label" / "Labels.txt").read_text())[0]
        # The first defect of each class is labelled at image level: its mask is left out.
        image_level = next(label for label in labels if label.defective)
        for label in labels:
            mask = f"incoming/Class{class_id}/Label/{label.mask}" if label.mask and label is not image_level else ""
            rows.append(f"incoming/Class{class_id}/{label.image},{'defective' if label.defective else 'good'},"
                        f"{mask},{class_id}")
    v1 = upload(local_aws, "serving/v1/model.tar.gz", model_tarball(trained_job.model_dir), bucket=BUCKET)
    deployed = run(local_aws, *deploy_command(local_aws, ENDPOINT, "v1", v1))
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    sns, sqs = aws_client(local_aws, "sns"), aws_client(local_aws, "sqs")
    topic = sns.create_topic(Name="dagm-retraining")["TopicArn"]
    queue = sqs.create_queue(QueueName="dagm-retraining-inbox")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=arn)
    world = World(local_aws, topic, queue, rows, [])
    world.incoming = world.keys("incoming/")
    return world


def _training_jobs(url: str) -> int:
    return len(aws_client(url, "sagemaker").list_training_jobs()["TrainingJobSummaries"])


def test_a_profile_of_every_label_budget_prepares_into_labels_the_trainer_reads(local_aws, tmp_path):
    """Validated, then prepared on the local S3 (no training): a good row, a defect with a
    mask, one labelled at image level and one with an all-zero mask, read back from the
    prepared prefix by the training job's own reader."""
    generate_dataset(tmp_path / "base", classes=[1], images_per_split=4, size=64, seed=5, workers=1)
    _upload_tree(local_aws, tmp_path / "base", "budget/dagm/")
    drawn, blank = np.zeros((64, 64), np.uint8), np.zeros((64, 64), np.uint8)
    drawn[20:30, 20:30] = 255
    objects = {f"budget/new/{n}.PNG": png(np.full((64, 64), 90 + n, np.uint8)) for n in range(4)}
    objects.update({"budget/new/1_label.PNG": png(drawn), "budget/new/3_label.PNG": png(blank)})
    for key, data in objects.items():
        upload(local_aws, key, data, bucket=BUCKET)
    profile = ("image_key,label,mask_key,class\nbudget/new/0.PNG,good,,1\n"
               "budget/new/1.PNG,defective,budget/new/1_label.PNG,1\nbudget/new/2.PNG,defective,,1\n"
               "budget/new/3.PNG,defective,budget/new/3_label.PNG,1\n")
    uri = upload(local_aws, "budget/profile.csv", profile.encode(), bucket=BUCKET)
    validated = run(local_aws, *RETRAIN, "validate", "--profile", uri)
    assert validated.returncode == 0, validated.stdout + validated.stderr
    assert json.loads(validated.stdout)["labels"] == {
        "good": 1, "defective_with_mask": 1, "defective_image_level": 2, "empty_masks": 1,
        "budget": "mixed: some defective images have masks, the others image-level labels"}

    s3 = aws_client(local_aws, "s3")
    report = validate_profile("profile.csv", profile, s3_objects.reader(s3, BUCKET))
    prepared = dataset_prep.prepare(s3, f"s3://{BUCKET}/budget/dagm/", report.rows, BUCKET, "batch",
                                    f"s3://{BUCKET}/budget/prepared/")
    assert prepared.added == 4 and prepared.classes == [1]
    local = tmp_path / "prepared"
    for key in s3_objects.keys_under(s3, BUCKET, "budget/prepared/"):
        path = local / key.removeprefix("budget/prepared/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())
    samples = [s for s in read_index(local, splits=("Train",)) if s.image_path.name.startswith("batch_")]
    assert [(s.defective, s.mask_path is not None) for s in samples] == [
        (False, False), (True, True), (True, False), (True, True)]
    # The all-zero mask travels as it is: training counts it as an image-level label too.
    assert not np.asarray(Image.open(samples[3].mask_path)).any()


def test_a_broken_profile_is_rejected_with_every_problem_and_nothing_lost(world):
    before = _training_jobs(world.url)
    broken = "\n".join(["image_key,label,mask_key,class", world.new_rows[0],
                        "incoming/Class1/0001.PNG,maybe,,1",                  # row 3: bad label
                        "incoming/Class1/nope.PNG,good,,1",                   # row 4: missing object
                        world.new_rows[0].split(",")[0] + ",defective,,1",    # row 5: a duplicate
                        "incoming/Class1/0002.PNG,good,,12"]) + "\n"          # row 6: no such class
    result = world.retrain("profiles/broken.csv", broken)
    assert result.returncode == 1, result.stdout + result.stderr
    report = json.loads(world.read("rejected/profiles/broken.csv.report.json"))
    problems = report["validation"]["problems"]
    for expected in ("row 3: label 'maybe'", "row 4: image incoming/Class1/nope.PNG does not exist",
                     f"row 5: image {world.new_rows[0].split(',')[0]} is already listed in row 2",
                     "row 6: class '12'"):
        assert any(p.startswith(expected) for p in problems), problems
    assert world.read("rejected/profiles/broken.csv").decode() == broken  # moved whole
    assert "profiles/broken.csv" not in world.keys("profiles/")
    assert world.keys("incoming/") == world.incoming and _training_jobs(world.url) == before
    [message] = world.messages()
    assert "rejected" in message["Subject"] and "row 3: label 'maybe'" in message["Message"]


def test_a_candidate_that_fails_the_gate_is_not_deployed(world):
    profile = "image_key,label,mask_key,class\n" + "\n".join(world.new_rows) + "\n"
    hps = json.dumps({**TINY_HPS, "epochs": "1"})
    # A margin of -1 asks every class to gain a whole unit of AP: no candidate can.
    result = world.retrain("profiles/weak.csv", profile, "--hyperparameters", hps, "--margin", "-1",
                           "--model-package-group", "retrain-gated")
    assert result.returncode == 1, result.stdout + result.stderr
    outcome = json.loads(world.read("processed/profiles/weak.csv.result.json"))
    assert outcome["outcome"] == "gate_failed", outcome
    # Registered all the same, Rejected, with the gate's reasons: nothing trained is dropped.
    package = aws_client(world.url, "sagemaker").describe_model_package(ModelPackageName=outcome["model_package"])
    assert package["ModelApprovalStatus"] == "Rejected" and package["ModelPackageGroupName"] == "retrain-gated"
    assert package["ModelPackageDescription"].startswith("Quality gate failed: class 1: AP")
    assert package["CustomerMetadataProperties"]["profile"] == f"s3://{BUCKET}/profiles/weak.csv"
    assert [reason.split(":")[0] for reason in outcome["gate"]["reasons"]] == ["class 1", "class 2", "class overall"]
    assert {row["class"] for row in outcome["comparison"]} == {"1", "2", "overall"}
    assert "class  candidate  serving" in result.stdout
    # The gate names the MLflow runs of both models: the serving one from its model.json.
    runs = outcome["gate"]["mlflow_runs"]
    assert len(runs["candidate"]) == 32 and len(runs["serving"]) == 32 and runs["candidate"] != runs["serving"]
    assert f"MLflow runs: candidate {runs['candidate']}, serving {runs['serving']}" in result.stdout
    assert variants_of(world.url, ENDPOINT) == {"v-v1": 1.0}
    [message] = world.messages()
    assert "failed the quality gate" in message["Subject"]


def test_a_valid_profile_becomes_a_rolled_out_model_trained_on_old_and_new_data(world):
    profile = "image_key,label,mask_key,class\n" + "\n".join(world.new_rows) + "\n"
    hps = {**TINY_HPS, "epochs": "1"}
    # Two profiles wait; --waiting takes the oldest (S3 keeps LastModified to the second).
    upload(world.url, "profiles/batch-7.csv", profile.encode(), bucket=BUCKET)
    time.sleep(1.1)
    upload(world.url, "profiles/batch-8.csv", profile.encode(), bucket=BUCKET)
    result = world.run_flow("--waiting", f"s3://{BUCKET}/profiles/", "--hyperparameters", json.dumps(hps),
                            "--warm-start", "--margin", "1.0", "--max-false-reject", "1")
    assert result.returncode == 0, result.stdout + result.stderr
    assert world.keys("profiles/") == ["profiles/batch-8.csv"]
    # Left for no later test: the drift alarm's test counts on its own profiles alone waiting.
    aws_client(world.url, "s3").delete_object(Bucket=BUCKET, Key="profiles/batch-8.csv")
    outcome = json.loads(world.read("processed/profiles/batch-7.csv.result.json"))
    assert outcome["outcome"] == "deployed" and outcome["serving"]["variant"] == "v-v1"
    assert outcome["profile"] == f"s3://{BUCKET}/profiles/batch-7.csv"
    assert variants_of(world.url, ENDPOINT) == {outcome["variant"]: 1.0}
    # The job got the given hyperparameters, and the serving model's weights to start from.
    job = aws_client(world.url, "sagemaker").describe_training_job(TrainingJobName=outcome["job"])
    assert job["HyperParameters"] == {**hps, "warm_start": "true"}, job["HyperParameters"]
    # The canary went through the given steps, each baked for the given time (FAST).
    assert re.findall(r"at (\d+)%: baking (\d+) s", result.stdout) == [("50", "1"), ("100", "1")], result.stdout

    # The prepared channel: every old object plus the profile's rows in both Labels.txt,
    # one image-level label among them per class, which the job trained and was scored with.
    dataset = outcome["dataset"]["uri"].removeprefix(f"s3://{BUCKET}/")
    assert outcome["dataset"]["added"] == len(world.new_rows) == 12
    assert outcome["validation"]["labels"]["defective_image_level"] == 2
    for class_id in (1, 2):
        labels, problems = parse_labels(world.read(f"{dataset}Class{class_id}/Train/Label/Labels.txt").decode())
        assert not problems and len(labels) == 16 + 6
        assert len([label for label in labels if label.defective and label.mask is None]) == 1
        for label in labels:
            assert f"{dataset}Class{class_id}/Train/{label.image}" in world.keys(dataset)
    # The held-out Test splits have every defect's mask: pixel metrics cover all of them.
    tested = outcome["gate"]["test_labels"]
    assert tested["defective_image_level"] == 0 and tested["defective_with_mask"] > 0, tested
    assert outcome["gate"]["pixel"]["images"] == tested["images"], outcome["gate"]
    assert f"test labels: {tested['images']} images" in result.stdout
    assert len([k for k in world.keys(dataset) if "/Test/" in k]) == len([k for k in world.keys("dagm/") if "/Test/" in k])
    assert json.loads(world.read("datasets/current.json"))["data"] == outcome["dataset"]["uri"]
    assert world.keys("incoming/") == world.incoming
    [message] = world.messages()
    assert "now serves" in message["Subject"]
    assert json.loads(message["Message"].split("\n", 1)[1])["comparison"]


def test_uploading_a_profile_runs_the_flow_through_eventbridge_and_codebuild(world):
    # The template's own rules, project and buildspec; only the waits are shortened.
    made = run(world.url, sys.executable, str(STACK), "--bucket", BUCKET, "--endpoint", ENDPOINT,
               "--topic", world.topic, "--role", ROLE, "--alarm-period", "10", "--parameter", "BakeSeconds=1",
               "CanarySteps=50,100", "GateMargin=1.0", "MaxFalseReject=1", "WarmStart=false",
               f"RetrainHyperparameters={json.dumps({**TINY_HPS, 'epochs': '1'})}",
               "--variable", "POLL_SECONDS=0.3", "ALARM_PERIOD=10")
    assert made.returncode == 0, made.stdout + made.stderr
    stack = json.loads(made.stdout)
    assert stack["environment"]["PROFILES_URI"] == f"s3://{BUCKET}/profiles/" and stack["environment"]["WARM_START"] == ""

    upload(world.url, "notes/readme.txt", b"not a profile", bucket=BUCKET)  # outside the prefix: no build
    labels = world.read("incoming/Class2/Label/Labels.txt").decode()
    upload(world.url, "profiles/class2.txt", f"# base: incoming/Class2/\n# class: 2\n{labels}".encode(), bucket=BUCKET)
    deadline = time.monotonic() + 240
    while "processed/profiles/class2.txt.result.json" not in world.keys("processed/"):
        assert time.monotonic() < deadline, world.keys()
        time.sleep(1)
    outcome = json.loads(world.read("processed/profiles/class2.txt.result.json"))
    assert outcome["outcome"] == "registered" and outcome["dataset"]["added"] == 6, outcome
    codebuild = aws_client(world.url, "codebuild")
    [build_id] = codebuild.list_builds_for_project(projectName=stack["project"])["ids"]
    build = _finished(codebuild, build_id)
    assert build["buildStatus"] == "SUCCEEDED"
    assert build["environment"]["environmentVariables"] == [
        {"name": "PROFILE", "value": f"s3://{BUCKET}/profiles/class2.txt", "type": "PLAINTEXT"}]
    [message] = world.messages()
    assert "awaits approval" in message["Subject"]

    # Registered for review with the job's own evaluation; registering deploys nothing.
    sagemaker = aws_client(world.url, "sagemaker")
    package = sagemaker.describe_model_package(ModelPackageName=outcome["model_package"])
    assert package["ModelApprovalStatus"] == "PendingManualApproval"
    assert package["ModelPackageGroupName"] == stack["model_package_group"]
    written = _job_evaluation(world, outcome["model_data"])
    metrics = package["ModelMetrics"]["ModelQuality"]["Statistics"]["S3Uri"]
    assert world.read(metrics.removeprefix(f"s3://{BUCKET}/")) == written
    evaluation = json.loads(written)
    metadata = package["CustomerMetadataProperties"]
    assert float(metadata["test-ap"]) == evaluation["overall"]["ap"] and metadata["training-job"] == outcome["job"]
    assert float(metadata["ap-class-2"]) == evaluation["per_class"]["2"]["ap"]
    assert metadata["dataset"] == outcome["dataset"]["uri"] and metadata["profile"] == outcome["profile"]
    [container] = package["InferenceSpecification"]["Containers"]
    assert (container["Image"], container["ModelDataUrl"]) == ("dagm-defects-serve:latest", outcome["model_data"])
    assert "image/png" in package["InferenceSpecification"]["SupportedContentTypes"]
    time.sleep(2)
    assert codebuild.list_builds_for_project(projectName=stack["deploy_project"])["ids"] == []
    before = variants_of(world.url, ENDPOINT)
    assert len(before) == 1 and outcome["serving"]["variant"] in before

    # Each approval or rejection starts a Deploy build (the template's rule): approving rolls
    # the version out through the canary, a newer approved version follows, rejecting it
    # returns to the first, and approving the first again (a stale event) changes nothing.
    first = outcome["model_package"]
    with Load(world.url, ENDPOINT) as load:
        approve = _deploy_build(world, stack, lambda: _decide(world, "approve", first))
        assert _serving_package(world) == first and variants_of(world.url, ENDPOINT).keys().isdisjoint(before)
        registered = []
        newer = _deploy_build(world, stack, lambda: registered.append(sagemaker.create_model_package(
            ModelPackageGroupName=stack["model_package_group"], ModelApprovalStatus="Approved",
            InferenceSpecification=package["InferenceSpecification"])["ModelPackageArn"]))
        [second] = registered
        assert _serving_package(world) == second
        reject = _deploy_build(world, stack, lambda: _decide(world, "reject", second))
        assert _serving_package(world) == first
        stale = _deploy_build(world, stack, lambda: _decide(world, "approve", first))
        assert _serving_package(world) == first
    assert not load.failures, load.failures[:5]
    assert {"name": "APPROVAL_STATUS", "value": "Approved", "type": "PLAINTEXT"} in \
        approve["environment"]["environmentVariables"]
    assert {"name": "APPROVAL_STATUS", "value": "Rejected", "type": "PLAINTEXT"} in \
        reject["environment"]["environmentVariables"]
    assert "at 50%" in newer["log"] and "at 50%" in reject["log"]  # both through the canary
    assert "already serves all traffic" in stale["log"] and "at 50%" not in stale["log"]


def _decide(world: World, decision: str, package: str) -> None:
    decided = run(world.url, sys.executable, "-m", "dagm_deploy.registry_cli", decision, "--model-package",
                  package, "--note", f"{decision} in the test")
    assert decided.returncode == 0, decided.stdout + decided.stderr


def _deploy_build(world: World, stack: dict, change: Callable[[], None]) -> dict:
    """The Deploy build that `change` to the registry starts (by its event), finished and
    SUCCEEDED, with its "log"."""
    codebuild = aws_client(world.url, "codebuild")
    started = len(codebuild.list_builds_for_project(projectName=stack["deploy_project"])["ids"])
    change()
    deadline = time.monotonic() + 60
    while len(ids := codebuild.list_builds_for_project(projectName=stack["deploy_project"])["ids"]) == started:
        assert time.monotonic() < deadline
        time.sleep(0.5)
    [build_id] = ids[started:]  # one event, one build (moto lists builds in the order they started)
    build = _finished(codebuild, build_id, 240)
    log = build_log(world.url, build_id)
    assert build["buildStatus"] == "SUCCEEDED", log
    return {**build, "log": log}


def _serving_package(world: World) -> str:
    [variant] = json.loads(run(world.url, *DEPLOY, "status", "--endpoint", ENDPOINT).stdout)["variants"]
    assert variant["approval"] == "Approved" and variants_of(world.url, ENDPOINT) == {variant["variant"]: 1.0}
    return variant["model_package"]


def _finished(codebuild, build_id: str, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while (build := codebuild.batch_get_builds(ids=[build_id])["builds"][0])["buildStatus"] == "IN_PROGRESS":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    return build


def _job_evaluation(world: World, model_data: str) -> bytes:
    """evaluation.json as the job wrote it, from its output.tar.gz."""
    archive = world.read(model_data.removeprefix(f"s3://{BUCKET}/").rsplit("/", 1)[0] + "/output.tar.gz")
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        return tar.extractfile("evaluation.json").read()


def test_a_drift_alarm_runs_the_oldest_waiting_profile(world):
    # The stack from the test above; without the upload rule's target, profiles wait.
    aws_client(world.url, "events").remove_targets(Rule="RetrainOnProfile", Ids=["retrain"])
    # Invalid profiles keep this test quick: being rejected shows which one the flow took.
    upload(world.url, "profiles/older.csv", b"image_key,label,class\nnope.PNG,good,1\n", bucket=BUCKET)
    time.sleep(1.1)
    upload(world.url, "profiles/newer.csv", b"image_key,label,class\nnope.PNG,good,1\n", bucket=BUCKET)
    time.sleep(2)
    assert "rejected/profiles/older.csv" not in world.keys("rejected/")  # nothing runs without the alarm

    aws_client(world.url, "cloudwatch").put_metric_data(Namespace="DAGM/Inputs", MetricData=[{
        "MetricName": "DriftScore", "Value": 7.5, "Dimensions": [{"Name": "EndpointName", "Value": ENDPOINT}]}])
    # The notice is the flow's last step: the report is written before the profile moves.
    deadline = time.monotonic() + 60
    while not any("older.csv rejected" in m["Subject"] for m in world.messages()):
        assert time.monotonic() < deadline, world.keys()
        time.sleep(0.5)
    assert "rejected/profiles/older.csv.report.json" in world.keys("rejected/")
    assert world.keys("profiles/") == ["profiles/newer.csv"]
