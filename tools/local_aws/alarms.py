"""CloudWatch alarms that evaluate, as CloudWatch's do (moto only stores them).

Every second each metric alarm is evaluated over its last `Period x EvaluationPeriods`
seconds of data with its statistic, threshold and comparison operator; no data keeps
the alarm `OK` (treat missing data as not breaching, what a canary's alarms want).
Each change of state goes to EventBridge as a "CloudWatch Alarm State Change" event,
where rules such as pipeline.yml's RetrainOnDrift pick it up.
"""

from __future__ import annotations

import json
import threading
from datetime import timedelta

from moto.cloudwatch.models import Statistics, cloudwatch_backends
from moto.core.utils import utcnow
from moto.events.models import events_backends

COMPARE = {
    "GreaterThanThreshold": lambda v, t: v > t,
    "GreaterThanOrEqualToThreshold": lambda v, t: v >= t,
    "LessThanThreshold": lambda v, t: v < t,
    "LessThanOrEqualToThreshold": lambda v, t: v <= t,
}
STATISTICS = ("Sum", "Average", "Maximum", "Minimum", "SampleCount")


def _statistic(name: str, data: list) -> float | None:
    """The statistic over single values and statistic sets (the serving image publishes
    its input statistics as sets) alike, as CloudWatch computes it; None without data."""
    summary = Statistics([name], utcnow())
    summary.metric_data = data
    value = summary.get_statistics_for_type(name) if data else None
    return None if value is None else float(value)


def _matches(datum, alarm) -> bool:
    if datum.namespace != alarm.namespace or datum.name != alarm.metric_name:
        return False
    given = {(d.name, d.value) for d in datum.dimensions}
    return all((d.name, d.value) in given for d in alarm.dimensions)


def evaluate(backend) -> None:
    now = utcnow()
    for alarm in list(backend.alarms.values()):
        if not alarm.metric_name or alarm.statistic not in STATISTICS or alarm.comparison_operator not in COMPARE:
            continue
        since = now - timedelta(seconds=int(alarm.period) * int(alarm.evaluation_periods))
        observed = _statistic(alarm.statistic, [d for d in backend.metric_data
                                                if _matches(d, alarm) and d.timestamp >= since])
        breaching = observed is not None and COMPARE[alarm.comparison_operator](observed, float(alarm.threshold))
        state = "ALARM" if breaching else "OK"
        if state != alarm.state_value:
            reason = f"local evaluation: {alarm.statistic} = {observed}"
            previous = alarm.state_value
            backend.set_alarm_state(alarm.name, reason, json.dumps({"value": observed}), state)
            _announce(backend, alarm, previous, state, reason)


def _announce(backend, alarm, previous: str, state: str, reason: str) -> None:
    detail = {"alarmName": alarm.name, "state": {"value": state, "reason": reason},
              "previousState": {"value": previous}}
    try:
        events_backends[backend.account_id][backend.region_name].put_events([{
            "Source": "aws.cloudwatch", "DetailType": "CloudWatch Alarm State Change",
            "Resources": [alarm.alarm_arn], "Detail": json.dumps(detail)}])
    except Exception as exc:  # a target moto cannot deliver to must not stop the evaluation loop
        print(f"local AWS: alarm {alarm.name} state event not delivered: {exc!r}", flush=True)


def start(stop: threading.Event, interval_s: float = 1.0) -> threading.Thread:
    def loop():
        while not stop.wait(interval_s):
            for account in list(cloudwatch_backends):
                for region in list(cloudwatch_backends[account].keys()):
                    evaluate(cloudwatch_backends[account][region])

    thread = threading.Thread(target=loop, name="alarms", daemon=True)
    thread.start()
    return thread
