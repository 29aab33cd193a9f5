"""What a rollout strategy outside rollout.py (guardrails.py, shadow.py) may use of the
rollout driving it. rollout.Rollout satisfies it; the strategies depend on this shape,
not on rollout.py, which imports them."""

from __future__ import annotations

from typing import Callable, Protocol

from dagm_deploy.alarms import Alarms
from dagm_deploy.endpoint import Endpoint
from dagm_deploy.options import Options


class Rolling(Protocol):
    o: Options
    endpoint: Endpoint
    alarms: Alarms
    say: Callable[[str], None]
    update_timeout: float

    def new_variant(self, weight: float) -> dict: ...

    def create_config(self, name: str, variants: list[dict]) -> str: ...

    def restore_config(self, config: str) -> str: ...

    def discard_candidate(self) -> None: ...

    def state(self) -> str: ...
