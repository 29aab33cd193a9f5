"""SageMaker deployment guardrails: UpdateEndpoint with a blue/green `DeploymentConfig`.

The new config's variants start as a green fleet next to the running (blue) one; traffic
moves to green in the policy's steps (ALL_AT_ONCE, CANARY or LINEAR, each followed by
`WaitIntervalInSeconds`, then `TerminationWaitInSeconds`) while the
`AutoRollbackConfiguration` alarms are watched. An alarm sends all traffic back to blue,
stops green and leaves the endpoint on its old config with a FailureReason naming the
alarm; otherwise green becomes the endpoint and blue stops.
"""

from __future__ import annotations

import time

from moto.cloudwatch.models import cloudwatch_backends


def shares(routing: dict) -> list[tuple[float, float]]:
    """(share of traffic on green, seconds to wait there), in order."""
    kind = routing.get("Type", "ALL_AT_ONCE")
    wait = float(routing.get("WaitIntervalInSeconds", 0))
    if kind == "CANARY":
        size = routing.get("CanarySize", {})
        first = float(size.get("Value", 10)) / 100 if size.get("Type", "CAPACITY_PERCENT") == "CAPACITY_PERCENT" else 0.1
        return [(min(first, 1.0), wait), (1.0, 0.0)]
    if kind == "LINEAR":
        step = float(routing.get("LinearStepSize", {}).get("Value", 10)) / 100
        steps, share = [], 0.0
        while share < 1.0:
            share = min(1.0, share + step)
            steps.append((share, wait if share < 1.0 else 0.0))
        return steps
    return [(1.0, 0.0)]


def firing(account: str, region: str, names: list[str]) -> list[str]:
    alarms = cloudwatch_backends[account][region].alarms
    return [n for n in names if n in alarms and alarms[n].state_value == "ALARM"]


def run(hosting, endpoint, green: dict, weights: dict[str, float], deployment: dict, account: str,
        region: str, on_done, on_rolled_back) -> None:
    """Shift traffic to `green` under the policy; blocking (call it from a thread)."""
    policy = deployment.get("BlueGreenUpdatePolicy", {})
    alarm_names = [a["AlarmName"] for a in deployment.get("AutoRollbackConfiguration", {}).get("Alarms", [])]
    plan = shares(policy.get("TrafficRoutingConfiguration", {}))
    plan[-1] = (plan[-1][0], float(policy.get("TerminationWaitInSeconds", 0)))
    for share, wait in plan:
        hosting.shift(endpoint, green, weights, share)
        deadline = time.monotonic() + wait
        while True:
            alarms = firing(account, region, alarm_names)
            if alarms:
                hosting.drop_green(endpoint)
                on_rolled_back(f"rolled back by alarm {', '.join(alarms)} at {share:.0%} of traffic")
                return
            if time.monotonic() >= deadline:
                break
            time.sleep(0.5)
    on_done()
