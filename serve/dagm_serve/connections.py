"""Deadlines and a cap for the front's client connections, which aiohttp leaves open.

aiohttp closes a keep-alive connection once it has been idle for its keepalive timeout
after an answer, but a connection that never finishes its first request (idle from the
start, or headers half sent) stays open for good. Every second this closes any
connection with no request in progress that has been quiet for `idle_timeout_s`, and,
while more than `max_connections` are open, the quietest idle ones first.
"""

from __future__ import annotations

import asyncio
import time

from aiohttp import web

SWEEP_S = 1.0


class ConnectionGuard:
    def __init__(self, max_connections: int, idle_timeout_s: float):
        self.max_connections = max_connections
        self.idle_timeout_s = idle_timeout_s
        self.server: web.Server | None = None
        self.closed = 0
        # Keyed by aiohttp's connection objects (no weak references to them exist);
        # entries of closed connections are dropped by the next sweep.
        self._busy: dict = {}
        self._quiet_since: dict = {}
        self._task: asyncio.Task | None = None

    @web.middleware
    async def middleware(self, request: web.Request, handler) -> web.StreamResponse:
        connection = request.protocol
        self._busy[connection] = self._busy.get(connection, 0) + 1
        try:
            return await handler(request)
        finally:
            self._busy[connection] -= 1
            if not self._busy[connection]:
                del self._busy[connection]
            self._quiet_since[connection] = time.monotonic()

    @property
    def in_flight(self) -> int:
        return sum(self._busy.values())

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._sweep_forever())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_S)
            if self.server is not None:
                self.sweep(list(self.server.connections), time.monotonic())

    def sweep(self, connections: list, now: float) -> None:
        open_now = set(connections)
        for gone in [c for c in self._quiet_since if c not in open_now]:
            del self._quiet_since[gone]
        idle = []
        for connection in connections:
            since = self._quiet_since.setdefault(connection, now)
            if not self._busy.get(connection):
                idle.append((since, connection))
        idle.sort(key=lambda pair: pair[0])
        excess = max(0, len(connections) - self.max_connections)
        for since, connection in idle:
            if excess > 0 or now - since >= self.idle_timeout_s:
                connection.force_close()
                self.closed += 1
                excess -= 1
