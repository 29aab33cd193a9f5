"""dagm-deploy end to end on the local AWS: first deploy, a canary rollout under
client load with every option of the guide's complete example, a broken candidate stopped
before traffic, a slow candidate rolled back by its alarm, a crashed deploy's lock
expiring and its rollout resumed (the ways a rollout is stopped: test_deploy_safety.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter

import pytest
import torch

from dagm_defects.artifact import save_artifact
from dagm_defects.model import build_model
from dagm_defects.model_config import ModelConfig

from conftest import aws_client, aws_env, model_tarball, noise_png, upload

pytestmark = pytest.mark.slow

# The console script `dagm-deploy`, run as the package's module (no PATH needed).
DEPLOY = [sys.executable, "-m", "dagm_deploy"]
ROLE = "arn:aws:iam::123456789012:role/sagemaker-execution"
FAST = ["--bake-seconds", "3", "--poll-seconds", "0.3", "--alarm-period", "10"]




def deploy_command(url: str, endpoint: str, version: str, model_data: str, *extra: str) -> list[str]:
    return [*DEPLOY, "deploy", "--endpoint", endpoint, "--image", "dagm-defects-serve:latest",
            "--model-data", model_data, "--role", ROLE, "--version", version, *FAST, *extra]




def run(url: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), capture_output=True, text=True, env=aws_env(url), timeout=timeout)


class Load:
    """Application traffic: InvokeEndpoint in a loop from another thread, every answer kept."""

    def __init__(self, url: str, endpoint: str):
        self.runtime = aws_client(url, "sagemaker-runtime")
        self.endpoint, self.body = endpoint, noise_png()
        # What every answer must hold (a KeyError or assertion counts as a failure).
        self.check = lambda answer: answer["predictions"]
        self.variants: list[str] = []
        self.failures: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.loop)

    def loop(self) -> None:
        while not self.stop.is_set():
            try:
                reply = self.runtime.invoke_endpoint(EndpointName=self.endpoint, ContentType="image/png", Body=self.body)
                self.check(json.loads(reply["Body"].read()))
                self.variants.append(reply["InvokedProductionVariant"])
            except Exception as exc:  # every kind of failure counts
                self.failures.append(repr(exc))
            time.sleep(0.02)

    def __enter__(self) -> "Load":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()


def variants_of(url: str, endpoint: str) -> dict[str, float]:
    described = aws_client(url, "sagemaker").describe_endpoint(EndpointName=endpoint)
    return {v["VariantName"]: v["CurrentWeight"] for v in described["ProductionVariants"]}


@pytest.fixture(scope="module")
def models(trained_job, untrained_model, tmp_path_factory, local_aws) -> dict[str, str]:
    """s3:// URIs: a good model, another good one, a corrupt one and a slow one."""
    slow_dir = tmp_path_factory.mktemp("slow") / "model"
    torch.manual_seed(0)
    save_artifact(slow_dir, build_model(ModelConfig(width=1.0, image_size=256, space_to_depth=1)), 0.5, [1], {})
    return {
        "v1": upload(local_aws, "v1/model.tar.gz", model_tarball(trained_job.model_dir)),
        "v2": upload(local_aws, "v2/model.tar.gz", model_tarball(untrained_model)),
        "broken": upload(local_aws, "broken/model.tar.gz", b"not a tarball"),
        "slow": upload(local_aws, "slow/model.tar.gz", model_tarball(slow_dir)),
    }


def first_deploy(url: str, endpoint: str, model_data: str) -> None:
    result = run(url, *deploy_command(url, endpoint, "v1", model_data))
    assert result.returncode == 0, result.stdout + result.stderr
    assert variants_of(url, endpoint) == {"v-v1": 1.0}


