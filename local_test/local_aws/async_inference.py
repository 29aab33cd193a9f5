"""InvokeEndpointAsync for real: a queue per endpoint, worker threads that call the
endpoint's `serve` processes, results in the local S3 and notifications in the local SNS.

What it follows (the InvokeEndpointAsync API reference, the sagemaker-runtime and
sagemaker service models in botocore, and the developer guide's pages "Asynchronous
inference", "Check prediction results" and "Alarms and logs for tracking metrics from
asynchronous endpoints"):

- An endpoint whose config has `AsyncInferenceConfig` takes
  POST /endpoints/NAME/async-invocations with the headers X-Amzn-SageMaker-InputLocation,
  -Content-Type, -Accept, -Custom-Attributes, -Inference-Id, -RequestTTLSeconds,
  -InvocationTimeoutSeconds, -S3OutputPathExtension and -Filename (or the input inline as
  the body, up to 128,000 bytes, instead of InputLocation). It answers 202 with
  {"InferenceId"} (the given one, else a new uuid) and the headers
  X-Amzn-SageMaker-OutputLocation and X-Amzn-SageMaker-FailureLocation.
- Refusals are `ValidationError` (400): no such endpoint, an endpoint without
  AsyncInferenceConfig or not in service, a parameter outside the service model's limits
  (RequestTTLSeconds 60..21600, InvocationTimeoutSeconds 1..3600, InferenceId 1..64
  printable characters, headers up to 1024 ASCII characters, InputLocation s3://).
- A full queue answers `ServiceUnavailable` (503, "The service is unavailable. Try your
  call again."): the service model lists InternalFailure, ServiceUnavailable and
  ValidationError as the operation's only errors, and a full queue is the retryable one.
  AWS documents no queue size; here it is `LOCAL_AWS_ASYNC_QUEUE` (default 1000) requests
  waiting for a worker, changeable at run time through the control API below.
- Workers: ClientConfig.MaxConcurrentInvocationsPerInstance (default 4 here: AWS says it
  "chooses an optimal value" and documents none) times the endpoint's instance count, as
  AWS sends that many concurrent requests to the containers. Each request is routed by the
  variants' current weights, like InvokeEndpoint, so after UpdateEndpoint the same queue
  is served by the new variants; the worker count follows the current config.
- Defaults: RequestTTLSeconds 21600 (6 h) in the queue, InvocationTimeoutSeconds 900
  (15 min) for the model's answer. A request older than its TTL when a worker takes it
  fails as expired.
- A 200 answer goes to S3OutputPath[/S3OutputPathExtension]/(Filename or
  INFERENCE_ID.out) with the model's Content-Type; a model error (its own body, which
  carries the server's message), an unreadable input, a time-out or an expired request
  goes to S3FailurePath/INFERENCE_ID-error.out (the output path when the config has no
  failure path).
- SNS: SuccessTopic / ErrorTopic get the JSON of "Check prediction results": awsRegion,
  eventTime, receivedTime, invocationStatus ("Completed" / "Failed"), failureReason (on
  failure), requestParameters {accept, contentType, customAttributes, endpointName,
  inputLocation}, responseParameters {contentType, outputLocation | failureLocation},
  inferenceId, eventVersion "1.0", eventSource "aws:sagemaker", eventName
  "InferenceResult". With IncludeInferenceResponseIn naming the topic's kind
  (SUCCESS_NOTIFICATION_TOPIC / ERROR_NOTIFICATION_TOPIC) and an answer of at most 128 KB,
  the answer is inline as responseBody {content, encoding: JSON | TEXT | BASE64}.
- CloudWatch (AWS/SageMaker): ApproximateBacklogSize, ApproximateBacklogSizePerInstance,
  ApproximateAgeOfOldestRequest (seconds) and HasBacklogWithoutCapacity with dimension
  EndpointName, on each enqueue, dequeue and finish; Invocation4XXErrors,
  Invocation5XXErrors, ModelLatency, InvocationsProcesssed (AWS's spelling) and
  InvocationFailures with EndpointName and VariantName per processed request. The async
  page says Invocations, InvocationsPerInstance and OverheadLatency are not published for
  async endpoints, so they are not published here either.
- Data capture: a request a variant answers with 200 is sampled per the endpoint's
  DataCaptureConfig like an InvokeEndpoint (capture.py), with its InferenceId.
- DeleteEndpoint (and the local AWS stopping) closes the queue: requests still waiting
  fail with a failure object and an ErrorTopic notification, in-flight ones get their
  answer while the processes drain, and the workers end.

Where it differs: inputs and outputs are in the local (moto) S3, s3:// only (no https://
object URLs); KmsKeyId is ignored; a variant whose `invoke` takes no timeout (a serverless
one) keeps its own rather than InvocationTimeoutSeconds; no autoscaling, so
HasBacklogWithoutCapacity is 1 only while a backlog waits on an endpoint without running
processes; the inline responseBody's field names are this module's reading of the docs,
unverified against a live account.

Control API (JSON), for tests: GET /_local_aws/async answers {"queue_size", "endpoints":
{NAME: {"pending", "in_flight", "workers"}}, "worker_threads": the live worker threads of
all endpoints}; PUT (or POST) {"queue_size": N} sets the queue size for every endpoint
(null: back to LOCAL_AWS_ASYNC_QUEUE, else 1000).
"""

