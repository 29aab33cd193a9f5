"""Retraining on the quality team's dataset profiles.

    dagm-retrain validate --profile PATH_OR_S3_URI [--root DIR]
    dagm-retrain run --profile s3://BUCKET/profiles/NAME.csv \\
        --data s3://BUCKET/dagm/ --endpoint NAME --role ARN --training-image URI --topic ARN [...]
    dagm-retrain run --waiting s3://BUCKET/profiles/ [...]

`validate` checks a profile (format: code/dagm_defects/data/profile.py; examples in
deploy/examples/) row by row: columns, labels, classes, duplicates, and that every
listed image and mask exists and decodes, each mask at its image's size. A defective row
without a mask (or with an all-zero one) is an image-level label, and a profile without
defective rows a good-only one: both are valid. Keys resolve in the profile's S3 bucket,
or under --root (default: the profile's directory) for a local file. It prints a JSON
report with every problem and its row number, and the label budget it found (`labels`:
good, defective with mask, defective image-level only); exit 0 when the profile is
valid, 1 when not, 2 when the profile itself cannot be read.

`run` is the whole flow, as the S3 upload event starts it (pipeline.yml's
RetrainOnProfile rule) or `--waiting` picks the oldest waiting profile (the drift alarm):
validate -> a prepared training prefix (the data the serving model was trained on plus
the profile's rows, dataset_prep.py) -> a training job with the serving model as its
`model` channel (scored on the same held-out images; --warm-start starts from its
weights) -> the quality gate (quality_gate.py) -> with --model-package-group, the model
registered for review (registry.py: PendingManualApproval when it passed, Rejected with
the gate's reasons when not), whose approval deploys it (pipeline.yml's DeployOnApproval);
without, a canary rollout at once (rollout.py) -> SNS with the comparison. The profile
ends in `rejected/KEY` (invalid, report at `rejected/KEY.report.json`) or `processed/KEY`
(result at `processed/KEY.result.json`); nothing uploaded is deleted. A failed training
job leaves the profile where it was, to be retried. Exit 0 when the new model serves or
awaits approval (or nothing waits), 1 when the profile, the gate or the rollout said no,
2 when the profile cannot be read.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Callable

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from dagm_deploy import dataset_prep
from dagm_deploy import quality_gate
from dagm_deploy import registry
from dagm_deploy import s3_objects
from dagm_deploy import training_job
from dagm_defects.data.profile import ProfileReport, validate_profile
from dagm_deploy.endpoint import Endpoint
from dagm_deploy.errors import Refused
from dagm_deploy.options import Options, name_part, steps
from dagm_deploy.rollout import Rollout
from dagm_deploy.status import status

CURRENT = "current.json"  # under --datasets: the prefix the last rolled-out model trained on


def local_reader(root: Path) -> Callable[[str], bytes | None]:
    def read(key: str) -> bytes | None:
        path = root / key
        return path.read_bytes() if path.is_file() else None

    return read


def load(profile: str, root: str | None) -> tuple[str, str, Callable[[str], bytes | None]]:
    """The profile's name, text and how to read the objects it lists."""
    if profile.startswith("s3://"):
        bucket, key = s3_objects.split(profile)
        read = s3_objects.reader(boto3.client("s3"), bucket)
        data = read(key)
        if data is None:
            raise FileNotFoundError(f"{profile} does not exist")
        return key, data.decode("utf-8-sig"), read
    path = Path(profile)
    return path.name, path.read_text(encoding="utf-8-sig"), local_reader(Path(root) if root else path.parent)


def training_image(uri: str) -> str:
    """`uri` itself, or for an ECR repository URI without tag or digest its newest image."""
    if "@" in uri or ":" in uri.rsplit("/", 1)[-1] or "/" not in uri:
        return uri
    repository = uri.split("/", 1)[1]
    pages = boto3.client("ecr").get_paginator("describe_images").paginate(repositoryName=repository)
    images = [image for page in pages for image in page["imageDetails"]]
    if not images:
        raise Refused(f"ECR repository {repository} has no image to train with")
    return f"{uri}@{max(images, key=lambda image: image['imagePushedAt'])['imageDigest']}"


