"""Keeps the model workers answering, with no manual step.

Watches MMS and the worker processes each load started, and restarts MMS with every
loaded model when MMS exits, a worker dies (an out-of-memory kill: MMS 1.1.11 never
recovers from it, model_server.py says why) or a batch got no answer within the
response timeout (a hung worker). While that runs `available` is clear: /ping answers
503, so SageMaker sees the instance is not serving, and batches wait for it instead of
failing. A restart that fails is tried again, each time a little later.
"""

from __future__ import annotations

import asyncio
import logging
import time

from dagm_serve.models import ModelRegistry

log = logging.getLogger(__name__)

POLL_S = 0.2
RETRY_S = (1, 2, 5, 10)


class Supervisor:
    def __init__(self, registry: ModelRegistry):
        self.registry = registry
        self.available = asyncio.Event()
        self._wake = asyncio.Event()
        self._reason: str | None = None

    @property
    def server(self):
        return self.registry.server

    def report_hang(self, reason: str) -> None:
        """A batch got no answer in time: restart, unless a restart is already under way."""
        if self.available.is_set() and self._reason is None:
            self._reason = reason
            self._wake.set()

    def _problem(self) -> str | None:
        self.server.reap()
        if not self.server.running:
            return f"multi-model-server exited (code {self.server.process.returncode})"
        if self.server.workers_lost():
            return "a model worker process died"
        reason, self._reason = self._reason, None
        return reason

    async def run(self) -> None:
        """Watch until cancelled; call once the models are loaded."""
        loop = asyncio.get_running_loop()
        self.available.set()
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), POLL_S)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            problem = self._problem()
            if problem is None:
                continue
            self.available.clear()
            started = time.monotonic()
            log.error("%s: restarting multi-model-server and reloading the model(s)", problem)
            attempt = 0
            while True:
                try:
                    await loop.run_in_executor(None, self.registry.restart_server)
                    break
                except Exception as exc:  # noqa: BLE001 - whatever failed, the next try starts over
                    delay = RETRY_S[min(attempt, len(RETRY_S) - 1)]
                    attempt += 1
                    log.error("restart %d failed (%s); trying again in %d s", attempt, exc, delay)
                    await asyncio.sleep(delay)
            self._reason = None
            self.available.set()
            log.info("serving again %.1f s after the problem was seen", time.monotonic() - started)
