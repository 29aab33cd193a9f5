"""Shadow variants (CreateEndpointConfig's ShadowProductionVariants): a candidate model that
gets copies of an endpoint's requests while only the production variant answers clients.

What this follows (botocore's sagemaker service model: CreateEndpointConfig,
DescribeEndpointConfig and DescribeEndpoint's ShadowProductionVariants, ProductionVariant's
InitialVariantWeight, sagemaker-runtime's InvokeEndpoint TargetVariant and InferenceId; the
developer guide's "Shadow variants" (model-shadow-deployment) and "Shadow tests" pages):

- Errors: CreateEndpointConfig's are the SageMaker API's ValidationException (moto's
  ValidationError class); InvokeEndpoint's is the runtime's ValidationError.
- CreateEndpointConfig takes ShadowProductionVariants, a list of ProductionVariant (1..10 in
  the service model). "If you use this field, you can only specify one variant for
  ProductionVariants and one variant for ShadowProductionVariants" (the API), and "SageMaker
  supports a maximum of one shadow variant per endpoint. For an endpoint with a shadow
  variant, there can be a maximum of one production variant" (the guide): any other count is
  a ValidationError. ProductionVariants is required (1..10): a config with only a shadow, or
  an empty ProductionVariants, is a ValidationError as the service model's constraints
  answer it. Variant names are unique across both lists; a shadow's InstanceType is checked
  as moto checks a production variant's. DescribeEndpointConfig answers the shadow list as
  given.
- The endpoint runs the shadow like a production variant: CreateEndpoint and UpdateEndpoint
  start its serve process with the others (a shadow that cannot start fails the endpoint,
  or rolls the update back, as a production variant does: the shadow belongs to the
  endpoint's fleet); an update to a config without a shadow stops the process. An update
  that keeps the same shadow model keeps its process (hosting.py's rule for every variant).
  DescribeEndpoint lists ShadowProductionVariants as ProductionVariantSummary objects
  (VariantName, CurrentWeight/DesiredWeight, Current/DesiredInstanceCount).
- Clients are answered by the production variant only (InvokedProductionVariant is always
  its name). TargetVariant may name production variants only: naming the shadow is the
  ValidationError of an unknown variant ("Variant X not found for endpoint E").
- Traffic share: the guide's example sets the shadow's share through InitialVariantWeight
  next to the production variant's; read here as the ratio shadow weight / production
  weight, capped at 1 (equal weights: every request is copied; 0.5 against 1: half). Each
  request is copied with that probability, an independent draw per request.
- Copies go to the shadow in the background: a bounded queue (LOCAL_AWS_SHADOW_QUEUE,
  default 64) and one worker thread per endpoint. A full queue drops the copy and counts it
  (metric ShadowRequestsDropped, namespace LocalAWS/Shadow, dimensions EndpointName and
  VariantName); a shadow that is slow, hangs or errs never delays or changes a client's
  answer. A copy is made of every request the production model answered (any status).
- The shadow's calls publish Invocations, Invocation4XXErrors, Invocation5XXErrors and
  ModelLatency under its own VariantName, as the shadow-test dashboard compares them.
- Variant faults (faults.py) naming the shadow's variant apply to its calls (delay, status,
  hang), so tests can slow, break or hang it.
- Data capture (the guide: "optionally turn on Data Capture to log requests and responses of
  your production and shadow variants"): with a DataCaptureConfig, the shadow's 200 answers
  are sampled and written as a production variant's are, under
  DestinationS3Uri/ENDPOINT/SHADOW-VARIANT/...
- DeleteEndpoint and the server's shutdown stop the worker threads (copies still queued are
  discarded) and the shadow's process.

Differences from AWS (deliberate, or where AWS documents nothing):
- Linking a request's production and shadow records: AWS documents no link. Here both
  records carry the client's InferenceId when one was given (it is part of the copied
  request) and the SAME eventId (a local addition), so they pair up. Each record is still
  sampled independently at the capture percentage.
- The ValidationError messages for the variant counts are this module's wording.
- Serverless variants and AsyncInferenceConfig next to a shadow are refused (the shadow-test
  guide lists them among unsupported features, as far as recalled; not checked line by line).
- No shadow tests (CreateInferenceExperiment: schedule, duration, dashboard) and no
  ShadowModeConfig SamplingPercentage: only the endpoint config's shadow variant.
- ShadowRequestsDropped is local; AWS publishes no such metric.
"""

from __future__ import annotations

import os
import queue
import random
import threading
import time
from typing import Any, Callable

from moto.cloudwatch.models import cloudwatch_backends
from moto.sagemaker import models as sagemaker_models
from moto.sagemaker import responses as sagemaker_responses
from moto.sagemaker.exceptions import ValidationError

from local_aws import capture, faults

QUEUE_ENV = "LOCAL_AWS_SHADOW_QUEUE"
DEFAULT_QUEUE = 64
DROPPED = {"Namespace": "LocalAWS/Shadow", "MetricName": "ShadowRequestsDropped"}


