"""boto3 clients as the deploy tools use them, and retrying until a deadline.

Every client honours AWS_ENDPOINT_URL(_<SERVICE>) and the usual credential chain, so the
same commands drive AWS or the local AWS (`make local-aws`).
"""

from __future__ import annotations

import time
from typing import Callable, TypeVar

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

T = TypeVar("T")

# Throttling mid-rollout is the norm on a busy account: botocore's standard mode backs off
# with jitter; five attempts ride out a burst without hiding a real outage for minutes.
CONTROL = Config(retries={"mode": "standard", "total_max_attempts": 5}, connect_timeout=10, read_timeout=60)


def control(service: str):
    return boto3.client(service, config=CONTROL)


def runtime(read_timeout: float):
    """InvokeEndpoint for checks: one attempt, bounded, so a hanging candidate is refused
    after `read_timeout` seconds instead of being retried."""
    return boto3.client("sagemaker-runtime", config=Config(retries={"mode": "standard", "total_max_attempts": 1},
                                                           connect_timeout=10, read_timeout=read_timeout))


def until(deadline: float, call: Callable[[], T], what: str, say: Callable[[str], None]) -> T:
    """`call()` again after AWS errors until the monotonic `deadline`, then the last error."""
    delay = 1.0
    while True:
        try:
            return call()
        except (ClientError, BotoCoreError) as error:
            if time.monotonic() + delay >= deadline:
                raise
            say(f"{what}: {error}; trying again in {delay:.0f} s")
            time.sleep(delay)
            delay = min(delay * 2, 10.0)