class WeightWatcher(threading.Thread):
    """Polls the endpoint's live weights while a rollout runs, with the alarms and the deploy
    lock it holds meanwhile (a completed rollout removes both)."""

    def __init__(self, url: str, endpoint: str):
        super().__init__()
        self.url, self.endpoint, self.seen, self.stop = url, endpoint, [], threading.Event()
        self.thresholds: dict[str, float] = {}
        self.leases: set[float] = set()

    def run(self) -> None:
        cloudwatch, dynamodb = aws_client(self.url, "cloudwatch"), aws_client(self.url, "dynamodb")
        while not self.stop.is_set():
            weights = variants_of(self.url, self.endpoint)
            if not self.seen or self.seen[-1] != weights:
                self.seen.append(weights)
            for alarm in cloudwatch.describe_alarms(AlarmNamePrefix=f"{self.endpoint}-v-")["MetricAlarms"]:
                self.thresholds[alarm["AlarmName"]] = alarm["Threshold"]
            held = dynamodb.get_item(TableName="dagm-deploy-locks", Key={"Endpoint": {"S": self.endpoint}},
                                     ConsistentRead=True).get("Item")
            if held:
                self.leases.add(round(float(held["Expires"]["N"]) - float(held["Since"]["N"])))
            time.sleep(0.2)


def test_first_deploy_then_a_canary_rollout_under_load_loses_no_request(local_aws, models, tmp_path):
    first_deploy(local_aws, "roll", models["v1"])
    # The application's own alarm, which --alarms names: no data yet, so OK.
    cloudwatch = aws_client(local_aws, "cloudwatch")
    cloudwatch.put_metric_alarm(AlarmName="roll-app-errors", Namespace="DagmApp", MetricName="Errors",
                                Statistic="Sum", Period=60, EvaluationPeriods=1, Threshold=0,
                                ComparisonOperator="GreaterThanThreshold", TreatMissingData="notBreaching")
    samples = [tmp_path / "a.png", tmp_path / "b.png"]
    for seed, sample in enumerate(samples):
        sample.write_bytes(noise_png(seed))
    # The guide's complete example (its bake shortened by FAST).
    example = ["--steps", "10,50,100", "--alarms", "roll-app-errors", "--samples", *map(str, samples),
               "--latency-ms", "2000", "--check-timeout", "60", "--instance-type", "ml.c5.xlarge",
               "--instance-count", "2", "--model-env", "DAGM_SERVER_BATCH_SIZE=32", "--lease-seconds", "300"]
    watcher = WeightWatcher(local_aws, "roll")
    watcher.start()
    with Load(local_aws, "roll") as load:
        time.sleep(1)
        result = run(local_aws, *deploy_command(local_aws, "roll", "v2", models["v2"], *example))
        time.sleep(1)
    watcher.stop.set()
    watcher.join()
    assert result.returncode == 0, result.stdout + result.stderr
    assert not load.failures, load.failures[:5]
    assert "check passed on 2 sample image(s)" in result.stdout
    for step in (10, 50, 100):
        assert f"v-v2 at {step}%" in result.stdout
        assert {"v-v1": 100.0 - step, "v-v2": float(step)} in watcher.seen, watcher.seen
    assert variants_of(local_aws, "roll") == {"v-v2": 1.0}
    seen = Counter(load.variants)
    assert seen["v-v1"] > 0 and seen["v-v2"] > 0 and load.variants[-1] == "v-v2"
    status = json.loads(run(local_aws, *DEPLOY, "status", "--endpoint", "roll").stdout)
    assert [v["variant"] for v in status["variants"]] == ["v-v2"] and status["variants"][0]["model_data"] == models["v2"]
    assert status["variants"][0]["instances"] == 2
    sagemaker = aws_client(local_aws, "sagemaker")
    (variant,) = sagemaker.describe_endpoint_config(EndpointConfigName=status["config"])["ProductionVariants"]
    assert (variant["InstanceType"], variant["InitialInstanceCount"]) == ("ml.c5.xlarge", 2)
    environment = sagemaker.describe_model(ModelName="roll-v2")["PrimaryContainer"]["Environment"]
    assert environment["DAGM_SERVER_BATCH_SIZE"] == "32" and environment["DAGM_VARIANT_NAME"] == "v-v2"
    assert watcher.thresholds["roll-v-v2-latency"] == 2000 * 1000  # ModelLatency is in microseconds
    assert watcher.leases == {300}
    assert cloudwatch.describe_alarms(AlarmNamePrefix="roll-v-")["MetricAlarms"] == []

    # The named alarm is watched: once the application reports an error, the next candidate
    # is rolled back at its first step.
    cloudwatch.put_metric_data(Namespace="DagmApp", MetricData=[{"MetricName": "Errors", "Value": 1.0}])
    deadline = time.monotonic() + 30
    while cloudwatch.describe_alarms(AlarmNames=["roll-app-errors"])["MetricAlarms"][0]["StateValue"] != "ALARM":
        assert time.monotonic() < deadline
        time.sleep(0.3)
    refused = run(local_aws, *deploy_command(local_aws, "roll", "v3", models["v1"], "--steps", "10,100",
                                             "--alarms", "roll-app-errors"))
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "rolled back: alarm roll-app-errors during the 10% step" in refused.stderr
    assert variants_of(local_aws, "roll") == {"v-v2": 1.0}