def queue_size() -> int:
    try:
        return max(1, int(os.environ.get(QUEUE_ENV, DEFAULT_QUEUE)))
    except ValueError:
        return DEFAULT_QUEUE


# Validation (CreateEndpointConfig).

def validate(production: Any, shadows: Any, async_inference: Any) -> None:
    """ProductionVariants and ShadowProductionVariants as CreateEndpointConfig checks them."""
    if production is None:
        raise ValidationError(message="1 validation error detected: Value null at 'productionVariants' failed to "
                                      "satisfy constraint: Member must not be null")
    if not isinstance(production, list) or not 1 <= len(production) <= 10:
        raise ValidationError(message=f"1 validation error detected: Value '{production}' at 'productionVariants' "
                                      "failed to satisfy constraint: Member must have length between 1 and 10")
    if shadows is None:
        return
    if not isinstance(shadows, list) or not 1 <= len(shadows) <= 10:
        raise ValidationError(message=f"1 validation error detected: Value '{shadows}' at "
                                      "'shadowProductionVariants' failed to satisfy constraint: Member must have "
                                      "length between 1 and 10")
    if len(shadows) != 1 or len(production) != 1:
        raise ValidationError(message="An endpoint config with ShadowProductionVariants must have exactly one "
                                      f"production variant and one shadow variant; got {len(production)} and "
                                      f"{len(shadows)}.")
    names = [v.get("VariantName") for v in (*production, *shadows)]
    if len(set(names)) != len(names):
        raise ValidationError(message=f"Variant names must be unique across ProductionVariants and "
                                      f"ShadowProductionVariants: {names}")
    for variant in shadows:
        for required in ("VariantName", "ModelName"):
            if not variant.get(required):
                raise ValidationError(message=f"1 validation error detected: Value null at "
                                              f"'shadowProductionVariants.1.member.{required[0].lower()}"
                                              f"{required[1:]}' failed to satisfy constraint: Member must not be "
                                              "null")
    if any(v.get("ServerlessConfig") for v in (*production, *shadows)):
        raise ValidationError(message="Shadow variants are not supported for serverless endpoints.")
    if async_inference:
        raise ValidationError(message="Shadow variants are not supported with AsyncInferenceConfig.")
    # moto's InstanceType check, as it makes it for production variants.
    sagemaker_models.FakeEndpointConfig.validate_production_variants(
        object.__new__(sagemaker_models.FakeEndpointConfig), shadows)


# The endpoint's shadow.

def config_shadows(config: dict) -> list[dict]:
    return list(config.get("ShadowProductionVariants") or [])


def split(processes: dict, config: dict) -> tuple[dict, dict]:
    """A started fleet as (production processes, shadow processes)."""
    names = {v["VariantName"] for v in config_shadows(config)}
    return ({n: p for n, p in processes.items() if n not in names},
            {n: p for n, p in processes.items() if n in names})


def share(endpoint: Any) -> float:
    """The probability of copying a request: shadow weight / production weight, at most 1."""
    shadows = getattr(endpoint, "shadow_production_variants", None) or []
    if not shadows or not endpoint.production_variants:
        return 0.0
    production = float(endpoint.production_variants[0].get("CurrentWeight", 1.0))
    weight = float(shadows[0].get("CurrentWeight", 1.0))
    return 1.0 if production <= 0 else min(1.0, weight / production)


class Mirror:
    """One endpoint's copies on their way to its shadow: a bounded queue and a worker."""

    def __init__(self, hosting, account: str, region: str, endpoint: str,
                 publish: Callable[..., None]):
        self.hosting, self.account, self.region, self.endpoint = hosting, account, region, endpoint
        self.publish = publish
        self.queue: queue.Queue = queue.Queue(maxsize=queue_size())
        self.stopped = threading.Event()
        self.sent = self.dropped = 0
        self.thread = threading.Thread(target=self._run, name=f"shadow-{endpoint}", daemon=True)

    def offer(self, item: tuple) -> bool:
        try:
            self.queue.put_nowait(item)
            return True
        except queue.Full:
            self.dropped += 1
            return False

    def _run(self) -> None:
        while not self.stopped.is_set():
            try:
                item = self.queue.get(timeout=0.5)
            except queue.Empty:
                if self.hosting.shadow(self.endpoint) is None and _retire(self):
                    return
                continue
            try:
                self._send(*item)
            except Exception as exc:  # never lose the worker
                print(f"local AWS: shadow copy for {self.endpoint} failed: {type(exc).__name__}: {exc}", flush=True)

    def _send(self, described: Any, raw: bytes, headers: dict, request_type: str | None, inference_id: str | None,
              event_id: str) -> None:
        found = self.hosting.shadow(self.endpoint)
        if found is None or self.stopped.is_set():
            return  # the shadow was removed: its copy goes nowhere
        variant, process = found
        started = time.perf_counter()
        effect = faults.variant_effect(self.endpoint, variant)
        effect.stall()
        if self.stopped.is_set():
            return
        answer_type = None
        try:
            if effect.status is not None:
                status, body = effect.status, b""
            else:
                status, answer_headers, body = process.invoke(raw, headers)
                answer_type = answer_headers.get("Content-Type", "application/json")
        except OSError:
            status, body = 503, b""
        self.sent += 1
        self.publish(self.account, self.region, self.endpoint, variant, status,
                     (time.perf_counter() - started) * 1e6)
        if status == 200:
            capture.invoked(described, self.account, self.region, variant, raw, request_type, body, answer_type,
                            inference_id, event_id)

    def stop(self, wait_s: float = 2.0) -> None:
        self.stopped.set()
        if self.thread.is_alive() and self.thread is not threading.current_thread():
            self.thread.join(wait_s)  # a hung shadow call ends when its fault goes