from __future__ import annotations

import base64
import collections
import datetime
import inspect
import json
import os
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from moto.cloudwatch.models import cloudwatch_backends
from moto.s3.models import s3_backends
from moto.sagemaker import models as sagemaker_models
from moto.sagemakerruntime import responses as runtime_responses
from moto.sns.models import sns_backends

from local_aws import capture, control, faults
from local_aws import hosting as hosting_module
from local_aws.hosting import Hosting

QUEUE_ENV = "LOCAL_AWS_ASYNC_QUEUE"
DEFAULT_QUEUE = 1000
DEFAULT_CONCURRENCY_PER_INSTANCE = 4
DEFAULT_TTL_S = 21600
DEFAULT_INVOCATION_TIMEOUT_S = 900
MAX_INLINE_BODY = 128_000
MAX_NOTIFIED_RESPONSE = 128 * 1024
CONTROL_PATH = "/_local_aws/async"
JOIN_TIMEOUT_S = 10.0

_INFERENCE_ID = re.compile(r"\S[\x20-\x7e]*")
_ENDPOINT_NAME = re.compile(r"[a-zA-Z0-9](-*[a-zA-Z0-9])*")
_PATH_EXTENSION = re.compile(r"(?!s3:|https:)[a-zA-Z0-9!_.*'()/-]+")
# hosting.Refused: an invocation a variant refuses before its model sees it (where hosting has it).
_REFUSED = getattr(hosting_module, "Refused", ())
_FILENAME = re.compile(r"(?!.*\..*\.)[a-zA-Z0-9][a-zA-Z0-9-_.]*")


class Invalid(ValueError):
    """A request InvokeEndpointAsync refuses (ValidationError)."""


def _now_iso(epoch: float) -> str:
    moment = datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _split_s3(url: str) -> tuple[str, str]:
    bucket, _, key = url[len("s3://"):].partition("/")
    return bucket, key


def _join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts if p)])


@dataclass
class Request:
    inference_id: str
    endpoint: str
    account: str
    region: str
    input_location: str | None
    body: bytes | None  # the input given inline instead of InputLocation
    headers: dict[str, str]  # forwarded to the model: Content-Type, Accept, custom attributes
    ttl_s: int
    timeout_s: int
    output_location: str
    failure_location: str
    notification: dict[str, Any]
    received: float = field(default_factory=time.time)
    enqueued: float = field(default_factory=time.monotonic)


