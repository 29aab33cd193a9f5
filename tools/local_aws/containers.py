"""Inference pipelines: models of several containers (CreateModel `Containers`), hosted as
SageMaker hosts them, one process per container on the variant's instance.

What this follows (SageMaker Developer Guide, "Inference pipelines", "Run real-time
predictions with an inference pipeline", "Multi-container endpoints"; the API model of
CreateModel and InvokeEndpoint):

- CreateModel takes `Containers` (at most 15; here, as the guide asks for a
  multi-container model, a `Containers` list is 1..15 and not given with
  `PrimaryContainer`) and `InferenceExecutionConfig` {"Mode": "Serial" | "Direct"},
  Serial by default. Direct mode needs a `ContainerHostname` on every container;
  hostnames are unique. DescribeModel answers the InferenceExecutionConfig (moto drops it).
- Each container listens on the port in `SAGEMAKER_BIND_TO_PORT` (each its own free
  port) and may open more in `SAGEMAKER_SAFE_PORT_RANGE` ("XXXX-YYYY": here a block of
  100 ports of 20000-32699 that no other container of this local AWS got, below the
  ephemeral ports that SAGEMAKER_BIND_TO_PORT comes from); it gets its own `Environment` and its own
  `ModelDataUrl` (none: an empty model directory).
- Serial invocation: the client's body and ContentType go to the first container; each
  container's answer and its Content-Type are the next one's request; the last
  container's answer is the endpoint's. A container's non-200 answer ends the chain and
  is the client's ModelError (424, OriginalStatusCode), "Received client error (400)
  from <container> with message ..." (server error for 5xx), as SageMaker words it.
- Direct invocation: `TargetContainerHostname` (header
  X-Amzn-SageMaker-Target-Container-Hostname) picks the container; without it, or naming
  none of the model's containers, a ValidationError.
- A container that does not start (its process exits, or /ping never answers 200) fails
  the endpoint with a reason naming the container.

Which program stands for an image: the serving image (local_test/serve_local.sh on the
container's model directory) unless a program was registered for the image URI through
the control API on the local AWS's own port:

    POST /_local_aws/images   {"image": URI, "command": [argv...]}   registers (or replaces) it; 201
    GET  /_local_aws/images   {"images": {URI: [argv...], ...}}
    DELETE /_local_aws/images  forget every registration

Such a program runs with the container's Environment, SAGEMAKER_BIND_TO_PORT,
SAGEMAKER_SAFE_PORT_RANGE and SAGEMAKER_BASE_DIR (the container's /opt/ml: the model data
is unpacked into its model/ directory, as SageMaker unpacks it into /opt/ml/model), in
its own process group, and must answer GET /ping and POST /invocations.

Deliberate differences:
- The guide leaves open which container sees the client's Accept. Here only the last
  container gets it (its answer is the one the client receives; the intermediate
  containers answer in their own default type, which is why SageMaker's SparkML serving
  container has SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT for its place in a pipeline).
- A container without ContainerHostname is named "container-N" (N from 1, in order) in
  error messages and in the failure reason; SageMaker names such containers itself.
- The containers share the host's network namespace, as on a SageMaker instance, but
  not a Docker network: hostnames are names only, not resolvable addresses.
- No per-container CloudWatch metrics or logs: the variant's metrics are the endpoint's,
  as for a single container (extensions.py).
"""

from __future__ import annotations

import io
import os
import random
import signal
import subprocess
import tarfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from moto.s3.models import s3_backends
from moto.sagemaker import models as sagemaker_models
from moto.sagemaker import responses as sagemaker_responses
from moto.sagemaker.exceptions import ValidationError

from local_aws import control
from local_aws.hosting import READY_TIMEOUT_S, SERVE_LOCAL, Draining, Refused, free_port, post_invocation, stop_all, wait_for_ping

CONTROL_PATH = "/_local_aws/images"
MAX_CONTAINERS = 15
SAFE_PORTS = 100
SAFE_BLOCKS = range(20000, 32700, SAFE_PORTS)
_SAFE_GIVEN: set[int] = set()
TARGET_CONTAINER_HEADER = "X-Amzn-SageMaker-Target-Container-Hostname"
# Which container answered a non-200 status: the ModelError's message names it.
FAILED_CONTAINER_HEADER = "X-Local-Aws-Failed-Container"

_IMAGES: dict[str, list[str]] = {}
_IMAGES_LOCK = threading.Lock()


def safe_port_range() -> str:
    """A block of ports for one container's own use, not given to another container before
    (while blocks last; then any block again)."""
    with _IMAGES_LOCK:
        free = [b for b in SAFE_BLOCKS if b not in _SAFE_GIVEN] or list(SAFE_BLOCKS)
        low = random.choice(free)
        _SAFE_GIVEN.add(low)
    return f"{low}-{low + SAFE_PORTS - 1}"


def program_for(image: str | None) -> list[str] | None:
    with _IMAGES_LOCK:
        command = _IMAGES.get(image or "")
        return list(command) if command else None


