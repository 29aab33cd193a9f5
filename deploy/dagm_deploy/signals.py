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
from typing import Callable, Iterator

from dagm_deploy.errors import Interrupted

SIGNALS = (signal.SIGTERM, signal.SIGINT)


@contextlib.contextmanager
def _handled_by(handler: Callable[[int, object], None]) -> Iterator[None]:
    """`handler` for SIGTERM and SIGINT within it, then the previous handlers again. Only the
    main thread can set handlers; elsewhere the caller's own handling applies."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, handler) for sig in SIGNALS}
    try:
        yield
    finally:
        for sig, handler_before in previous.items():
            signal.signal(sig, handler_before)


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """Within it, SIGTERM and SIGINT raise Interrupted."""

    def interrupt(signum, _frame):
        raise Interrupted(signum)

    with _handled_by(interrupt):
        yield


@contextlib.contextmanager
def shielded(what: str) -> Iterator[list[int]]:
    """Signals during `what` are noted (the list it yields) and do not stop it."""
    noted: list[int] = []

    def note(signum, _frame):
        noted.append(signum)
        print(f"deploy: {signal.Signals(signum).name} received while {what}: finishing that first",
              file=sys.stderr, flush=True)

    with _handled_by(note):
        yield noted
