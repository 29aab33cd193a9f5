"""The pipeline's Train stage: a SageMaker training job with the pushed training image,
a wait, a quality gate, and the model registered for review.

    dagm-train-stage --images images.json --data s3://BUCKET/dagm/ \
        --output s3://BUCKET/models --role ARN [--job-name NAME] [--min-ap 0.9] [--max-false-reject 0.02]
        [--instance-type ml.g5.xlarge] [--hyperparameters '{"epochs": "20"}'] [--result train.json]
        [--model-package-group NAME [--inference-instance-types ml.m5.large,...] [--commit SHA]]

boto3 alone (AWS_ENDPOINT_URL works, as for dagm-deploy). The job's `evaluation.json`
(inside output.tar.gz) must show an overall test AP of at least --min-ap and, where it
measured them (`at_threshold`), false rejects on at most --max-false-reject of the good test
images at the served threshold. A test set without a defective image has no AP: it is judged
on the false-reject rate alone (quality_gate.false_rejects), and refused when that was not
measured. With
--model-package-group the model is registered there either way (registry.py), with the
build's serving image by digest: PendingManualApproval when it passed, Rejected with the
gate's reason when not; deploying it waits for a reviewer's approval. Exit 0 and --result
(JSON: job, model_data, test_ap, model_package) when the model passes; 1 with a one-line
reason on a failed job or a model below the gate.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from dagm_deploy import quality_gate, registry, training_job
from dagm_deploy.s3_objects import split


class StageFailed(Exception):
    """The one-line reason the stage fails."""


def built_image(images_file: str, which: str) -> str:
    """The build's `which` image ("train" or "serve"), by digest when the build recorded one."""
    try:
        with open(images_file) as handle:
            image = json.load(handle)[which]
        return image.get("digest_uri") or image["uri"]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise StageFailed(f"{images_file}: no {which} image in the build's artefact ({exc})") from None


def run(args: argparse.Namespace) -> dict:
    try:
        hyperparameters = {k: str(v) for k, v in json.loads(args.hyperparameters).items()}
    except (ValueError, AttributeError):
        raise StageFailed(f"--hyperparameters {args.hyperparameters!r} is not a JSON object") from None
    try:
        split(args.data), split(args.output)
    except ValueError as exc:
        raise StageFailed(str(exc)) from None
    serve_image = built_image(args.images, "serve") if args.model_package_group else None
    sagemaker, s3 = boto3.client("sagemaker"), boto3.client("s3")
    name = args.job_name or f"dagm-train-{time.strftime('%Y%m%d-%H%M%S')}"
    training_job.start(sagemaker, name, built_image(args.images, "train"), args.role, {"train": args.data},
                       args.output, hyperparameters, args.instance_type, args.max_runtime)
    print(f"training job {name} started", flush=True)
    try:
        model_data = training_job.wait(sagemaker, name, args.poll_seconds)
        evaluation, written = training_job.evaluation(s3, name, model_data)
    except training_job.JobFailed as failed:
        raise StageFailed(str(failed)) from None
    test_ap = evaluation["overall"]["ap"]
    reasons, notes = quality_gate.false_rejects(evaluation, args.max_false_reject)
    if test_ap is not None and test_ap < args.min_ap:
        reasons.insert(0, f"test AP {test_ap:.4f} is below --min-ap {args.min_ap}")
    for line in notes:
        print(line, flush=True)
    result = {"job": name, "model_data": model_data, "test_ap": test_ap}
    if args.model_package_group:
        evidence = registry.Evidence(name, model_data, evaluation,
                                     training_job.publish_evaluation(s3, model_data, written), args.data,
                                     commit=args.commit or None)
        result["model_package"] = registry.register(sagemaker, args.model_package_group, serve_image, evidence,
                                                    args.inference_instance_types.split(","), reasons)
        print(f"registered {result['model_package']} as "
              f"{registry.REJECTED if reasons else registry.PENDING}", flush=True)
    if reasons:
        raise StageFailed(f"quality gate: {reasons[0]}")
    print("quality gate passed: " + ("no test AP without defective test images" if test_ap is None
                                     else f"test AP {test_ap:.4f} >= {args.min_ap}"), flush=True)
    return result


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
    parser.add_argument("--max-false-reject", type=float, default=quality_gate.MAX_FALSE_REJECT,
                        help="the largest share of good test images the served threshold may reject")
    parser.add_argument("--max-runtime", type=int, default=86400)
    parser.add_argument("--poll-seconds", type=float, default=30)
    parser.add_argument("--result", default="train.json", help="where to write the job and model data URI")
    parser.add_argument("--model-package-group", help="register the model in this model package group")
    parser.add_argument("--inference-instance-types", default="ml.m5.large,ml.m5.xlarge,ml.g5.xlarge",
                        help="instance types the registered model may be hosted on, comma-separated")
    parser.add_argument("--commit", default=os.environ.get("CODEBUILD_RESOLVED_SOURCE_VERSION", ""),
                        help="the source commit the model was built from (default: CodeBuild's)")
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
