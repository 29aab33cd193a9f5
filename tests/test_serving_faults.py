"""Faults injected into a real `serve` process: workers killed or hung, MMS killed, bad
requests beside good ones, idle and half-sent connections, SIGTERM at start-up and with
requests in flight. Every check goes through HTTP and the process tree."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import threading
import time

import numpy as np
import psutil
import pytest

from conftest import concurrently, jpeg, noise_png, npy, png

pytestmark = pytest.mark.slow

GOOD = noise_png(1)


def workers(server) -> list[psutil.Process]:
    return [p for p in psutil.Process(server.process.pid).children(recursive=True)
            if "model_service_worker" in " ".join(p.cmdline())]


def java(server) -> psutil.Process:
    return next(p for p in psutil.Process(server.process.pid).children(recursive=True) if p.name() == "java")


class Load:
    """Clients posting one PNG after another; records (time sent, time answered, status)."""

    def __init__(self, server, clients: int = 3):
        self.server = server
        self.results: list[tuple[float, float, int]] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._client) for _ in range(clients)]
        for thread in self.threads:
            thread.start()

    def _client(self) -> None:
        while not self.stop.is_set():
            sent = time.monotonic()
            try:
                status = self.server.post("/invocations", GOOD, "image/png").status
            except OSError:
                status = -1
            self.results.append((sent, time.monotonic(), status))

    def finish(self) -> list[tuple[float, float, int]]:
        self.stop.set()
        for thread in self.threads:
            thread.join(90)
        return self.results


def pings_until_ready(server, deadline_s: float) -> list[tuple[float, int | None]]:
    seen, deadline = [], time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        status = server.ping()
        seen.append((time.monotonic(), status))
        if status == 200 and any(s != 200 for _, s in seen):
            break
        time.sleep(0.1)
    return seen


def _recovers(server, kill) -> None:
    load = Load(server)
    time.sleep(1.0)
    killed_at = time.monotonic()
    kill()
    seen = pings_until_ready(server, 20)
    time.sleep(2.0)
    results = load.finish()
    assert any(status == 503 for _, status in seen), f"/ping never said 503 during recovery: {seen[:5]}"
    after = [(sent, done, status) for sent, done, status in results if sent >= killed_at]
    assert after, "no request was sent after the kill"
    first_ok = min(done for sent, done, status in after if status == 200)
    assert first_ok - killed_at <= 10, f"first success {first_ok - killed_at:.1f} s after the kill"
    late = [status for sent, _, status in after if sent >= first_ok]
    assert late and all(status == 200 for status in late), late
    assert "serving again" in server.output


def test_a_killed_worker_heals_within_ten_seconds_under_load(start_server, untrained_model):
    server = start_server(untrained_model)
    before = workers(server)
    assert before
    _recovers(server, lambda: [p.kill() for p in before])
    assert not set(p.pid for p in workers(server)) & set(p.pid for p in before)
    assert "a model worker process died" in server.output
    # serve adopts and collects orphaned workers (as PID 1 does in a container): no zombies.
    zombies = [c for c in psutil.Process(server.process.pid).children(recursive=True)
               if c.status() == psutil.STATUS_ZOMBIE]
    assert not zombies, zombies


def test_a_killed_worker_listener_is_noticed_before_its_orphaned_child_dies_too(start_server, untrained_model):
    server = start_server(untrained_model)
    listener = next(p for p in workers(server) if p.parent().name() == "java")
    # The child it forked keeps answering; the next death would be unrecoverable for MMS.
    _recovers(server, listener.kill)
    assert "a model worker process died" in server.output


def test_multi_model_server_killed_heals(start_server, untrained_model):
    server = start_server(untrained_model)
    _recovers(server, lambda: java(server).kill())
    assert "multi-model-server exited" in server.output or "a model worker process died" in server.output


def test_a_hung_worker_is_replaced_after_the_response_timeout(start_server, untrained_model):
    server = start_server(untrained_model, SAGEMAKER_MODEL_SERVER_TIMEOUT="2")
    hung = workers(server)
    for process in hung:
        process.suspend()  # SIGSTOP: alive, holding its socket, answering nothing
    try:
        started = time.monotonic()
        reply = server.post("/invocations", GOOD, "image/png")
        assert reply.status == 503 and reply.headers["Retry-After"] == "1", reply.body
        assert "no answer within 2 s" in reply.json()["error"]
        seen = pings_until_ready(server, 20)
        assert any(status == 503 for _, status in seen) and seen[-1][1] == 200, seen
        assert server.post("/invocations", GOOD, "image/png").status == 200
        assert time.monotonic() - started < 15
        assert "a batch got no answer within 2 s" in server.output
    finally:
        for process in hung:
            if process.is_running():
                process.kill()


def _bad_neighbours() -> dict[str, tuple[bytes, str, int]]:
    huge_header = (b"\x93NUMPY\x01\x00v\x00{'descr': '|u1', 'fortran_order': False, 'shape': (10000000000000,), }"
                   .ljust(127) + b"\n")
    b64 = base64.b64encode(png(np.zeros((4096, 4096), np.uint8))).decode()
    return {
        "npy declaring 10**13 bytes": (huge_header, "application/x-npy", 400),
        "100,000 nested [": (b"[" * 100_000, "application/json", 400),
        "40 PNGs of 4096x4096": (json.dumps({"instances": [{"b64": b64}] * 40}).encode(), "application/json", 413),
        "JPEG bytes sent as PNG": (jpeg(np.full((64, 64), 128, np.uint8)), "image/png", 400),
    }


def test_bad_requests_fail_alone_while_their_batch_neighbours_succeed(start_server, untrained_model):
    # A delay gathers every request of the round into one batch, were they allowed in.
    server = start_server(untrained_model, DAGM_SERVER_BATCH_DELAY_MS="300")
    bad = _bad_neighbours()
    requests = [(body, {"Content-Type": kind}) for body, kind, _ in bad.values()]
    replies = concurrently(server, requests + [(GOOD, {"Content-Type": "image/png"})] * 6)
    for (name, (_, _, status)), reply in zip(bad.items(), replies):
        assert reply.status == status, (name, reply.status, reply.body[:200])
        assert reply.json()["error"], name
    good = replies[len(bad):]
    assert [r.status for r in good] == [200] * 6, [r.body[:200] for r in good]
    assert len({r.headers["X-Dagm-Forward-Id"] for r in good}) < 6  # they did share batches
    # Nothing was decoded for the refused ones (40 decoded 4096x4096 images alone are 640 MB).
    assert psutil.Process(server.process.pid).memory_info().rss < 1.2 * 2**30


def test_idle_and_half_sent_connections_neither_block_nor_pile_up(start_server, untrained_model):
    server = start_server(untrained_model, DAGM_IDLE_TIMEOUT_SECONDS="3")
    front = psutil.Process(server.process.pid)
    threads_before = front.num_threads()
    sockets = []
    try:
        for i in range(300):
            sock = socket.create_connection(("127.0.0.1", server.port))
            if i % 3 == 1:  # headers half sent
                sock.sendall(b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Ty")
            elif i % 3 == 2:  # headers sent, body half sent
                sock.sendall(b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                             b"Content-Length: 1000\r\n\r\n" + GOOD[:100])
            sockets.append(sock)
        started = time.monotonic()
        assert server.ping(timeout=2) == 200
        assert server.post("/invocations", GOOD, "image/png").status == 200
        assert time.monotonic() - started < 2
        assert front.num_threads() <= threads_before + 4
        # After the idle deadline every one of them has been answered or closed.
        time.sleep(5)
        answers = []
        for sock in sockets:
            sock.settimeout(2)
            try:
                answers.append(sock.recv(200))
            except OSError:
                answers.append(b"<error>")
        assert all(a == b"" or a.startswith(b"HTTP/1.1 408") for a in answers), {a[:40] for a in answers}
        assert sum(a.startswith(b"HTTP/1.1 408") for a in answers) == 100
    finally:
        for sock in sockets:
            sock.close()
    assert server.post("/invocations", GOOD, "image/png").status == 200


def test_a_full_queue_answers_503_with_retry_after(start_server, untrained_model):
    server = start_server(untrained_model, DAGM_MAX_QUEUED_REQUESTS="1", DAGM_SERVER_BATCH_SIZE="1",
                          DAGM_SERVER_BATCH_DELAY_MS="0")
    body = npy(np.zeros((64, 128, 128), np.uint8))
    replies = concurrently(server, [(body, {"Content-Type": "application/x-npy"})] * 12)
    statuses = [r.status for r in replies]
    assert 200 in statuses and 503 in statuses, statuses
    refused = next(r for r in replies if r.status == 503)
    assert refused.headers["Retry-After"] == "1" and "capacity" in refused.json()["error"]
    assert set(statuses) == {200, 503}, [r.body[:300] for r in replies if r.status not in (200, 503)]


def test_sigterm_during_start_up_stops_cleanly_and_says_so(start_server, untrained_model):
    server = start_server(untrained_model, ready=False)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and server.ping() != 503:
        time.sleep(0.05)
    tree = psutil.Process(server.process.pid).children(recursive=True)
    server.process.send_signal(signal.SIGTERM)
    assert server.wait_exit(30) == 0
    assert "SIGTERM received during start-up: stopped" in server.output
    after = server.output.split("SIGTERM received")[1]
    assert "serve: error" not in after and "Traceback" not in after, after
    time.sleep(0.5)
    left = [p for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not left, [p.cmdline() for p in left]


def test_sigterm_as_soon_as_mms_starts_stops_cleanly(start_server, untrained_model):
    """serve starts MMS before it imports its HTTP front: a signal in that window must
    still stop everything, MMS included."""
    server = start_server(untrained_model, ready=False)
    deadline = time.monotonic() + 30
    while not (mms := [p for p in psutil.Process(server.process.pid).children(recursive=True)
                       if "mms.model_server" in command_line(p)]):
        assert time.monotonic() < deadline, server.output
        time.sleep(0.01)
    server.process.send_signal(signal.SIGTERM)
    assert server.wait_exit(30) == 0, server.output
    assert "SIGTERM received during start-up: stopped" in server.output
    # MMS runs in a process group of its own (its JVM and workers too): none of it is
    # left once the last exited process is collected.
    deadline = time.monotonic() + 10
    while group_alive(mms[0].pid):
        assert time.monotonic() < deadline, "MMS's process group outlived serve"
        time.sleep(0.1)


def command_line(process: psutil.Process) -> str:
    try:
        return " ".join(process.cmdline())
    except psutil.Error:  # gone between listing and reading: not the one wanted
        return ""


def group_alive(pgid: int) -> bool:
    """Whether a process of the group is still running (zombies do not count)."""
    for process in psutil.process_iter(["status"]):
        try:
            if os.getpgid(process.pid) == pgid and process.info["status"] != psutil.STATUS_ZOMBIE:
                return True
        except (ProcessLookupError, psutil.Error):
            continue
    return False


def test_sigterm_answers_the_requests_in_flight_first(start_server, untrained_model):
    server = start_server(untrained_model, DAGM_SERVER_BATCH_DELAY_MS="1500", DAGM_SERVER_BATCH_SIZE="64")
    replies: list = [None] * 3

    def send(i: int) -> None:
        replies[i] = server.post("/invocations", GOOD, "image/png")

    threads = [threading.Thread(target=send, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    time.sleep(0.5)
    os.kill(server.process.pid, signal.SIGTERM)
    for thread in threads:
        thread.join(30)
    assert [r.status for r in replies] == [200, 200, 200], [r.body[:200] for r in replies]
    assert server.wait_exit(30) == 0
    assert "SIGTERM received: answering 3 in-flight request(s)" in server.output
