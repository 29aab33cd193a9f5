"""Shared fixtures: small synthetic DAGM sets and the training entry run as the image runs it."""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import os
import signal
import statistics
import subprocess
import sys
import tarfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import boto3
import numpy as np
import pytest
from botocore.config import Config
from PIL import Image

from dagm_synth import generate_dataset
from local_aws.hosting import free_port

# `--suite-record PATH` (make test): the run's duration and counts as a benchmark record.
pytest_plugins = ["suite_record", "command_ledger"]

REPO = Path(__file__).resolve().parents[1]
TRAIN_LOCAL = REPO / "local_test" / "train_local.sh"
# Tiny and fast: a few seconds of training on two cores. 128x128 input with the default
# 2x2 space-to-depth stem, so the network works at 64x64.
TINY_HPS = {"epochs": "2", "batch_size": "8", "image_size": "128", "data_workers": "1"}


@dataclass
class Job:
    """A finished (or stopped) run of local_test/train_local.sh and its /opt/ml tree."""

    returncode: int
    output: str
    work: Path

    @property
    def failure(self) -> str | None:
        path = self.work / "output" / "failure"
        return path.read_text() if path.exists() else None

    @property
    def model_dir(self) -> Path:
        return self.work / "model"

    def tokens(self, prefix: str) -> list[dict[str, str]]:
        """The `name=value` lines that start with `prefix` (e.g. 'epoch=')."""
        rows = []
        for line in self.output.splitlines():
            if line.startswith(prefix):
                rows.append(dict(part.split("=", 1) for part in line.split() if "=" in part))
        return rows


def latency_within(latencies: dict[str, list[float]], slower: str, baseline: str, margin_s: float) -> dict:
    """Median and p99 of each side, and whether `slower` is within `margin_s` of `baseline`
    on both: the side-by-side latency tests' verdict, with the figures for their message."""
    figures = {f"{figure}_{side}": value for side, values in latencies.items()
               for figure, value in (("median", statistics.median(values)),
                                     ("p99", sorted(values)[int(0.99 * len(values)) - 1]))}
    return {**figures, "within": all(figures[f"{figure}_{slower}"] <= figures[f"{figure}_{baseline}"] + margin_s
                                     for figure in ("median", "p99"))}


def job_env() -> dict[str, str]:
    # The venv path, never a Docker daemon a developer machine might have.
    env = {**os.environ, "NO_DOCKER": "1", "PYTHONUNBUFFERED": "1"}
    # A developer's own tracking server never receives the tests' runs.
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME"):
        env.pop(name, None)
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    return env


def start_training(data: Path, work: Path, hps: dict | None = None, env: dict | None = None) -> subprocess.Popen:
    """`env` adds to the job's environment (EXTRA_CHANNELS, MLFLOW_TRACKING_URI, ...)."""
    args = [str(TRAIN_LOCAL), str(data), str(work)]
    if hps is not None:
        args.append(json.dumps(hps))
    return subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**job_env(), **(env or {})},
        start_new_session=True,
    )


def run_training(data: Path, work: Path, hps: dict | None = None, timeout: float = 300,
                 env: dict | None = None) -> Job:
    process = start_training(data, work, hps, env)
    try:
        output, _ = process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    return Job(process.returncode, output, work)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dagm") / "tiny"
    generate_dataset(root, classes=[1, 2], images_per_split=16, size=128, seed=3, workers=1)
    return root


@pytest.fixture
def make_dataset(tmp_path):
    def make(name: str = "data", classes=(1,), images_per_split: int = 8, size: int = 64) -> Path:
        root = tmp_path / name
        generate_dataset(root, classes=list(classes), images_per_split=images_per_split,
                         size=size, seed=7, workers=1)
        return root

    return make


@pytest.fixture(scope="session")
def trained_job(tiny_dataset, tmp_path_factory) -> Job:
    job = run_training(tiny_dataset, tmp_path_factory.mktemp("opt_ml"), TINY_HPS)
    assert job.returncode == 0, job.output[-3000:]
    return job


