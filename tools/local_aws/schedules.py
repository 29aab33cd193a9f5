"""EventBridge rules with a ScheduleExpression that fire (moto stores them, never fires them).

A background thread sends each enabled scheduled rule's targets a "Scheduled Event"
(source aws.events, detail-type "Scheduled Event", resources [the rule's ARN], detail
{}) on its schedule, through the rule's own delivery (Rule.send_to_targets, where
builds.py starts CodeBuild builds and moto delivers the rest):
- rate(N minute|minutes|hour|hours|day|days): every N units, the first one period after
  the thread first sees the rule (AWS: after the rule is created);
- cron(minutes hours day-of-month month day-of-week year): at each minute that matches,
  with *, ?, numbers, ranges a-b, lists a,b, steps */n and a-b/n, month names JAN-DEC and
  day names SUN-SAT (day-of-week 1-7 is SUN-SAT, as in AWS); L, W and # are not
  supported: such a rule is reported once in the log and never fires. Times are UTC.
Disabled rules never fire (their schedule goes on, a rule enabled again fires at its
next due time, not for the ones it missed). Missed firings are not caught up.

Time runs faster for tests: LOCAL_AWS_SCHEDULE_SECONDS_PER_MINUTE (default 60, real
time) is how many real seconds one scheduled minute lasts; the clock cron matches
starts at the real time the local AWS starts.

A scheduled rule without an event pattern matches every event in moto (an alarm's state
change would fire it); here it takes its own scheduled events only, as in EventBridge.

Control API (JSON):
    POST /_local_aws/schedules   {"rule": NAME[, "event_bus": NAME]}: fire that rule now;
                                 200 {"fired": NAME, "event": {...}}, 404 no such scheduled
                                 rule, 409 the rule is disabled, 400 a malformed body
    GET  /_local_aws/schedules   {"schedules": [{"rule", "arn", "expression", "state",
                                 "fired"}, ...]}
"""

from __future__ import annotations

import os
import re
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

from moto.core.utils import unix_time
from moto.events import models as events_models
from moto.events.models import events_backends

from local_aws import control

CONTROL_PATH = "/_local_aws/schedules"
SOURCE, DETAIL_TYPE = "aws.events", "Scheduled Event"
TICK_S = 0.1
_RATE = re.compile(r"^rate\(\s*(\d+)\s+(minute|minutes|hour|hours|day|days)\s*\)$")
_UNITS = {"minute": 1, "hour": 60, "day": 24 * 60}
_MONTHS = {name: i + 1 for i, name in enumerate("JAN FEB MAR APR MAY JUN JUL AUG SEP OCT NOV DEC".split())}
_DAYS = {name: i + 1 for i, name in enumerate("SUN MON TUE WED THU FRI SAT".split())}
# Per field of cron(): (lowest, highest, names).
_FIELDS = ((0, 59, {}), (0, 23, {}), (1, 31, {}), (1, 12, _MONTHS), (1, 7, _DAYS), (1970, 2199, {}))

_LOCK = threading.Lock()
_FIRED: dict[str, int] = {}  # firings by rule ARN


class Unsupported(ValueError):
    """A schedule expression this local AWS cannot follow."""


def rate_minutes(expression: str) -> int | None:
    """A rate() expression's period in minutes; None for any other expression."""
    match = _RATE.match(expression.strip())
    if not match:
        return None
    value, unit = int(match.group(1)), match.group(2).rstrip("s")
    if value < 1 or (value == 1) != (match.group(2) == unit):
        raise Unsupported(f"{expression}: a rate of 1 takes the singular unit, above 1 the plural")
    return value * _UNITS[unit]


def _values(text: str, low: int, high: int, names: dict[str, int]) -> set[int]:
    def number(token: str) -> int:
        value = names.get(token.upper()) if token.upper() in names else int(token)
        if not low <= value <= high:
            raise Unsupported(f"{token} is outside {low}-{high}")
        return value

    found: set[int] = set()
    for part in text.split(","):
        part, _, step = part.partition("/")
        if part in ("*", "?"):
            first, last = low, high
        elif "-" in part:
            first, last = (number(t) for t in part.split("-", 1))
        else:
            first = number(part)
            last = high if step else first
        found.update(range(first, last + 1, int(step) if step else 1))
    return found