class Flow:
    """One profile through validation, training, the gate and the rollout."""

    def __init__(self, args: argparse.Namespace, profile: str):
        self.args = args
        self.profile = profile
        self.bucket, self.key = s3_objects.split(profile)
        self.s3, self.sagemaker, self.sns = boto3.client("s3"), boto3.client("sagemaker"), boto3.client("sns")
        self.result: dict = {"profile": profile}

    def say(self, message: str) -> None:
        print(f"[retrain {self.key}] {message}", flush=True)

    def notify(self, subject: str) -> None:
        self.say(subject)
        if self.args.topic:
            self.sns.publish(TopicArn=self.args.topic, Subject=subject[:100],
                             Message=subject + "\n" + json.dumps(self.result, indent=2, default=str))

    def finish(self, outcome: str, subject: str, place: str) -> None:
        """Record the outcome, move the profile to `place/` with the result beside it, notify."""
        self.result["outcome"] = outcome
        new_key = f"{place}/{self.key}"
        s3_objects.put_json(self.s3, self.bucket, new_key + (".report.json" if place == "rejected" else ".result.json"),
                            self.result)
        s3_objects.move(self.s3, self.bucket, self.key, new_key)
        self.result["moved_to"] = f"s3://{self.bucket}/{new_key}"
        self.notify(subject)

    def run(self) -> int:
        name, text, read = load(self.profile, None)
        report: ProfileReport = validate_profile(name, text, read)
        self.result["validation"] = report.to_dict()
        if not report.ok:
            self.finish("rejected", f"DAGM retraining: profile {self.key} rejected, "
                                    f"{len(report.problems)} problem(s)", "rejected")
            return 1
        labels = report.labels()
        self.say(f"valid: {len(report.rows)} rows ({labels['good']} good, {labels['defective_with_mask']} defective "
                 f"with a mask, {labels['defective_image_level']} defective image-level only; {labels['budget']})")
        serving = self.serving()
        image = self.serve_image(serving)  # before training: without one the model could not be served
        tag = time.strftime("%Y%m%d-%H%M%S")
        prepared = dataset_prep.prepare(self.s3, self.current_data(serving), report.rows, self.bucket,
                                        Path(self.key).stem + "-" + tag, f"{self.datasets()}{Path(self.key).stem}-{tag}/")
        self.result["dataset"] = prepared.__dict__
        self.say(f"training data {prepared.uri}: {prepared.copied} objects kept, {prepared.added} rows added")

        job = name_part(f"dagm-retrain-{tag}", 63)
        channels = {"train": prepared.uri, **({"model": serving["model_data"]} if serving else {})}
        hyperparameters = {**self.args.hyperparameters, **({"warm_start": "true"} if self.args.warm_start and serving else {})}
        training_job.start(self.sagemaker, job, training_image(self.args.training_image), self.args.role, channels, self.output(),
                           hyperparameters, self.args.instance_type, self.args.max_runtime)
        self.result["job"] = job
        self.say(f"training job {job} started")
        try:
            model_data = training_job.wait(self.sagemaker, job, self.args.poll_seconds)
            evaluation, written = training_job.evaluation(self.s3, job, model_data)
        except training_job.JobFailed as failed:
            self.result.update(outcome="training_failed", reason=str(failed))
            self.notify(f"DAGM retraining: {failed}"[:100])
            return 1
        self.result["model_data"] = model_data
        verdict = quality_gate.judge(evaluation, self.args.margin, self.args.min_ap, self.args.max_false_reject)
        self.result.update(gate={"passed": verdict.passed, "reasons": verdict.reasons, "margin": self.args.margin,
                                 "max_false_reject": self.args.max_false_reject, "notes": verdict.notes,
                                 "at_threshold": evaluation.get("at_threshold"),
                                 "mlflow_runs": verdict.runs, "test_labels": evaluation.get("labels"),
                                 "pixel": evaluation.get("pixel")}, comparison=verdict.comparison)
        print(verdict.table(), flush=True)
        if self.args.model_package_group:
            evidence = registry.Evidence(job, model_data, evaluation,
                                         training_job.publish_evaluation(self.s3, model_data, written), prepared.uri,
                                         self.profile, self.args.commit or None)
            arn = registry.register(self.sagemaker, self.args.model_package_group, image, evidence,
                                    self.args.inference_instance_types.split(","), verdict.reasons)
            self.result["model_package"] = arn
            self.say(f"registered {arn} as {registry.PENDING if verdict.passed else registry.REJECTED}")
        if not verdict.passed:
            self.finish("gate_failed", f"DAGM retraining: candidate from {self.key} failed the quality gate, "
                                       f"not deployed", "processed")
            return 1
        if self.args.model_package_group:
            self.finish("registered", f"DAGM retraining: model from {self.key} awaits approval in "
                                      f"{self.args.model_package_group}", "processed")
            return 0
        return self.roll_out(image, model_data, report, read, tag, prepared.uri)

    def serve_image(self, serving: dict | None) -> str:
        image = self.args.serve_image or (serving or {}).get("image")
        if not image:
            raise Refused("no serving model to take the serving image from: give --serve-image")
        return image

    def roll_out(self, image: str, model_data: str, report: ProfileReport, read, tag: str, data: str) -> int:
        # The pre-traffic check uses the team's own new images.
        samples = [read(row.image_key) for row in report.rows[:2]]
        options = Options(self.args.endpoint, image, model_data, self.args.hosting_role or self.args.role,
                          name_part(f"r{tag}", 40), self.args.serving_instance_type, 1, self.args.steps,
                          self.args.bake_seconds, [], samples, self.args.latency_ms, self.args.alarm_period,
                          poll_seconds=self.args.poll_seconds, lock_table=self.args.lock_table)
        try:
            Rollout(options).run()
        except Refused as refused:
            self.result["reason"] = str(refused)
            self.finish("rolled_back", f"DAGM retraining: rollout of the model from {self.key} stopped", "processed")
            return 1
        datasets_bucket, datasets_prefix = s3_objects.split(self.datasets())
        s3_objects.put_json(self.s3, datasets_bucket, datasets_prefix + CURRENT, {"data": data, "model_data": model_data})
        self.result["variant"] = name_part(f"v-{options.version}", 63)
        self.finish("deployed", f"DAGM retraining: model from {self.key} now serves {self.args.endpoint}", "processed")
        return 0

    def serving(self) -> dict | None:
        """The variant with the most traffic, or None without an endpoint."""
        try:
            variants = status(Endpoint(self.args.endpoint))["variants"]
        except Refused:
            return None
        chosen = max(variants, key=lambda v: v["weight"] or 0)
        self.result["serving"] = {k: chosen.get(k) for k in ("variant", "model", "image", "model_data", "model_package")}
        return chosen

    def datasets(self) -> str:
        return self.args.datasets or f"s3://{self.bucket}/datasets/"

    def output(self) -> str:
        return self.args.output or f"s3://{self.bucket}/models"

    def current_data(self, serving: dict | None) -> str:
        """The data the serving model was trained on, so profiles accumulate: its registered
        dataset, else the last rollout's record, else --data."""
        registered = ((serving or {}).get("metadata") or {}).get("dataset")
        if registered:
            return registered
        bucket, prefix = s3_objects.split(self.datasets())
        pointer = s3_objects.reader(self.s3, bucket)(prefix + CURRENT)
        return json.loads(pointer)["data"] if pointer else self.args.data


