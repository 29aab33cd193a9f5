"""The image test's steps: each one timed and reported, a failed check ending the run."""

from __future__ import annotations

import contextlib
import subprocess
import time
from dataclasses import dataclass, field


class CheckFailed(Exception):
    """One of the image test's checks did not hold."""


def check(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


def log(message: str) -> None:
    print(message, flush=True)


@dataclass
class Steps:
    """Each step's time, printed as it ends and again as a table at the end."""

    rows: list[tuple[str, float, str]] = field(default_factory=list)

    @contextlib.contextmanager
    def step(self, name: str):
        log(f"== {name}")
        start = time.monotonic()
        outcome = "failed"
        try:
            yield
            outcome = "ok"
        finally:
            seconds = time.monotonic() - start
            self.rows.append((name, seconds, outcome))
            log(f"-- {name}: {outcome} in {seconds:.1f} s")

    def table(self) -> str:
        width = max((len(name) for name, _, _ in self.rows), default=4)
        lines = [f"{'step'.ljust(width)}  seconds  result"]
        lines += [f"{name.ljust(width)}  {seconds:7.1f}  {outcome}" for name, seconds, outcome in self.rows]
        return "\n".join(lines)


def run(cmd: list[str], *, timeout: float = 3600, quiet: bool = False, **kwargs) -> subprocess.CompletedProcess:
    """Run a command; its output goes to ours unless quiet (then it is kept for the error)."""
    if quiet:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)
    else:
        result = subprocess.run(cmd, timeout=timeout, **kwargs)
    if result.returncode != 0:
        detail = ((result.stdout or "") + (result.stderr or ""))[-3000:] if quiet else ""
        raise CheckFailed(f"{' '.join(cmd[:4])} ... exited {result.returncode}\n{detail}")
    return result