_LOCK = threading.Lock()
MIRRORS: dict[tuple[str, str, str], Mirror] = {}


def _retire(mirror: Mirror) -> bool:
    """An idle worker whose endpoint has no shadow any more ends (under the lock that offers)."""
    key = (mirror.account, mirror.region, mirror.endpoint)
    with _LOCK:
        if not mirror.queue.empty():
            return False
        if MIRRORS.get(key) is mirror:
            del MIRRORS[key]
        return True


def _count_dropped(account: str, region: str, endpoint: str, variant: str) -> None:
    try:
        cloudwatch_backends[account][region].put_metric_data(DROPPED["Namespace"], [{
            "MetricName": DROPPED["MetricName"], "Value": 1.0, "Unit": "Count",
            "Dimensions": [{"Name": "EndpointName", "Value": endpoint}, {"Name": "VariantName", "Value": variant}]}])
    except Exception as exc:
        print(f"local AWS: could not count a dropped shadow copy of {endpoint}: {exc}", flush=True)


_PUBLISH: list[Callable[..., None]] = []


def mirror(hosting, described: Any, account: str, region: str, raw: bytes, headers: dict,
           request_type: str | None, inference_id: str | None, event_id: str) -> None:
    """The production variant answered a request of `described` (moto's FakeEndpoint): copy it
    to the endpoint's shadow with its share's probability. Never raises, never waits."""
    try:
        endpoint = described.endpoint_name
        found = hosting.shadow(endpoint)
        if found is None or random.random() >= share(described):
            return
        key = (account, region, endpoint)
        with _LOCK:
            worker = MIRRORS.get(key)
            if worker is None or worker.stopped.is_set():
                worker = MIRRORS[key] = Mirror(hosting, account, region, endpoint, _PUBLISH[0])
                worker.thread.start()
            offered = worker.offer((described, raw, headers, request_type, inference_id, event_id))
        if not offered:
            _count_dropped(account, region, endpoint, found[0])
    except Exception as exc:
        print(f"local AWS: shadow copy skipped: {type(exc).__name__}: {exc}", flush=True)


def stop(endpoint: str | None = None) -> None:
    """Stop the workers of one endpoint (any account) or all."""
    with _LOCK:
        keys = [k for k in MIRRORS if endpoint is None or k[2] == endpoint]
        stopping = [MIRRORS.pop(k) for k in keys]
    for worker in stopping:
        worker.stop()


def install(hosting, variants: Callable[[list], list], publish: Callable[..., None]) -> None:
    """Accept, store and describe ShadowProductionVariants; stop the workers on DeleteEndpoint
    (hosting.remove) and shutdown. `variants` makes DescribeEndpoint's variant summaries;
    `publish` the invocation metrics. Call after capture.install."""
    _PUBLISH[:] = [publish]
    original_config_response = sagemaker_responses.SageMakerResponse.create_endpoint_config

    def create_endpoint_config_response(self):
        shadows = self._get_param("ShadowProductionVariants")
        validate(self._get_param("ProductionVariants"), shadows, self._get_param("AsyncInferenceConfig"))
        answer = original_config_response(self)
        if shadows:  # moto drops them; DescribeEndpointConfig shows the attribute as given
            self.sagemaker_backend.endpoint_configs[self._get_param("EndpointConfigName")] \
                .shadow_production_variants = shadows
        return answer

    sagemaker_responses.SageMakerResponse.create_endpoint_config = create_endpoint_config_response

    Backend = sagemaker_models.SageMakerModelBackend
    original_create = Backend.create_endpoint

    def create_endpoint(self, endpoint_name, endpoint_config_name, tags):
        endpoint = original_create(self, endpoint_name, endpoint_config_name, tags)
        described(endpoint, self.describe_endpoint_config(endpoint_config_name), variants)
        return endpoint

    Backend.create_endpoint = create_endpoint

    original_remove, original_shutdown = hosting.remove, hosting.shutdown

    def remove(endpoint: str) -> None:
        stop(endpoint)
        original_remove(endpoint)

    def shutdown() -> None:
        stop()
        original_shutdown()

    hosting.remove, hosting.shutdown = remove, shutdown


def described(endpoint: Any, config: dict, variants: Callable[[list], list]) -> None:
    """Set DescribeEndpoint's ShadowProductionVariants from the endpoint's current config
    (moto's response lists every attribute that is not None)."""
    shadows = config_shadows(config)
    endpoint.shadow_production_variants = variants(shadows) if shadows else None
