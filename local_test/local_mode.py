"""Train with the training image and serve with the serving image in SageMaker Python SDK local mode.

Needs a Docker daemon with Compose v2 (`docker compose`) and `pip install './code[local-mode]'`
(sagemaker 3.x); no AWS account. Written against sagemaker 3.27.0:

- ModelTrainer(training_mode=Mode.LOCAL_CONTAINER) writes WORK/run-*/docker-compose.yaml and runs
  `docker compose up` with the training image: DATA is bind-mounted as channel `train`
  (/opt/ml/input/data/train), and /opt/ml/model comes back as WORK/run-*/compressed_artifacts/model.tar.gz.
- ModelBuilder(mode=Mode.LOCAL_CONTAINER) pulls the serving image, starts it as `IMAGE serve` on port
  8080 with that model.tar.gz under /opt/ml/model, and endpoint.invoke() POSTs one image to /invocations.

SDK 2.x did the same with instance_type alone selecting local mode (and it sent the `train` argument
itself; 3.x starts the training container without one, so the image's CMD ["train"] supplies it):
    Estimator(image_uri=TRAIN, role=ROLE, instance_count=1, instance_type="local" or "local_gpu",
              hyperparameters={...}).fit({"train": "file://DATA"})
    Model(image_uri=SERVE, model_data="file://.../model.tar.gz", role=ROLE).deploy(
        initial_instance_count=1, instance_type="local").predict(...)
"""

from __future__ import annotations

import argparse
import base64
import importlib.util
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

INSTALL_HINT = "pip install './code[local-mode]'"
# Never assumed locally. Without a role ModelBuilder asks STS/IAM for the caller's; an ARN is taken as is.
LOCAL_ROLE = "arn:aws:iam::000000000000:role/dagm-local-mode"
HYPERPARAMETERS = {"batch_size": 8, "image_size": 128}
SAMPLE_OUTPUT = {"predictions": [{"score": 0.5, "defective": False, "threshold": 0.5,
                                  "defect_area_px": 0, "bbox": None}]}
PULL_HINT = ("ModelBuilder's local mode always `docker pull`s the serving image, so push it to a "
             "registry first, e.g. docker run -d -p 5000:5000 registry:2 && "
             "docker tag dagm-defects-serve:latest localhost:5000/dagm-defects-serve:latest && "
             "docker push localhost:5000/dagm-defects-serve:latest")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True,
                        help="a DAGM-layout directory (ClassN/{Train,Test}): the train channel")
    # 3.x keeps these names only as Compute.instance_type for training, where "local_gpu" makes the
    # runner reserve every GPU for the container; the serving container gets none either way.
    parser.add_argument("--instance-type", choices=("local", "local_gpu"), default="local")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--train-image", default="dagm-defects-train:latest",
                        help="used from the local Docker cache when present")
    parser.add_argument("--serve-image", default="localhost:5000/dagm-defects-serve:latest",
                        help="ModelBuilder pulls it, so it must be in a registry (e.g. a local registry:2)")
    parser.add_argument("--image", type=Path,
                        help="image to predict (default: the first */Test/*.PNG under --data)")
    parser.add_argument("--work", type=Path, default=Path("work/local-mode"),
                        help="parent of each run's directory (default: %(default)s)")
    args = parser.parse_args(argv)
    if "/" not in args.serve_image:
        # A bare name resolves to Docker Hub's official library, where no dagm image will ever be.
        parser.error(f"--serve-image {args.serve_image} cannot be pulled. {PULL_HINT}")
    return args


def sdk_missing() -> str | None:
    """Why the 3.x SDK cannot be used, without importing it (importing sagemaker.serve needs a region)."""
    try:
        if importlib.util.find_spec("sagemaker.train") and importlib.util.find_spec("sagemaker.serve"):
            return None
        return "sagemaker is installed but is not 3.x (no sagemaker.train)"
    except ImportError as error:
        return str(error)


def configure_aws_for_local() -> None:
    """Nothing here talks to AWS, but the SDK still builds boto3 clients (some at import time,
    which fail without a region) and by default simulates the role's IAM policy (needs credentials)."""
    import boto3

    if boto3.Session().region_name is None:
        os.environ["AWS_DEFAULT_REGION"] = "us-east-1"
    os.environ.setdefault("SAGEMAKER_VALIDATE_ROLE", "false")


