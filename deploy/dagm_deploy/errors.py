"""How a rollout stops."""

from __future__ import annotations

import signal


class Refused(Exception):
    """A rollout that must not go on; the message is the one-line reason. `exit_code`:
    1, or 128 + the signal's number when a signal stopped it."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


class Interrupted(BaseException):
    """SIGTERM or SIGINT arrived. A BaseException, as KeyboardInterrupt is, so that no
    `except Exception` on the way (botocore's retry handlers among them) swallows it."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(signal.Signals(signum).name)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def cause(stop: BaseException) -> str:
    if isinstance(stop, Interrupted):
        return f"interrupted by {stop}"
    if isinstance(stop, Refused):
        return str(stop)
    return f"{type(stop).__name__}: {stop}".replace("\n", " ")


def exit_code(stop: BaseException) -> int:
    if isinstance(stop, (Interrupted, Refused)):
        return stop.exit_code
    return 1