class Cron:
    """cron(minutes hours day-of-month month day-of-week year), the subset described above."""

    def __init__(self, expression: str):
        text = expression.strip()
        if not (text.startswith("cron(") and text.endswith(")")):
            raise Unsupported(f"{expression}: not rate(...) or cron(...)")
        fields = text[5:-1].split()
        if len(fields) != 6:
            raise Unsupported(f"{expression}: six fields of *, ?, numbers, ranges, lists and steps expected")
        try:
            self.sets = [_values(f, *spec) for f, spec in zip(fields, _FIELDS)]
        except ValueError as exc:
            raise Unsupported(f"{expression}: {exc}") from None
        self.any_day, self.any_weekday = fields[2] in ("*", "?"), fields[4] in ("*", "?")

    def matches(self, when: datetime) -> bool:
        minutes, hours, days, months, weekdays, years = self.sets
        weekday = (when.isoweekday() % 7) + 1  # SUN=1 ... SAT=7
        if self.any_day or self.any_weekday:
            day = when.day in days and weekday in weekdays
        else:  # both given: either matches, as in cron
            day = when.day in days or weekday in weekdays
        return (when.minute in minutes and when.hour in hours and when.month in months and when.year in years
                and day)


def scheduled_rules() -> list:
    """Every rule with a ScheduleExpression, in every account, region and event bus."""
    found = []
    for account in list(events_backends):
        for region in list(events_backends[account].keys()):
            for bus in list(events_backends[account][region].event_buses.values()):
                found.extend(r for r in list(bus.rules.values()) if r.scheduled_expression)
    return found


def scheduled_event(rule) -> dict:
    """The event EventBridge sends a scheduled rule's targets (moto's event message form)."""
    now = unix_time()
    return {"version": "0", "id": str(uuid.uuid4()), "detail-type": DETAIL_TYPE, "source": SOURCE,
            "account": rule.account_id, "time": now, "region": rule.region_name, "resources": [rule.arn],
            "detail": {}, "ingestion-time": now}


def fire(rule) -> dict:
    """Send the rule's targets its scheduled event now (its state is the caller's business)."""
    event = scheduled_event(rule)
    with _LOCK:
        _FIRED[rule.arn] = _FIRED.get(rule.arn, 0) + 1
    rule.send_to_targets(event)
    return event


def _fire_logged(rule) -> None:
    try:
        fire(rule)
    except Exception as exc:  # a target moto cannot deliver to must not stop the schedules
        print(f"local AWS: scheduled rule {rule.name} not delivered: {exc!r}", flush=True)


