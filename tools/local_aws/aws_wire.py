"""An AWS request as the fault middleware (faults.py) sees it: which service, action and
endpoint it calls, read from the wire (SigV4 credential scope, X-Amz-Target, Action= of
the query protocol, /operation/NAME of rpc-v2-cbor, the InvokeEndpoint paths, S3's method
and path), and an AWS error written in that request's protocol (json, rpc-v2-cbor, query
XML, rest-json, rest-xml) so that boto3 raises ClientError with its code.
"""

from __future__ import annotations

import io
import json
import re
import time
import urllib.parse

_MAX_BODY = 1 << 20  # read bodies up to 1 MiB to find Action= or EndpointName
SERVICE_ALIASES = {"monitoring": "cloudwatch"}

_S3_LISTING = {"list-type", "prefix", "delimiter", "max-keys", "continuation-token", "encoding-type",
               "start-after", "marker", "fetch-owner", "x-id", "versionId"}


def _s3_action(method: str, path: str, query: dict[str, list[str]], environ: dict) -> str | None:
    """The common S3 calls by method and path; None for sub-resources (?tagging, ?uploads, ...)."""
    if set(query) - _S3_LISTING:
        return None
    parts = [p for p in path.split("/") if p]
    if not parts:
        return {"GET": "ListBuckets"}.get(method)
    if len(parts) == 1:
        if method == "GET":
            return "ListObjectsV2" if query.get("list-type") == ["2"] else "ListObjects"
        return {"PUT": "CreateBucket", "DELETE": "DeleteBucket", "HEAD": "HeadBucket"}.get(method)
    if method == "PUT" and environ.get("HTTP_X_AMZ_COPY_SOURCE"):
        return "CopyObject"
    return {"GET": "GetObject", "PUT": "PutObject", "DELETE": "DeleteObject", "HEAD": "HeadObject"}.get(method)


_INVOCATIONS = re.compile(r"^/endpoints/([^/]+)/(invocations|async-invocations|invocations-response-stream)$")
_RUNTIME_ACTIONS = {"invocations": "InvokeEndpoint", "async-invocations": "InvokeEndpointAsync",
                    "invocations-response-stream": "InvokeEndpointWithResponseStream"}


def _read_body(environ: dict) -> bytes:
    """The request body, put back for moto to read again; b'' when absent or too large to look at."""
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return b""
    if not 0 < length <= _MAX_BODY:
        return b""
    body = environ["wsgi.input"].read(length)
    environ["wsgi.input"] = io.BytesIO(body)
    return body


def describe_call(environ: dict) -> dict[str, str | None]:
    """{"service", "action", "endpoint", "protocol"} of an AWS request (None where unknown)."""
    path = urllib.parse.unquote(environ.get("PATH_INFO", "") or "")
    method = environ.get("REQUEST_METHOD", "GET")
    query = urllib.parse.parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)
    content_type = environ.get("CONTENT_TYPE", "") or ""
    call: dict[str, str | None] = {"service": None, "action": None, "endpoint": None, "protocol": None}

    match = re.search(r"Credential=[^/,\s]+/[^/]+/[^/]+/([^/]+)/aws4_request", environ.get("HTTP_AUTHORIZATION", ""))
    if match:
        service = match.group(1).lower()
        call["service"] = SERVICE_ALIASES.get(service, service)
    invocation = _INVOCATIONS.match(path)
    if invocation and call["service"] in ("sagemaker", None):
        call["service"] = "sagemaker-runtime"
        call["action"], call["endpoint"] = _RUNTIME_ACTIONS[invocation.group(2)], invocation.group(1)
        call["protocol"] = "rest-json"
        return call

    target = environ.get("HTTP_X_AMZ_TARGET")
    if environ.get("HTTP_SMITHY_PROTOCOL") == "rpc-v2-cbor" or "/operation/" in path:
        call["protocol"] = "rpc-v2-cbor"
        parts = path.split("/")  # /service/SERVICE/operation/NAME
        if "operation" in parts[:-1]:
            call["action"] = parts[len(parts) - parts[::-1].index("operation")]  # the part after the last one
    elif target:
        call["protocol"] = "json"
        call["action"] = target.rsplit(".", 1)[-1]
        if content_type.startswith("application/x-amz-json"):
            try:
                name = json.loads(_read_body(environ) or b"{}").get("EndpointName")
            except (ValueError, AttributeError):
                name = None
            call["endpoint"] = name if isinstance(name, str) else None
    else:
        action = query.get("Action", [None])[0]
        if action is None and content_type.startswith("application/x-www-form-urlencoded"):
            form = urllib.parse.parse_qs(_read_body(environ).decode("utf-8", "replace"))
            action = form.get("Action", [None])[0]
        if action is not None:
            call["protocol"], call["action"] = "query", action
        elif call["service"] == "s3":
            call["protocol"], call["action"] = "rest-xml", _s3_action(method, path, query, environ)
        else:
            call["protocol"] = "rest-json"
    return call


def _cbor_text(value: str) -> bytes:
    data = value.encode()
    n = len(data)
    if n < 24:
        head = bytes([0x60 | n])
    elif n < 0x100:
        head = bytes([0x78, n])
    elif n < 0x10000:
        head = bytes([0x79]) + n.to_bytes(2, "big")
    else:
        head = bytes([0x7A]) + n.to_bytes(4, "big")
    return head + data


def _cbor_map(items: dict[str, str]) -> bytes:
    assert len(items) < 24
    return bytes([0xA0 | len(items)]) + b"".join(_cbor_text(k) + _cbor_text(v) for k, v in items.items())


def _xml(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def error_response(call: dict[str, str | None], environ: dict, code: str, status: int,
                   message: str) -> tuple[dict[str, str], bytes]:
    """Headers and body of an AWS error in the wire format of the request's protocol."""
    request_id = f"fault-{time.time_ns():x}"
    headers = {"x-amzn-RequestId": request_id}
    fault_type = "Receiver" if status >= 500 else "Sender"
    protocol = call["protocol"]
    if protocol == "rpc-v2-cbor":
        headers.update({"Content-Type": "application/cbor", "smithy-protocol": "rpc-v2-cbor"})
        body = _cbor_map({"__type": code, "message": message})
    elif protocol == "json":
        headers["Content-Type"] = environ.get("CONTENT_TYPE") or "application/x-amz-json-1.1"
        body = json.dumps({"__type": code, "message": message}).encode()
    elif protocol == "query":
        headers["Content-Type"] = "text/xml"
        body = (f"<ErrorResponse><Error><Type>{fault_type}</Type><Code>{_xml(code)}</Code>"
                f"<Message>{_xml(message)}</Message></Error><RequestId>{request_id}</RequestId>"
                f"</ErrorResponse>").encode()
    elif protocol == "rest-xml":
        headers.update({"Content-Type": "application/xml", "x-amz-request-id": request_id})
        body = (f"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{_xml(code)}</Code>"
                f"<Message>{_xml(message)}</Message><RequestId>{request_id}</RequestId></Error>").encode()
    else:  # rest-json
        headers.update({"Content-Type": "application/json", "x-amzn-ErrorType": code})
        body = json.dumps({"message": message}).encode()
    if environ.get("HTTP_X_AMZN_QUERY_MODE") == "true":  # a query-compatible service (CloudWatch)
        headers["x-amzn-query-error"] = f"{code};{fault_type}"
    if environ.get("REQUEST_METHOD") == "HEAD":
        body = b""  # a HEAD answer has no body: botocore takes the code from the status
    return headers, body