@dataclass(frozen=True)
class ContainerSpec:
    hostname: str
    image: str
    model_data: bytes | None
    environment: dict[str, str] = field(default_factory=dict)

    @property
    def identity(self) -> tuple:
        import hashlib

        data = hashlib.sha256(self.model_data).hexdigest() if self.model_data is not None else None
        return self.hostname, self.image, data, tuple(sorted(self.environment.items())), tuple(
            program_for(self.image) or ())


class ContainerProcess:
    """One container of a multi-container model: its program on its own port."""

    def __init__(self, spec: ContainerSpec, model_name: str, work: Path, aws_env: dict[str, str]):
        self.hostname, self.model_name = spec.hostname, model_name
        self.dir = work / f"{model_name}-{spec.hostname}-{os.urandom(4).hex()}"
        model_dir = self.dir / "model"
        model_dir.mkdir(parents=True)
        self.port = free_port()
        self.log_path = self.dir / "container.log"
        command = program_for(spec.image)
        env = {**os.environ, **aws_env, **spec.environment, "SAGEMAKER_BIND_TO_PORT": str(self.port),
               "SAGEMAKER_SAFE_PORT_RANGE": safe_port_range()}
        if command is None:  # the serving image: serve_local.sh unpacks a model.tar.gz itself
            if spec.model_data is not None:
                (model_dir / "model.tar.gz").write_bytes(spec.model_data)
            argv = [str(SERVE_LOCAL), str(model_dir), str(self.port)]
        else:
            if spec.model_data is not None:
                with tarfile.open(fileobj=io.BytesIO(spec.model_data)) as tar:
                    tar.extractall(model_dir, filter="data")
            argv, env["SAGEMAKER_BASE_DIR"] = command, str(self.dir)
        with open(self.log_path, "w") as log:
            self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                            env=env, cwd=self.dir)

    def wait_ready(self, deadline: float) -> str | None:
        return wait_for_ping(f"container {self.hostname} of model {self.model_name}", self.process, self.port,
                             self.log_path, deadline)

    def invoke(self, body: bytes, headers: dict, timeout: float) -> tuple[int, dict, bytes]:
        return post_invocation(self.port, body, headers, timeout)

    def stop(self) -> None:
        if self.process.poll() is None:  # SIGTERM to the entry program, as `docker stop` sends it
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                pass
        try:  # whatever the program left in its group (a shell's children) goes too
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()


class PipelineVariant(Draining):
    """A variant of a multi-container model: one process per container, invoked in
    series (Serial) or one of them by hostname (Direct)."""

    def __init__(self, model_name: str, specs: list[ContainerSpec], mode: str, work: Path, aws_env: dict[str, str]):
        super().__init__()
        self.model_name, self.mode = model_name, mode
        self.identity = ("pipeline", model_name, mode, tuple(s.identity for s in specs))
        self.containers: list[ContainerProcess] = []
        for spec in specs:
            self.containers.append(ContainerProcess(spec, model_name, work, aws_env))

    def alive(self) -> bool:
        return all(c.process.poll() is None for c in self.containers)

    def wait_ready(self) -> str | None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        return next((reason for c in self.containers if (reason := c.wait_ready(deadline))), None)

    def invoke(self, body: bytes, headers: dict, timeout: float = 70) -> tuple[int, dict, bytes]:
        headers = dict(headers)
        target = headers.pop(TARGET_CONTAINER_HEADER, None)
        with self.counted():
            if self.mode == "Direct":
                if not target:
                    raise Refused("ValidationError", 400, "TargetContainerHostname must be specified for an "
                                  "endpoint whose model uses Direct invocation (InferenceExecutionConfig Mode Direct).")
                container = next((c for c in self.containers if c.hostname == target), None)
                if container is None:
                    raise Refused("ValidationError", 400, f"Target container hostname {target} is not one of the "
                                  f"containers of model {self.model_name}: "
                                  f"{', '.join(c.hostname for c in self.containers)}")
                return self._answer(container, *container.invoke(body, headers, timeout))
            accept = headers.pop("Accept", None)
            for i, container in enumerate(self.containers):
                last = i == len(self.containers) - 1
                if last and accept is not None:
                    headers["Accept"] = accept
                status, answer_headers, body = container.invoke(body, headers, timeout)
                if status != 200 or last:
                    return self._answer(container, status, answer_headers, body)
                content_type = _header(answer_headers, "Content-Type")
                headers = {k: v for k, v in headers.items() if k.lower() != "content-type"}
                if content_type:
                    headers["Content-Type"] = content_type
            raise AssertionError("unreachable: a pipeline has at least one container")

    @staticmethod
    def _answer(container: ContainerProcess, status: int, headers: dict, body: bytes) -> tuple[int, dict, bytes]:
        if status != 200:
            headers = {**headers, FAILED_CONTAINER_HEADER: container.hostname}
        return status, headers, body

    def stop(self) -> None:
        self.drain()
        stop_all(self.containers)


def _header(headers: dict, name: str) -> str | None:
    return next((v for k, v in headers.items() if k.lower() == name.lower()), None)


