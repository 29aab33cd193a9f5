"""SageMaker data capture for real: sampled requests and answers of an endpoint written
as JSON lines to S3 in the background.

What it follows (the developer guide's "Data capture" and "Capture data from real-time
endpoint", and the API reference's DataCaptureConfig and InvokeEndpoint):

- CreateEndpointConfig validates DataCaptureConfig and DescribeEndpoint shows its
  DataCaptureConfigSummary (capture_config.py).
- An endpoint captures per its CURRENT endpoint config: CreateEndpoint takes the
  config's DataCaptureConfig, and an UpdateEndpoint that completes takes the new config's
  (another percentage or destination, or none: capture stops).
- Each successful InvokeEndpoint is captured with probability InitialSamplingPercentage
  / 100 (an independent uniform draw per request). A captured request is one JSON line:
      {"captureData": {"endpointInput": {"observedContentType", "mode": "INPUT", "data",
                                         "encoding"},
                       "endpointOutput": {... "mode": "OUTPUT" ...}},
       "eventMetadata": {"eventId": uuid4, "inferenceId": (only when the request gave
                         one: InvokeEndpoint's X-Amzn-SageMaker-Inference-Id),
                         "inferenceTime": "yyyy-mm-ddThh:mm:ssZ" (UTC)},
       "eventVersion": "0"}
  CaptureOptions Input / Output leave out endpointOutput / endpointInput (InputAndOutput,
  or Input and Output both listed, keep both). A body whose content type is listed in
  CaptureContentTypeHeader's CsvContentTypes or JsonContentTypes is written as text with
  encoding CSV or JSON; any other, or no CaptureContentTypeHeader at all (the API: "If no
  headers are specified SageMaker will by default base64 encode"), as BASE64.
- Objects: DestinationS3Uri/ENDPOINT/VARIANT/yyyy/mm/dd/hh/MM-SS-mmm-UUID.jsonl, the hour
  (UTC) of the inference time, several records per object, as SageMaker writes them.
  With KmsKeyId the object is put with SSE aws:kms and that key (moto records it).
- InvokeEndpointAsync: each request that a variant answers with 200 is sampled and
  captured the same way (input: the payload read from InputLocation or given inline;
  output: the model's answer; inferenceId: the request's, given or generated), as this
  project's brief says AWS does; the stored docs pages this module was checked against
  (real-time capture) do not describe the async case, so treat it as unverified.

Where it differs, and what is this local AWS's own:
- Model errors: only answers with status 200 are captured. The guide documents no
  capture of failed invocations and Model Monitor reads captures as inference data; a
  ModelError, a refused call (throttled, too large) or an injected variant status is
  not captured.
- Buffering: records wait in a bounded in-memory buffer per endpoint and variant
  (LOCAL_AWS_CAPTURE_BUFFER records, default 10000; a full buffer drops the new record)
  and a background thread writes them every LOCAL_AWS_CAPTURE_FLUSH_SECONDS (default 2;
  SageMaker's interval is not documented, it also writes periodically), and at once on
  DeleteEndpoint and when the local AWS stops. The request's path only draws the sample
  and appends the bodies; the encoding and the S3 write happen on the writer thread, so
  capturing never fails or slows a client's request. The object name's MM-SS-mmm is the
  earliest inference time in it (SageMaker's exact naming rule is not documented).
- A write that fails (the destination bucket missing, or an injected fault) loses that
  object's records. Lost records (failed writes and full-buffer drops) are counted in the
  CloudWatch metric CaptureRecordsLost (Count) in the namespace LocalAWS/DataCapture with
  dimensions EndpointName and VariantName: this local AWS's own; SageMaker's lists of
  CloudWatch metrics document no capture-loss metric (its docs only say capture stops at
  high disk usage).
- Fault injection: the capture writes are in-process S3 PutObject calls, not HTTP
  requests, so faults.py's middleware would not see them; they ask `faults.internal_call`
  instead, with service "s3", action "PutObject" and endpoint = the endpoint's name. An API
  fault {"service": "s3", "action": "PutObject", "endpoint": NAME, "error": ...} thus
  fails that endpoint's capture writes (and no client's S3 calls, whose endpoint is none).
- Content types are matched on the media type (before any ';', case-insensitive); a
  CSV/JSON-typed body that is not UTF-8 is written as BASE64. During a blue/green update
  the old config's capture applies until the new fleet takes over.
"""

from __future__ import annotations

import base64
import collections
import datetime
import json
import os
import random
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from moto.cloudwatch.models import cloudwatch_backends
from moto.s3.models import s3_backends
from moto.sagemaker import models as sagemaker_models
from moto.sagemaker import responses as sagemaker_responses

