"""Fault injection: make chosen AWS calls fail or stall, and slow, break or hang a variant.

A control API on the local AWS's own port (JSON in, JSON out):

    POST   /_local_aws/faults        add one fault (the body); answers 201 and the fault with its "id"
    GET    /_local_aws/faults        {"faults": [...]}: each as added, with "matched" and "fired" counts
    DELETE /_local_aws/faults        remove every fault (hung invocations are released); {"cleared": N}
    DELETE /_local_aws/faults/ID     remove one

An API fault (no "variant") is checked by the WSGI middleware in front of moto, on every
AWS request (aws_wire.py reads which call it is and writes the error):

    service   optional: "sagemaker", "sagemaker-runtime", "cloudwatch", "dynamodb", "s3", ...
              (from the SigV4 credential scope; "monitoring" is cloudwatch, and "sagemaker"
              requests to /endpoints/NAME/invocations are sagemaker-runtime)
    action    optional: the operation, e.g. "DescribeEndpoint", "InvokeEndpoint", "PutItem"
              (X-Amz-Target, Action= of the query protocol, /operation/NAME of rpc-v2-cbor,
              /endpoints/NAME/invocations; S3: the common bucket and object calls by method and path)
    endpoint  optional: the request's EndpointName (JSON body, or the InvokeEndpoint path)
    error     an AWS error code ("ThrottlingException", "InternalFailure", ...), answered in the
              request's wire format (json, rpc-v2-cbor, query XML, rest-json, rest-xml) so that
              boto3 raises ClientError with that code
    status    the error's HTTP status; default 500 for Internal*, 503 for ServiceUnavailable/SlowDown, else 400
    message   the error's message (default: says the fault injected it)
    delay_s   sleep this long before answering (the error) or passing the call on
    skip      let the first N matching calls through (default 0)
    times     fire N times, then stop firing (default 1; 0 or null: forever)

At least one of error / delay_s. The local AWS's own in-process S3 writes made for an
endpoint (its data capture: capture.py) are matched too, as service "s3", action
"PutObject" and endpoint = the endpoint's name (`internal_call`): a fault naming the
endpoint fails those writes and no client's S3 call. botocore retries throttling and 5xx errors (and read
time-outs) by itself: legacy mode makes up to 5 attempts, standard mode 3, and a client
with Config(retries={"max_attempts": 1}) 2 (that key counts retries, not attempts). Each
attempt is a matching call, so a fault with times=1 is absorbed by the retry; to see the
error, fire more times than the client attempts, or use a client with
Config(retries={"total_max_attempts": 1}).

A variant fault names "endpoint" and "variant" and is applied by InvokeEndpoint
(extensions.py) to the calls routed to that variant, by weight or by TargetVariant:

    delay_s   the model answers this much later (counted in ModelLatency)
    status    the model answers this status (400-599) instead of the model's answer: a
              ModelError with OriginalStatusCode, counted in Invocation4XX/5XXErrors
    hang      true: no answer until the fault is removed (or HANG_LIMIT_S passes); then the
              call goes on to the model
    skip, times   as above, but times defaults to 0 (every call)
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from local_aws import control
from local_aws.aws_wire import SERVICE_ALIASES, describe_call, error_response

HANG_LIMIT_S = 300.0
CONTROL_PATH = "/_local_aws/faults"

_API_KEYS = {"service", "action", "endpoint", "error", "status", "message", "delay_s", "skip", "times"}
_VARIANT_KEYS = {"endpoint", "variant", "delay_s", "status", "hang", "skip", "times"}


class FaultError(ValueError):
    """A fault's description is wrong."""


def _default_status(code: str) -> int:
    if code.startswith("Internal") or code in ("ServiceException", "ServiceFailure"):
        return 500
    if code in ("ServiceUnavailable", "ServiceUnavailableException", "SlowDown"):
        return 503
    return 400


@dataclass
class Fault:
    id: int
    spec: dict[str, Any]
    skip: int
    times: int  # 0: forever
    matched: int = 0
    fired: int = 0
    released: threading.Event = field(default_factory=threading.Event)

    @property
    def is_variant(self) -> bool:
        return "variant" in self.spec

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, **self.spec, "skip": self.skip, "times": self.times,
                "matched": self.matched, "fired": self.fired}

    def count(self) -> bool:
        """A matching call: whether the fault fires on it (call under the registry's lock)."""
        self.matched += 1
        if self.matched <= self.skip or (self.times and self.fired >= self.times):
            return False
        self.fired += 1
        return True


