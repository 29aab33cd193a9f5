"""The queue of an endpoint's asynchronous requests and the worker threads that work it:
each request routed to a variant's `serve` process, its outcome handed to async_output.py.

What it follows (the developer guide's "Asynchronous inference"):

- Workers: ClientConfig.MaxConcurrentInvocationsPerInstance (default 4 here: AWS says it
  "chooses an optimal value" and documents none) times the endpoint's instance count, as
  AWS sends that many concurrent requests to the containers. Each request is routed by the
  variants' current weights, like InvokeEndpoint, so after UpdateEndpoint the same queue
  is served by the new variants; the worker count follows the current config.
- A request older than its RequestTTLSeconds when a worker takes it fails as expired; the
  model has InvocationTimeoutSeconds to answer.
- Data capture: a request a variant answers with 200 is sampled per the endpoint's
  DataCaptureConfig like an InvokeEndpoint (capture.py), with its InferenceId.
- Closing (DeleteEndpoint, the local AWS stopping): requests still waiting fail, in-flight
  ones get their answer, and the workers end.

Where it differs: the queue holds at most `Queues.size` requests waiting for a worker
(AWS documents no queue size: LOCAL_AWS_ASYNC_QUEUE, default 1000, or the control API's);
a variant whose `invoke` takes no timeout (a serverless one) keeps its own rather than
InvocationTimeoutSeconds; no autoscaling, so HasBacklogWithoutCapacity is 1 only while a
backlog waits on an endpoint without running processes.
"""

from __future__ import annotations

import collections
import inspect
import json
import os
import threading
import time
from typing import Any

from moto.sagemaker import models as sagemaker_models

from local_aws import capture, faults
from local_aws import hosting as hosting_module
from local_aws.async_output import complete, fail, put_metrics, read_input, variant_metrics
from local_aws.async_request import Request
from local_aws.hosting import Hosting

QUEUE_ENV = "LOCAL_AWS_ASYNC_QUEUE"
DEFAULT_QUEUE = 1000
DEFAULT_CONCURRENCY_PER_INSTANCE = 4
JOIN_TIMEOUT_S = 10.0

# hosting.Refused: an invocation a variant refuses before its model sees it (where hosting has it).
_REFUSED = getattr(hosting_module, "Refused", ())


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
                fail(request, f"InternalFailure: {type(exc).__name__}: {exc}", None)
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
        put_metrics(self.account, self.region, [{"Name": "EndpointName", "Value": self.name}], metrics)


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


def worker_count(endpoint, config: dict) -> tuple[int, int]:
    """(workers, instances) of moto's FakeEndpoint under its AsyncInferenceConfig `config`."""
    per_instance = int((config.get("ClientConfig") or {}).get("MaxConcurrentInvocationsPerInstance")
                       or DEFAULT_CONCURRENCY_PER_INSTANCE)
    instances = sum(int(v.get("CurrentInstanceCount") or 1) for v in endpoint.production_variants) or 1
    return per_instance * instances, instances


# Processing one request.

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
        fail(request, f"ExpiredRequest: the request waited {waited:.0f} s in the queue, "
                      f"longer than its RequestTTLSeconds ({request.ttl_s})", None)
        return
    try:
        body = read_input(request)
    except Exception as exc:
        fail(request, f"ClientError: could not read the input from {request.input_location}: "
                      f"{type(exc).__name__}: {exc}", None)
        return
    backend = sagemaker_models.sagemaker_backends[request.account][request.region]
    endpoint = backend.endpoints.get(request.endpoint)
    weights = {v["VariantName"]: float(v.get("CurrentWeight", 1.0))
               for v in (endpoint.production_variants if endpoint else [])}
    try:
        variant, process = queue.hosting.route(request.endpoint, weights, None)
    except LookupError as exc:
        fail(request, f"ServiceUnavailable: {exc}", None)
        return
    started = time.perf_counter()
    effect = faults.variant_effect(request.endpoint, variant)
    _stall(effect, queue.closed)
    if queue.closed.is_set():
        fail(request, f"ServiceUnavailable: endpoint {request.endpoint} was deleted", None)
        return
    try:
        if effect.status is not None:
            status, headers = effect.status, {"Content-Type": "application/json"}
            answer = json.dumps({"error": f"status {effect.status} injected by a local AWS fault"}).encode()
        else:
            status, headers, answer = _invoke(process, body, request.headers, request.timeout_s)
    except _REFUSED as refused:  # refused before any model saw it (a serverless or pipeline variant's check)
        fail(request, f"{refused.code}: {refused.message}", None)
        return
    except TimeoutError:
        variant_metrics(request, variant, None, None)
        fail(request, f"ModelError: the model did not answer within the invocation timeout "
                      f"({request.timeout_s} s)", None)
        return
    except OSError as exc:
        status, headers = 503, {"Content-Type": "application/json"}
        answer = json.dumps({"error": f"model container unreachable: {exc}"}).encode()
    latency_us = (time.perf_counter() - started) * 1e6
    variant_metrics(request, variant, status, latency_us)
    content_type = next((v for k, v in headers.items() if k.lower() == "content-type"), "application/octet-stream")
    if status != 200:
        kind = "client" if status < 500 else "server"
        reason = (f"ClientError: Received {kind} error ({status}) from model with message "
                  f"\"{answer.decode(errors='replace')}\"")
        fail(request, reason, (answer, content_type))
        return
    capture.invoked(endpoint, request.account, request.region, variant, body, request.headers.get("Content-Type"),
                    answer, content_type, request.inference_id)  # sampled per DataCaptureConfig (capture.py)
    complete(request, answer, content_type)


def close(queues: list[EndpointQueue]) -> None:
    """Close each queue and fail the requests still waiting in it."""
    for queue in queues:
        for request in queue.close():
            fail(request, f"ServiceUnavailable: endpoint {queue.name} was deleted before the "
                          f"request was processed", None)