class Scheduler:
    """Fires the scheduled rules on a clock that runs `60 / seconds_per_minute` times real time."""

    def __init__(self, seconds_per_minute: float):
        self.speed = 60.0 / seconds_per_minute
        self.started_real, self.started_wall = time.monotonic(), datetime.now(timezone.utc)
        self.due: dict[str, float] = {}  # rate rules: next due, in scheduled minutes since start
        self.checked_minute: dict[str, int] = {}  # cron rules: the last whole scheduled minute looked at
        self.crons: dict[str, Cron | None] = {}
        self.reported: set[str] = set()

    def minutes(self) -> float:
        """Scheduled minutes since the start."""
        return (time.monotonic() - self.started_real) * self.speed / 60.0

    def tick(self) -> None:
        now = self.minutes()
        for rule in scheduled_rules():
            key = f"{rule.arn} {rule.scheduled_expression}"  # put_rule may change the schedule
            try:
                period = rate_minutes(rule.scheduled_expression)
            except Unsupported as exc:
                self._unsupported(rule, key, exc)
                continue
            if period is not None:
                due = self.due.setdefault(key, now + period)
                if now < due:
                    continue
                while self.due[key] <= now:  # missed firings are not caught up
                    self.due[key] += period
                if rule.state == "ENABLED":
                    _fire_logged(rule)
                continue
            cron = self._cron(rule, key)
            if cron is None:
                continue
            # Whole minutes of the scheduled clock (UTC), which starts at the real start time.
            minute = int((self.started_wall + timedelta(minutes=now)).timestamp() // 60)
            last = self.checked_minute.setdefault(key, minute)
            if minute > last:
                self.checked_minute[key] = minute
                moments = (datetime.fromtimestamp(m * 60, timezone.utc) for m in range(last + 1, minute + 1))
                if rule.state == "ENABLED" and any(cron.matches(m) for m in moments):
                    _fire_logged(rule)

    def _cron(self, rule, key: str) -> Cron | None:
        if key not in self.crons:
            try:
                self.crons[key] = Cron(rule.scheduled_expression)
            except Unsupported as exc:
                self.crons[key] = None
                self._unsupported(rule, key, exc)
        return self.crons[key]

    def _unsupported(self, rule, key: str, exc: Exception) -> None:
        if key not in self.reported:  # once per rule and expression
            self.reported.add(key)
            print(f"local AWS: scheduled rule {rule.name} never fires here: {exc}", flush=True)


def _only_own_schedule() -> None:
    """A scheduled rule without an event pattern takes only its own scheduled events.
    Installed after builds.install, around the delivery it installed."""
    delivery = events_models.Rule.send_to_targets

    def send_to_targets(self, original_event, transform_input=True):
        if self.scheduled_expression and not self.event_pattern._pattern and not (
                original_event.get("source") == SOURCE and original_event.get("detail-type") == DETAIL_TYPE
                and original_event.get("resources") == [self.arn]):
            return
        return delivery(self, original_event, transform_input)

    events_models.Rule.send_to_targets = send_to_targets


# The control API.

def _find(name: str, bus: str | None):
    return next((r for r in scheduled_rules() if r.name == name and bus in (None, r.event_bus_name)), None)


def _control(environ: dict, start_response) -> list[bytes]:
    method = environ.get("REQUEST_METHOD", "GET")

    def answer(status: int, value: Any) -> list[bytes]:
        return control.answer(start_response, status, value)

    if method == "GET":
        with _LOCK:
            fired = dict(_FIRED)
        return answer(200, {"schedules": [{"rule": r.name, "arn": r.arn, "expression": r.scheduled_expression,
                                           "state": r.state, "fired": fired.get(r.arn, 0)}
                                          for r in scheduled_rules()]})
    if method != "POST":
        return answer(405, {"error": f"{method} {CONTROL_PATH}: use GET or POST"})
    try:
        given = control.read_json(environ)
    except ValueError as exc:
        return answer(400, {"error": f"not JSON: {exc}"})
    if not (isinstance(given, dict) and isinstance(given.get("rule"), str) and set(given) <= {"rule", "event_bus"}
            and isinstance(given.get("event_bus", ""), str)):
        return answer(400, {"error": 'expected {"rule": NAME[, "event_bus": NAME]}'})
    rule = _find(given["rule"], given.get("event_bus"))
    if rule is None:
        return answer(404, {"error": f"no scheduled rule {given['rule']}"})
    if rule.state != "ENABLED":
        return answer(409, {"error": f"rule {rule.name} is {rule.state}: disabled rules never fire"})
    try:
        event = fire(rule)
    except Exception as exc:
        return answer(500, {"error": f"rule {rule.name} not delivered: {exc!r}"})
    return answer(200, {"fired": rule.name, "event": event})


def _install_control() -> None:
    control.mount(CONTROL_PATH, _control)


def start(stop: threading.Event) -> threading.Thread:
    """The control API, scheduled rules' own events only, and the thread that fires them
    until `stop` is set. Call after builds.install."""
    seconds = float(os.environ.get("LOCAL_AWS_SCHEDULE_SECONDS_PER_MINUTE", "60"))
    if not seconds > 0:
        raise SystemExit(f"LOCAL_AWS_SCHEDULE_SECONDS_PER_MINUTE={seconds}: expected a number above 0")
    _install_control()
    _only_own_schedule()
    scheduler = Scheduler(seconds)

    def loop() -> None:
        while not stop.wait(TICK_S):
            try:
                scheduler.tick()
            except Exception as exc:  # a rule changing under the loop: try again next tick
                print(f"local AWS: schedules: {exc!r}", flush=True)

    thread = threading.Thread(target=loop, name="schedules", daemon=True)
    thread.start()
    return thread
