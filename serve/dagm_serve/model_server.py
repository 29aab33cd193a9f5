"""multi-model-server as a child process on private ports, driven through its
management API.

MMS reads its static configuration from `MMS_CONFIG_FILE` (docker/mms.properties,
`enable_envvars_config=true`); what depends on the container's environment (ports,
workers, timeouts, sizes) goes in as `MMS_*` variables. MMS runs in its own process
group, so stopping it also stops the Python workers it forks, which MMS's own `--stop`
can leave behind.

MMS 1.1.11 does not recover from a worker process that dies (an out-of-memory kill):
it retries the dead worker's socket forever and requests hang, then fail, while MMS
itself looks healthy. So this class remembers the worker processes each load started
(`workers_lost` says when one is gone) and can `restart` the whole server on fresh
ports; supervisor.py decides when.
"""

from __future__ import annotations

import ctypes
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import psutil

from dagm_serve.environment import ServingSettings

HANDLER = "dagm_serve.handler:handle"
MAX_RESPONSE_BYTES = 256 * 1024 * 1024
# libgomp's spin rounds before a waiting OpenMP thread sleeps: its default, 300,000, keeps
# a worker's threads spinning well after a forward pass; 0 (PASSIVE) sleeps at every
# barrier inside one.
WORKER_SPIN_COUNT = 10_000
# MMS reads its size limits into a Java int.
JAVA_INT_MAX = 2**31 - 1
WORKER_SCRIPT = "model_service_worker.py"
PR_SET_CHILD_SUBREAPER = 36  # linux/prctl.h
# MMS 1.1 refuses ports from 32767 up ("Invalid port number"), i.e. every ephemeral port.
MMS_PORTS = (20000, 32766)


class ModelServerError(RuntimeError):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class ModelRefused(ModelServerError):
    """The workers could not load the artefact; the message is theirs (handler.py)."""


def _free_port(candidates: list[int], taken: set[int]) -> int:
    for port in candidates:
        if port in taken:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise ModelServerError(0, f"no free port among {min(candidates)}-{max(candidates)} for multi-model-server")


@dataclass(frozen=True)
class Ports:
    inference: int
    management: int

    @classmethod
    def pick(cls, settings: ServingSettings) -> "Ports":
        """Two free ports from SAGEMAKER_SAFE_PORT_RANGE, else from MMS_PORTS, in random
        order so servers started side by side rarely probe the same port."""
        low, high = settings.safe_port_range or MMS_PORTS
        candidates = list(range(low, min(high, MMS_PORTS[1]) + 1))
        random.shuffle(candidates)
        taken = {settings.port}
        inference = _free_port(candidates, taken)
        return cls(inference, _free_port(candidates, taken | {inference}))


def error_message(body: bytes) -> str:
    """The message of an MMS (or our own) JSON error body."""
    try:
        document = json.loads(body)
        return str(document.get("message") or document.get("error") or document)
    except (ValueError, AttributeError):
        return body.decode(errors="replace").strip()