from local_aws import faults
from local_aws.capture_config import summary, validate

FLUSH_ENV = "LOCAL_AWS_CAPTURE_FLUSH_SECONDS"
BUFFER_ENV = "LOCAL_AWS_CAPTURE_BUFFER"
DEFAULT_FLUSH_S = 2.0
DEFAULT_BUFFER = 10_000
LOST_NAMESPACE = "LocalAWS/DataCapture"
LOST_METRIC = "CaptureRecordsLost"
INFERENCE_ID_HEADER = "X-Amzn-SageMaker-Inference-Id"


@dataclass
class Event:
    """One sampled inference, as it came: encoded on the writer thread, not the request's."""

    config: dict
    request: bytes
    request_type: str | None
    answer: bytes
    answer_type: str | None
    inference_id: str | None
    time: float = field(default_factory=time.time)
    event_id: str | None = None  # shared by a request's production and shadow records (shadow.py)


def _media(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def _payload(config: dict, body: bytes, content_type: str | None, mode: str) -> dict[str, str]:
    header = config.get("CaptureContentTypeHeader") or {}
    media = _media(content_type)
    encoding = "BASE64"
    if media and media in {_media(t) for t in header.get("CsvContentTypes") or []}:
        encoding = "CSV"
    elif media and media in {_media(t) for t in header.get("JsonContentTypes") or []}:
        encoding = "JSON"
    data = None
    if encoding != "BASE64":
        try:
            data = body.decode("utf-8")
        except UnicodeDecodeError:
            encoding = "BASE64"
    if data is None:
        data = base64.b64encode(body).decode("ascii")
    return {"observedContentType": content_type or "", "mode": mode, "data": data, "encoding": encoding}


def _stamp(epoch: float) -> str:
    return datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def record(event: Event) -> dict[str, Any]:
    """The JSON line of one captured inference."""
    modes = {o["CaptureMode"] for o in event.config["CaptureOptions"]}
    data: dict[str, Any] = {}
    if modes & {"Input", "InputAndOutput"}:
        data["endpointInput"] = _payload(event.config, event.request, event.request_type, "INPUT")
    if modes & {"Output", "InputAndOutput"}:
        data["endpointOutput"] = _payload(event.config, event.answer, event.answer_type, "OUTPUT")
    metadata = {"eventId": event.event_id or str(uuid.uuid4())}
    if event.inference_id:
        metadata["inferenceId"] = event.inference_id
    metadata["inferenceTime"] = _stamp(event.time)
    return {"captureData": data, "eventMetadata": metadata, "eventVersion": "0"}


def _env_number(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


class Capture:
    """The buffers of every endpoint and variant, and the thread that writes them."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        # (account, region, endpoint, variant) -> the events waiting to be written
        self.buffers: dict[tuple[str, str, str, str], collections.deque[Event]] = {}
        self.limit = int(_env_number(BUFFER_ENV, DEFAULT_BUFFER))
        self.interval = max(0.05, _env_number(FLUSH_ENV, DEFAULT_FLUSH_S))
        self.wake = threading.Event()
        self.writing = threading.Lock()  # one flush at a time: the thread's, a delete's, the shutdown's
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        with self.lock:
            if self.thread is None:
                self.thread = threading.Thread(target=self._run, name="data-capture", daemon=True)
                self.thread.start()

    def _run(self) -> None:
        while True:
            self.wake.wait(self.interval)
            self.wake.clear()
            try:
                self.flush()
            except Exception as exc:  # never lose the writer thread
                print(f"local AWS: data capture flush failed: {type(exc).__name__}: {exc}", flush=True)

    def add(self, account: str, region: str, endpoint: str, variant: str, event: Event) -> None:
        """Buffer a sampled event (called on the request's path: an append, nothing more)."""
        key = (account, region, endpoint, variant)
        with self.lock:
            buffer = self.buffers.setdefault(key, collections.deque())
            if len(buffer) < self.limit:
                buffer.append(event)
                return
        _lost(account, region, endpoint, variant, 1)

    def flush(self, endpoint: str | None = None) -> None:
        """Write what the buffers hold (of one endpoint, or all) to S3."""
        with self.writing:
            with self.lock:
                keys = [k for k in self.buffers if endpoint is None or k[2] == endpoint]
                taken = {k: self.buffers.pop(k) for k in keys}
            for key, events in taken.items():
                if events:
                    _write(key, list(events))


def _lost(account: str, region: str, endpoint: str, variant: str, count: int) -> None:
    try:
        cloudwatch_backends[account][region].put_metric_data(LOST_NAMESPACE, [{
            "MetricName": LOST_METRIC, "Value": float(count), "Unit": "Count",
            "Dimensions": [{"Name": "EndpointName", "Value": endpoint}, {"Name": "VariantName", "Value": variant}]}])
    except Exception as exc:
        print(f"local AWS: could not count {count} lost captures of {endpoint}/{variant}: {exc}", flush=True)


def _write(key: tuple[str, str, str, str], events: list[Event]) -> None:
    """One object per destination and hour; a failed object's records are lost and counted."""
    account, region, endpoint, variant = key
    groups: dict[tuple[str, str | None, str], list[Event]] = collections.defaultdict(list)
    for event in events:
        hour = datetime.datetime.fromtimestamp(event.time, datetime.timezone.utc).strftime("%Y/%m/%d/%H")
        groups[(event.config["DestinationS3Uri"], event.config.get("KmsKeyId"), hour)].append(event)
    for (destination, kms, hour), group in groups.items():
        first = datetime.datetime.fromtimestamp(min(e.time for e in group), datetime.timezone.utc)
        name = f"{first:%M-%S}-{first.microsecond // 1000:03d}-{uuid.uuid4()}.jsonl"
        bucket, _, prefix = destination[len("s3://"):].partition("/")
        object_key = "/".join(p for p in (prefix.strip("/"), endpoint, variant, hour, name) if p)
        try:
            body = "".join(json.dumps(record(e), separators=(",", ":")) + "\n" for e in group).encode()
            faults.internal_call("s3", "PutObject", endpoint)
            s3_backends[account]["aws"].put_object(bucket, object_key, body, encryption="aws:kms" if kms else None,
                                                   kms_key_id=kms or None)
        except Exception:  # a missing bucket, an injected fault: this object's captures are lost
            _lost(account, region, endpoint, variant, len(group))


CAPTURE = Capture()


def invoked(endpoint: Any, account: str, region: str, variant: str, request: bytes, request_type: str | None,
            answer: bytes, answer_type: str | None, inference_id: str | None, event_id: str | None = None) -> None:
    """A variant of `endpoint` (moto's FakeEndpoint, or None) answered 200: sample it for
    capture per the endpoint's current DataCaptureConfig. Never raises."""
    try:
        config = getattr(endpoint, "data_capture_config", None)
        if not config or not config.get("EnableCapture", True):
            return
        if random.random() * 100 >= config["InitialSamplingPercentage"]:
            return
        CAPTURE.add(account, region, endpoint.endpoint_name, variant,
                    Event(config, request, request_type, answer, answer_type, inference_id, event_id=event_id))
    except Exception as exc:
        print(f"local AWS: data capture skipped a request: {type(exc).__name__}: {exc}", flush=True)


def install(hosting) -> None:
    """Validate DataCaptureConfig, describe the endpoint's summary, flush on DeleteEndpoint
    and shutdown. Call after async_inference.install (its DeleteEndpoint closes the queues:
    the in-flight requests' captures are buffered before this flushes)."""
    backend_class = sagemaker_models.SageMakerModelBackend
    original_config = backend_class.create_endpoint_config

    def create_endpoint_config(self, endpoint_config_name, production_variants, data_capture_config,
                               async_inference_config, tags, kms_key_id):
        validate(data_capture_config)
        return original_config(self, endpoint_config_name, production_variants, data_capture_config,
                               async_inference_config, tags, kms_key_id)

    backend_class.create_endpoint_config = create_endpoint_config

    def describe_endpoint_config_response(self):
        # moto stores a missing DataCaptureConfig as {} (its CreateEndpoint reads the key);
        # SageMaker's answer has none.
        described = dict(self.sagemaker_backend.describe_endpoint_config(self._get_param("EndpointConfigName")))
        if not described.get("DataCaptureConfig"):
            described.pop("DataCaptureConfig", None)
        return sagemaker_responses.ActionResult(described)

    sagemaker_responses.SageMakerResponse.describe_endpoint_config = describe_endpoint_config_response

    endpoint_class = sagemaker_models.FakeEndpoint
    original_response = endpoint_class.response_object

    def response_object(self) -> dict[str, Any]:
        described = original_response.fget(self)
        described.pop("DataCaptureConfig", None)
        captured = summary(self.data_capture_config)
        if captured:
            described["DataCaptureConfig"] = captured
        return described

    endpoint_class.response_object = property(response_object)

    original_delete = backend_class.delete_endpoint

    def delete_endpoint(self, endpoint_name):
        original_delete(self, endpoint_name)
        CAPTURE.flush(endpoint_name)

    backend_class.delete_endpoint = delete_endpoint

    original_shutdown = hosting.shutdown

    def shutdown() -> None:
        original_shutdown()
        CAPTURE.flush()

    hosting.shutdown = shutdown
    CAPTURE.start()