def test_a_broken_candidate_is_stopped_before_any_user_request(local_aws, models):
    first_deploy(local_aws, "guarded", models["v1"])
    with Load(local_aws, "guarded") as load:
        result = run(local_aws, *deploy_command(local_aws, "guarded", "bad", models["broken"]))
    assert result.returncode == 1
    assert "did not take" in result.stderr and "not a readable tar.gz" in result.stderr
    assert not load.failures and set(load.variants) == {"v-v1"}
    assert variants_of(local_aws, "guarded") == {"v-v1": 1.0}


def test_a_candidate_failing_the_pre_traffic_check_never_sees_user_traffic(local_aws, models, tmp_path):
    first_deploy(local_aws, "checked", models["v1"])
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"\x89PNG but not really")
    with Load(local_aws, "checked") as load:
        result = run(local_aws, *deploy_command(local_aws, "checked", "v2", models["v2"], "--samples", str(garbage)))
    assert result.returncode == 1
    assert "rolled back: pre-traffic check: sample 0 failed on the new variant" in result.stderr
    assert not load.failures and set(load.variants) == {"v-v1"}
    assert variants_of(local_aws, "checked") == {"v-v1": 1.0}
    assert "checked-v2" not in [m["ModelName"] for m in aws_client(local_aws, "sagemaker").list_models()["Models"]]


def test_ctrl_c_during_a_bake_rolls_back(local_aws, models):
    first_deploy(local_aws, "interrupted", models["v1"])
    command = deploy_command(local_aws, "interrupted", "v2", models["v2"], "--steps", "50,100", "--bake-seconds", "600")
    with Load(local_aws, "interrupted") as load:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   env=aws_env(local_aws))
        deadline = time.monotonic() + 120
        while variants_of(local_aws, "interrupted").get("v-v2") != 50.0:
            assert time.monotonic() < deadline and process.poll() is None
            time.sleep(0.3)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130 and "interrupted by SIGINT: all traffic is back on the old variant" in stderr
    assert variants_of(local_aws, "interrupted") == {"v-v1": 1.0}
    assert not load.failures, load.failures[:5]


def test_a_candidate_that_degrades_under_traffic_is_rolled_back_by_its_alarm(local_aws, models):
    first_deploy(local_aws, "watched", models["v1"])
    with Load(local_aws, "watched") as load:
        result = run(local_aws, *deploy_command(local_aws, "watched", "slow", models["slow"], "--steps", "50,100",
                                                "--latency-ms", "40", "--bake-seconds", "20"))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "rolled back: alarm watched-v-slow-latency during the 50% step" in result.stderr
    # Whether application requests reached v-slow before the alarm is a race: the pre-traffic
    # check's own slow answers already count in ModelLatency, as on SageMaker.
    assert not load.failures, load.failures[:5]
    assert variants_of(local_aws, "watched") == {"v-v1": 1.0}


