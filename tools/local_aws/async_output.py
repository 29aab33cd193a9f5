"""Where an asynchronous inference's outcome goes: its input read from and its answer or
failure written to the local S3, its notification published to the local SNS, and its
metrics put to the local CloudWatch.

What it follows (the developer guide's pages "Check prediction results" and "Alarms and
logs for tracking metrics from asynchronous endpoints"):

- A 200 answer goes to its output location with the model's Content-Type; a model error
  (its own body, which carries the server's message), an unreadable input, a time-out or
  an expired request goes to its failure location (async_request.py names both).
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

Where it differs: KmsKeyId is ignored; the inline responseBody's field names are this
module's reading of the docs, unverified against a live account.
"""

from __future__ import annotations

import base64
import datetime
import json
import time
from typing import Any

from moto.cloudwatch.models import cloudwatch_backends
from moto.s3.models import s3_backends
from moto.sns.models import sns_backends

from local_aws.async_request import Request

MAX_NOTIFIED_RESPONSE = 128 * 1024


def _now_iso(epoch: float) -> str:
    moment = datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _split_s3(url: str) -> tuple[str, str]:
    bucket, _, key = url[len("s3://"):].partition("/")
    return bucket, key


def put_metrics(account: str, region: str, dimensions: list[dict], metrics: list[tuple[str, float, str]]) -> None:
    cloudwatch_backends[account][region].put_metric_data("AWS/SageMaker", [
        {"MetricName": name, "Value": value, "Unit": unit, "Dimensions": dimensions} for name, value, unit in metrics
    ])


def variant_metrics(request: Request, variant: str, status: int | None, latency_us: float | None) -> None:
    metrics = [("InvocationsProcesssed", float(status == 200), "Count"),
               ("InvocationFailures", float(status != 200), "Count")]
    if status is not None:
        metrics += [("Invocation4XXErrors", float(400 <= status < 500), "Count"),
                    ("Invocation5XXErrors", float(status >= 500), "Count")]
    if latency_us is not None:
        metrics.append(("ModelLatency", latency_us, "Microseconds"))
    put_metrics(request.account, request.region, [{"Name": "EndpointName", "Value": request.endpoint},
                                                  {"Name": "VariantName", "Value": variant}], metrics)


def read_input(request: Request) -> bytes:
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


def fail(request: Request, reason: str, model_answer: tuple[bytes, str] | None) -> None:
    """Write the failure object (the model's own answer, else the reason) and notify ErrorTopic."""
    body, content_type = model_answer or (json.dumps({"errorMessage": reason}).encode(), "application/json")
    _write(request, request.failure_location, body, content_type)
    _notify(request, "Failed", {"contentType": content_type, "failureLocation": request.failure_location},
            body, content_type, reason)


def complete(request: Request, answer: bytes, content_type: str) -> None:
    """Write the model's answer to the output location and notify SuccessTopic; a write that
    fails makes the request fail."""
    problem = _write(request, request.output_location, answer, content_type)
    if problem:
        fail(request, f"ClientError: could not write the output to {request.output_location}: {problem}", None)
        return
    _notify(request, "Completed", {"contentType": content_type, "outputLocation": request.output_location},
            answer, content_type)


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
