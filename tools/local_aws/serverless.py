"""Serverless endpoints: a production variant with `ServerlessConfig` and no instances.

What this follows (SageMaker Developer Guide, "Deploy models with Amazon SageMaker
Serverless Inference", "Invoke a serverless endpoint", "Alarms and logs for tracking
metrics from serverless endpoints"; the API model's ProductionVariantServerlessConfig
and InvokeEndpoint):

- ServerlessConfig: MemorySizeInMB 1024..6144 in steps of 1024 (moto checks the set),
  MaxConcurrency 1..200, ProvisionedConcurrency 1..200 and at most MaxConcurrency. A
  serverless variant has no InstanceType (a variant with both, or with neither, is a
  ValidationError). DescribeEndpoint shows CurrentServerlessConfig and
  DesiredServerlessConfig and no instance counts.
- Feature exclusions the guide lists that an API call can show, refused by
  CreateEndpointConfig with ValidationError: a serverless variant next to other variants
  (multiple production variants), DataCaptureConfig, AsyncInferenceConfig, a model of
  several containers (inference pipelines), a model in a VPC (VpcConfig) or with network
  isolation, and a multi-model container (Mode MultiModel).
- Scale to zero: the endpoint is InService with no process; the first invocation after an
  idle period waits for a cold start (the serve process starts and answers /ping 200;
  the guide's limit is 3 minutes), and the process stops once no invocation has come for
  LOCAL_AWS_SERVERLESS_IDLE_SECONDS (default 300; SageMaker does not publish its idle
  time). With ProvisionedConcurrency the process starts with the endpoint and stays up.
- Each cold start publishes `ModelSetupTime` (Microseconds: the time to launch the
  compute, download the model and start the container) to AWS/SageMaker with dimensions
  EndpointName and VariantName, beside the invocation metrics every endpoint publishes.
- Invocations beyond MaxConcurrency at once are refused with ThrottlingException (HTTP
  400, which botocore retries as throttling): an admitted invocation holds its place from
  arrival to answer, injected variant delays included. A request body over 4 MB (the
  serverless payload limit) is a ValidationError (HTTP 413 would be the gateway's; the
  runtime API models no such error, so ValidationError with status 400). The container
  has 60 s to answer /invocations; after that the call is a ModelError with
  OriginalStatusCode 0, "Your invocation timed out while waiting for a response from
  container primary", as SageMaker reports a time-out.

Deliberate differences:
- One process serves all concurrent invocations (SageMaker runs up to MaxConcurrency
  copies and counts ProvisionedConcurrency copies): only the admission is per
  concurrency, the memory size is not enforced, and a response over 4 MB passes.
- InvokeEndpoint's documented errors do not list ThrottlingException; SageMaker answers
  it for serverless concurrency beyond MaxConcurrency (and the account's limit), so it is
  used here. ModelNotReadyException (429) is never answered: a cold start waits.
- No MemoryUtilization, OverheadLatency or ServerlessConcurrentExecutionsUtilization.
"""

from __future__ import annotations

import os
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from moto.cloudwatch.models import cloudwatch_backends
from moto.sagemaker import models as sagemaker_models
from moto.sagemaker.exceptions import ValidationError

from local_aws import containers
from local_aws.hosting import Draining, Full, Refused, VariantProcess, identity

MAX_PAYLOAD = 4 * 1024 * 1024
INVOCATION_TIMEOUT_S = 60
DEFAULT_IDLE_S = 300.0
MEMORY_SIZES = (1024, 2048, 3072, 4096, 5120, 6144)


def idle_seconds() -> float:
    return float(os.environ.get("LOCAL_AWS_SERVERLESS_IDLE_SECONDS", DEFAULT_IDLE_S))


