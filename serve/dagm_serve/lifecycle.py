"""What `serve` does once multi-model-server is starting (serve.py starts it first).

Order of events: bind the public port (so /ping says 503 rather than nothing), unpack
the artefact and read its metadata while MMS boots, have MMS's workers load, check and
warm up the model, then let /ping say 200 and start the supervisor. SIGTERM or SIGINT
at any moment ends it cleanly with exit code 0 and a line saying where it was: during
start-up at once, while serving after the in-flight requests were answered (at most
DAGM_DRAIN_SECONDS).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from pathlib import Path

from aiohttp import web
from threadpoolctl import threadpool_limits

from dagm_serve import environment
from dagm_serve.batch_files import BatchFiles
from dagm_serve.front import SINGLE_MODEL, Front
from dagm_serve.model_server import ModelServer, ModelServerError
from dagm_serve.models import ModelRegistry, RegistryError
from dagm_serve.supervisor import Supervisor

log = logging.getLogger("dagm_serve")


class Failed(Exception):
    """Start-up cannot go on; the message says why."""


async def _start_models(settings: environment.ServingSettings, server: ModelServer, registry: ModelRegistry) -> None:
    """MMS boots while this process unpacks the artefact and reads its metadata; then
    MMS's workers import torch, load the weights and check them. This process never
    imports torch: 52 MB resident instead of 552 MB."""
    loop = asyncio.get_running_loop()
    if settings.multi_model:
        await loop.run_in_executor(None, server.wait_until_up)
        return
    url = str(settings.model_dir)
    model_dir = await loop.run_in_executor(None, registry.resolve, SINGLE_MODEL, url)
    model = registry.inspect(url, model_dir)
    await loop.run_in_executor(None, server.wait_until_up)
    await loop.run_in_executor(None, registry.register, SINGLE_MODEL, model_dir)
    registry.add(SINGLE_MODEL, model)


def serve(settings: environment.ServingSettings, server: ModelServer, work_dir: Path,
          batch_files: BatchFiles, received: list[str]) -> int:
    """`run` in a fresh event loop."""
    # One BLAS thread in this process: a defective image's mask is two small matrix products
    # (prediction.py), which numpy's OpenBLAS would spread over every core, its threads then
    # spinning against the model workers' forward passes (30 ms more for a defective image
    # than a clean one on 2 cores).
    threadpool_limits(limits=1, user_api="blas")
    return asyncio.run(run(settings, server, work_dir, batch_files, received))


async def run(settings: environment.ServingSettings, server: ModelServer, work_dir: Path,
              batch_files: BatchFiles, received: list[str]) -> int:
    """Serve until SIGTERM or SIGINT; `received` holds the signals that came before this
    loop took them over. Exit code 0, or Failed."""
    started = time.monotonic()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def on_signal(signum: int) -> None:
        received.append(signal.Signals(signum).name)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    if received:
        log.info("%s received during start-up: stopped", received[0])
        return 0
    registry = ModelRegistry(server, settings, work_dir / "models")
    supervisor = Supervisor(registry)
    front = Front(settings, registry, supervisor, batch_files)
    runner = web.AppRunner(front.app, handle_signals=False, access_log=None, shutdown_timeout=settings.drain_s,
                           keepalive_timeout=settings.idle_timeout_s)
    await runner.setup()
    front.guard.server = runner.server
    try:
        await web.TCPSite(runner, "0.0.0.0", settings.port, reuse_address=True).start()
    except OSError as exc:
        await runner.cleanup()
        raise Failed(f"cannot listen on port {settings.port}: {exc}") from None
    watching = None
    try:
        startup = loop.create_task(_start_models(settings, server, registry))
        stopping = loop.create_task(stop.wait())
        await asyncio.wait([startup, stopping], return_when=asyncio.FIRST_COMPLETED)
        if stop.is_set():
            startup.cancel()
            log.info("%s received during start-up: stopped", received[0])
            return 0
        stopping.cancel()
        try:
            startup.result()
        except (ModelServerError, RegistryError) as exc:
            raise Failed(str(exc)) from None
        front.ready = True
        watching = loop.create_task(supervisor.run())
        mode = "multi-model" if settings.multi_model else f"model from {settings.model_dir}"
        log.info("ready in %.1f s: port %d, %s, %d worker(s), batches of up to %d (%d ms delay)",
                 time.monotonic() - started, settings.port, mode, settings.workers,
                 settings.server_batch_size, settings.server_batch_delay_ms)
        await stop.wait()
        log.info("%s received: answering %d in-flight request(s) (at most %d s), then stopping",
                 received[0], front.guard.in_flight, settings.drain_s)
        return 0
    finally:
        if watching is not None:
            watching.cancel()
        await runner.cleanup()
