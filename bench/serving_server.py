"""The serve process for bench/serving.py: started from local_test/serve_local.sh (the
image's entry command, .venv path), posted to by concurrent clients, stopped whatever
happens, and its CPU time read by part."""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
READY_TIMEOUT_S = 180


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def post(connection: http.client.HTTPConnection, body: bytes, content_type: str, headers: dict | None = None) -> bytes:
    connection.request("POST", "/invocations", body=body, headers={"Content-Type": content_type, **(headers or {})})
    response = connection.getresponse()
    data = response.read()
    if response.status != 200:
        raise RuntimeError(f"HTTP {response.status}: {data[:200]!r}")
    return data


def pinged(port: int) -> bool:
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        try:
            connection.request("GET", "/ping")
            return connection.getresponse().status == 200
        finally:
            connection.close()
    except OSError:
        return False


def log_tail(log: Path, lines: int = 20) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.exists() else ""


@contextlib.contextmanager
def serving(model_dir: Path, port: int, log: Path):
    """The serve process, yielding its cold start (seconds from spawn to the first 200 on
    /ping) and the process. Stopped on leaving, whatever happened."""
    env = {**os.environ, "NO_DOCKER": "1", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    with log.open("wb") as out:
        started = time.perf_counter()
        process = subprocess.Popen([str(REPO / "local_test" / "serve_local.sh"), str(model_dir), str(port)],
                                   stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        while not pinged(port):
            if process.poll() is not None:
                raise RuntimeError(f"serve exited with {process.returncode}")
            if time.perf_counter() - started > READY_TIMEOUT_S:
                raise RuntimeError(f"serve was not ready within {READY_TIMEOUT_S} s")
            time.sleep(0.02)
        yield time.perf_counter() - started, process
    except BaseException:  # what serve said may tell why
        print(f"serve's log, last lines:\n{log_tail(log)}", file=sys.stderr, flush=True)
        raise
    finally:
        stop_server(process)
        # serve_local.sh's /opt/ml for this port (a link to the model directory)
        shutil.rmtree(Path(os.environ.get("TMPDIR") or "/tmp") / f"dagm-serve-local-{port}", ignore_errors=True)


def stop_server(process: subprocess.Popen) -> None:
    """SIGTERM (serve drains, then stops MMS's own process group); anything of its
    process tree still alive after 30 s is killed."""
    try:
        tree = psutil.Process(process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        tree = []
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    _, alive = psutil.wait_procs(tree, timeout=10)
    for child in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()


def served_count(port: int, bodies: list[bytes], content_type: str, images: int, clients: int,
                 seconds: float, headers: dict | None = None) -> tuple[int, float]:
    """Images answered to `clients` connections in about `seconds`, and the seconds taken,
    client i posting bodies[i % len(bodies)]. The clock starts once every client has had
    its first answer (not counted), as `counted` leaves out its first step: otherwise the
    first requests, queued behind each other, would cost the served side time without
    counting their images."""
    counts = [0] * clients
    errors: list[BaseException] = []
    clock: list[float] = []
    ready = threading.Barrier(clients + 1, action=lambda: clock.append(time.perf_counter()))

    def client(i: int) -> None:
        body = bodies[i % len(bodies)]
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        try:
            post(connection, body, content_type, headers)
            ready.wait()
            while time.perf_counter() < clock[0] + seconds:
                post(connection, body, content_type, headers)
                counts[i] += images
        except threading.BrokenBarrierError:
            pass  # another client failed before the clock started: its error is reported
        except BaseException as exc:  # reported by the caller, not lost in a thread
            errors.append(exc)
            ready.abort()
        finally:
            connection.close()

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    with contextlib.suppress(threading.BrokenBarrierError):  # a client failed: said below
        ready.wait()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"a client failed: {errors[0]!r}")
    return sum(counts), time.perf_counter() - clock[0]


def cpu_seconds_by_part(pid: int) -> dict[str, float]:
    """CPU seconds used so far by serve itself (the front), MMS and the model workers."""
    parts = {"front": 0.0, "model_server": 0.0, "workers": 0.0}
    serve = psutil.Process(pid)
    for process in [serve, *serve.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            times = process.cpu_times()
            part = ("front" if process.pid == pid else
                    "workers" if "model_service_worker" in " ".join(process.cmdline()) else "model_server")
            parts[part] += times.user + times.system
    return parts