class ServerlessVariant(Draining):
    """A serverless variant: its serve process runs only while invocations come."""

    def __init__(self, model_name: str, model_data: bytes, environment: dict[str, str], config: dict,
                 work: Path, publish: Callable[[str, float, str], None]):
        super().__init__()
        self.model_name, self.model_data, self.environment, self.work = model_name, model_data, environment, work
        self.identity = ("serverless", identity(model_name, model_data, environment), tuple(sorted(config.items())))
        self.max_concurrency = int(config["MaxConcurrency"])
        self.provisioned = int(config.get("ProvisionedConcurrency") or 0)
        self.publish = publish
        self.server: VariantProcess | None = None
        self.starting = threading.Lock()  # one cold start at a time
        self.last_used = time.monotonic()
        self.stopped = threading.Event()
        self.cold_starts = 0
        threading.Thread(target=self._scale_to_zero, daemon=True, name=f"serverless-{model_name}").start()

    def alive(self) -> bool:
        return not self.stopped.is_set()

    def wait_ready(self) -> str | None:
        """With provisioned concurrency the process starts now; else nothing runs until invoked."""
        if not self.provisioned:
            return None
        try:
            self._server()
        except Refused as exc:
            return exc.message
        return None

    def _server(self) -> VariantProcess:
        with self.starting:
            if self.server is not None and self.server.alive():
                return self.server
            started = time.perf_counter()
            server = VariantProcess(self.model_name, self.model_data, self.work, self.environment)
            failure = server.wait_ready()
            if failure:
                server.stop()
                raise Refused("ModelError", 424, f"cold start failed: {failure}")
            self.server = server
            self.cold_starts += 1
            self.publish("ModelSetupTime", (time.perf_counter() - started) * 1e6, "Microseconds")
            return server

    @contextmanager
    def admit(self, body: bytes) -> Iterator[None]:
        """Hold one of MaxConcurrency places for an invocation (ThrottlingException when none
        is free); refuse a body over the serverless payload limit first."""
        if len(body) > MAX_PAYLOAD:
            raise Refused("ValidationError", 400, f"Request payload of {len(body)} bytes exceeds the serverless "
                          f"endpoint's maximum of {MAX_PAYLOAD} bytes (4 MB).")
        try:
            with self.counted(self.max_concurrency):
                try:
                    yield
                finally:  # before the count drops: the idle check never sees 0 with an old time
                    self.last_used = time.monotonic()
        except Full:
            raise Refused("ThrottlingException", 400, f"Rate exceeded: the serverless endpoint's "
                          f"MaxConcurrency ({self.max_concurrency}) invocations are in progress.") from None

    def invoke(self, body: bytes, headers: dict) -> tuple[int, dict, bytes]:
        self.last_used = time.monotonic()
        try:
            server = self._server()
        except Refused as exc:
            return 500, {}, exc.message.encode()
        try:
            return server.invoke(body, headers, timeout=INVOCATION_TIMEOUT_S)
        except TimeoutError:
            return 0, {}, b"Your invocation timed out while waiting for a response from container primary. " \
                          b"Review the latency metrics for each container in Amazon CloudWatch, resolve the " \
                          b"issue, and try again."
        finally:
            self.last_used = time.monotonic()

    def _scale_to_zero(self) -> None:
        while not self.stopped.wait(0.25):
            if self.provisioned:
                continue
            with self.counting:
                idle = self.in_flight == 0 and time.monotonic() - self.last_used >= idle_seconds()
            if idle and self.server is not None and self.starting.acquire(blocking=False):
                try:
                    server, self.server = self.server, None
                finally:
                    self.starting.release()
                if server is not None:
                    server.stop()

    def stop(self) -> None:
        self.drain()
        self.stopped.set()
        with self.starting:
            server, self.server = self.server, None
        if server is not None:
            server.stop()

    @property
    def running(self) -> bool:
        """Whether a serve process runs now."""
        return self.server is not None and self.server.alive()


@dataclass
class ServerlessSpec:
    model_name: str
    model_data: bytes
    environment: dict[str, str]
    config: dict
    publish: Callable[[str, float, str], None]

    @property
    def identity(self) -> tuple:
        return ("serverless", identity(self.model_name, self.model_data, self.environment),
                tuple(sorted(self.config.items())))

    def start(self, work: Path, aws_env: dict[str, str]) -> ServerlessVariant:
        return ServerlessVariant(self.model_name, self.model_data, {**aws_env, **self.environment}, self.config,
                                 work, self.publish)


