"""Every way a rollout can stop ends safe, through the real CLI on the local AWS under
client load: SIGTERM and SIGINT in the pre-traffic check and in the bakes (a second
signal during the rollback included), an AWS error injected at each step and during the
rollback itself, a candidate that hangs, two deploys started together, a lock that is
not its caller's, a killed deploy's lock removed by its owner and its canary undone by
`rollback`, and guardrails interrupted while SageMaker updates.

After each, all traffic is on the old variant, its config is the only one, no alarm of
the rollout is left, the lock is released, and no client request failed."""

from __future__ import annotations

import itertools
import json
import os
import queue
import signal
import subprocess
import threading
import time

import pytest

from conftest import aws_client, aws_env
from test_deploy import DEPLOY, Load, deploy_command, first_deploy, models, run, variants_of  # noqa: F401

pytestmark = pytest.mark.slow

ENDPOINT = "safe"
LOCK_TABLE = "dagm-deploy-locks"


class Running:
    """A deploy in the background whose output lines the test can wait for."""

    def __init__(self, url: str, command: list[str]):
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                        env=aws_env(url), start_new_session=True)
        self.lines: queue.Queue[str] = queue.Queue()
        self.stdout: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.stdout.append(line)
            self.lines.put(line)

    def wait_for(self, text: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if text in self.lines.get(timeout=0.2):
                    return
            except queue.Empty:
                assert self.process.poll() is None, (self.process.returncode, "".join(self.stdout),
                                                     self.process.stderr.read())
            assert time.monotonic() < deadline, f"no {text!r} in: {''.join(self.stdout)}"

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def finish(self, timeout: float = 120) -> tuple[int, str]:
        """Exit code and stderr; fails if it does not end within `timeout`."""
        self.process.wait(timeout)
        return self.process.returncode, self.process.stderr.read()


@pytest.fixture(scope="module")
def endpoint(local_aws, models) -> str:
    first_deploy(local_aws, ENDPOINT, models["v1"])
    return ENDPOINT


VERSIONS = itertools.count()


@pytest.fixture
def version() -> str:
    """Each test's candidate has a version (and so a variant) of its own: the metrics of an
    earlier test's candidate (a request it delayed, answered after it stopped) must not
    set off this one's alarms."""
    return f"c{next(VERSIONS)}"


def candidate(url: str, models: dict, version: str, *extra: str) -> list[str]:
    return deploy_command(url, ENDPOINT, version, models["v2"], *extra)


def lock_holder(url: str) -> dict | None:
    return aws_client(url, "dynamodb").get_item(TableName=LOCK_TABLE, Key={"Endpoint": {"S": ENDPOINT}},
                                                ConsistentRead=True).get("Item")


def assert_safe(url: str, load: Load, version: str) -> None:
    """All traffic on v-v1 with its config alone; no alarm, model or lock of the rollout left."""
    sagemaker = aws_client(url, "sagemaker")
    described = sagemaker.describe_endpoint(EndpointName=ENDPOINT)
    assert described["EndpointStatus"] == "InService"
    assert variants_of(url, ENDPOINT) == {"v-v1": 1.0}
    config = sagemaker.describe_endpoint_config(EndpointConfigName=described["EndpointConfigName"])
    assert [v["VariantName"] for v in config["ProductionVariants"]] == ["v-v1"]
    alarms = aws_client(url, "cloudwatch").describe_alarms(AlarmNamePrefix=f"{ENDPOINT}-v-")["MetricAlarms"]
    assert [a["AlarmName"] for a in alarms] == []
    assert f"{ENDPOINT}-{version}" not in [m["ModelName"] for m in sagemaker.list_models()["Models"]]
    assert lock_holder(url) is None
    assert not load.failures, load.failures[:5]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_in_the_pre_traffic_check_rolls_back(local_aws, endpoint, models, version, faults, signum):
    faults.add(endpoint=ENDPOINT, variant=f"v-{version}", delay_s=30)  # the check is under way when the signal comes
    with Load(local_aws, ENDPOINT) as load:
        deploy = Running(local_aws, candidate(local_aws, models, version))
        deploy.wait_for("pre-traffic check:")
        time.sleep(0.5)
        deploy.signal(signum)
        code, stderr = deploy.finish(timeout=90)
    name = signal.Signals(signum).name
    assert code == 128 + signum, stderr
    assert f"interrupted by {name}: all traffic is back on the old variant v-v1" in stderr
    assert set(load.variants) == {"v-v1"}
    assert_safe(local_aws, load, version)


@pytest.mark.parametrize("step", [10, 100])
def test_sigterm_in_a_bake_rolls_back_and_a_second_signal_does_not_stop_the_rollback(
        local_aws, endpoint, models, version, step):
    with Load(local_aws, ENDPOINT) as load:
        deploy = Running(local_aws, candidate(local_aws, models, version, "--steps", "10,50,100",
                                              "--bake-seconds", "8"))
        deploy.wait_for(f"v-{version} at {step}%: baking")
        deploy.signal(signal.SIGTERM)
        deploy.wait_for("stopping: interrupted by SIGTERM")
        deploy.signal(signal.SIGINT)
        code, stderr = deploy.finish(timeout=90)
    assert code == 143, stderr
    assert "SIGINT received while rolling back: finishing that first" in stderr
    assert "interrupted by SIGTERM: all traffic is back on the old variant v-v1" in stderr
    if step == 100:  # the candidate had all traffic: requests came back to v-v1 without a failure
        assert load.variants[-1] == "v-v1" and f"v-{version}" in load.variants
    assert_safe(local_aws, load, version)


THROTTLED = {"error": "ThrottlingException", "status": 400, "times": 5}  # all of boto3's 5 attempts


@pytest.mark.parametrize("service, action, skip, where", [
    ("sagemaker", "UpdateEndpoint", 0, "adding the canary"),
    ("cloudwatch", "PutMetricAlarm", 0, "creating the alarms"),
    ("sagemaker", "UpdateEndpointWeightsAndCapacities", 1, "the second weight step"),
    ("cloudwatch", "DescribeAlarms", 1, "watching the alarms in a bake"),
    ("sagemaker", "UpdateEndpoint", 1, "the switch to the final config"),
], ids=lambda value: value if isinstance(value, str) and " " in value else None)
def test_an_aws_error_at_any_step_rolls_back(local_aws, endpoint, models, version, faults, service, action, skip,
                                             where):
    faults.add(service=service, action=action, skip=skip, **THROTTLED)
    with Load(local_aws, ENDPOINT) as load:
        result = run(local_aws, *candidate(local_aws, models, version, "--steps", "50,100", "--bake-seconds", "2"))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "rolled back: ClientError" in result.stderr and "ThrottlingException" in result.stderr, result.stderr
    assert "all traffic is back on the old variant v-v1" in result.stderr or "v-v1 serves all traffic" in result.stderr
    assert faults.fired() == [5]
    assert_safe(local_aws, load, version)


def test_throttling_during_the_rollback_is_ridden_out(local_aws, endpoint, models, version, faults):
    # (the first DescribeAlarms looks for alarms a previous run left)
    faults.add(service="cloudwatch", action="DescribeAlarms", skip=1, **THROTTLED)  # stops the first bake
    # The first weight step passes; the rollback's weight call is throttled seven times in a
    # row: more than boto3's own retries, so the rollback's retrying has to carry it.
    faults.add(service="sagemaker", action="UpdateEndpointWeightsAndCapacities", skip=1, error="ThrottlingException",
               status=400, times=7)
    with Load(local_aws, ENDPOINT) as load:
        result = run(local_aws, *candidate(local_aws, models, version, "--steps", "50,100", "--bake-seconds", "2"))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "moving traffic back: An error occurred (ThrottlingException)" in result.stdout
    assert "all traffic is back on the old variant v-v1" in result.stderr
    assert_safe(local_aws, load, version)


def test_a_hanging_candidate_is_refused_within_the_check_timeout(local_aws, endpoint, models, version, faults):
    faults.add(endpoint=ENDPOINT, variant=f"v-{version}", hang=True)
    with Load(local_aws, ENDPOINT) as load:
        started = time.monotonic()
        result = run(local_aws, *candidate(local_aws, models, version, "--check-timeout", "3"))
        took = time.monotonic() - started
    assert result.returncode == 1, result.stdout + result.stderr
    assert "rolled back: pre-traffic check: sample 0 failed on the new variant: ReadTimeoutError" in result.stderr
    assert set(load.variants) == {"v-v1"}
    assert took < 90
    assert_safe(local_aws, load, version)


@pytest.mark.parametrize("attempt", range(3))
def test_of_two_deploys_started_together_exactly_one_proceeds(local_aws, endpoint, models, version, attempt):
    long_bake = candidate(local_aws, models, version, "--steps", "50,100", "--bake-seconds", "600")
    with Load(local_aws, ENDPOINT) as load:
        both = [Running(local_aws, long_bake), Running(local_aws, long_bake)]
        deadline = time.monotonic() + 60
        while all(d.process.poll() is None for d in both):
            assert time.monotonic() < deadline, "neither deploy was refused"
            time.sleep(0.1)
        (loser,) = [d for d in both if d.process.poll() is not None]
        (winner,) = [d for d in both if d is not loser]
        code, stderr = loser.finish()
        assert code == 1 and "another deploy (" in stderr and "holds the lock on this endpoint" in stderr, stderr
        winner.wait_for(f"v-{version} at 50%: baking")

        owner = lock_holder(local_aws)["Owner"]["S"]
        assert f"{winner.process.pid}/" in owner and owner in stderr
        status = json.loads(run(local_aws, *DEPLOY, "status", "--endpoint", ENDPOINT).stdout)
        assert status["lock"]["owner"] == owner
        stranger = run(local_aws, *DEPLOY, "unlock", "--endpoint", ENDPOINT, "--owner", "somebody/1/else")
        assert stranger.returncode == 1 and f"held by {owner}" in stranger.stderr, stranger.stderr
        assert lock_holder(local_aws)["Owner"]["S"] == owner

        winner.signal(signal.SIGTERM)
        code, stderr = winner.finish(timeout=90)
    assert code == 143 and "all traffic is back on the old variant v-v1" in stderr, stderr
    assert_safe(local_aws, load, version)


def test_a_killed_deploys_lock_is_removed_by_its_owner_and_rollback_undoes_its_canary(
        local_aws, endpoint, models, version):
    rollback = [*DEPLOY, "rollback", "--endpoint", ENDPOINT, "--poll-seconds", "0.3"]
    with Load(local_aws, ENDPOINT) as load:
        deploy = Running(local_aws, candidate(local_aws, models, version, "--steps", "50,100",
                                              "--bake-seconds", "600"))
        deploy.wait_for(f"v-{version} at 50%: baking")
        os.killpg(deploy.process.pid, signal.SIGKILL)  # a lost machine: canary, alarms and lock stay behind
        deploy.process.wait()
        assert variants_of(local_aws, ENDPOINT) == {"v-v1": 50.0, f"v-{version}": 50.0}
        owner = json.loads(run(local_aws, *DEPLOY, "status", "--endpoint", ENDPOINT).stdout)["lock"]["owner"]
        assert f"/{deploy.process.pid}/" in owner

        refused = run(local_aws, *rollback)  # under the lock, like a deploy
        assert refused.returncode == 1 and f"another deploy ({owner}" in refused.stderr, refused.stderr
        unlocked = run(local_aws, *DEPLOY, "unlock", "--endpoint", ENDPOINT, "--owner", owner)
        assert unlocked.returncode == 0 and f"lock of {owner} removed" in unlocked.stdout, unlocked.stderr
        assert lock_holder(local_aws) is None

        rolled = run(local_aws, *rollback)
    assert rolled.returncode == 0, rolled.stdout + rolled.stderr
    assert "all traffic is back on the old variant v-v1" in rolled.stdout
    assert_safe(local_aws, load, version)


def test_guardrails_interrupted_keeps_its_alarms_and_says_where_the_endpoint_is(
        local_aws, endpoint, models, version):
    with Load(local_aws, ENDPOINT) as load:
        deploy = Running(local_aws, candidate(local_aws, models, version, "--strategy", "guardrails",
                                              "--steps", "50,100", "--bake-seconds", "4"))
        deploy.wait_for(f"blue/green update to v-{version}")
        time.sleep(1)  # UpdateEndpoint sent; the green fleet is starting
        deploy.signal(signal.SIGTERM)
        code, stderr = deploy.finish(timeout=60)
    assert code == 143, stderr
    assert "interrupted by SIGTERM: the endpoint is Updating" in stderr
    assert f"SageMaker finishes or rolls back the blue/green update to v-{version} by itself" in stderr
    cloudwatch = aws_client(local_aws, "cloudwatch")
    kept = {a["AlarmName"] for a in cloudwatch.describe_alarms(AlarmNamePrefix=f"{ENDPOINT}-v-")["MetricAlarms"]}
    assert kept == {f"{ENDPOINT}-v-{version}-5xx", f"{ENDPOINT}-v-{version}-latency"}
    assert lock_holder(local_aws) is None

    sagemaker = aws_client(local_aws, "sagemaker")
    deadline = time.monotonic() + 120
    with Load(local_aws, ENDPOINT) as finishing:
        while sagemaker.describe_endpoint(EndpointName=ENDPOINT)["EndpointStatus"] != "InService":
            assert time.monotonic() < deadline
            time.sleep(0.5)
    assert not load.failures and not finishing.failures, (load.failures + finishing.failures)[:5]
    assert variants_of(local_aws, ENDPOINT) == {f"v-{version}": 1.0}  # SageMaker finished it
    again = run(local_aws, *candidate(local_aws, models, version))
    assert again.returncode == 0 and f"v-{version} already serves all traffic" in again.stdout, again.stdout + again.stderr
    assert cloudwatch.describe_alarms(AlarmNamePrefix=f"{ENDPOINT}-v-")["MetricAlarms"] == []
