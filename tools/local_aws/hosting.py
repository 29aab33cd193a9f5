"""Endpoints backed by real serving processes.

Each production variant of an endpoint runs `local_test/serve_local.sh` (the serving
image's entry command: Docker where a daemon answers, else .venv) on its model's data,
fetched from the local S3. Requests are routed by the variants' current weights, or to
`TargetVariant`, exactly as SageMaker routes them. A variant of a multi-container model
(containers.py) or a serverless one (serverless.py) is started from a spec with its own
`start`: it has the same interface (identity, wait_ready, invoke, drain, stop, alive).
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import random
import signal
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

REPO = Path(__file__).resolve().parents[2]
SERVE_LOCAL = REPO / "local_test" / "serve_local.sh"
READY_TIMEOUT_S = 240


_PORTS_GIVEN: set[int] = set()


def free_port() -> int:
    """A free port not handed out before by this process: the kernel may offer a closed
    probe's port again, and two servers started side by side then raced for it (and,
    through serve_local.sh, shared a log file and an /opt/ml)."""
    while True:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        if port not in _PORTS_GIVEN:
            _PORTS_GIVEN.add(port)
            return port


class Refused(Exception):
    """An invocation the endpoint refuses before any model sees it: the AWS error to answer."""

    def __init__(self, code: str, status: int, message: str):
        super().__init__(message)
        self.code, self.status, self.message = code, status, message


def identity(model_name: str, model_data: bytes, environment: dict[str, str]) -> tuple:
    return model_name, hashlib.sha256(model_data).hexdigest(), tuple(sorted(environment.items()))


def wait_for_ping(what: str, process: subprocess.Popen, port: int, log_path: Path, deadline: float) -> str | None:
    """None once /ping on `port` says 200; else why not: `what` exited (with its log's
    `serve: error:` lines or last lines), or did not answer by the monotonic `deadline`."""
    while time.monotonic() < deadline:
        if process.poll() is not None:
            lines = log_path.read_text(errors="replace").strip().splitlines()
            reason = [line for line in lines if line.startswith("serve: error:")] or lines[-3:]
            return f"{what} exited with {process.returncode}: " + " | ".join(reason)
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            connection.request("GET", "/ping")
            if connection.getresponse().status == 200:
                return None
        except OSError:
            pass
        time.sleep(0.1)
    return f"{what} did not pass the ping health check within {READY_TIMEOUT_S} s"


def post_invocation(port: int, body: bytes, headers: dict, timeout: float) -> tuple[int, dict, bytes]:
    """POST /invocations to a container on `port`: (status, headers, body)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("POST", "/invocations", body=body, headers=headers)
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


class Full(Exception):
    """A variant already has as many requests in flight as it admits."""


class Draining:
    """A variant's requests in flight, counted so that it drains before it stops."""

    def __init__(self) -> None:
        self.in_flight, self.counting = 0, threading.Lock()

    @contextlib.contextmanager
    def counted(self, limit: int | None = None) -> Iterator[None]:
        """One request in flight; with `limit`, Full when that many are in flight already."""
        with self.counting:
            if limit is not None and self.in_flight >= limit:
                raise Full(limit)
            self.in_flight += 1
        try:
            yield
        finally:
            with self.counting:
                self.in_flight -= 1

    def drain(self, quiet_s: float = 0.5, limit_s: float = 30.0) -> None:
        """Wait until no request has been in flight for `quiet_s`: a request routed here just
        before traffic moved away still gets its answer, as SageMaker drains an instance."""
        deadline, quiet_since = time.monotonic() + limit_s, time.monotonic()
        while time.monotonic() < deadline and time.monotonic() - quiet_since < quiet_s:
            if self.in_flight:
                quiet_since = time.monotonic()
            time.sleep(0.05)