SERVE_LOCAL = REPO / "local_test" / "serve_local.sh"


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self):
        return json.loads(self.body)


class Server:
    """local_test/serve_local.sh MODEL_DIR PORT, the command the serving image runs."""

    def __init__(self, model_dir: Path, env: dict[str, str] | None = None, tmp: Path | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = (tmp or Path(os.environ.get("TMPDIR", "/tmp"))) / f"serve-{self.port}.log"
        self._log = open(self.log_path, "w")
        self.process = subprocess.Popen(
            [str(SERVE_LOCAL), str(model_dir), str(self.port)],
            stdout=self._log, stderr=subprocess.STDOUT, env={**job_env(), **(env or {})},
            start_new_session=True,
        )

    @property
    def output(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text()

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
                timeout: float = 60) -> Reply:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            connection.request(method, path, body=body, headers=headers or {})
            response = connection.getresponse()
            return Reply(response.status, dict(response.getheaders()), response.read())
        finally:
            connection.close()

    def post(self, path: str, body: bytes, content_type: str | None, **headers) -> Reply:
        all_headers = {k.replace("_", "-"): v for k, v in headers.items()}
        if content_type is not None:
            all_headers["Content-Type"] = content_type
        return self.request("POST", path, body, all_headers)

    def ping(self, timeout: float = 2) -> int | None:
        try:
            return self.request("GET", "/ping", timeout=timeout).status
        except OSError:
            return None

    def wait_ready(self, timeout: float = 90) -> list[int | None]:
        """Ping until 200; the statuses seen on the way (None: nothing listening)."""
        seen: list[int | None] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"serve exited with {self.process.returncode}:\n{self.output[-3000:]}")
            status = self.ping()
            seen.append(status)
            if status == 200:
                return seen
            time.sleep(0.05)
        raise AssertionError(f"serve not ready after {timeout} s:\n{self.output[-3000:]}")

    def wait_exit(self, timeout: float = 90) -> int:
        try:
            return self.process.wait(timeout=timeout)
        finally:
            self.close()

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.wait_exit(30)

    def close(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self._log.close()


@pytest.fixture
def start_server(tmp_path):
    """Start servers for one test; each is stopped (SIGTERM, else SIGKILL) afterwards."""
    servers: list[Server] = []

    def start(model_dir: Path, ready: bool = True, **env: str) -> Server:
        server = Server(model_dir, env, tmp_path)
        servers.append(server)
        if ready:
            server.wait_ready()
        return server

    yield start
    for server in servers:
        if server.process.poll() is None:
            server.stop()
        server.close()


@pytest.fixture(scope="session")
def untrained_model(tmp_path_factory) -> Path:
    """A valid artefact without training (fixed seed): for tests of the server's mechanics."""
    import torch

    from dagm_defects.artifact import save_artifact
    from dagm_defects.model import build_model
    from dagm_defects.model_config import ModelConfig

    torch.manual_seed(0)
    model_dir = tmp_path_factory.mktemp("untrained") / "model"
    save_artifact(model_dir, build_model(ModelConfig(image_size=128)), 0.5, [1], {})
    return model_dir


def nan_model(source: Path, target: Path) -> Path:
    """A copy of `source` whose weights load but make every score NaN."""
    import shutil

    import torch

    shutil.copytree(source, target)
    state = torch.load(target / "model.pt", weights_only=True)
    torch.save({k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in state.items()},
               target / "model.pt")
    return target


@contextlib.contextmanager
def running_local_aws(tmp_path_factory, **env: str):
    """`python -m local_aws` (what `make local-aws` runs) on a free port, with `env` added;
    its endpoints are deleted when it stops."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("local_aws") / "local_aws.log"
    work = tmp_path_factory.mktemp("local_aws_work")
    with open(log_path, "w") as log:
        process = subprocess.Popen([sys.executable, "-m", "local_aws", "--port", str(port), "--work", str(work)],
                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                   env={**job_env(), "PYTHONPATH": str(REPO / "tools"), **env})
    deadline = time.monotonic() + 60
    while "ready at" not in log_path.read_text():
        assert process.poll() is None and time.monotonic() < deadline, log_path.read_text()
        time.sleep(0.1)
    url = f"http://127.0.0.1:{port}"
    _LOCAL_AWS.append(url)
    _WORK[url] = work
    try:
        yield url
    finally:
        _delete_endpoints(url, _endpoints(url))
        _LOCAL_AWS.remove(url)
        process.terminate()
        process.wait(60)


@pytest.fixture(scope="session")
def local_aws(tmp_path_factory):
    """The local AWS for the session."""
    with running_local_aws(tmp_path_factory) as url:
        yield url


def endpoint_in_service(url: str, name: str, timeout: float = 120) -> dict:
    """The endpoint once InService; fails at once if it goes anywhere but Creating/Updating."""
    sagemaker = aws_client(url, "sagemaker")
    deadline = time.monotonic() + timeout
    while (described := sagemaker.describe_endpoint(EndpointName=name))["EndpointStatus"] != "InService":
        assert described["EndpointStatus"] in ("Creating", "Updating") and time.monotonic() < deadline, described
        time.sleep(0.1)
    return described


def processes_tagged(name: str, value: str) -> list:
    """The live processes whose environment holds `name`=`value` (a model's Environment
    reaches its serve processes: how a test finds an endpoint's)."""
    import psutil

    found = []
    for process in psutil.process_iter():
        try:
            if process.environ().get(name) == value:
                found.append(process)
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
            pass
    return found


_LOCAL_AWS: list[str] = []  # the session's local AWS, once a test has started it
_WORK: dict[str, Path] = {}  # its work directory (endpoints, jobs, build logs), by URL


def build_log(url: str, build_id: str) -> str:
    """What a CodeBuild build the local AWS at `url` ran printed (local_aws/builds.py)."""
    return (_WORK[url] / f"build-{build_id.replace(':', '-')}.log").read_text()


def _endpoints(url: str) -> set[str]:
    sagemaker = aws_client(url, "sagemaker")
    return {e["EndpointName"] for page in sagemaker.get_paginator("list_endpoints").paginate()
            for e in page["Endpoints"]}


def _delete_endpoints(url: str, names: set[str]) -> None:
    """Delete endpoints on the local AWS: their serve processes stop before this returns."""
    sagemaker = aws_client(url, "sagemaker")
    for name in sorted(names):
        try:
            sagemaker.delete_endpoint(EndpointName=name)
        except sagemaker.exceptions.ClientError:
            pass  # gone already


@pytest.fixture(autouse=True)
def _endpoints_end_with_their_test(request):
    """Each endpoint a test creates on the local AWS is deleted when the test ends, so the
    suite holds one test's serve processes at a time, not every test's (about 1 GB each:
    front, MMS and a worker). Endpoints a module fixture made before the test are left to
    the module (`_endpoints_end_with_their_module`)."""
    if "local_aws" not in request.fixturenames:
        yield
        return
    url = request.getfixturevalue("local_aws")
    before = _endpoints(url)
    yield
    _delete_endpoints(url, _endpoints(url) - before)


@pytest.fixture(autouse=True, scope="module")
def _endpoints_end_with_their_module():
    yield
    for url in _LOCAL_AWS:
        _delete_endpoints(url, _endpoints(url))


def aws_env(url: str) -> dict[str, str]:
    """The environment that points a boto3 CLI (dagm-deploy, dagm-train-stage, ...) at the local AWS."""
    return {**os.environ, "AWS_ENDPOINT_URL": url, "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


# One attempt per call, no retry (`max_attempts` counts retries; this key counts attempts).
ONCE = {"total_max_attempts": 1, "mode": "standard"}


def aws_client(url: str, service: str, retries: dict | None = None, **config):
    """A boto3 client for the local AWS at `url`: one retry per call unless `retries` says
    otherwise (ONCE: none); `config` adds botocore Config options, e.g. read_timeout=1."""
    return boto3.client(service, endpoint_url=url, region_name="us-east-1", aws_access_key_id="testing",
                        aws_secret_access_key="testing",
                        config=Config(retries=retries or {"max_attempts": 1}, **config))


def inline_build_project(url: str, name: str, commands: list[str]) -> str:
    """A CodeBuild project on the local AWS whose inline buildspec runs `commands`; its ARN."""
    buildspec = "version: 0.2\nphases:\n  build:\n    commands:\n" + "".join(f"      - {c}\n" for c in commands)
    return aws_client(url, "codebuild").create_project(
        name=name, serviceRole="arn:aws:iam::123456789012:role/codebuild", artifacts={"type": "NO_ARTIFACTS"},
        source={"type": "CODECOMMIT", "location": "https://git-codecommit.us-east-1.amazonaws.com/v1/repos/dagm",
                "buildspec": buildspec},
        environment={"type": "LINUX_CONTAINER", "image": "aws/codebuild/standard:7.0",
                     "computeType": "BUILD_GENERAL1_SMALL"})["project"]["arn"]


def model_tarball(model_dir: Path) -> bytes:
    """model.tar.gz of an artefact directory, as a training job uploads it."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for path in sorted(model_dir.iterdir()):
            tar.add(path, arcname=path.name)
    return out.getvalue()


def upload(url: str, key: str, data: bytes, bucket: str = "dagm-models") -> str:
    """Put `data` into the local S3 (creating the bucket) and return its s3:// URI."""
    s3 = aws_client(url, "s3")
    if bucket not in [b["Name"] for b in s3.list_buckets()["Buckets"]]:
        s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key=key, Body=data)
    return f"s3://{bucket}/{key}"


def concurrently(server, requests: list[tuple[bytes, dict]]):
    """Send all requests at once (one thread each) and return the replies in order."""
    replies = [None] * len(requests)
    barrier = threading.Barrier(len(requests))

    def send(i, body, headers):
        barrier.wait()
        replies[i] = server.request("POST", "/invocations", body, headers)

    threads = [threading.Thread(target=send, args=(i, *r)) for i, r in enumerate(requests)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return replies


def png(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, format="PNG")
    return out.getvalue()


def jpeg(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, format="JPEG", quality=95)
    return out.getvalue()


def npy(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.save(out, array)
    return out.getvalue()


def noise_png(seed: int = 0, size: int = 128) -> bytes:
    """A PNG of random pixels: an image the model answers without any special case."""
    return png(np.random.default_rng(seed).integers(0, 255, (size, size), dtype=np.uint8))


def _faults_call(url: str, method: str, path: str = "", body: dict | None = None):
    import urllib.request

    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"{url}/_local_aws/faults{path}", data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def inject(url: str, **fault) -> None:
    """Add a fault to the local AWS at `url` (fields: tools/local_aws/faults.py)."""
    _faults_call(url, "POST", body=fault)


def clear_faults(url: str) -> None:
    """Remove every fault from the local AWS at `url`; the invocations they hang go on."""
    _faults_call(url, "DELETE")


def listed_faults(url: str) -> list[dict]:
    """The local AWS's faults as added, each with its id and "matched" and "fired" counts."""
    return _faults_call(url, "GET")["faults"]


class Faults:
    """The faults of one test (the `faults` fixture)."""

    def __init__(self, url: str):
        self.url = url

    def add(self, **fault) -> int:
        """Add a fault; its id (remove it alone with .remove(id))."""
        return _faults_call(self.url, "POST", body=fault)["id"]

    def remove(self, fault_id: int) -> None:
        _faults_call(self.url, "DELETE", f"/{fault_id}")

    def fired(self) -> list[int]:
        """How many times each fault fired, in the order they were added."""
        return [fault["fired"] for fault in listed_faults(self.url)]

    def clear(self) -> None:
        clear_faults(self.url)


@pytest.fixture
def faults(local_aws):
    """Inject faults into the session's local AWS for one test: all are cleared at its end."""
    clear_faults(local_aws)
    yield Faults(local_aws)
    clear_faults(local_aws)