def _number(spec: dict, key: str, kind: type, low: float, high: float | None = None) -> None:
    if key not in spec:
        return
    value = spec[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and value != int(value)):
        raise FaultError(f"{key} must be a number, not {value!r}")
    if value < low or (high is not None and value > high):
        raise FaultError(f"{key} must be within [{low}, {high if high is not None else 'inf'}], not {value}")
    spec[key] = kind(value)


def _parse(body: Any) -> tuple[dict[str, Any], int, int]:
    if not isinstance(body, dict):
        raise FaultError("a fault is a JSON object")
    spec = dict(body)
    variant = "variant" in spec
    unknown = set(spec) - (_VARIANT_KEYS if variant else _API_KEYS)
    if unknown:
        raise FaultError(f"unknown field(s) for {'a variant' if variant else 'an API'} fault: {sorted(unknown)}")
    skip = spec.pop("skip", 0) or 0
    times = spec.pop("times", 0 if variant else 1)
    times = 0 if times is None else times
    counts = {"skip": skip, "times": times}
    _number(counts, "skip", int, 0)
    _number(counts, "times", int, 0)
    for key in ("service", "action", "endpoint", "variant", "error", "message"):
        if key in spec and not (isinstance(spec[key], str) and spec[key]):
            raise FaultError(f"{key} must be a non-empty string, not {spec[key]!r}")
    _number(spec, "delay_s", float, 0, HANG_LIMIT_S)
    if variant:
        if "endpoint" not in spec:
            raise FaultError("a variant fault names its endpoint")
        _number(spec, "status", int, 400, 599)
        if "hang" in spec and not isinstance(spec["hang"], bool):
            raise FaultError(f"hang must be true or false, not {spec['hang']!r}")
        if not (spec.get("delay_s") or "status" in spec or spec.get("hang")):
            raise FaultError("a variant fault has delay_s, status or hang")
    else:
        if "service" in spec:
            spec["service"] = SERVICE_ALIASES.get(spec["service"].lower(), spec["service"].lower())
        _number(spec, "status", int, 400, 599)
        if "status" in spec and "error" not in spec:
            raise FaultError("an API fault's status goes with an error code")
        if "error" not in spec and not spec.get("delay_s"):
            raise FaultError("an API fault has an error or a delay_s")
        if "error" in spec:
            spec.setdefault("status", _default_status(spec["error"]))
    return spec, counts["skip"], counts["times"]