def test_a_crashed_deploy_holds_the_lock_until_its_lease_expires_then_the_next_one_resumes(local_aws, models):
    first_deploy(local_aws, "resumed", models["v1"])
    long_bake = deploy_command(local_aws, "resumed", "v2", models["v2"], "--steps", "50,100", "--bake-seconds", "600",
                               "--lease-seconds", "10")
    with Load(local_aws, "resumed") as load:
        first = subprocess.Popen(long_bake, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                 env=aws_env(local_aws), start_new_session=True)
        deadline = time.monotonic() + 120
        while variants_of(local_aws, "resumed").get("v-v2") != 50.0:
            assert time.monotonic() < deadline and first.poll() is None
            time.sleep(0.3)
        os.killpg(first.pid, signal.SIGKILL)  # a crash mid-bake: canary config and lock left behind
        first.wait()
        crashed = time.monotonic()
        assert variants_of(local_aws, "resumed") == {"v-v1": 50.0, "v-v2": 50.0}
        second = run(local_aws, *deploy_command(local_aws, "resumed", "v2", models["v2"]))
        assert second.returncode == 1 and "another deploy (" in second.stderr and "lease ends in" in second.stderr

        time.sleep(max(0.0, crashed + 11 - time.monotonic()))
        again = run(local_aws, *deploy_command(local_aws, "resumed", "v2", models["v2"], "--steps", "100"))
    assert not load.failures, load.failures[:5]
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"took over the lock of {os.uname().nodename}/{first.pid}/" in again.stdout
    assert variants_of(local_aws, "resumed") == {"v-v2": 1.0}


def test_autoscale_registers_target_tracking(local_aws, models):
    first_deploy(local_aws, "scaled", models["v1"])
    base = [*DEPLOY, "autoscale", "--endpoint", "scaled"]
    result = run(local_aws, *base, "--variant", "v-v1", "--min", "1", "--max", "4", "--target-invocations", "70")
    assert result.returncode == 0, result.stderr
    scaling = aws_client(local_aws, "application-autoscaling")
    resource = "endpoint/scaled/variant/v-v1"
    (target,) = scaling.describe_scalable_targets(ServiceNamespace="sagemaker", ResourceIds=[resource])["ScalableTargets"]
    assert (target["MinCapacity"], target["MaxCapacity"]) == (1, 4)
    (policy,) = scaling.describe_scaling_policies(ServiceNamespace="sagemaker", ResourceId=resource)["ScalingPolicies"]
    config = policy["TargetTrackingScalingPolicyConfiguration"]
    assert config["TargetValue"] == 70 and config["ScaleInCooldown"] == 300 and config["ScaleOutCooldown"] == 60
    wrong = run(local_aws, *base, "--variant", "nope", "--min", "1", "--max", "2", "--target-invocations", "5")
    assert wrong.returncode == 1 and "variant 'nope' is not on the endpoint" in wrong.stderr
    assert variants_of(local_aws, "scaled") == {"v-v1": 1.0}


def test_guardrails_blue_green_completes_or_rolls_back_on_its_alarm(local_aws, models):
    first_deploy(local_aws, "bluegreen", models["v1"])
    with Load(local_aws, "bluegreen") as load:
        good = run(local_aws, *deploy_command(local_aws, "bluegreen", "v2", models["v2"], "--strategy", "guardrails",
                                              "--steps", "50,100"))
    assert good.returncode == 0, good.stdout + good.stderr
    assert not load.failures and {"v-v1", "v-v2"} <= set(load.variants)
    assert variants_of(local_aws, "bluegreen") == {"v-v2": 1.0}

    with Load(local_aws, "bluegreen") as load:
        slow = run(local_aws, *deploy_command(local_aws, "bluegreen", "slow", models["slow"], "--strategy",
                                              "guardrails", "--steps", "50,100", "--latency-ms", "40",
                                              "--bake-seconds", "20"))
    assert slow.returncode == 1, slow.stdout + slow.stderr
    assert "rolled back by alarm bluegreen-v-slow-latency" in slow.stderr
    assert not load.failures and "v-slow" in load.variants
    assert variants_of(local_aws, "bluegreen") == {"v-v2": 1.0}
