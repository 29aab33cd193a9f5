"""Gathers concurrent requests for one model into batches, one MMS call per batch.

A batch is sent only when a worker slot is free, so while every worker is busy the
waiting requests pile up into the next batch: batches grow with load and shrink to a
single request when idle, with no delay needed. A batch holds at most `max_images`
images (a single request may hold more); `max_delay` is how long a batch that is not yet
full waits for company once a worker is free (0: never wait). At most `max_queued`
requests wait; beyond that `submit` raises `QueueFull` at once (the front answers 503
with Retry-After). A request whose caller stopped waiting (its timeout passed, or its
client went away) is dropped before it reaches a worker.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable

import numpy as np


class QueueFull(Exception):
    """Too many requests are waiting already."""


class Closed(Exception):
    """The batcher was closed (its model was unloaded)."""


@dataclass(frozen=True)
class Outputs:
    """The model's outputs for one request, and which forward pass made them."""

    scores: np.ndarray
    maps: np.ndarray
    forward_id: str
    batch_images: int


@dataclass
class _Job:
    images: np.ndarray
    future: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())


# send(images N x S x S) -> (forward id, scores N, maps N x M x M)
Send = Callable[[np.ndarray], Awaitable[tuple[str, np.ndarray, np.ndarray]]]


class Batcher:
    def __init__(self, send: Send, max_images: int, max_delay_s: float, slots: int, max_queued: int):
        self._send = send
        self._max_images = max_images
        self._max_delay = max_delay_s
        self._max_queued = max_queued
        self._slots = asyncio.Semaphore(slots)
        self._queue: asyncio.Queue[_Job | None] = asyncio.Queue()  # None: close
        self._carry: _Job | None = None  # taken from the queue, did not fit the last batch
        self._closed = False
        self._running: set[asyncio.Task] = set()
        self._dispatcher = asyncio.get_running_loop().create_task(self._dispatch())

    @property
    def queued(self) -> int:
        return self._queue.qsize() + (self._carry is not None)

    async def submit(self, images: np.ndarray, timeout: float) -> Outputs:
        """The outputs for `images` (N x S x S uint8); TimeoutError after `timeout`, the
        send's own exception when the batch failed, QueueFull or Closed when refused."""
        if self._closed:
            raise Closed("the model was unloaded")
        if self.queued >= self._max_queued:
            self._forget_abandoned()
        if self.queued >= self._max_queued:
            raise QueueFull(f"{self.queued} requests are waiting already")
        job = _Job(images)
        self._queue.put_nowait(job)
        # wait_for cancels the job's future on timeout, and so does a caller cancelled
        # for a client that went away: the dispatcher then skips it.
        return await asyncio.wait_for(job.future, timeout)

    def _forget_abandoned(self) -> None:
        """Take out of the queue the requests nobody waits for any more (their callers
        timed out or left while every worker was busy), so they do not hold places."""
        kept = []
        while not self._queue.empty():
            job = self._queue.get_nowait()
            if job is None or not job.future.done():
                kept.append(job)
        for job in kept:
            self._queue.put_nowait(job)

    async def close(self) -> None:
        """Refuse new requests; send the ones already queued, then stop."""
        self._closed = True
        self._queue.put_nowait(None)
        await self._dispatcher
        if self._running:
            await asyncio.wait(self._running)

    async def _next(self, timeout: float | None) -> _Job | None:
        """The next job still waited for; None for close; TimeoutError when none came."""
        while True:
            if timeout is None:
                job = await self._queue.get()
            elif timeout <= 0:
                if self._queue.empty():
                    raise asyncio.TimeoutError
                job = self._queue.get_nowait()
            else:
                job = await asyncio.wait_for(self._queue.get(), timeout)
            if job is None or not job.future.done():
                return job

    async def _dispatch(self) -> None:
        while True:
            await self._slots.acquire()
            first, self._carry = self._carry or await self._next(None), None
            if first is None:
                return
            batch, images = [first], len(first.images)
            deadline = time.monotonic() + self._max_delay
            while images < self._max_images:
                try:
                    job = await self._next(deadline - time.monotonic())
                except asyncio.TimeoutError:
                    break
                if job is None:  # close: send this batch, then stop
                    self._queue.put_nowait(None)
                    break
                if images + len(job.images) > self._max_images:
                    self._carry = job
                    break
                batch.append(job)
                images += len(job.images)
            task = asyncio.get_running_loop().create_task(self._run(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _run(self, batch: list[_Job]) -> None:
        try:
            live = [job for job in batch if not job.future.done()]
            if not live:
                return
            images = np.concatenate([job.images for job in live]) if len(live) > 1 else live[0].images
            try:
                forward_id, scores, maps = await self._send(images)
                if len(scores) != len(images) or len(maps) != len(images):
                    raise RuntimeError(f"{len(scores)} scores and {len(maps)} maps for {len(images)} images")
            except Exception as exc:  # the model server is down or broke: every request hears why
                for job in live:
                    if not job.future.done():
                        job.future.set_exception(exc)
                return
            start = 0
            for job in live:
                end = start + len(job.images)
                if not job.future.done():
                    job.future.set_result(Outputs(scores[start:end], maps[start:end], forward_id, len(images)))
                start = end
        finally:
            self._slots.release()
