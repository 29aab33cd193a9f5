"""An InvokeEndpointAsync request: its headers checked against the service model's limits
and resolved into a Request (what async_queue.py works on).

What it follows (the InvokeEndpointAsync API reference and the sagemaker-runtime service
model in botocore):

- Headers X-Amzn-SageMaker-InputLocation, -Content-Type, -Accept, -Custom-Attributes,
  -Inference-Id, -RequestTTLSeconds, -InvocationTimeoutSeconds, -S3OutputPathExtension
  and -Filename (or the input inline as the body, up to 128,000 bytes, instead of
  InputLocation). The InferenceId is the given one, else a new uuid.
- `Invalid` (answered as ValidationError, 400): a parameter outside the service model's
  limits (RequestTTLSeconds 60..21600, InvocationTimeoutSeconds 1..3600, InferenceId 1..64
  printable characters, headers up to 1024 ASCII characters, InputLocation s3://).
- Defaults: RequestTTLSeconds 21600 (6 h) in the queue, InvocationTimeoutSeconds 900
  (15 min) for the model's answer.
- Where the outcome goes: S3OutputPath[/S3OutputPathExtension]/(Filename or
  INFERENCE_ID.out), and S3FailurePath/INFERENCE_ID-error.out (the output path when the
  config has no failure path).

Where it differs: inputs are read from the local (moto) S3, s3:// only (no https://
object URLs).
"""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

DEFAULT_TTL_S = 21600
DEFAULT_INVOCATION_TIMEOUT_S = 900
MAX_INLINE_BODY = 128_000

_INFERENCE_ID = re.compile(r"\S[\x20-\x7e]*")
_PATH_EXTENSION = re.compile(r"(?!s3:|https:)[a-zA-Z0-9!_.*'()/-]+")
_FILENAME = re.compile(r"(?!.*\..*\.)[a-zA-Z0-9][a-zA-Z0-9-_.]*")


class Invalid(ValueError):
    """A request InvokeEndpointAsync refuses (ValidationError)."""


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


def build_request(self, name: str, config: dict) -> Request:
    """The Request of moto's runtime handler `self` for endpoint `name` and its
    AsyncInferenceConfig `config`; Invalid when InvokeEndpointAsync refuses it."""
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
