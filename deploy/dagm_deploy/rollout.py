"""Roll a new model onto a SageMaker endpoint through weighted production variants.

    python deploy/deploy.py deploy --endpoint E --image URI --model-data s3://... --role ARN
        [--version V] [--instance-type T] [--instance-count N] [--steps 10,50,100]
        [--bake-seconds S] [--alarms A,B] [--samples IMG ...] [--latency-ms MS] [--model-env K=V ...]
    python deploy/deploy.py status|rollback|delete --endpoint E
    python deploy/deploy.py autoscale --endpoint E --variant V --min N --max M --target-invocations K

boto3 alone; every client honours AWS_ENDPOINT_URL(_<SERVICE>) and the usual credential
chain, so the same commands drive AWS or the local AWS (`make local-aws`).

deploy: a new endpoint gets one variant. An existing one gets a canary config (current
variant at weight 1, the new one at 0), then a pre-traffic check invokes the new variant
by name (TargetVariant) with sample images and refuses it before any user request
reaches it if it errors or answers nonsense; then weights shift step by step, baking
at each step while CloudWatch alarms are watched (this script's own on the new
variant's Invocation5XXErrors and ModelLatency, plus --alarms). Any alarm, a failed step
or Ctrl-C shifts all traffic back and returns the endpoint to its old config. Success
ends with a config holding only the new variant; the old one's config, alarms and the
canary config are removed. Exit 0 on a completed rollout, 1 on a rollback or refusal
(with a one-line reason), 130 on Ctrl-C (after rolling back). Each model's container
gets DAGM_ENDPOINT_NAME and DAGM_VARIANT_NAME, under which the serving image publishes
its input statistics (drift detection), plus any --model-env settings.

Safe to re-run: a half-done rollout (two variants) of the same model is resumed, one of
another model is rolled back first. A lock tag on the endpoint refuses a second deploy
while one runs.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import struct
import sys
import time
import zlib
from dataclasses import dataclass, field

import boto3
from botocore.exceptions import BotoCoreError, ClientError

LOCK_TAG = "dagm:deploy-lock"
LOCK_STALE_S = 6 * 3600


def _stale(lock: str) -> bool:
    """A lock left by a deploy that crashed: its process is gone (same host), or it is old."""
    owner, _, since = lock.rpartition("@")
    host, _, pid = owner.partition("/")
    if host == os.uname().nodename and pid.isdigit():
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
    try:
        return time.time() - float(since) > LOCK_STALE_S
    except ValueError:
        return True


class Refused(Exception):
    """A rollout that must not go on; the message is the one-line reason."""


def name_part(text: str, limit: int) -> str:
    """SageMaker names: letters, digits and hyphens, at most 63 characters."""
    return re.sub(r"[^A-Za-z0-9-]+", "-", text).strip("-")[:limit].strip("-") or "v"


def sample_png(size: int = 64) -> bytes:
    """A gray test image, written with the standard library (this CLI needs only boto3)."""
    raw = b"".join(b"\x00" + bytes([128]) * size for _ in range(size))
    chunk = lambda kind, data: (struct.pack(">I", len(data)) + kind + data  # noqa: E731
                                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    header = struct.pack(">IIBBBBB", size, size, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


@dataclass
class Options:
    endpoint: str
    image: str
    model_data: str
    role: str
    version: str
    instance_type: str
    instance_count: int
    steps: list[int]
    bake_seconds: float
    alarms: list[str]
    samples: list[bytes]
    latency_ms: float
    alarm_period: int
    strategy: str
    # More container environment for the new model (DAGM_* serving settings).
    model_env: dict[str, str] = field(default_factory=dict)


class Deployer:
    def __init__(self, endpoint: str, poll_seconds: float = 15.0):
        self.endpoint = endpoint
        self.poll = poll_seconds
        self.sm = boto3.client("sagemaker")
        self.runtime = boto3.client("sagemaker-runtime")
        self.cloudwatch = boto3.client("cloudwatch")

    def say(self, message: str) -> None:
        print(f"[{self.endpoint}] {message}", flush=True)

    # -- reading state ---------------------------------------------------------------
    def describe(self) -> dict | None:
        try:
            return self.sm.describe_endpoint(EndpointName=self.endpoint)
        except ClientError as error:
            if "Could not find" in str(error) or error.response["Error"]["Code"] == "ValidationException":
                return None
            raise

    def config_variants(self, config_name: str) -> list[dict]:
        return self.sm.describe_endpoint_config(EndpointConfigName=config_name)["ProductionVariants"]

    def wait_in_service(self, config_name: str | None = None) -> dict:
        """Wait until the endpoint is InService; with `config_name`, it must run that config
        (SageMaker rolls a failed update back to the old config, with a FailureReason)."""
        while True:
            described = self.describe()
            if described is None:
                raise Refused("the endpoint disappeared")
            status = described["EndpointStatus"]
            if status == "Failed":
                raise Refused(f"endpoint failed: {described.get('FailureReason', 'no reason given')}")
            if status == "InService":
                if config_name and described["EndpointConfigName"] != config_name:
                    raise Refused(f"update to {config_name} did not take: {described.get('FailureReason', 'unknown')}")
                return described
            time.sleep(self.poll)

    # -- the lock --------------------------------------------------------------------
    def arn(self) -> str:
        return self.describe()["EndpointArn"]

    def lock(self) -> None:
        arn = self.arn()
        tags = {t["Key"]: t["Value"] for t in self.sm.list_tags(ResourceArn=arn).get("Tags", [])}
        held = tags.get(LOCK_TAG)
        if held and not _stale(held):
            raise Refused(f"another deploy ({held.rpartition('@')[0]}) is in progress on this endpoint; "
                          f"wait for it, or run `rollback` if it died")
        owner = f"{os.uname().nodename}/{os.getpid()}@{time.time():.0f}"
        self.sm.add_tags(ResourceArn=arn, Tags=[{"Key": LOCK_TAG, "Value": owner}])

    def unlock(self) -> None:
        described = self.describe()
        if described:
            self.sm.delete_tags(ResourceArn=described["EndpointArn"], TagKeys=[LOCK_TAG])

    # -- building blocks ---------------------------------------------------------------
    def ensure_model(self, name: str, variant: str, o: Options) -> None:
        try:
            existing = self.sm.describe_model(ModelName=name)
        except ClientError:
            environment = {"DAGM_ENDPOINT_NAME": self.endpoint, "DAGM_VARIANT_NAME": variant, **o.model_env}
            self.sm.create_model(ModelName=name, ExecutionRoleArn=o.role, PrimaryContainer={
                "Image": o.image, "ModelDataUrl": o.model_data, "Environment": environment})
            self.say(f"created model {name}")
            return
        container = existing.get("PrimaryContainer", {})
        if (container.get("Image"), container.get("ModelDataUrl")) != (o.image, o.model_data):
            raise Refused(f"model {name} exists with another image or model data; deploy with a new --version")

    def create_config(self, name: str, variants: list[dict]) -> str:
        try:
            self.sm.describe_endpoint_config(EndpointConfigName=name)
        except ClientError:
            self.sm.create_endpoint_config(EndpointConfigName=name, ProductionVariants=variants)
        return name

    def set_weights(self, weights: dict[str, float]) -> None:
        self.sm.update_endpoint_weights_and_capacities(
            EndpointName=self.endpoint,
            DesiredWeightsAndCapacities=[{"VariantName": v, "DesiredWeight": w} for v, w in weights.items()])
        self.wait_in_service()

    def alarm_names(self, variant: str) -> list[str]:
        return [f"{self.endpoint}-{variant}-5xx", f"{self.endpoint}-{variant}-latency"]

    def create_alarms(self, variant: str, o: Options) -> list[str]:
        dims = [{"Name": "EndpointName", "Value": self.endpoint}, {"Name": "VariantName", "Value": variant}]
        five, latency = self.alarm_names(variant)
        common = dict(Namespace="AWS/SageMaker", Dimensions=dims, Period=o.alarm_period, EvaluationPeriods=1,
                      TreatMissingData="notBreaching")
        self.cloudwatch.put_metric_alarm(AlarmName=five, MetricName="Invocation5XXErrors", Statistic="Sum",
                                         Threshold=0, ComparisonOperator="GreaterThanThreshold", **common)
        self.cloudwatch.put_metric_alarm(AlarmName=latency, MetricName="ModelLatency", Statistic="Average",
                                         Threshold=o.latency_ms * 1000, ComparisonOperator="GreaterThanThreshold",
                                         **common)
        return [five, latency]

    def alarming(self, names: list[str]) -> list[str]:
        if not names:
            return []
        alarms = self.cloudwatch.describe_alarms(AlarmNames=names)["MetricAlarms"]
        return [a["AlarmName"] for a in alarms if a["StateValue"] == "ALARM"]

    def pre_traffic_check(self, variant: str, samples: list[bytes]) -> None:
        for i, image in enumerate(samples):
            try:
                reply = self.runtime.invoke_endpoint(EndpointName=self.endpoint, TargetVariant=variant,
                                                     ContentType="image/png", Accept="application/json", Body=image)
                answer = json.loads(reply["Body"].read())
            except (ClientError, ValueError) as exc:
                raise Refused(f"pre-traffic check: sample {i} failed on the new variant: {exc}") from None
            predictions = answer.get("predictions") if isinstance(answer, dict) else None
            if reply.get("InvokedProductionVariant") != variant or not isinstance(predictions, list) \
                    or len(predictions) != 1 or not 0.0 <= float(predictions[0].get("score", -1)) <= 1.0:
                raise Refused(f"pre-traffic check: sample {i} got a nonsense answer: {json.dumps(answer)[:200]}")
        self.say(f"pre-traffic check passed on {len(samples)} sample image(s)")

    # -- rollout -----------------------------------------------------------------------
    def deploy(self, o: Options) -> None:
        model = name_part(f"{self.endpoint}-{o.version}", 63)
        variant = name_part(f"v-{o.version}", 63)
        new = {"VariantName": variant, "ModelName": model, "InstanceType": o.instance_type,
               "InitialInstanceCount": o.instance_count}
        self.ensure_model(model, variant, o)
        described = self.describe()
        if described is None:
            config = self.create_config(name_part(f"{self.endpoint}-{o.version}", 63), [{**new, "InitialVariantWeight": 1.0}])
            self.sm.create_endpoint(EndpointName=self.endpoint, EndpointConfigName=config)
            self.say(f"creating the endpoint with {variant}")
            self.wait_in_service(config)
            self.say(f"in service with {variant}")
            return
        if described["EndpointStatus"] != "InService":
            raise Refused(f"the endpoint is {described['EndpointStatus']}: another update is in progress")
        self.lock()
        try:
            if o.strategy == "guardrails":
                self._guardrails(described, new, o)
            else:
                self._roll(described, new, o)
        finally:
            self.unlock()

    def _roll(self, described: dict, new: dict, o: Options) -> None:
        variant = new["VariantName"]
        current = self.config_variants(described["EndpointConfigName"])
        others = [v for v in current if v["VariantName"] != variant]
        if len(current) == 1 and not others:
            self.say(f"{variant} already serves all traffic: nothing to do")
            return
        if len(others) != 1:
            self.rollback()  # a half-done rollout of another model: back to its old variant first
            described = self.wait_in_service()
            current = self.config_variants(described["EndpointConfigName"])
            others = [v for v in current if v["VariantName"] != variant]
        old = {k: v for k, v in others[0].items() if k in ("VariantName", "ModelName", "InstanceType",
                                                          "InitialInstanceCount")}
        canary = self.create_config(name_part(f"{self.endpoint}-{o.version}-canary", 63),
                                    [{**old, "InitialVariantWeight": 1.0}, {**new, "InitialVariantWeight": 0.0}])
        if described["EndpointConfigName"] != canary:
            self.say(f"adding {variant} at weight 0 next to {old['VariantName']}")
            self.sm.update_endpoint(EndpointName=self.endpoint, EndpointConfigName=canary)
            self.wait_in_service(canary)
        alarms = self.create_alarms(variant, o)
        try:
            self.pre_traffic_check(variant, o.samples)
            for step in o.steps:
                self.set_weights({old["VariantName"]: float(100 - step), variant: float(step)})
                self.say(f"{variant} at {step}%: baking {o.bake_seconds:.0f} s")
                deadline = time.monotonic() + o.bake_seconds
                while time.monotonic() < deadline:
                    firing = self.alarming(alarms + o.alarms)
                    if firing:
                        raise Refused(f"alarm {', '.join(firing)} during the {step}% step")
                    time.sleep(min(self.poll, 1.0))
        except (Refused, KeyboardInterrupt) as stop:
            self.rollback()
            self.delete_alarms(alarms)
            if isinstance(stop, KeyboardInterrupt):
                raise
            raise Refused(f"rolled back: {stop}") from None
        final = self.create_config(name_part(f"{self.endpoint}-{o.version}-final", 63),
                                   [{**new, "InitialVariantWeight": 1.0}])
        self.sm.update_endpoint(EndpointName=self.endpoint, EndpointConfigName=final)
        self.wait_in_service(final)
        self.delete_alarms(alarms)
        self.say(f"done: {variant} serves all traffic")
        for name in {described["EndpointConfigName"], canary} - {final}:
            self.delete_quietly(self.sm.delete_endpoint_config, EndpointConfigName=name)
        if old["ModelName"] != new["ModelName"]:
            self.delete_quietly(self.sm.delete_model, ModelName=old["ModelName"])

    def _guardrails(self, described: dict, new: dict, o: Options) -> None:
        """SageMaker shifts the traffic itself (blue/green), rolling back on our alarms. There is
        no pre-traffic check here: the first canary step is the first real traffic."""
        variant = new["VariantName"]
        old_models = {v["ModelName"] for v in self.config_variants(described["EndpointConfigName"])}
        final = self.create_config(name_part(f"{self.endpoint}-{o.version}-final", 63),
                                   [{**new, "InitialVariantWeight": 1.0}])
        if o.steps == [100]:
            routing = {"Type": "ALL_AT_ONCE"}
        elif len(o.steps) == 2:
            routing = {"Type": "CANARY", "CanarySize": {"Type": "CAPACITY_PERCENT", "Value": o.steps[0]}}
        else:
            routing = {"Type": "LINEAR", "LinearStepSize": {"Type": "CAPACITY_PERCENT", "Value": o.steps[0]}}
        routing["WaitIntervalInSeconds"] = int(o.bake_seconds)
        alarms = self.create_alarms(variant, o)
        self.say(f"blue/green update to {variant}: {routing['Type']} over steps {o.steps}")
        self.sm.update_endpoint(EndpointName=self.endpoint, EndpointConfigName=final, DeploymentConfig={
            "BlueGreenUpdatePolicy": {"TrafficRoutingConfiguration": routing,
                                      "TerminationWaitInSeconds": int(o.bake_seconds)},
            "AutoRollbackConfiguration": {"Alarms": [{"AlarmName": a} for a in alarms + o.alarms]},
        })
        try:
            self.wait_in_service(final)
        except Refused as stopped:
            self.delete_quietly(self.sm.delete_endpoint_config, EndpointConfigName=final)
            self.delete_quietly(self.sm.delete_model, ModelName=new["ModelName"])
            raise Refused(f"rolled back: {stopped}") from None
        finally:
            self.delete_alarms(alarms)
        self.say(f"done: {variant} serves all traffic")
        self.delete_quietly(self.sm.delete_endpoint_config, EndpointConfigName=described["EndpointConfigName"])
        for model in old_models - {new["ModelName"]}:
            self.delete_quietly(self.sm.delete_model, ModelName=model)

    def rollback(self) -> bool:
        """Send all traffic back to the old variant and return to a config holding only it."""
        described = self.describe()
        if described is None:
            raise Refused("no such endpoint")
        if described["EndpointStatus"] != "InService":
            raise Refused(f"the endpoint is {described['EndpointStatus']}: wait until it is InService")
        variants = self.config_variants(described["EndpointConfigName"])
        if len(variants) != 2:
            self.say("no rollout in progress: nothing to roll back")
            return False
        old, new = variants  # the canary config lists the old variant first
        self.say(f"rolling back: all traffic to {old['VariantName']}")
        self.set_weights({old["VariantName"]: 1.0, new["VariantName"]: 0.0})
        config = self.create_config(name_part(f"{self.endpoint}-{old['VariantName']}-restored", 63),
                                    [{**{k: v for k, v in old.items() if k != "InitialVariantWeight"},
                                      "InitialVariantWeight": 1.0}])
        self.sm.update_endpoint(EndpointName=self.endpoint, EndpointConfigName=config)
        self.wait_in_service(config)
        self.delete_quietly(self.sm.delete_endpoint_config, EndpointConfigName=described["EndpointConfigName"])
        self.delete_quietly(self.sm.delete_model, ModelName=new["ModelName"])
        self.say(f"rolled back to {old['VariantName']}")
        return True

    def delete_alarms(self, names: list[str]) -> None:
        self.delete_quietly(self.cloudwatch.delete_alarms, AlarmNames=names)

    @staticmethod
    def delete_quietly(call, **kwargs) -> None:
        try:
            call(**kwargs)
        except ClientError:
            pass

    def autoscale(self, variant: str, minimum: int, maximum: int, target: float,
                  scale_in_cooldown: int, scale_out_cooldown: int) -> None:
        """Target tracking on SageMakerVariantInvocationsPerInstance for one variant."""
        described = self.describe()
        if described is None:
            raise Refused("no such endpoint")
        names = [v["VariantName"] for v in described.get("ProductionVariants", [])]
        if variant not in names:
            raise Refused(f"variant {variant!r} is not on the endpoint (it has {', '.join(names)})")
        if not 1 <= minimum <= maximum:
            raise Refused(f"--min {minimum} / --max {maximum}: need 1 <= min <= max")
        scaling = boto3.client("application-autoscaling")
        resource = f"endpoint/{self.endpoint}/variant/{variant}"
        dimension = "sagemaker:variant:DesiredInstanceCount"
        scaling.register_scalable_target(ServiceNamespace="sagemaker", ResourceId=resource,
                                         ScalableDimension=dimension, MinCapacity=minimum, MaxCapacity=maximum)
        scaling.put_scaling_policy(
            PolicyName=f"{self.endpoint}-{variant}-invocations", ServiceNamespace="sagemaker",
            ResourceId=resource, ScalableDimension=dimension, PolicyType="TargetTrackingScaling",
            TargetTrackingScalingPolicyConfiguration={
                "TargetValue": target,
                "PredefinedMetricSpecification": {"PredefinedMetricType": "SageMakerVariantInvocationsPerInstance"},
                "ScaleInCooldown": scale_in_cooldown, "ScaleOutCooldown": scale_out_cooldown,
            })
        self.say(f"{variant}: {minimum}-{maximum} instances, target {target:g} invocations per instance per minute")

    def status(self) -> dict:
        described = self.describe()
        if described is None:
            raise Refused("no such endpoint")
        variants = []
        for given, live in zip(self.config_variants(described["EndpointConfigName"]),
                               described.get("ProductionVariants", [])):
            model = self.sm.describe_model(ModelName=given["ModelName"]).get("PrimaryContainer", {})
            variants.append({"variant": given["VariantName"], "weight": live.get("CurrentWeight"),
                             "instances": live.get("CurrentInstanceCount"), "model": given["ModelName"],
                             "image": model.get("Image"), "model_data": model.get("ModelDataUrl"),
                             "alarms": {a["AlarmName"]: a["StateValue"] for a in self.cloudwatch.describe_alarms(
                                 AlarmNames=self.alarm_names(given["VariantName"]))["MetricAlarms"]}})
        return {"endpoint": self.endpoint, "status": described["EndpointStatus"],
                "config": described["EndpointConfigName"], "failure_reason": described.get("FailureReason"),
                "variants": variants}

    def delete(self) -> None:
        described = self.describe()
        if described is None:
            raise Refused("no such endpoint")
        variants = self.config_variants(described["EndpointConfigName"])
        self.sm.delete_endpoint(EndpointName=self.endpoint)
        self.delete_quietly(self.sm.delete_endpoint_config, EndpointConfigName=described["EndpointConfigName"])
        for variant in variants:
            self.delete_quietly(self.sm.delete_model, ModelName=variant["ModelName"])
            self.delete_alarms(self.alarm_names(variant["VariantName"]))
        self.say("deleted")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    deploy = commands.add_parser("deploy", help="roll a new model onto the endpoint")
    for name in ("status", "rollback", "delete"):
        commands.add_parser(name).add_argument("--endpoint", required=True)
    scale = commands.add_parser("autoscale", help="target-tracking autoscaling for one variant")
    scale.add_argument("--endpoint", required=True)
    scale.add_argument("--variant", required=True)
    scale.add_argument("--min", type=int, required=True, dest="minimum")
    scale.add_argument("--max", type=int, required=True, dest="maximum")
    scale.add_argument("--target-invocations", type=float, required=True,
                       help="SageMakerVariantInvocationsPerInstance to hold (per minute)")
    scale.add_argument("--scale-in-cooldown", type=int, default=300)
    scale.add_argument("--scale-out-cooldown", type=int, default=60)
    deploy.add_argument("--endpoint", required=True)
    deploy.add_argument("--image", required=True, help="serving image URI")
    deploy.add_argument("--model-data", required=True, help="s3:// URI of model.tar.gz")
    deploy.add_argument("--role", required=True, help="SageMaker execution role ARN")
    deploy.add_argument("--version", help="names the model and variant (default: the image tag)")
    deploy.add_argument("--instance-type", default="ml.m5.large")
    deploy.add_argument("--instance-count", type=int, default=1)
    deploy.add_argument("--steps", default="10,50,100", help="traffic percentages for the new variant")
    deploy.add_argument("--bake-seconds", type=float, default=300)
    deploy.add_argument("--alarms", default="", help="more CloudWatch alarms to watch, comma-separated")
    deploy.add_argument("--samples", nargs="*", default=[], help="PNG images for the pre-traffic check")
    deploy.add_argument("--latency-ms", type=float, default=2000, help="ModelLatency alarm threshold")
    deploy.add_argument("--alarm-period", type=int, default=60, help="seconds per alarm evaluation")
    deploy.add_argument("--poll-seconds", type=float, default=15)
    deploy.add_argument("--model-env", nargs="*", default=[], metavar="KEY=VALUE",
                        help="more environment for the model's container, e.g. DAGM_SERVER_BATCH_SIZE=32")
    deploy.add_argument("--strategy", choices=["variants", "guardrails"], default="variants",
                        help="variants: this script shifts weights; guardrails: SageMaker's blue/green DeploymentConfig")
    return parser.parse_args(argv)


def options(args: argparse.Namespace) -> Options:
    try:
        steps = [int(s) for s in args.steps.split(",")]
    except ValueError:
        raise Refused(f"--steps {args.steps!r}: expected percentages like 10,50,100") from None
    if not steps or steps != sorted(steps) or not 0 < steps[0] <= steps[-1] == 100:
        raise Refused(f"--steps {args.steps!r}: rising percentages from 1 that end at 100")
    if not args.model_data.startswith("s3://"):
        raise Refused(f"--model-data {args.model_data!r}: expected an s3:// URI")
    samples = []
    for path in args.samples:
        try:
            with open(path, "rb") as handle:
                samples.append(handle.read())
        except OSError as exc:
            raise Refused(f"--samples: {exc}") from None
    model_env = {}
    for item in args.model_env:
        key, sep, value = item.partition("=")
        if not key or not sep:
            raise Refused(f"--model-env {item!r}: expected KEY=VALUE")
        model_env[key] = value
    version = args.version or args.image.rpartition(":")[2] or str(int(time.time()))
    return Options(args.endpoint, args.image, args.model_data, args.role, name_part(version, 40),
                   args.instance_type, args.instance_count, steps, args.bake_seconds,
                   [a for a in args.alarms.split(",") if a], samples or [sample_png()], args.latency_ms,
                   args.alarm_period, args.strategy, model_env)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        wanted = options(args) if args.command == "deploy" else None
        deployer = Deployer(args.endpoint, getattr(args, "poll_seconds", 15.0))
        if wanted is not None:
            deployer.deploy(wanted)
        elif args.command == "status":
            print(json.dumps(deployer.status(), indent=2, default=str))
        elif args.command == "autoscale":
            deployer.autoscale(args.variant, args.minimum, args.maximum, args.target_invocations,
                               args.scale_in_cooldown, args.scale_out_cooldown)
        elif args.command == "rollback":
            deployer.rollback()
            deployer.unlock()  # the operator's call: a crashed deploy's lock goes too
        else:
            deployer.delete()
    except Refused as refused:
        print(f"deploy: {refused}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("deploy: interrupted; traffic is back on the old variant", file=sys.stderr)
        return 130
    except (ClientError, BotoCoreError) as error:
        print(f"deploy: AWS error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
