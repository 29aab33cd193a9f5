"""How an endpoint serves: real-time (the default), asynchronous, serverless, and the
containers its model chains (an inference pipeline). Parsed once from the command line.

- Asynchronous (`--async-output`): the endpoint config gets an AsyncInferenceConfig
  (S3 output and failure paths, SNS success and error topics, the most concurrent
  invocations per instance), and the model's container DAGM_ASYNC_INFERENCE=true: large
  payloads (100 MB by default, up to 1 GB) and requests of up to 900 s.
- Serverless (`--serverless-memory`): the variant has a ServerlessConfig instead of an
  instance type. SageMaker's serverless endpoints hold one variant (no canary by weights)
  and no pipeline, so a rollout replaces the variant at once and rolls back on a failed
  check or alarm (rollout.py).
- A pipeline (`--before-container`, `--after-container`): the model's Containers run in
  that order around the serving image; each container's answer is the next one's request.
- Data capture (`--capture-uri`, `--capture-percent`): the endpoint's requests and answers,
  sampled, as SageMaker's DataCaptureConfig writes them to S3. A deploy without these flags
  keeps what the endpoint captures now (a retraining rollout must not stop the monitor's
  input); `--no-capture` stops it.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass, field

from dagm_deploy.errors import Refused

SERVERLESS_MEMORY_MB = (1024, 2048, 3072, 4096, 5120, 6144)
# The API's patterns (service-2.json: DestinationS3Uri, SnsTopicArn).
_S3_URI = re.compile(r"^s3://[a-z0-9.-]{3,63}(/.*)?$")
_SNS_ARN = re.compile(r"^arn:aws[a-z\-]*:sns:[a-z0-9\-]*:[0-9]{12}:[a-zA-Z0-9_.-]+$")
_IMAGE = re.compile(r"^[\S]{1,255}$")


@dataclass(frozen=True)
class AsyncInference:
    output: str
    failure: str | None = None
    success_topic: str | None = None
    error_topic: str | None = None
    max_concurrency: int | None = None

    def config(self) -> dict:
        output: dict = {"S3OutputPath": self.output}
        if self.failure:
            output["S3FailurePath"] = self.failure
        topics = {k: v for k, v in (("SuccessTopic", self.success_topic), ("ErrorTopic", self.error_topic)) if v}
        if topics:
            output["NotificationConfig"] = topics
        config: dict = {"OutputConfig": output}
        if self.max_concurrency:
            config["ClientConfig"] = {"MaxConcurrentInvocationsPerInstance": self.max_concurrency}
        return config


@dataclass(frozen=True)
class Serverless:
    memory_mb: int
    max_concurrency: int
    provisioned: int | None = None

    def config(self) -> dict:
        config = {"MemorySizeInMB": self.memory_mb, "MaxConcurrency": self.max_concurrency}
        if self.provisioned:
            config["ProvisionedConcurrency"] = self.provisioned
        return config


@dataclass(frozen=True)
class DataCapture:
    destination: str
    percent: int = 100

    def config(self) -> dict:
        # JSON answers are kept as text, so a monitor reads them without decoding; images
        # are base64, as SageMaker stores every other type.
        return {"EnableCapture": True, "InitialSamplingPercentage": self.percent, "DestinationS3Uri": self.destination,
                "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}],
                "CaptureContentTypeHeader": {"JsonContentTypes": ["application/json"]}}


@dataclass(frozen=True)
class ShadowTest:
    """How a candidate is judged as a shadow variant before its canary (shadow.py)."""

    requests: int
    max_disagreement: float = 0.05
    timeout: float = 3600.0


# What to capture: a new DataCaptureConfig, none, or (KEEP) the endpoint's current one.
KEEP = "keep"


@dataclass(frozen=True)
class Mode:
    asynchronous: AsyncInference | None = None
    serverless: Serverless | None = None
    before: list[str] = field(default_factory=list)
    after: list[str] = field(default_factory=list)
    capture: DataCapture | None | str = KEEP

    @property
    def name(self) -> str:
        return "asynchronous" if self.asynchronous else "serverless" if self.serverless else "real-time"

    def endpoint_config(self, live_capture: dict | None = None) -> dict:
        """What the endpoint config holds beside its variants; `live_capture`: the
        DataCaptureConfig the endpoint has now, kept unless told otherwise."""
        config = {"AsyncInferenceConfig": self.asynchronous.config()} if self.asynchronous else {}
        capture = live_capture if self.capture == KEEP else self.capture.config() if self.capture else None
        return {**config, "DataCaptureConfig": capture} if capture else config

    def model_env(self) -> dict[str, str]:
        return {"DAGM_ASYNC_INFERENCE": "true"} if self.asynchronous else {}


def add_arguments(deploy: argparse.ArgumentParser) -> None:
    group = deploy.add_argument_group("serving modes")
    group.add_argument("--async-output", help="s3:// path for asynchronous results: makes the endpoint asynchronous")
    group.add_argument("--async-failure", help="s3:// path for failed asynchronous requests")
    group.add_argument("--async-success-topic", help="SNS topic ARN told of each result")
    group.add_argument("--async-error-topic", help="SNS topic ARN told of each failure")
    group.add_argument("--async-max-concurrency", type=int,
                       help="most requests SageMaker sends one instance at once (1-1000)")
    group.add_argument("--serverless-memory", type=int, help="MB of a serverless endpoint: makes it serverless "
                       f"({', '.join(map(str, SERVERLESS_MEMORY_MB))})")
    group.add_argument("--serverless-max-concurrency", type=int, default=5, help="1-200 (default 5)")
    group.add_argument("--serverless-provisioned", type=int, help="provisioned concurrency (1 to the maximum)")
    group.add_argument("--capture-uri", help="s3:// prefix where the endpoint's requests and answers are captured")
    group.add_argument("--capture-percent", type=int, help="percent of requests captured (default 100)")
    group.add_argument("--no-capture", action="store_true", help="stop capturing (default: keep what the endpoint does)")
    group.add_argument("--shadow-requests", type=int,
                       help="first test the candidate as a shadow variant on this many requests (shadow.py)")
    group.add_argument("--max-disagreement", type=float, default=0.05,
                       help="share of defective verdicts the shadow may differ on (default 0.05)")
    group.add_argument("--shadow-timeout", type=float, default=3600,
                       help="seconds the shadow has to answer --shadow-requests requests (default 3600)")
    group.add_argument("--before-container", action="append", default=[], metavar="IMAGE",
                       help="a container that runs before the serving image (an inference pipeline); repeatable")
    group.add_argument("--after-container", action="append", default=[], metavar="IMAGE",
                       help="a container that runs after the serving image; repeatable")


def from_args(args: argparse.Namespace) -> Mode:
    asynchronous = serverless = None
    async_given = [n for n in ("async_failure", "async_success_topic", "async_error_topic", "async_max_concurrency")
                   if getattr(args, n) is not None]
    if async_given and not args.async_output:
        raise Refused(f"--{async_given[0].replace('_', '-')} needs --async-output")
    if args.async_output:
        for flag, value in (("--async-output", args.async_output), ("--async-failure", args.async_failure)):
            if value is not None and not _S3_URI.match(value):
                raise Refused(f"{flag} {value!r}: expected an s3:// URI")
        for flag, value in (("--async-success-topic", args.async_success_topic),
                            ("--async-error-topic", args.async_error_topic)):
            if value is not None and not _SNS_ARN.match(value):
                raise Refused(f"{flag} {value!r}: expected an SNS topic ARN")
        if args.async_max_concurrency is not None and not 1 <= args.async_max_concurrency <= 1000:
            raise Refused(f"--async-max-concurrency {args.async_max_concurrency}: expected 1 to 1000")
        asynchronous = AsyncInference(args.async_output, args.async_failure, args.async_success_topic,
                                      args.async_error_topic, args.async_max_concurrency)
    if args.serverless_memory is not None:
        if args.serverless_memory not in SERVERLESS_MEMORY_MB:
            raise Refused(f"--serverless-memory {args.serverless_memory}: expected one of "
                          f"{', '.join(map(str, SERVERLESS_MEMORY_MB))} (MB)")
        if not 1 <= args.serverless_max_concurrency <= 200:
            raise Refused(f"--serverless-max-concurrency {args.serverless_max_concurrency}: expected 1 to 200")
        provisioned = args.serverless_provisioned
        if provisioned is not None and not 1 <= provisioned <= args.serverless_max_concurrency:
            raise Refused(f"--serverless-provisioned {provisioned}: expected 1 to --serverless-max-concurrency "
                          f"({args.serverless_max_concurrency})")
        serverless = Serverless(args.serverless_memory, args.serverless_max_concurrency, provisioned)
    elif args.serverless_provisioned is not None:
        raise Refused("--serverless-provisioned needs --serverless-memory")
    if asynchronous and serverless:
        raise Refused("an endpoint is asynchronous or serverless, not both")
    pipeline = args.before_container + args.after_container
    if pipeline and serverless:
        raise Refused("serverless endpoints cannot run inference pipelines (SageMaker's serverless exclusions)")
    for image in pipeline:
        if not _IMAGE.match(image):
            raise Refused(f"container image {image!r}: expected an image URI")
    if len(pipeline) + 1 > 15:
        raise Refused(f"{len(pipeline) + 1} containers: an inference pipeline holds at most 15")
    capture: DataCapture | None | str = KEEP
    if args.capture_uri is not None:
        if args.no_capture:
            raise Refused("--capture-uri and --no-capture contradict each other")
        if not _S3_URI.match(args.capture_uri):
            raise Refused(f"--capture-uri {args.capture_uri!r}: expected an s3:// URI")
        percent = 100 if args.capture_percent is None else args.capture_percent
        if not 0 <= percent <= 100:
            raise Refused(f"--capture-percent {percent}: expected 0 to 100")
        if serverless:
            raise Refused("serverless endpoints cannot capture data (SageMaker's serverless exclusions)")
        capture = DataCapture(args.capture_uri, percent)
    elif args.capture_percent is not None:
        raise Refused("--capture-percent needs --capture-uri")
    elif args.no_capture:
        capture = None
    return Mode(asynchronous, serverless, list(args.before_container), list(args.after_container), capture)


def of_config(config: dict) -> str:
    """The mode an existing endpoint config serves in."""
    if config.get("AsyncInferenceConfig"):
        return "asynchronous"
    if any(v.get("ServerlessConfig") for v in config.get("ProductionVariants", [])):
        return "serverless"
    return "real-time"
