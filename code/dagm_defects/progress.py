"""Line-based progress a person can follow in a terminal and in CloudWatch Logs.

Never carriage-return bars: every report is one whole line with elapsed time and rate,
printed at most every ``every_seconds`` (and always at the end).
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


def write_line(line: str, stream: TextIO | None = None) -> None:
    """Write one whole line in a single write call.

    Training ranks share one stdout pipe, and print() writes its newline separately (two
    syscalls when unbuffered), so lines of two ranks could splice; one write below PIPE_BUF
    reaches a pipe whole.
    """
    out = stream or sys.stdout
    out.write(line + "\n")
    out.flush()


class Progress:
    def __init__(
        self,
        label: str,
        total: int,
        unit: str = "images",
        every_seconds: float = 5.0,
        stream: TextIO | None = None,
    ) -> None:
        self.label = label
        self.total = total
        self.unit = unit
        self.every_seconds = every_seconds
        self.stream = stream
        self.count = 0
        self.started = time.monotonic()
        self._last_report = self.started

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    @property
    def rate(self) -> float:
        return self.count / max(self.elapsed, 1e-9)

    def advance(self, n: int = 1) -> None:
        self.count += n
        now = time.monotonic()
        if now - self._last_report >= self.every_seconds and self.count < self.total:
            self._last_report = now
            self._emit()

    def done(self, extra: str = "") -> None:
        self._emit(extra)

    def _emit(self, extra: str = "") -> None:
        share = 100.0 * self.count / self.total if self.total else 100.0
        line = (
            f"{self.label}: {self.count}/{self.total} {self.unit} ({share:.0f}%) "
            f"elapsed={self.elapsed:.1f}s {self.unit}_per_sec={self.rate:.1f}"
        )
        if extra:
            line += " " + extra
        write_line(line, self.stream)