class Registry:
    """The faults in force; thread-safe (the server answers each request on its own thread)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[Fault] = []
        self._next_id = 1

    def add(self, body: Any) -> dict[str, Any]:
        spec, skip, times = _parse(body)
        with self._lock:
            fault = Fault(self._next_id, spec, skip, times)
            self._next_id += 1
            self._faults.append(fault)
            return fault.as_dict()

    def list(self) -> list[dict[str, Any]]:
        with self._lock:
            return [f.as_dict() for f in self._faults]

    def remove(self, fault_id: int | None = None) -> int:
        """Remove one fault (or all): the calls they hang go on."""
        with self._lock:
            gone = [f for f in self._faults if fault_id is None or f.id == fault_id]
            self._faults = [f for f in self._faults if f not in gone]
        for fault in gone:
            fault.released.set()
        return len(gone)

    def _firing(self, want: Callable[[Fault], bool]) -> list[Fault]:
        with self._lock:
            return [f for f in self._faults if want(f) and f.count()]

    def has_api_faults(self) -> bool:
        with self._lock:
            return any(not f.is_variant for f in self._faults)

    def api_faults(self, call: dict[str, str | None]) -> list[Fault]:
        def want(fault: Fault) -> bool:
            return not fault.is_variant and all(
                fault.spec[key] == call.get(key) for key in ("service", "action", "endpoint") if key in fault.spec)

        return self._firing(want)

    def variant_faults(self, endpoint: str, variant: str) -> list[Fault]:
        return self._firing(lambda f: f.is_variant and f.spec["endpoint"] == endpoint
                            and f.spec["variant"] == variant)


REGISTRY = Registry()


@dataclass
class VariantEffect:
    """What the variant faults firing on one invocation do to it."""

    faults: list[Fault]

    def stall(self) -> None:
        """Sleep for each delay and wait out each hang (until its fault is removed)."""
        for fault in self.faults:
            if fault.spec.get("delay_s"):
                time.sleep(fault.spec["delay_s"])
            if fault.spec.get("hang"):
                fault.released.wait(HANG_LIMIT_S)

    @property
    def status(self) -> int | None:
        return next((f.spec["status"] for f in self.faults if "status" in f.spec), None)


def variant_effect(endpoint: str, variant: str) -> VariantEffect:
    return VariantEffect(REGISTRY.variant_faults(endpoint, variant))


class InjectedFault(Exception):
    """An API fault fired on an in-process call (`internal_call`)."""

    def __init__(self, code: str, status: int, message: str):
        super().__init__(f"{code} ({status}): {message}")
        self.code, self.status = code, status


def internal_call(service: str, action: str, endpoint: str | None = None) -> None:
    """The API faults that match an AWS call the local AWS makes in-process (no HTTP request
    for the middleware to see): sleep their delays, raise InjectedFault for an error."""
    if not REGISTRY.has_api_faults():
        return
    firing = REGISTRY.api_faults({"service": service, "action": action, "endpoint": endpoint})
    for fault in firing:
        if fault.spec.get("delay_s"):
            time.sleep(fault.spec["delay_s"])
    error = next((f for f in firing if "error" in f.spec), None)
    if error is not None:
        code = error.spec["error"]
        raise InjectedFault(code, error.spec["status"],
                            error.spec.get("message") or f"{code} injected by local AWS fault {error.id}")


# The WSGI side.

def _control(environ: dict, start_response) -> list[bytes]:
    method = environ.get("REQUEST_METHOD", "GET")
    rest = environ.get("PATH_INFO", "")[len(CONTROL_PATH):].strip("/")

    def answer(status: int, value: Any) -> list[bytes]:
        return control.answer(start_response, status, value)

    if rest:
        if method != "DELETE" or not rest.isdigit():
            return answer(404 if method == "DELETE" else 405, {"error": f"{method} {CONTROL_PATH}/{rest}: no such call"})
        removed = REGISTRY.remove(int(rest))
        return answer(200 if removed else 404, {"cleared": removed})
    if method == "GET":
        return answer(200, {"faults": REGISTRY.list()})
    if method == "DELETE":
        return answer(200, {"cleared": REGISTRY.remove()})
    if method == "POST":
        try:
            return answer(201, REGISTRY.add(control.read_json(environ)))
        except (ValueError, FaultError) as exc:  # JSONDecodeError is a ValueError
            return answer(400, {"error": str(exc)})
    return answer(405, {"error": f"{method} {CONTROL_PATH}: use GET, POST or DELETE"})


def handle(environ: dict, start_response, app: Callable) -> Any:
    """The WSGI request in front of moto's dispatcher `app`: the control API, else the API
    faults that fire on it, else the call as it is."""
    path = environ.get("PATH_INFO", "")
    if path == CONTROL_PATH or path.startswith(CONTROL_PATH + "/"):
        return _control(environ, start_response)
    if not REGISTRY.has_api_faults() or path.startswith("/moto-api"):
        return app(environ, start_response)
    call = describe_call(environ)
    firing = REGISTRY.api_faults(call)
    for fault in firing:
        if fault.spec.get("delay_s"):
            time.sleep(fault.spec["delay_s"])
    error = next((f for f in firing if "error" in f.spec), None)
    if error is None:
        return app(environ, start_response)
    code, status = error.spec["error"], error.spec["status"]
    message = error.spec.get("message") or f"{code} injected by local AWS fault {error.id}"
    headers, body = error_response(call, environ, code, status, message)
    return control.respond(start_response, status, headers, body)


def install() -> None:
    """Put `handle` in front of moto's dispatcher (the WSGI app ThreadedMotoServer serves)."""
    from moto.moto_server import werkzeug_app

    dispatcher = werkzeug_app.DomainDispatcherApplication
    if getattr(dispatcher, "_local_aws_faults", False):
        return
    original = dispatcher.__call__

    def __call__(self, environ, start_response):
        return handle(environ, start_response, lambda e, s: original(self, e, s))

    dispatcher.__call__ = __call__
    dispatcher._local_aws_faults = True