def trainer_and_inputs(args: argparse.Namespace, run_dir: Path):
    from sagemaker.core.training.configs import Compute, InputData
    from sagemaker.train.model_trainer import Mode, ModelTrainer

    trainer = ModelTrainer(
        training_image=args.train_image,
        training_mode=Mode.LOCAL_CONTAINER,
        compute=Compute(instance_type=args.instance_type, instance_count=1),
        hyperparameters={"epochs": args.epochs, **HYPERPARAMETERS},
        base_job_name="dagm-local",
        # The default is the working directory at import time; keep each run's compose file,
        # /opt/ml tree and artefacts together instead.
        local_container_root=str(run_dir),
    )
    # A local path becomes a bind mount, not an S3 upload.
    return trainer, [InputData(channel_name="train", data_source=str(args.data.resolve()))]


def train(args: argparse.Namespace, run_dir: Path) -> Path:
    trainer, inputs = trainer_and_inputs(args, run_dir)
    # The runner copies /opt/ml/model and /opt/ml/output here even from a failed job.
    artifacts = run_dir / "artifacts"
    failure = artifacts / "output" / "failure"
    try:
        trainer.train(input_data_config=inputs, wait=True, logs=True)
    except RuntimeError:  # `docker compose` exited non-zero: the job's own reason says more
        if not failure.exists():
            raise
    if failure.exists():
        raise SystemExit(f"error: training failed: {failure.read_text().strip()}")
    if not (artifacts / "model" / "model.pt").exists():
        raise SystemExit(f"error: training wrote no model.pt under {artifacts / 'model'}")
    return run_dir / "compressed_artifacts" / "model.tar.gz"


def model_builder(args: argparse.Namespace, model_path: Path, request: dict):
    from sagemaker.serve import ModelBuilder, ModelServer
    from sagemaker.serve.builder.schema_builder import SchemaBuilder
    from sagemaker.serve.mode.function_pointers import Mode

    return ModelBuilder(
        # A custom image with neither model nor inference_spec is built as-is ("passthrough").
        image_uri=args.serve_image,
        # Selects the local starter `docker run IMAGE serve -p 8080:8080`, MODEL_PATH/code at /opt/ml/model.
        model_server=ModelServer.MMS,
        model_path=str(model_path),
        # Any value keeps build() from asking S3 for a default bucket; locally it is only recorded.
        s3_model_data_url=model_path.as_uri(),
        # Local readiness is this sample POSTed to /invocations (not GET /ping), so it must be a real request.
        schema_builder=SchemaBuilder(sample_input=request, sample_output=SAMPLE_OUTPUT),
        mode=Mode.LOCAL_CONTAINER,
        instance_type=args.instance_type,
        role_arn=LOCAL_ROLE,
    )


def serve_and_predict(args: argparse.Namespace, model_tar: Path, image: Path, run_dir: Path) -> dict:
    from sagemaker.serve.mode.function_pointers import Mode

    model_path = run_dir / "serve"
    (model_path / "code").mkdir(parents=True)
    # Our image unpacks a model.tar.gz found in /opt/ml/model, as a SageMaker endpoint hands it over.
    shutil.copy2(model_tar, model_path / "code" / "model.tar.gz")
    request = {"instances": [{"b64": base64.b64encode(image.read_bytes()).decode()}]}
    builder = model_builder(args, model_path, request)
    builder.build()
    try:
        endpoint = builder.deploy(endpoint_name="dagm-defects-local")
    except ValueError as error:  # the pull of an image no registry has
        raise SystemExit(f"error: {error}\n{PULL_HINT}") from error
    try:
        reply = endpoint.invoke(body=request)
        # For MMS the SDK wraps the decoded JSON reply in a one-element list.
        return json.load(reply.body)[0]["predictions"][0]
    finally:
        # endpoint.delete() only stops what the local session registered; the container that
        # answered belongs to the LOCAL_CONTAINER mode object.
        builder.modes[str(Mode.LOCAL_CONTAINER)].destroy_server()
        endpoint.delete()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    missing = sdk_missing()
    if missing:
        print(f"error: needs the SageMaker Python SDK 3.x ({missing}): {INSTALL_HINT}", file=sys.stderr)
        return 2
    image = args.image or next(iter(sorted(args.data.glob("**/Test/*.PNG"))), None)
    if not args.data.is_dir() or image is None or not image.is_file():
        print(f"error: --data {args.data} is not a DAGM directory with a Test image, or --image is missing",
              file=sys.stderr)
        return 2
    configure_aws_for_local()
    args.work.mkdir(parents=True, exist_ok=True)
    # A fresh directory per run: the runner merges into existing artefact folders, and the
    # containers leave root-owned files behind.
    run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=args.work.resolve()))
    model_tar = train(args, run_dir)
    print(f"model: {model_tar}")
    prediction = serve_and_predict(args, model_tar, image, run_dir)
    print(f"{image}: {json.dumps(prediction)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