@dataclass
class PipelineSpec:
    """What hosting.start_variants starts for a variant of a multi-container model."""

    model_name: str
    specs: list[ContainerSpec]
    mode: str

    @property
    def identity(self) -> tuple:
        return "pipeline", self.model_name, self.mode, tuple(s.identity for s in self.specs)

    def start(self, work: Path, aws_env: dict[str, str]) -> PipelineVariant:
        return PipelineVariant(self.model_name, self.specs, self.mode, work, aws_env)


def container_hostnames(containers: list[dict]) -> list[str]:
    return [c.get("ContainerHostname") or f"container-{i}" for i, c in enumerate(containers, 1)]


def s3_object(account_id: str, url: str) -> bytes:
    if not url.startswith("s3://"):
        raise ValueError(f"ModelDataUrl {url!r} is not an s3:// URL")
    bucket, _, key = url[len("s3://"):].partition("/")
    return s3_backends[account_id]["aws"].get_object(bucket, key).value


def is_pipeline(model) -> bool:
    return not model.primary_container and len(model.containers) > 1


def execution_mode(model) -> str:
    return (getattr(model, "inference_execution_config", None) or {}).get("Mode", "Serial")


def pipeline_spec(backend, model_name: str) -> PipelineSpec | None:
    """The spec of a multi-container model's variant; None for a single-container model."""
    model = backend.describe_model(model_name)
    if not is_pipeline(model):
        return None
    specs = []
    for hostname, container in zip(container_hostnames(model.containers), model.containers):
        url = container.get("ModelDataUrl")
        try:
            data = s3_object(backend.account_id, url) if url else None
        except Exception as exc:
            raise ValueError(f"container {hostname} of model {model_name}: {type(exc).__name__}: {exc}") from exc
        specs.append(ContainerSpec(hostname, container.get("Image", ""), data, dict(container.get("Environment") or {})))
    return PipelineSpec(model_name, specs, execution_mode(model))


def check_model(primary: dict | None, containers: list[dict] | None, execution: dict | None) -> None:
    """CreateModel's rules for multi-container models (ValidationError)."""
    if containers is None:
        if execution:
            raise ValidationError(message="InferenceExecutionConfig is only supported for models with Containers.")
        return
    if primary:
        raise ValidationError(message="Specify either PrimaryContainer or Containers, not both.")
    if not 1 <= len(containers) <= MAX_CONTAINERS:
        raise ValidationError(message=f"Containers must hold 1 to {MAX_CONTAINERS} containers, not {len(containers)}.")
    mode = (execution or {}).get("Mode", "Serial")
    if mode not in ("Serial", "Direct"):
        raise ValidationError(message=f"Value '{mode}' at 'inferenceExecutionConfig.mode' failed to satisfy "
                                      "constraint: Member must satisfy enum value set: [Serial, Direct]")
    names = [c.get("ContainerHostname") for c in containers]
    if mode == "Direct" and not all(names):
        raise ValidationError(message="ContainerHostname is required for each container of a model with "
                                      "InferenceExecutionConfig Mode Direct.")
    given = [n for n in names if n]
    if len(set(given)) != len(given):
        raise ValidationError(message=f"ContainerHostname must be unique among the containers: {given}")


# The control API for image programs.

def _control(environ: dict, start_response) -> list[bytes]:
    method = environ.get("REQUEST_METHOD", "GET")

    def answer(status: int, value: Any) -> list[bytes]:
        return control.answer(start_response, status, value)

    if method == "GET":
        with _IMAGES_LOCK:
            return answer(200, {"images": dict(_IMAGES)})
    if method == "DELETE":
        with _IMAGES_LOCK:
            cleared = len(_IMAGES)
            _IMAGES.clear()
        return answer(200, {"cleared": cleared})
    if method == "POST":
        try:
            given = control.read_json(environ)
        except ValueError as exc:
            return answer(400, {"error": f"not JSON: {exc}"})
        if not (isinstance(given, dict) and set(given) == {"image", "command"} and isinstance(given["image"], str)
                and given["image"] and isinstance(given["command"], list) and given["command"]
                and all(isinstance(a, str) for a in given["command"])):
            return answer(400, {"error": 'a registration is {"image": URI, "command": [argv, ...]}'})
        with _IMAGES_LOCK:
            _IMAGES[given["image"]] = list(given["command"])
        return answer(201, given)
    return answer(405, {"error": f"{method} {CONTROL_PATH}: use GET, POST or DELETE"})


def _install_control() -> None:
    control.mount(CONTROL_PATH, _control)


def install() -> None:
    """CreateModel keeps InferenceExecutionConfig and checks Containers; the images' control API."""
    _install_control()
    Response = sagemaker_responses.SageMakerResponse
    original_response: Callable = Response.create_model

    def create_model_response(self):
        execution = self._get_param("InferenceExecutionConfig")
        check_model(self._get_param("PrimaryContainer"), self._get_param("Containers"), execution)
        result = original_response(self)
        if execution or self._get_param("Containers"):
            model = self.sagemaker_backend.describe_model(self._get_param("ModelName"))
            model.inference_execution_config = {"Mode": (execution or {}).get("Mode", "Serial")}
        return result

    Response.create_model = create_model_response
    sagemaker_models.Model.inference_execution_config = None