class VariantProcess(Draining):
    """One `serve` process for one model (a variant's single instance)."""

    def __init__(self, model_name: str, model_data: bytes, work: Path, environment: dict[str, str]):
        super().__init__()
        self.model_name = model_name
        self.identity = identity(model_name, model_data, environment)
        self.dir = work / f"{model_name}-{os.urandom(4).hex()}"
        (self.dir / "model").mkdir(parents=True)
        (self.dir / "model" / "model.tar.gz").write_bytes(model_data)
        self.port = free_port()
        self.log_path = self.dir / "serve.log"
        with open(self.log_path, "w") as log:
            self.process = subprocess.Popen(
                [str(SERVE_LOCAL), str(self.dir / "model"), str(self.port)],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env={**os.environ, **environment},
            )

    def wait_ready(self) -> str | None:
        """None once /ping says 200; else why not (the process's last log lines)."""
        return wait_for_ping(f"serve for model {self.model_name}", self.process, self.port, self.log_path,
                             time.monotonic() + READY_TIMEOUT_S)

    def invoke(self, body: bytes, headers: dict, timeout: float = 70) -> tuple[int, dict, bytes]:
        with self.counted():
            return post_invocation(self.port, body, headers, timeout)

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        self.drain()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def stop_all(processes) -> None:
    """Stop processes side by side: each drains and waits for its server's exit."""
    threads = [threading.Thread(target=p.stop) for p in processes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


@dataclass
class HostedEndpoint:
    """The processes serving an endpoint, by variant name; during a blue/green update the
    green fleet takes `green_share` of the traffic, split by `green_weights`."""

    variants: dict[str, VariantProcess] = field(default_factory=dict)
    # The config's weights when these processes took over: moto's live weights can name
    # the previous variants for a moment after a switch.
    weights: dict[str, float] = field(default_factory=dict)
    green: dict[str, VariantProcess] = field(default_factory=dict)
    green_weights: dict[str, float] = field(default_factory=dict)
    green_share: float = 0.0
    # Shadow variants (shadow.py): never routed to, sent copies of requests by their worker.
    shadows: dict[str, VariantProcess] = field(default_factory=dict)


class Hosting:
    def __init__(self, work: Path | None = None):
        self.work = work or Path(tempfile.mkdtemp(prefix="local-aws-"))
        # What a serving container needs to reach this local AWS (its CloudWatch: drift
        # metrics), as a container on SageMaker reaches AWS; set once the server listens.
        self.aws_env: dict[str, str] = {}
        self.endpoints: dict[str, HostedEndpoint] = {}
        self.lock = threading.Lock()

    def start_variants(self, models: dict[str, tuple[str, bytes, dict] | Any],
                       keep_from: str | None = None) -> tuple[dict[str, VariantProcess], str | None]:
        """Start one process per variant ({variant: (model name, model data, container
        environment)}, or a spec with `identity` and `start(work, aws_env)`) and wait until
        all are ready; on failure stop the started ones and say why.

        With `keep_from`, a variant that endpoint already runs with the same model and
        environment keeps its live process: SageMaker would replace the instance, which
        clients cannot tell apart, and a server start is the slowest step of a local update.
        """
        with self.lock:
            hosted = self.endpoints.get(keep_from, HostedEndpoint()) if keep_from else HostedEndpoint()
            running = {**hosted.shadows, **hosted.variants}
        models = {variant: (model[0], model[1], {**self.aws_env, **model[2]}) if isinstance(model, tuple) else model
                  for variant, model in models.items()}
        kept = {variant: running[variant] for variant, model in models.items()
                if variant in running and running[variant].alive() and running[variant].identity == (
                    identity(*model) if isinstance(model, tuple) else model.identity)}
        started = {variant: VariantProcess(model[0], model[1], self.work, model[2]) if isinstance(model, tuple)
                   else model.start(self.work, self.aws_env)
                   for variant, model in models.items() if variant not in kept}
        failures = [reason for p in started.values() if (reason := p.wait_ready())]
        if failures:
            stop_all(started.values())
            return {}, "; ".join(failures)
        return {variant: kept.get(variant) or started[variant] for variant in models}, None

    def replace(self, endpoint: str, variants: dict[str, VariantProcess], weights: dict[str, float],
                shadows: dict[str, VariantProcess] | None = None) -> None:
        """Make `variants` (and `shadows`) the endpoint's processes; stop the ones no longer used."""
        shadows = shadows or {}
        with self.lock:
            hosted = self.endpoints.get(endpoint, HostedEndpoint())
            old = [*hosted.variants.values(), *hosted.shadows.values()]
            self.endpoints[endpoint] = HostedEndpoint(variants, weights, shadows=shadows)
        kept = {id(p) for p in (*variants.values(), *shadows.values())}
        stop_all(p for p in old if id(p) not in kept)

    def shadow(self, endpoint: str) -> tuple[str, VariantProcess] | None:
        """The endpoint's shadow variant (name, process), if it has one now."""
        with self.lock:
            hosted = self.endpoints.get(endpoint)
            return next(iter(hosted.shadows.items()), None) if hosted else None

    def shift(self, endpoint: str, green: dict[str, VariantProcess], weights: dict[str, float], share: float) -> None:
        """Send `share` (0..1) of the endpoint's traffic to the green fleet."""
        with self.lock:
            hosted = self.endpoints[endpoint]
            hosted.green, hosted.green_weights, hosted.green_share = green, weights, share

    def drop_green(self, endpoint: str) -> None:
        with self.lock:
            hosted = self.endpoints[endpoint]
            green, hosted.green, hosted.green_share = hosted.green, {}, 0.0
        stop_all(green.values())

    def remove(self, endpoint: str) -> None:
        self.replace(endpoint, {}, {})
        with self.lock:
            self.endpoints.pop(endpoint, None)

    def route(self, endpoint: str, weights: dict[str, float], target: str | None) -> tuple[str, VariantProcess]:
        hosted = self.endpoints.get(endpoint)
        if hosted is None or not hosted.variants:
            raise LookupError(f"Endpoint {endpoint} is not in service")
        if target:
            fleet = hosted.variants if target in hosted.variants else hosted.green
            if target not in fleet:
                raise LookupError(f"Variant {target} not found for endpoint {endpoint}")
            return target, fleet[target]
        if hosted.green and random.random() < hosted.green_share:
            names = [n for n in hosted.green if hosted.green_weights.get(n, 0) > 0]
            name = random.choices(names, weights=[hosted.green_weights[n] for n in names])[0]
            return name, hosted.green[name]
        live = {n: weights.get(n, hosted.weights.get(n, 0.0)) for n in hosted.variants}
        names = [n for n, w in live.items() if w > 0]
        if not names:
            raise LookupError(f"Endpoint {endpoint} has no variant with a weight above 0")
        name = random.choices(names, weights=[live[n] for n in names])[0]
        return name, hosted.variants[name]

    def shutdown(self) -> None:
        with self.lock:
            hosted, self.endpoints = list(self.endpoints.values()), {}
        stop_all([p for h in hosted for p in (*h.variants.values(), *h.green.values(), *h.shadows.values())])
