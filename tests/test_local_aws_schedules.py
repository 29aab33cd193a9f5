"""EventBridge schedules on the local AWS (tools/local_aws/schedules.py): a rate()
rule fires its CodeBuild target on the scheduled clock (one scheduled minute per real
second here), a disabled rule never does, the control API fires a rule now, and a
scheduled rule takes no other events."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from datetime import datetime, timezone

import pytest

from conftest import aws_client, build_log, inline_build_project, running_local_aws
from local_aws.schedules import Cron, Unsupported, rate_minutes


@pytest.fixture(scope="module")
def fast_aws(tmp_path_factory):
    """A local AWS of its own whose scheduled minutes last one second."""
    with running_local_aws(tmp_path_factory, LOCAL_AWS_SCHEDULE_SECONDS_PER_MINUTE="1") as url:
        yield url


def scheduled_rule(url: str, name: str, expression: str, project_arn: str, state: str = "ENABLED") -> str:
    events = aws_client(url, "events")
    arn = events.put_rule(Name=name, ScheduleExpression=expression, State=state)["RuleArn"]
    events.put_targets(Rule=name, Targets=[{"Id": "build", "Arn": project_arn,
                                            "RoleArn": "arn:aws:iam::123456789012:role/events"}])
    return arn


def builds_of(url: str, project: str) -> list[dict]:
    codebuild = aws_client(url, "codebuild")
    ids = codebuild.list_builds_for_project(projectName=project)["ids"]
    return codebuild.batch_get_builds(ids=ids)["builds"] if ids else []


def wait_for_builds(url: str, project: str, count: int, timeout: float = 20) -> list[dict]:
    """The project's builds once `count` of them have finished (or what there is at the timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        builds = builds_of(url, project)
        if sum(b["buildComplete"] for b in builds) >= count or time.monotonic() > deadline:
            return builds
        time.sleep(0.2)


def control(url: str, method: str, body: dict | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(f"{url}/_local_aws/schedules", method=method,
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_expressions():
    assert rate_minutes("rate(1 minute)") == 1 and rate_minutes("rate(5 minutes)") == 5
    assert rate_minutes("rate(2 hours)") == 120 and rate_minutes("rate(1 day)") == 1440
    assert rate_minutes("cron(0 12 * * ? *)") is None
    with pytest.raises(Unsupported):
        rate_minutes("rate(1 minutes)")
    weekdays_at_noon = Cron("cron(0/15 12 ? * MON-FRI *)")
    assert weekdays_at_noon.matches(datetime(2026, 12, 4, 12, 30, tzinfo=timezone.utc))  # a Friday
    assert not weekdays_at_noon.matches(datetime(2026, 12, 5, 12, 30, tzinfo=timezone.utc))  # a Saturday
    assert not weekdays_at_noon.matches(datetime(2026, 12, 4, 12, 31, tzinfo=timezone.utc))
    assert Cron("cron(0 0 1 JUL ? 2026)").matches(datetime(2026, 7, 1, tzinfo=timezone.utc))
    for unsupported in ("cron(0 0 L * ? *)", "cron(0 0 ? * 6#3 *)", "cron(0 0 * *)", "every minute"):
        with pytest.raises(Unsupported):
            Cron(unsupported)


def test_a_rate_rule_fires_its_build_and_a_disabled_one_never_does(fast_aws):
    every = inline_build_project(fast_aws, "every-minute", ["echo scheduled build $CODEBUILD_BUILD_ID"])
    never = inline_build_project(fast_aws, "disabled-schedule", ["echo must not run"])
    arn = scheduled_rule(fast_aws, "every-minute", "rate(1 minute)", every)
    scheduled_rule(fast_aws, "disabled-schedule", "rate(1 minute)", never, state="DISABLED")
    builds = wait_for_builds(fast_aws, "every-minute", 2)
    finished = [b for b in builds if b["buildComplete"]]
    assert len(finished) >= 2 and {b["buildStatus"] for b in finished} == {"SUCCEEDED"}, builds
    assert "scheduled build every-minute:" in build_log(fast_aws, finished[0]["id"])
    assert builds_of(fast_aws, "disabled-schedule") == []
    _, listed = control(fast_aws, "GET")
    counts = {s["rule"]: (s["state"], s["fired"]) for s in listed["schedules"]}
    assert counts["every-minute"][0] == "ENABLED" and counts["every-minute"][1] >= 2
    assert counts["disabled-schedule"] == ("DISABLED", 0)
    # Disabled later: it stops firing.
    aws_client(fast_aws, "events").disable_rule(Name="every-minute")
    time.sleep(1.5)  # a firing under way when it was disabled may still land
    fired = len(builds_of(fast_aws, "every-minute"))
    time.sleep(2.5)
    assert len(builds_of(fast_aws, "every-minute")) == fired
    assert any(s["arn"] == arn for s in listed["schedules"])


def test_fire_now_and_only_its_own_events(fast_aws):
    daily = inline_build_project(fast_aws, "daily", ["echo fired now"])
    scheduled_rule(fast_aws, "daily", "rate(1 day)", daily)  # a scheduled day: 24 real minutes
    # An event of any other kind does not fire a scheduled rule (moto's empty pattern matches all).
    aws_client(fast_aws, "events").put_events(Entries=[{"Source": "test.schedules", "DetailType": "Anything",
                                                        "Detail": "{}"}])
    status, answer = control(fast_aws, "POST", {"rule": "daily"})
    assert status == 200 and answer["fired"] == "daily", answer
    event = answer["event"]
    assert (event["source"], event["detail-type"], event["detail"]) == ("aws.events", "Scheduled Event", {})
    assert event["resources"] == [aws_client(fast_aws, "events").describe_rule(Name="daily")["Arn"]]
    [build] = wait_for_builds(fast_aws, "daily", 1)
    assert build["buildStatus"] == "SUCCEEDED" and "fired now" in build_log(fast_aws, build["id"])
    aws_client(fast_aws, "events").disable_rule(Name="daily")
    assert control(fast_aws, "POST", {"rule": "daily"})[0] == 409
    assert control(fast_aws, "POST", {"rule": "no-such-rule"})[0] == 404
    assert control(fast_aws, "POST", {"name": "daily"})[0] == 400
    assert len(builds_of(fast_aws, "daily")) == 1
