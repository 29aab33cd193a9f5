"""The pipeline's Train stage: a SageMaker training job with the pushed training image,
a wait, and a quality gate.

    dagm-train-stage --images images.json --data s3://BUCKET/dagm/ \
        --output s3://BUCKET/models --role ARN [--job-name NAME] [--min-ap 0.9]
        [--instance-type ml.g5.xlarge] [--hyperparameters '{"epochs": "20"}'] [--result train.json]

boto3 alone (AWS_ENDPOINT_URL works, as for dagm-deploy). The job's `evaluation.json`
(inside output.tar.gz) must show an overall test AP of at least --min-ap. Exit 0 and
--result (JSON: job, model_data, test_ap) when the model passes; 1 with a one-line reason
on a failed job or a model below the gate.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from dagm_deploy import training_job
from dagm_deploy.s3_objects import split


class StageFailed(Exception):
    """The one-line reason the stage fails."""


def training_image(images_file: str) -> str:
    try:
        with open(images_file) as handle:
            train = json.load(handle)["train"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise StageFailed(f"{images_file}: no train image in the build's artefact ({exc})") from None
    return train.get("digest_uri") or train["uri"]


def run(args: argparse.Namespace) -> dict:
    try:
        hyperparameters = {k: str(v) for k, v in json.loads(args.hyperparameters).items()}
    except (ValueError, AttributeError):
        raise StageFailed(f"--hyperparameters {args.hyperparameters!r} is not a JSON object") from None
    try:
        split(args.data), split(args.output)
    except ValueError as exc:
        raise StageFailed(str(exc)) from None
    sagemaker, s3 = boto3.client("sagemaker"), boto3.client("s3")
    name = args.job_name or f"dagm-train-{time.strftime('%Y%m%d-%H%M%S')}"
    training_job.start(sagemaker, name, training_image(args.images), args.role, {"train": args.data}, args.output,
                       hyperparameters, args.instance_type, args.max_runtime)
    print(f"training job {name} started", flush=True)
    try:
        model_data = training_job.wait(sagemaker, name, args.poll_seconds)
        test_ap = float(training_job.evaluation(s3, name, model_data)["overall"]["ap"])
    except training_job.JobFailed as failed:
        raise StageFailed(str(failed)) from None
    if test_ap < args.min_ap:
        raise StageFailed(f"quality gate: test AP {test_ap:.4f} is below --min-ap {args.min_ap}")
    print(f"quality gate passed: test AP {test_ap:.4f} >= {args.min_ap}", flush=True)
    return {"job": name, "model_data": model_data, "test_ap": test_ap}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dagm-train-stage", description=__doc__.splitlines()[0])
    parser.add_argument("--images", required=True, help="images.json from the build stage")
    parser.add_argument("--data", required=True, help="s3:// prefix of the DAGM data (the train channel)")
    parser.add_argument("--output", required=True, help="s3:// prefix for the job's output")
    parser.add_argument("--role", required=True, help="SageMaker execution role ARN")
    parser.add_argument("--job-name")
    parser.add_argument("--instance-type", default="ml.g5.xlarge")
    parser.add_argument("--hyperparameters", default="{}")
    parser.add_argument("--min-ap", type=float, default=0.9)
    parser.add_argument("--max-runtime", type=int, default=86400)
    parser.add_argument("--poll-seconds", type=float, default=30)
    parser.add_argument("--result", default="train.json", help="where to write the job and model data URI")
    args = parser.parse_args(argv)
    try:
        result = run(args)
    except StageFailed as failed:
        print(f"train stage: {failed}", file=sys.stderr)
        return 1
    except (ClientError, BotoCoreError) as error:
        print(f"train stage: AWS error: {error}", file=sys.stderr)
        return 1
    with open(args.result, "w") as handle:
        json.dump(result, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
