"""SIGTERM handling: SageMaker stops a job (or a spot instance goes) with SIGTERM and
kills it 120 s later. The handler only raises a flag; the loops check it at safe points,
save a checkpoint, and leave."""

from __future__ import annotations

import signal
import time

from dagm_defects.progress import write_line


class StopRequested(Exception):
    """Raised at a safe point after SIGTERM; carries what was saved."""


class StopFlag:
    def __init__(self) -> None:
        self.requested_at: float | None = None
        self.signal_name = ""

    @property
    def requested(self) -> bool:
        return self.requested_at is not None

    def request(self, signum: int, _frame=None) -> None:
        if self.requested_at is None:
            self.requested_at = time.monotonic()
            self.signal_name = signal.Signals(signum).name
            write_line(f"received {self.signal_name}: stopping at the next safe point")

    def install(self) -> "StopFlag":
        signal.signal(signal.SIGTERM, self.request)
        signal.signal(signal.SIGINT, self.request)
        return self