def oldest_waiting(prefix: str) -> str | None:
    bucket, key_prefix = s3_objects.split(prefix)
    found = [item for item in s3_objects.objects_under(boto3.client("s3"), bucket, key_prefix)
             if item["Key"].lower().endswith((".csv", ".txt"))]
    return f"s3://{bucket}/{min(found, key=lambda item: item['LastModified'])['Key']}" if found else None


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="dagm-retrain", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    validate = commands.add_parser("validate", help="check a dataset profile and everything it lists")
    validate.add_argument("--profile", required=True, help="a .csv or .txt profile: a path or an s3:// URI")
    validate.add_argument("--root", help="where a local profile's keys resolve (default: its directory)")
    run = commands.add_parser("run", help="validate, train, gate and roll out one profile")
    which = run.add_mutually_exclusive_group(required=True)
    which.add_argument("--profile", help="s3:// URI of the profile")
    which.add_argument("--waiting", help="s3:// prefix: run its oldest profile, if any")
    run.add_argument("--data", required=True, help="s3:// prefix of the DAGM training data before any profile")
    run.add_argument("--datasets", help="s3:// prefix for prepared datasets (default: s3://PROFILE_BUCKET/datasets/)")
    run.add_argument("--output", help="s3:// prefix for training output (default: s3://PROFILE_BUCKET/models)")
    run.add_argument("--endpoint", required=True)
    run.add_argument("--role", required=True, help="SageMaker execution role ARN for the training job")
    run.add_argument("--hosting-role", help="SageMaker execution role ARN for the new model (default: --role)")
    run.add_argument("--lock-table", default=os.environ.get("DAGM_DEPLOY_LOCK_TABLE") or "dagm-deploy-locks",
                     help="DynamoDB table of deploy locks")
    run.add_argument("--training-image", required=True,
                     help="training image URI; an ECR repository URI alone means its newest image")
    run.add_argument("--serve-image", help="default: the image the endpoint serves with now")
    run.add_argument("--topic", help="SNS topic ARN for the outcome")
    run.add_argument("--model-package-group",
                     help="register the candidate here for approval instead of rolling it out at once")
    run.add_argument("--inference-instance-types", default="ml.m5.large,ml.m5.xlarge,ml.g5.xlarge",
                     help="instance types the registered model may be hosted on, comma-separated")
    run.add_argument("--commit", default=os.environ.get("CODEBUILD_RESOLVED_SOURCE_VERSION", ""),
                     help="the source commit, recorded with the registered model (default: CodeBuild's)")
    run.add_argument("--margin", type=float, default=0.02, help="AP a class may lose against the serving model (negative: AP it must gain)")
    run.add_argument("--min-ap", type=float, default=0.9, help="overall test AP without a serving model")
    run.add_argument("--max-false-reject", type=float, default=quality_gate.MAX_FALSE_REJECT,
                     help="the largest share of good test images the candidate may reject at its served threshold")
    run.add_argument("--warm-start", action="store_true", help="start from the serving model's weights")
    run.add_argument("--hyperparameters", default="{}", type=_hyperparameters)
    run.add_argument("--instance-type", default="ml.g5.xlarge")
    run.add_argument("--serving-instance-type", default="ml.m5.large")
    run.add_argument("--max-runtime", type=int, default=86400)
    run.add_argument("--steps", default="10,50,100", type=_steps)
    run.add_argument("--bake-seconds", type=float, default=300)
    run.add_argument("--latency-ms", type=float, default=2000)
    run.add_argument("--alarm-period", type=int, default=60)
    run.add_argument("--poll-seconds", type=float, default=30)
    return parser.parse_args(argv)


def _hyperparameters(text: str) -> dict[str, str]:
    try:
        values = json.loads(text)
        return {k: v if isinstance(v, str) else json.dumps(v) for k, v in values.items()}
    except (ValueError, AttributeError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a JSON object") from None


def _steps(text: str) -> list[int]:
    try:
        return steps(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        if args.command == "validate":
            name, text, read = load(args.profile, args.root)
            report = validate_profile(name, text, read)
            print(json.dumps({"profile": args.profile, **report.to_dict()}, indent=2))
            return 0 if report.ok else 1
        profile = args.profile or oldest_waiting(args.waiting)
        if profile is None:
            print(f"retrain: no profile waiting under {args.waiting}")
            return 0
        return Flow(args, profile).run()
    except (OSError, UnicodeDecodeError) as exc:
        print(f"retrain: cannot read the profile or its objects: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:  # a malformed s3:// URI
        print(f"retrain: {exc}", file=sys.stderr)
        return 2
    except Refused as refused:
        print(f"retrain: {refused}", file=sys.stderr)
        return 1
    except (ClientError, BotoCoreError) as error:
        print(f"retrain: AWS error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