class EndpointQueue:
    """One endpoint's backlog and its workers."""

    def __init__(self, name: str, account: str, region: str, hosting: Hosting):
        self.name, self.account, self.region, self.hosting = name, account, region, hosting
        self.pending: collections.deque[Request] = collections.deque()
        self.cond = threading.Condition()
        self.closed = threading.Event()
        self.in_flight = 0
        self.target = 0
        self.threads: list[threading.Thread] = []
        self.instances = 1
        self.config: dict | None = None  # its AsyncInferenceConfig, should the endpoint config go

    # Called with self.cond held.
    def _alive(self) -> list[threading.Thread]:
        self.threads = [t for t in self.threads if t.is_alive()]
        return self.threads

    def resize(self, workers: int, instances: int) -> None:
        with self.cond:
            self.target, self.instances = workers, instances
            for _ in range(workers - len(self._alive())):
                thread = threading.Thread(target=self._work, name=f"async-{self.name}", daemon=True)
                self.threads.append(thread)
                thread.start()
            self.cond.notify_all()  # surplus workers notice and end

    def put(self, request: Request, limit: int) -> bool:
        with self.cond:
            if self.closed.is_set() or len(self.pending) >= limit:
                return False
            self.pending.append(request)
            self.cond.notify()
        self.publish_backlog()
        return True

    def _work(self) -> None:
        me = threading.current_thread()
        while True:
            with self.cond:
                while not self.pending and not self.closed.is_set() and len(self._alive()) <= self.target:
                    self.cond.wait(1.0)
                if self.closed.is_set():
                    return
                if len(self._alive()) > self.target:  # the config asks for fewer workers now
                    self.threads.remove(me)
                    return
                request = self.pending.popleft()
                self.in_flight += 1
            self.publish_backlog()
            try:
                _process(self, request)
            except Exception as exc:  # never lose a worker to a bug: the request fails
                _finish_failed(self, request, f"InternalFailure: {type(exc).__name__}: {exc}", None)
            finally:
                with self.cond:
                    self.in_flight -= 1
                self.publish_backlog()

    def close(self) -> list[Request]:
        """Stop taking requests; the ones still waiting (returned) are the caller's to fail."""
        with self.cond:
            self.closed.set()
            waiting, self.pending = list(self.pending), collections.deque()
            self.cond.notify_all()
        return waiting

    def join(self, timeout_s: float = JOIN_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        for thread in list(self.threads):
            thread.join(max(0.0, deadline - time.monotonic()))

    def stats(self) -> dict[str, int]:
        with self.cond:
            return {"pending": len(self.pending), "in_flight": self.in_flight, "workers": len(self._alive())}

    def publish_backlog(self) -> None:
        with self.cond:
            backlog = len(self.pending) + self.in_flight
            oldest = time.monotonic() - self.pending[0].enqueued if self.pending else 0.0
            instances = self.instances
        hosted = self.hosting.endpoints.get(self.name)
        capacity = bool(hosted and hosted.variants)
        metrics = [("ApproximateBacklogSize", float(backlog), "Count"),
                   ("ApproximateBacklogSizePerInstance", backlog / max(instances, 1), "Count"),
                   ("ApproximateAgeOfOldestRequest", oldest, "Seconds"),
                   ("HasBacklogWithoutCapacity", float(backlog > 0 and not capacity), "Count")]
        _put_metrics(self.account, self.region, [{"Name": "EndpointName", "Value": self.name}], metrics)


class Queues:
    """Every endpoint's queue, and the queue size."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.by_endpoint: dict[str, EndpointQueue] = {}
        self.size_override: int | None = None

    @property
    def size(self) -> int:
        if self.size_override is not None:
            return self.size_override
        try:
            return max(0, int(os.environ.get(QUEUE_ENV, DEFAULT_QUEUE)))
        except ValueError:
            return DEFAULT_QUEUE

    def get(self, name: str, account: str, region: str, hosting: Hosting) -> EndpointQueue:
        with self.lock:
            queue = self.by_endpoint.get(name)
            if queue is None:
                queue = self.by_endpoint[name] = EndpointQueue(name, account, region, hosting)
            return queue

    def pop(self, name: str) -> EndpointQueue | None:
        with self.lock:
            return self.by_endpoint.pop(name, None)

    def pop_all(self) -> list[EndpointQueue]:
        with self.lock:
            queues, self.by_endpoint = list(self.by_endpoint.values()), {}
            return queues

    def state(self) -> dict[str, Any]:
        with self.lock:
            queues = dict(self.by_endpoint)
        threads = sum(1 for t in threading.enumerate() if t.name.startswith("async-"))
        return {"queue_size": self.size, "endpoints": {name: q.stats() for name, q in queues.items()},
                "worker_threads": threads}


QUEUES = Queues()


# Processing one request.

def _put_metrics(account: str, region: str, dimensions: list[dict], metrics: list[tuple[str, float, str]]) -> None:
    cloudwatch_backends[account][region].put_metric_data("AWS/SageMaker", [
        {"MetricName": name, "Value": value, "Unit": unit, "Dimensions": dimensions} for name, value, unit in metrics
    ])


def _variant_metrics(request: Request, variant: str, status: int | None, latency_us: float | None) -> None:
    metrics = [("InvocationsProcesssed", float(status == 200), "Count"),
               ("InvocationFailures", float(status != 200), "Count")]
    if status is not None:
        metrics += [("Invocation4XXErrors", float(400 <= status < 500), "Count"),
                    ("Invocation5XXErrors", float(status >= 500), "Count")]
    if latency_us is not None:
        metrics.append(("ModelLatency", latency_us, "Microseconds"))
    _put_metrics(request.account, request.region, [{"Name": "EndpointName", "Value": request.endpoint},
                                                   {"Name": "VariantName", "Value": variant}], metrics)


def _read_input(request: Request) -> bytes:
    if request.body is not None:
        return request.body
    bucket, key = _split_s3(request.input_location or "")
    return s3_backends[request.account]["aws"].get_object(bucket, key).value


def _write(request: Request, location: str, body: bytes, content_type: str) -> str | None:
    """Put an object into the local S3; None, or why it could not."""
    try:
        bucket, key = _split_s3(location)
        key_object = s3_backends[request.account]["aws"].put_object(bucket, key, body)
        key_object.set_metadata({"Content-Type": content_type})
        return None
    except Exception as exc:  # a missing bucket, most likely
        return f"{type(exc).__name__}: {exc}"


def _invoke(process, body: bytes, headers: dict[str, str], timeout_s: float) -> tuple[int, dict, bytes]:
    """The variant's own invoke, with the request's InvocationTimeoutSeconds where it takes a
    timeout (a plain serve process's default is 70 s, InvokeEndpoint's)."""
    if "timeout" in inspect.signature(process.invoke).parameters:
        return process.invoke(body, headers, timeout=timeout_s)
    return process.invoke(body, headers)


def _stall(effect: faults.VariantEffect, closed: threading.Event) -> None:
    """The variant faults' delay and hang, cut short when the endpoint goes away."""
    for fault in effect.faults:
        if fault.spec.get("delay_s"):
            closed.wait(fault.spec["delay_s"])
        if fault.spec.get("hang"):
            deadline = time.monotonic() + faults.HANG_LIMIT_S
            while not (fault.released.is_set() or closed.is_set()) and time.monotonic() < deadline:
                fault.released.wait(0.1)


def _process(queue: EndpointQueue, request: Request) -> None:
    waited = time.monotonic() - request.enqueued
    if waited > request.ttl_s:
        _finish_failed(queue, request, f"ExpiredRequest: the request waited {waited:.0f} s in the queue, "
                                       f"longer than its RequestTTLSeconds ({request.ttl_s})", None)
        return
    try:
        body = _read_input(request)
    except Exception as exc:
        _finish_failed(queue, request, f"ClientError: could not read the input from {request.input_location}: "
                                       f"{type(exc).__name__}: {exc}", None)
        return
    backend = sagemaker_models.sagemaker_backends[request.account][request.region]
    endpoint = backend.endpoints.get(request.endpoint)
    weights = {v["VariantName"]: float(v.get("CurrentWeight", 1.0))
               for v in (endpoint.production_variants if endpoint else [])}
    try:
        variant, process = queue.hosting.route(request.endpoint, weights, None)
    except LookupError as exc:
        _finish_failed(queue, request, f"ServiceUnavailable: {exc}", None)
        return
    started = time.perf_counter()
    effect = faults.variant_effect(request.endpoint, variant)
    _stall(effect, queue.closed)
    if queue.closed.is_set():
        _finish_failed(queue, request, f"ServiceUnavailable: endpoint {request.endpoint} was deleted", None)
        return
    try:
        if effect.status is not None:
            status, headers = effect.status, {"Content-Type": "application/json"}
            answer = json.dumps({"error": f"status {effect.status} injected by a local AWS fault"}).encode()
        else:
            status, headers, answer = _invoke(process, body, request.headers, request.timeout_s)
    except _REFUSED as refused:  # refused before any model saw it (a serverless or pipeline variant's check)
        _finish_failed(queue, request, f"{refused.code}: {refused.message}", None)
        return
    except TimeoutError:
        _variant_metrics(request, variant, None, None)
        _finish_failed(queue, request, f"ModelError: the model did not answer within the invocation timeout "
                                       f"({request.timeout_s} s)", None)
        return
    except OSError as exc:
        status, headers = 503, {"Content-Type": "application/json"}
        answer = json.dumps({"error": f"model container unreachable: {exc}"}).encode()
    latency_us = (time.perf_counter() - started) * 1e6
    _variant_metrics(request, variant, status, latency_us)
    content_type = next((v for k, v in headers.items() if k.lower() == "content-type"), "application/octet-stream")
    if status != 200:
        kind = "client" if status < 500 else "server"
        reason = (f"ClientError: Received {kind} error ({status}) from model with message "
                  f"\"{answer.decode(errors='replace')}\"")
        _finish_failed(queue, request, reason, (answer, content_type))
        return
    capture.invoked(endpoint, request.account, request.region, variant, body, request.headers.get("Content-Type"),
                    answer, content_type, request.inference_id)  # sampled per DataCaptureConfig (capture.py)
    problem = _write(request, request.output_location, answer, content_type)
    if problem:
        _finish_failed(queue, request, f"ClientError: could not write the output to {request.output_location}: "
                                       f"{problem}", None)
        return
    _notify(request, "Completed", {"contentType": content_type, "outputLocation": request.output_location},
            answer, content_type)


def _finish_failed(queue: EndpointQueue | None, request: Request, reason: str,
                   model_answer: tuple[bytes, str] | None) -> None:
    """Write the failure object (the model's own answer, else the reason) and notify ErrorTopic."""
    body, content_type = model_answer or (json.dumps({"errorMessage": reason}).encode(), "application/json")
    _write(request, request.failure_location, body, content_type)
    _notify(request, "Failed", {"contentType": content_type, "failureLocation": request.failure_location},
            body, content_type, reason)


def _notify(request: Request, status: str, response_parameters: dict[str, str], answer: bytes,
            content_type: str, reason: str | None = None) -> None:
    config = request.notification
    kind = "SUCCESS_NOTIFICATION_TOPIC" if status == "Completed" else "ERROR_NOTIFICATION_TOPIC"
    topic = config.get("SuccessTopic" if status == "Completed" else "ErrorTopic")
    if not topic:
        return
    message: dict[str, Any] = {"awsRegion": request.region, "eventTime": _now_iso(time.time()),
                               "receivedTime": _now_iso(request.received), "invocationStatus": status}
    if reason is not None:
        message["failureReason"] = reason
    message["requestParameters"] = {k: v for k, v in {
        "accept": request.headers.get("Accept"), "contentType": request.headers.get("Content-Type"),
        "customAttributes": request.headers.get("X-Amzn-SageMaker-Custom-Attributes"),
        "endpointName": request.endpoint, "inputLocation": request.input_location}.items() if v is not None}
    message["responseParameters"] = response_parameters
    if kind in (config.get("IncludeInferenceResponseIn") or []) and len(answer) <= MAX_NOTIFIED_RESPONSE:
        message["responseBody"] = _inline(answer, content_type)
    message.update({"inferenceId": request.inference_id, "eventVersion": "1.0", "eventSource": "aws:sagemaker",
                    "eventName": "InferenceResult"})
    try:
        region = topic.split(":")[3]
        sns_backends[request.account][region].publish(json.dumps(message), arn=topic)
    except Exception as exc:  # a missing topic: AWS counts a NotificationFailure
        print(f"local AWS: async notification to {topic} failed: {type(exc).__name__}: {exc}", flush=True)


def _inline(answer: bytes, content_type: str) -> dict[str, str]:
    try:
        text = answer.decode("utf-8")
    except UnicodeDecodeError:
        return {"content": base64.b64encode(answer).decode(), "encoding": "BASE64"}
    return {"content": text, "encoding": "JSON" if "json" in content_type.lower() else "TEXT"}


# The API call.

def _header(headers, name: str, limit: int = 1024) -> str | None:
    value = headers.get(name)
    if value is None:
        return None
    if len(value) > limit or not value.isascii():
        raise Invalid(f"{name} must be at most {limit} ASCII characters")
    return value


def _int_header(headers, name: str, low: int, high: int, default: int) -> int:
    value = headers.get(name)
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        raise Invalid(f"1 validation error detected: Value '{value}' at '{name}' failed to satisfy constraint: "
                      f"Member must be an integer") from None
    if not low <= number <= high:
        raise Invalid(f"1 validation error detected: Value '{number}' at '{name}' failed to satisfy constraint: "
                      f"Member must have value between {low} and {high}")
    return number


def _async_config(backend, endpoint, queue_config: dict | None) -> dict | None:
    config = backend.endpoint_configs.get(endpoint.endpoint_config_name)
    if config is None:  # deleted after the endpoint was made from it; the endpoint keeps what it had
        return queue_config
    return config.async_inference_config or None


def _workers(endpoint, config: dict) -> tuple[int, int]:
    per_instance = int((config.get("ClientConfig") or {}).get("MaxConcurrentInvocationsPerInstance")
                       or DEFAULT_CONCURRENCY_PER_INSTANCE)
    instances = sum(int(v.get("CurrentInstanceCount") or 1) for v in endpoint.production_variants) or 1
    return per_instance * instances, instances


def _build_request(self, name: str, config: dict) -> Request:
    headers = self.headers
    input_location = _header(headers, "X-Amzn-SageMaker-InputLocation")
    raw = self.raw_body
    body = raw if isinstance(raw, bytes) else (raw or "").encode()
    if input_location is None and not body:
        raise Invalid("InputLocation is required (or the input inline as Body)")
    if input_location is not None and body:
        raise Invalid("Body and InputLocation are mutually exclusive. Provide exactly one of them.")
    if input_location is not None and not re.fullmatch(r"s3://[^/]+/.+", input_location):
        raise Invalid(f"InputLocation {input_location!r} is not an s3://BUCKET/KEY URI (this local AWS "
                      f"reads s3:// inputs only)")
    if len(body) > MAX_INLINE_BODY:
        raise Invalid(f"an inline Body can be up to {MAX_INLINE_BODY} bytes, not {len(body)}")
    inference_id = _header(headers, "X-Amzn-SageMaker-Inference-Id")
    if inference_id is not None and not (len(inference_id) <= 64 and _INFERENCE_ID.fullmatch(inference_id)):
        raise Invalid(f"InferenceId {inference_id!r} must be 1 to 64 printable characters, the first not a space")
    extension = _header(headers, "X-Amzn-SageMaker-S3OutputPathExtension", 512)
    if extension is not None and not _PATH_EXTENSION.fullmatch(extension):
        raise Invalid(f"S3OutputPathExtension {extension!r} does not match {_PATH_EXTENSION.pattern}")
    filename = _header(headers, "X-Amzn-SageMaker-Filename", 32)
    if filename is not None and not _FILENAME.fullmatch(filename):
        raise Invalid(f"Filename {filename!r} does not match {_FILENAME.pattern}")
    forwarded = {}
    for header, to in (("X-Amzn-SageMaker-Content-Type", "Content-Type"), ("X-Amzn-SageMaker-Accept", "Accept"),
                       ("X-Amzn-SageMaker-Custom-Attributes", "X-Amzn-SageMaker-Custom-Attributes")):
        value = _header(headers, header)
        if value is not None:
            forwarded[to] = value
    ttl_s = _int_header(headers, "X-Amzn-SageMaker-RequestTTLSeconds", 60, 21600, DEFAULT_TTL_S)
    timeout_s = _int_header(headers, "X-Amzn-SageMaker-InvocationTimeoutSeconds", 1, 3600,
                            DEFAULT_INVOCATION_TIMEOUT_S)
    output_config = config.get("OutputConfig") or {}
    output_path = output_config.get("S3OutputPath") or ""
    if not output_path.startswith("s3://"):
        raise Invalid(f"endpoint {name}'s AsyncInferenceConfig has no s3:// S3OutputPath ({output_path!r})")
    failure_path = output_config.get("S3FailurePath") or output_path
    inference_id = inference_id or str(uuid.uuid4())
    return Request(inference_id=inference_id, endpoint=name, account=self.current_account, region=self.region,
                   input_location=input_location, body=None if input_location else body, headers=forwarded,
                   ttl_s=ttl_s, timeout_s=timeout_s,
                   output_location=_join(output_path, extension or "", filename or f"{inference_id}.out"),
                   failure_location=_join(failure_path, extension or "", f"{inference_id}-error.out"),
                   notification=dict(output_config.get("NotificationConfig") or {}))


def _error(status: int, code: str, message: str):
    # moto takes the status from the headers' "status", not from the tuple.
    return status, {"status": status, "x-amzn-ErrorType": code, "Content-Type": "application/json"}, json.dumps(
        {"__type": code, "message": message})


def _invoke_endpoint_async(self, hosting: Hosting):
    name = self.path.split("/")[2]
    if len(name) > 63 or not _ENDPOINT_NAME.fullmatch(name):
        return _error(400, "ValidationError", f"EndpointName {name!r} must match {_ENDPOINT_NAME.pattern} "
                                              f"(at most 63 characters)")
    backend = sagemaker_models.sagemaker_backends[self.current_account][self.region]
    endpoint = backend.endpoints.get(name)
    if endpoint is None:
        return _error(400, "ValidationError", f"Endpoint {name} of account {self.current_account} not found.")
    queue = QUEUES.by_endpoint.get(name)
    config = _async_config(backend, endpoint, getattr(queue, "config", None))
    if not config:
        return _error(400, "ValidationError", f"Endpoint {name} is not configured for asynchronous inference "
                                              f"(its endpoint config {endpoint.endpoint_config_name} has no "
                                              f"AsyncInferenceConfig); use InvokeEndpoint")
    if endpoint.endpoint_status not in ("InService", "Updating"):
        return _error(400, "ValidationError", f"Endpoint {name} is {endpoint.endpoint_status}, not InService")
    try:
        request = _build_request(self, name, config)
    except Invalid as exc:
        return _error(400, "ValidationError", str(exc))
    queue = QUEUES.get(name, self.current_account, self.region, hosting)
    queue.config = config
    queue.resize(*_workers(endpoint, config))
    if not queue.put(request, QUEUES.size):
        return _error(503, "ServiceUnavailable", f"The service is unavailable. Try your call again. (endpoint "
                                                 f"{name}'s queue of asynchronous requests is full: "
                                                 f"{QUEUES.size} waiting)")
    return 202, {"status": 202, "Content-Type": "application/json",
                 "X-Amzn-SageMaker-OutputLocation": request.output_location,
                 "X-Amzn-SageMaker-FailureLocation": request.failure_location}, json.dumps(
        {"InferenceId": request.inference_id})


# Closing queues.

def _close(queues: list[EndpointQueue]) -> None:
    for queue in queues:
        for request in queue.close():
            _finish_failed(queue, request, f"ServiceUnavailable: endpoint {queue.name} was deleted before the "
                                           f"request was processed", None)


# The control API.

def _control(environ: dict, start_response) -> list[bytes]:

    method = environ.get("REQUEST_METHOD", "GET")
    status, value = 200, None
    if method in ("PUT", "POST"):
        try:
            body = control.read_json(environ, empty={})
            size = body["queue_size"]
            if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
                raise ValueError(f"queue_size must be a whole number >= 0 or null, not {size!r}")
            QUEUES.size_override = size
        except (ValueError, KeyError, TypeError) as exc:
            status, value = 400, {"error": f"send {{\"queue_size\": N}}: {exc}"}
    elif method != "GET":
        status, value = 405, {"error": f"{method} {CONTROL_PATH}: use GET or PUT"}
    return control.answer(start_response, status, value if value is not None else QUEUES.state())


def _install_control() -> None:
    control.mount(CONTROL_PATH, _control)


def install(hosting: Hosting) -> None:
    """InvokeEndpointAsync for real; DeleteEndpoint and hosting.shutdown close the queues.
    Call after extensions.install has put its own DeleteEndpoint in place (it wraps it)."""
    runtime_responses.SageMakerRuntimeResponse.invoke_endpoint_async = (
        lambda self: _invoke_endpoint_async(self, hosting))

    backend_class = sagemaker_models.SageMakerModelBackend
    original_delete = backend_class.delete_endpoint

    def delete_endpoint(self, endpoint_name):
        queue = QUEUES.pop(endpoint_name) if endpoint_name in self.endpoints else None
        if queue is not None:
            _close([queue])
        original_delete(self, endpoint_name)  # in-flight requests get their answers while processes drain
        if queue is not None:
            queue.join()

    backend_class.delete_endpoint = delete_endpoint

    original_shutdown = hosting.shutdown

    def shutdown() -> None:
        queues = QUEUES.pop_all()
        _close(queues)
        original_shutdown()
        for queue in queues:
            queue.join()

    hosting.shutdown = shutdown
    _install_control()