def spec(backend, endpoint_name: str, variant: dict, plain):
    """What hosting starts for a config's variant: a ServerlessSpec for a serverless one,
    else `plain` (the model's spec or (model name, model data, environment)) unchanged."""
    config = variant.get("ServerlessConfig")
    if not config:
        return plain
    if not isinstance(plain, tuple):
        raise ValueError(f"variant {variant['VariantName']}: serverless endpoints do not support inference pipelines")
    account, region = backend.account_id, backend.region_name
    dimensions = [{"Name": "EndpointName", "Value": endpoint_name},
                  {"Name": "VariantName", "Value": variant["VariantName"]}]

    def publish(metric: str, value: float, unit: str) -> None:
        cloudwatch_backends[account][region].put_metric_data("AWS/SageMaker", [
            {"MetricName": metric, "Value": value, "Unit": unit, "Dimensions": dimensions}])

    return ServerlessSpec(plain[0], plain[1], plain[2], dict(config), publish)


def check_config(backend, variants: list[dict], data_capture: dict | None, async_inference: dict | None) -> None:
    """CreateEndpointConfig's rules for serverless variants (ValidationError)."""
    serverless = [v for v in variants if v.get("ServerlessConfig")]
    for variant in variants:
        name, config = variant.get("VariantName"), variant.get("ServerlessConfig")
        if not config:
            continue
        if variant.get("InstanceType") or variant.get("InitialInstanceCount"):
            raise ValidationError(message=f"Variant {name}: a serverless variant (ServerlessConfig) takes no "
                                          "InstanceType or InitialInstanceCount.")
        memory, concurrency = config.get("MemorySizeInMB"), config.get("MaxConcurrency")
        if memory not in MEMORY_SIZES:
            raise ValidationError(message=f"Value '{memory}' at 'MemorySizeInMB' failed to satisfy constraint: "
                                          f"Member must satisfy enum value set: {list(MEMORY_SIZES)}")
        if not isinstance(concurrency, int) or not 1 <= concurrency <= 200:
            raise ValidationError(message=f"Value '{concurrency}' at 'MaxConcurrency' failed to satisfy constraint: "
                                          "Member must have value between 1 and 200")
        provisioned = config.get("ProvisionedConcurrency")
        if provisioned is not None and not (isinstance(provisioned, int) and 1 <= provisioned <= concurrency):
            raise ValidationError(message=f"ProvisionedConcurrency ({provisioned}) must be between 1 and "
                                          f"MaxConcurrency ({concurrency}).")
        model = backend.describe_model(variant["ModelName"])
        if containers.is_pipeline(model):
            raise ValidationError(message=f"Variant {name}: serverless endpoints do not support inference "
                                          f"pipelines; model {model.model_name} has {len(model.containers)} containers.")
        if model.vpc_config:
            raise ValidationError(message=f"Variant {name}: serverless endpoints do not support VPC configuration "
                                          f"(model {model.model_name} has a VpcConfig).")
        if getattr(model, "enable_network_isolation", False):
            raise ValidationError(message=f"Variant {name}: serverless endpoints do not support network isolation.")
        if any((c or {}).get("Mode") == "MultiModel" for c in [model.primary_container, *model.containers]):
            raise ValidationError(message=f"Variant {name}: serverless endpoints do not support multi-model "
                                          "endpoints (container Mode MultiModel).")
    if not serverless:
        return
    if len(variants) > 1:
        raise ValidationError(message="Serverless endpoints do not support multiple production variants: "
                                      f"the config has {len(variants)}.")
    if data_capture:
        raise ValidationError(message="DataCaptureConfig is not supported for serverless endpoints.")
    if async_inference:
        raise ValidationError(message="AsyncInferenceConfig is not supported for serverless endpoints.")


def install() -> None:
    Backend = sagemaker_models.SageMakerModelBackend
    original = Backend.create_endpoint_config

    def create_endpoint_config(self, endpoint_config_name, production_variants, data_capture_config,
                               async_inference_config, tags, kms_key_id):
        check_config(self, production_variants or [], data_capture_config, async_inference_config)
        return original(self, endpoint_config_name, production_variants, data_capture_config,
                        async_inference_config, tags, kms_key_id)

    Backend.create_endpoint_config = create_endpoint_config