class ModelServer:
    def __init__(self, settings: ServingSettings, config_file: Path, log_config: Path, work_dir: Path,
                 batch_dir: Path | None = None, java_options: tuple[str, ...] | None = None):
        self.settings = settings
        archive = settings.mms_class_archive
        # JVM options of this server's own (class_archive.py); by default the class-data
        # archive when one was built: the JVM starts in about half the CPU time.
        self.java_options = java_options if java_options is not None else (
            (f"-XX:SharedArchiveFile={archive}",) if archive and archive.is_file() else ())
        self.batch_dir = batch_dir
        self.config_file = config_file
        self.log_config = log_config
        self.work_dir = work_dir
        self.ports = Ports.pick(settings)
        # Where a worker that refuses an artefact leaves its reason, a file per model name.
        self.load_reports = work_dir / "load-reports"
        self.process: subprocess.Popen | None = None
        self._workers: set[psutil.Process] = set()

    def _environment(self) -> dict[str, str]:
        s = self.settings
        env = {
            **os.environ,
            "MMS_CONFIG_FILE": str(self.config_file),
            "MMS_INFERENCE_ADDRESS": f"http://127.0.0.1:{self.ports.inference}",
            "MMS_MANAGEMENT_ADDRESS": f"http://127.0.0.1:{self.ports.management}",
            "MMS_DEFAULT_WORKERS_PER_MODEL": str(s.workers),
            "MMS_DEFAULT_RESPONSE_TIMEOUT": str(s.response_timeout_s),
            # The front is MMS's only client and bounds every batch it sends (images checked
            # and resized to the model's input), so MMS's own limit is just kept in range.
            "MMS_MAX_REQUEST_SIZE": str(JAVA_INT_MAX),
            "MMS_MAX_RESPONSE_SIZE": str(MAX_RESPONSE_BYTES),
            # MMS keeps its pid file in the temp dir: one per server lets several run side by side.
            "TEMP": str(self.work_dir),
            "TMPDIR": str(self.work_dir),
            "LOG_LOCATION": str(self.work_dir / "logs"),
            "METRICS_LOCATION": str(self.work_dir / "logs"),
            # The workers read batches from and write answers to this directory only.
            "DAGM_BATCH_FILES_DIR": str(self.batch_dir) if self.batch_dir else "none",
            "DAGM_LOAD_REPORTS_DIR": str(self.load_reports),
            # Resolved here, from the container's own environment: MMS's worker sets
            # OMP_NUM_THREADS=1 where it finds none, which would give every worker one thread.
            "OMP_NUM_THREADS": str(s.threads_per_worker),
        }
        # A worker's OpenMP threads spin briefly, enough to catch the next layer inside a
        # forward pass, then sleep and leave the cores to the front, MMS and the next
        # batch's exchange (measured: a lone PNG 0.7-2.2 ms sooner than sleeping
        # at once). The container's own OpenMP waiting, if it sets any, wins.
        if not (os.environ.get("OMP_WAIT_POLICY") or os.environ.get("GOMP_SPINCOUNT")):
            env["GOMP_SPINCOUNT"] = str(WORKER_SPIN_COUNT)
        if self.java_options:
            env["JAVA_TOOL_OPTIONS"] = " ".join(filter(None, (os.environ.get("JAVA_TOOL_OPTIONS"), *self.java_options)))
        return env

    def start(self) -> None:
        self._workers = set()
        self.load_reports.mkdir(parents=True, exist_ok=True)
        command = [
            sys.executable, "-m", "mms.model_server", "--start", "--foreground",
            "--mms-config", str(self.config_file), "--model-store", "/",
            "--log-config", str(self.log_config),
        ]
        # MMS's launcher puts "." first on the JVM's class path, and the JVM uses a class-data
        # archive only while every directory on that path is empty.
        java_dir = self.work_dir / "java"
        java_dir.mkdir(exist_ok=True)
        self.process = subprocess.Popen(command, env=self._environment(), cwd=java_dir, start_new_session=True)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def _call(self, method: str, path: str, port: int | None = None, timeout: float = 30) -> tuple[int, bytes]:
        url = f"http://127.0.0.1:{port or self.ports.management}{path}"
        request = urllib.request.Request(url, method=method)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    def wait_until_up(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running:
                raise ModelServerError(0, f"multi-model-server exited during start-up (code {self.process.returncode})")
            try:
                if self._call("GET", "/models", timeout=2)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise ModelServerError(0, f"multi-model-server did not answer within {timeout:.0f} s")

    def register(self, name: str, model_dir: Path, timeout: float = 600) -> None:
        """Load `model_dir` as `name` and return once every worker has loaded and warmed up."""
        s = self.settings
        query = urllib.parse.urlencode({
            "url": str(model_dir.resolve()), "model_name": name, "handler": HANDLER,
            # Batches arrive as one envelope (envelope.py): MMS's own batching stays off.
            "batch_size": 1,
            "initial_workers": s.workers, "synchronous": "true", "response_timeout": s.response_timeout_s,
        })
        report = self.load_reports / name
        report.unlink(missing_ok=True)
        status, body = self._call("POST", f"/models?{query}", timeout=timeout)
        if status != 200:
            if report.is_file():
                self._forget(name)
                raise ModelRefused(status, report.read_text(errors="replace").strip())
            raise ModelServerError(status, f"loading model {name!r} failed: {error_message(body)}")
        self._workers |= self._worker_processes()

    def _forget(self, name: str) -> None:
        """Unregister a model whose workers failed to load, so its name can be loaded again."""
        try:
            self._call("DELETE", f"/models/{urllib.parse.quote(name)}", timeout=30)
        except OSError:
            pass

    def _worker_processes(self) -> set[psutil.Process]:
        """MMS's Python worker processes (each socket listener and the child it forked)."""
        found = set()
        try:
            for process in psutil.Process(self.process.pid).children(recursive=True):
                try:
                    if any(WORKER_SCRIPT in part for part in process.cmdline()):
                        found.add(process)
                except psutil.Error:
                    continue
        except psutil.Error:
            pass
        return found

    def workers_lost(self) -> bool:
        """Whether a worker process that a load started has died since."""
        for process in self._workers:
            try:
                if process.status() != psutil.STATUS_ZOMBIE:
                    continue
            except psutil.NoSuchProcess:
                pass
            return True
        return False

    def restart(self) -> None:
        """Stop MMS and every worker, then start it again on fresh ports (a killed server's
        ports may still be held by a process on its way out). A short grace: what is
        being replaced is broken already."""
        self.stop(grace=2)
        self.ports = Ports.pick(self.settings)
        self.start()
        self.wait_until_up()

    def unregister(self, name: str) -> None:
        status, body = self._call("DELETE", f"/models/{urllib.parse.quote(name)}", timeout=120)
        if status != 200:
            raise ModelServerError(status, f"unloading model {name!r} failed: {error_message(body)}")
        self._workers = {p for p in self._workers if p.is_running()}

    def stop(self, grace: float = 10) -> None:
        """TERM the whole process group, then KILL whatever is left after `grace` seconds."""
        if self.process is None:
            return
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5)):
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and _group_alive(self.process.pid):
                self.reap()
                time.sleep(0.05)
            self.reap()
            if not _group_alive(self.process.pid):
                break
        self.process.poll()

    def reap(self) -> None:
        """Collect every exited child, orphaned MMS workers included: serve is PID 1 in
        the container and a subreaper outside it (serve.py), so a worker whose parent was
        killed becomes its child, and would stay a zombie (and keep MMS's process group
        alive) if nobody waited for it. MMS's own launcher is left to Popen."""
        while True:
            try:
                info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                return
            if info is None:
                return
            if self.process is not None and info.si_pid == self.process.pid:
                if self.process.poll() is None:
                    return
                continue
            try:
                os.waitpid(info.si_pid, 0)
            except ChildProcessError:
                return


def become_subreaper() -> None:
    """Have orphaned descendants (an MMS worker whose parent was killed) re-parented to
    this process, as they are to PID 1 in a container, so `reap` collects them here
    too. Linux only; elsewhere a no-op."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True
