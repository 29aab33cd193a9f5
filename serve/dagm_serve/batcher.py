"""Gathers concurrent requests for one model into batches, one MMS call per batch.

A batch is sent only when a worker slot is free, so while every worker is busy the
waiting requests pile up into the next batch: batches grow with load and shrink to a
single request when idle, with no delay needed. A batch holds at most `max_images`
images (a single request may hold more); `max_delay` is how long a batch that is not yet
full waits for company once a worker is free (0: never wait).
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

from dagm_serve.envelope import Part


@dataclass
class _Pending:
    part: Part
    images: int
    done: threading.Event = field(default_factory=threading.Event)
    answer: Part | None = None


class Batcher:
    def __init__(self, send: Callable[[list[Part]], list[Part]], max_images: int, max_delay_s: float,
                 slots: int, failure: Callable[[Exception], Part]):
        self._send = send
        self._failure = failure
        self._max_images = max_images
        self._carry: _Pending | None = None  # taken from the queue, did not fit the last batch
        self._max_delay = max_delay_s
        self._slots = threading.Semaphore(slots)
        self._queue: queue.Queue[_Pending | None] = queue.Queue()  # None: close
        self._pool = ThreadPoolExecutor(max_workers=slots, thread_name_prefix="batch")
        threading.Thread(target=self._dispatch, name="batcher", daemon=True).start()

    def close(self) -> None:
        """Stop the dispatcher once the batches already queued have gone out (a model was
        unloaded: without this its threads would outlive it)."""
        self._queue.put(None)

    def submit(self, part: Part, images: int, timeout: float) -> Part:
        """Queue one request of about `images` images and wait for its answer (the failure
        answer after `timeout`)."""
        pending = _Pending(part, images)
        self._queue.put(pending)
        if not pending.done.wait(timeout):
            return self._failure(TimeoutError(f"no answer within {timeout:.0f} s"))
        return pending.answer

    def _dispatch(self) -> None:
        while True:
            self._slots.acquire()
            first, self._carry = self._carry or self._queue.get(), None
            if first is None:
                self._pool.shutdown(wait=False)
                return
            batch, images = [first], first.images
            deadline = time.monotonic() + self._max_delay
            while images < self._max_images:
                try:
                    pending = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if pending is None:  # close: send this batch, then stop
                    self._queue.put(None)
                    break
                if images + pending.images > self._max_images:
                    self._carry = pending
                    break
                batch.append(pending)
                images += pending.images
            self._pool.submit(self._run, batch)

    def _run(self, batch: list[_Pending]) -> None:
        try:
            answers = self._send([p.part for p in batch])
            if len(answers) != len(batch):
                raise RuntimeError(f"{len(answers)} answers for {len(batch)} requests")
        except Exception as exc:  # the model server is down or broke: every request hears why
            answers = [self._failure(exc)] * len(batch)
        finally:
            self._slots.release()
        for pending, answer in zip(batch, answers):
            pending.answer = answer
            pending.done.set()
