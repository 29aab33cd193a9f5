"""SIGTERM and SIGINT as an exception during a rollout, and deferred while it rolls back.

CodeBuild stops a build with SIGTERM (then SIGKILL), a CI runner cancels with SIGTERM, a
person presses Ctrl-C: each must end in a rollback, not a half-shifted endpoint. The
first signal raises `Interrupted` where the rollout is; signals that arrive while the
rollback runs are noted and ignored, so a second Ctrl-C cannot leave the endpoint split.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from typing import Iterator

from dagm_deploy.errors import Interrupted

SIGNALS = (signal.SIGTERM, signal.SIGINT)


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """Within it, SIGTERM and SIGINT raise Interrupted (main thread only: elsewhere the
    handlers cannot be set and the caller's own handling applies)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, _frame):
        raise Interrupted(signum)

    previous = {sig: signal.signal(sig, interrupt) for sig in SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def shielded(what: str) -> Iterator[list[int]]:
    """Signals during `what` are noted (the list it yields) and do not stop it."""
    noted: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield noted
        return

    def note(signum, _frame):
        noted.append(signum)
        print(f"deploy: {signal.Signals(signum).name} received while {what}: finishing that first",
              file=sys.stderr, flush=True)

    previous = {sig: signal.signal(sig, note) for sig in SIGNALS}
    try:
        yield noted
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
