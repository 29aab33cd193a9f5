"""Roll a new model onto a SageMaker endpoint through weighted production variants.

A new endpoint gets one variant. An existing one gets a canary config (current variant
at weight 1, the new one at 0); a pre-traffic check invokes the new variant by name
(TargetVariant) with sample images and refuses it before any user request reaches it if
it errors, hangs or answers nonsense; then weights shift step by step, baking at each
step while CloudWatch alarms are watched (the new variant's Invocation5XXErrors and
ModelLatency, plus any given). Success ends with a config holding only the new variant;
the old config, its model, the canary config and the alarms are removed.

Every way out of a rollout ends safe: an alarm, a refused check, any exception, SIGTERM
or SIGINT moves all traffic back to the old variant, then returns the endpoint to a
config holding only it, with signals deferred meanwhile (signals.py). AWS errors while
rolling back are retried for ROLLBACK_RETRY_SECONDS; endpoint updates are waited for up
to --update-timeout. Safe to re-run: a half-done rollout of the same model resumes, one
of another model is rolled back first. One deploy at a time per endpoint (lock.py).
"""

from __future__ import annotations

import json
import time
from typing import Callable

from botocore.exceptions import BotoCoreError, ClientError

from dagm_deploy import aws, guardrails, modes, registry, shadow, signals
from dagm_deploy.alarms import Alarms
from dagm_deploy.endpoint import VARIANT_FIELDS, Endpoint
from dagm_deploy.errors import Interrupted, Refused, cause, exit_code
from dagm_deploy.lock import Lock
from dagm_deploy.options import Options, name_part

# How long a rollback keeps retrying AWS errors (throttling, 5xx) before it gives up and
# says what state it left; endpoint updates themselves are waited for on top of this.
ROLLBACK_RETRY_SECONDS = 60.0


class Rollout:
    def __init__(self, o: Options, update_timeout: float = 1800.0):
        self.o = o
        self.endpoint = Endpoint(o.endpoint, o.poll_seconds)
        self.sm = self.endpoint.sm
        self.say = self.endpoint.say
        self.alarms = Alarms(o.endpoint)
        self.update_timeout = update_timeout
        # The endpoint's DataCaptureConfig when the rollout began (kept unless told otherwise).
        self.live_capture: dict | None = None

    # -- entry -----------------------------------------------------------------------
    def run(self) -> None:
        """Deploy `o`; Refused (with its exit code) when it did not complete."""
        with signals.interruptible():
            lock = Lock(self.o.lock_table, self.o.endpoint, self.o.lease_seconds, self.say)
            try:
                lock.acquire(self.o.lock_wait)
            except Interrupted as stop:  # the put may have gone through: undo it
                with signals.shielded("releasing the deploy lock"):
                    lock.release()
                raise Refused(f"{cause(stop)} before the rollout began: nothing changed", exit_code(stop)) from None
            try:
                self._run(lock)
            except Interrupted as stop:  # before anything needed undoing
                raise Refused(f"{cause(stop)}: {self.state()}", exit_code(stop)) from None
            finally:
                with signals.shielded("releasing the deploy lock"):
                    lock.release()

    def _run(self, lock: Lock) -> None:
        if self.o.package:  # approvals may have changed while the lock was waited for
            latest = registry.for_rollout(self.sm, self.o)
            if latest.package != self.o.package:
                self.say(f"the registry changed meanwhile: deploying {latest.package} instead")
            self.o = latest
        described = self.endpoint.describe()
        if described is None:
            self.ensure_model()
            self.create()
            return
        # Refusals before the model is made: a refused deploy leaves nothing behind.
        if described["EndpointStatus"] != "InService":
            raise Refused(f"the endpoint is {described['EndpointStatus']}: another update is in progress")
        live = self.sm.describe_endpoint_config(EndpointConfigName=described["EndpointConfigName"])
        live_mode = modes.of_config(live)
        if live_mode != self.o.mode.name:
            raise Refused(f"the endpoint is {live_mode}; a {self.o.mode.name} model needs an endpoint of its own "
                          f"(another --endpoint, or `dagm-deploy delete` first)")
        self.live_capture = live.get("DataCaptureConfig") or None
        if self.o.shadow and not self.o.mode.endpoint_config(self.live_capture).get("DataCaptureConfig"):
            raise Refused("--shadow-requests compares captured answers: the endpoint captures nothing "
                          "(give --capture-uri)")
        self.ensure_model()
        self.endpoint.delete_quietly(self.alarms.delete, names=self.alarms.own())
        if self.o.strategy == "guardrails":
            guardrails.roll(self, described, lock)
        elif self.o.mode.serverless:
            self.replace(described, lock)
        else:
            self.roll(described, lock)

    # -- building blocks ---------------------------------------------------------------
    def new_variant(self, weight: float) -> dict:
        o = self.o
        where = ({"ServerlessConfig": o.mode.serverless.config()} if o.mode.serverless
                 else {"InstanceType": o.instance_type, "InitialInstanceCount": o.instance_count})
        return {"VariantName": o.variant, "ModelName": o.model, **where, "InitialVariantWeight": weight}

    def create_config(self, name: str, variants: list[dict]) -> str:
        return self.endpoint.create_config(name, variants, self.o.mode.endpoint_config(self.live_capture))

    def ensure_model(self) -> None:
        o = self.o
        # A registered model's container is the package; its image and data come from it.
        source = {"ModelPackageName": o.package} if o.package else {"Image": o.image, "ModelDataUrl": o.model_data}
        around = [[{"Image": image} for image in o.mode.before], [{"Image": image} for image in o.mode.after]]
        try:
            existing = self.sm.describe_model(ModelName=o.model)
        except ClientError:
            environment = {"DAGM_ENDPOINT_NAME": o.endpoint, "DAGM_VARIANT_NAME": o.variant, **o.model_env}
            serving = {**source, "Environment": environment}
            if around[0] or around[1]:
                containers = around[0] + [serving] + around[1]
                self.sm.create_model(ModelName=o.model, ExecutionRoleArn=o.role, Containers=containers,
                                     InferenceExecutionConfig={"Mode": "Serial"})
                self.say(f"created model {o.model}: a pipeline of {len(containers)} containers")
                return
            self.sm.create_model(ModelName=o.model, ExecutionRoleArn=o.role, PrimaryContainer=serving)
            self.say(f"created model {o.model}" + (f" from {o.package}" if o.package else ""))
            return
        wanted = around[0] + [source] + around[1]
        containers = existing.get("Containers") or [existing.get("PrimaryContainer", {})]
        if [{key: c.get(key) for key in w} for c, w in zip(containers, wanted)] != wanted or len(containers) != len(wanted):
            raise Refused(f"model {o.model} exists with another image, model data, package or pipeline; "
                          f"deploy with a new --version")

    def create(self) -> None:
        config = self.create_config(self.o.model, [self.new_variant(1.0)])
        self.sm.create_endpoint(EndpointName=self.o.endpoint, EndpointConfigName=config)
        self.say(f"creating the {self.o.mode.name} endpoint with {self.o.variant}")
        self.endpoint.wait_in_service(config, time.monotonic() + self.update_timeout)
        self.say(f"in service with {self.o.variant}")

    def pre_traffic_check(self, target: bool = True) -> None:
        """The samples through the new variant (`target`: aimed at it while it has no traffic;
        else through the endpoint, which a serverless one serves alone). With containers
        after the serving image the answer is theirs: it must only be JSON."""
        variant, runtime = self.o.variant, aws.runtime(self.o.check_timeout)
        self.say(f"{'pre-traffic ' if target else ''}check: {len(self.o.samples)} sample image(s) to {variant}")
        for i, image in enumerate(self.o.samples):
            try:
                reply = runtime.invoke_endpoint(EndpointName=self.o.endpoint, ContentType="image/png",
                                                Accept="application/json", Body=image,
                                                **({"TargetVariant": variant} if target else {}))
                answer = json.loads(reply["Body"].read())
            except Exception as exc:  # an error, a timeout, a body that is not JSON: all refuse it
                raise Refused(f"pre-traffic check: sample {i} failed on the new variant: "
                              f"{type(exc).__name__}: {exc}") from None
            if reply.get("InvokedProductionVariant") != variant or not (self.o.mode.after or sensible(answer)):
                raise Refused(f"pre-traffic check: sample {i} got a nonsense answer: {json.dumps(answer)[:200]}")
        self.say(f"check passed on {len(self.o.samples)} sample image(s)")

    def bake(self, step: int, alarms: list[str], lock: Lock) -> None:
        self.say(f"{self.o.variant} at {step}%: baking {self.o.bake_seconds:.0f} s")
        deadline = time.monotonic() + self.o.bake_seconds
        while True:
            lock.check()
            firing = self.alarms.firing(alarms + self.o.alarms)
            if firing:
                raise Refused(f"alarm {', '.join(firing)} during the {step}% step")
            if time.monotonic() >= deadline:
                return
            time.sleep(min(self.o.poll_seconds, 1.0))

    # -- the variants strategy -----------------------------------------------------------
    def roll(self, described: dict, lock: Lock) -> None:
        variant = self.o.variant
        current = self.endpoint.config_variants(described["EndpointConfigName"])
        others = [v for v in current if v["VariantName"] != variant]
        if len(current) == 1 and not others:
            self.say(f"{variant} already serves all traffic: nothing to do")
            return
        if len(others) != 1:
            self.say(f"a rollout of another model was left half done: {self.rollback()}")
            described = self.endpoint.wait_in_service()
            current = self.endpoint.config_variants(described["EndpointConfigName"])
            others = [v for v in current if v["VariantName"] != variant]
        old = {k: v for k, v in others[0].items() if k in VARIANT_FIELDS}
        canary, final = self.o.config("canary"), self.o.config("final")
        alarms: list[str] = []
        if self.o.shadow:  # refused: back on the old variant alone, and Refused raised
            shadow.run(self, old, self.o.mode.endpoint_config(self.live_capture)["DataCaptureConfig"], lock, self.o.shadow)
        try:
            self.create_config(canary, [{**old, "InitialVariantWeight": 1.0}, self.new_variant(0.0)])
            if described["EndpointConfigName"] != canary:
                self.say(f"adding {variant} at weight 0 next to {old['VariantName']}")
                self.endpoint.update(canary, time.monotonic() + self.update_timeout)
            alarms = self.alarms.create(variant, self.o.latency_ms, self.o.alarm_period)
            if self.o.mode.asynchronous:  # InvokeEndpointAsync cannot aim at a variant
                self.say("asynchronous endpoint: no pre-traffic check; the first step's alarms judge the model")
            else:
                self.pre_traffic_check()
            for step in self.o.steps:
                lock.check()
                self.endpoint.set_weights({old["VariantName"]: float(100 - step), variant: float(step)},
                                          time.monotonic() + self.update_timeout)
                self.bake(step, alarms, lock)
            self.create_config(final, [self.new_variant(1.0)])
            self.endpoint.update(final, time.monotonic() + self.update_timeout)
        except BaseException as stop:
            self.abort(stop, alarms)
        self.say(f"done: {variant} serves all traffic")
        with signals.shielded("cleaning up after the rollout"):
            self.endpoint.delete_quietly(self.alarms.delete, names=alarms)
            for name in {described["EndpointConfigName"], canary, self.o.config("shadow")} - {final}:
                self.endpoint.delete_quietly(self.sm.delete_endpoint_config, EndpointConfigName=name)
            if old["ModelName"] != self.o.model:
                self.endpoint.delete_quietly(self.sm.delete_model, ModelName=old["ModelName"])

    # -- serverless: one variant, replaced at once ------------------------------------------
    def replace(self, described: dict, lock: Lock) -> None:
        """A serverless endpoint holds a single variant: the new one takes its place at once,
        then the samples are checked through the endpoint and it bakes under its alarms. Any
        failure, or a signal, puts the old config back."""
        old_config, variant = described["EndpointConfigName"], self.o.variant
        old_models = {v["ModelName"] for v in self.endpoint.config_variants(old_config)}
        if old_config == self.o.config("final"):
            self.say(f"{variant} already serves all traffic: nothing to do")
            return
        final, alarms = self.o.config("final"), []
        try:
            self.create_config(final, [self.new_variant(1.0)])
            self.say(f"serverless: {variant} replaces the running variant")
            self.endpoint.update(final, time.monotonic() + self.update_timeout)
            alarms = self.alarms.create(variant, self.o.latency_ms, self.o.alarm_period)
            self.pre_traffic_check(target=False)
            self.bake(100, alarms, lock)
        except BaseException as stop:
            self.abort(stop, alarms, lambda: self.restore_config(old_config))
        self.say(f"done: {variant} serves all traffic")
        with signals.shielded("cleaning up after the rollout"):
            self.endpoint.delete_quietly(self.alarms.delete, names=alarms)
            self.endpoint.delete_quietly(self.sm.delete_endpoint_config, EndpointConfigName=old_config)
            for model in old_models - {self.o.model}:
                self.endpoint.delete_quietly(self.sm.delete_model, ModelName=model)

    def restore_config(self, config: str) -> str:
        """The endpoint back on `config`, retried through AWS errors; where it ends."""

        def restore() -> None:
            live = self.endpoint.wait_in_service(deadline=time.monotonic() + self.update_timeout)
            if live["EndpointConfigName"] != config:
                self.say(f"rolling back: the endpoint returns to {config}")
                self.endpoint.update(config, time.monotonic() + self.update_timeout)

        aws.until(time.monotonic() + ROLLBACK_RETRY_SECONDS, restore, "restoring the old config", self.say)
        return f"the endpoint is back on config {config}"

    def abort(self, stop: BaseException, alarms: list[str], restore: Callable[[], str] | None = None) -> None:
        """Roll back whatever stopped the rollout (`restore`: how, else the canary's rollback),
        then raise Refused saying why and where the endpoint is now. Signals wait until the
        rollback is over."""
        why = cause(stop)
        with signals.shielded("rolling back"):
            self.say(f"stopping: {why}")
            try:
                state = (restore or self.rollback)()
            except Exception as failure:
                hint = "" if restore else f"; run `dagm-deploy rollback --endpoint {self.o.endpoint}`"
                raise Refused(f"{why}; the rollback did not finish ({cause(failure)}): {self.state()}{hint}",
                              exit_code(stop)) from None
            try:
                self.endpoint.delete_quietly(self.alarms.delete, names=alarms)
                self.discard_candidate()
            except (ClientError, BotoCoreError) as error:  # the endpoint is safe; only leftovers remain
                self.say(f"could not remove the candidate's alarms, configs or model: {error}")
        if isinstance(stop, Interrupted):
            raise Refused(f"{why}: {state}", exit_code(stop)) from None
        raise Refused(f"rolled back: {why} ({state})", exit_code(stop)) from None

    def rollback(self) -> str:
        return rollback(self.endpoint, self.update_timeout)

    def discard_candidate(self) -> None:
        """After a rollback: the rollout's configs and model, unless the endpoint runs them."""
        described = self.endpoint.describe()
        live = described["EndpointConfigName"] if described else None
        for config in {self.o.config("canary"), self.o.config("final"), self.o.config("shadow")} - {live}:
            self.endpoint.delete_quietly(self.sm.delete_endpoint_config, EndpointConfigName=config)
        if live is None or self.o.model not in {v["ModelName"] for v in self.endpoint.config_variants(live)}:
            self.endpoint.delete_quietly(self.sm.delete_model, ModelName=self.o.model)

    def state(self) -> str:
        """One line on where the endpoint is, for messages after a failure."""
        try:
            described = self.endpoint.describe()
        except (ClientError, BotoCoreError) as error:
            return f"the endpoint's state is unknown ({error})"
        if described is None:
            return "the endpoint does not exist"
        weights = ", ".join(f"{v['VariantName']} at weight {v.get('CurrentWeight')}"
                            for v in described.get("ProductionVariants", []))
        return f"the endpoint is {described['EndpointStatus']} on config {described['EndpointConfigName']} ({weights})"


def rollback(endpoint: Endpoint, update_timeout: float) -> str:
    """All traffic back on the old variant, then a config holding only it; says where
    the endpoint ends. Idempotent steps, retried through AWS errors."""
    retry_until = time.monotonic() + ROLLBACK_RETRY_SECONDS

    def settled() -> tuple[dict, list[dict]]:
        described = endpoint.wait_in_service(deadline=time.monotonic() + update_timeout)
        return described, endpoint.config_variants(described["EndpointConfigName"])

    described, variants = aws.until(retry_until, settled, "reading the endpoint", endpoint.say)
    if len(variants) != 2:
        return f"{variants[0]['VariantName']} serves all traffic (config {described['EndpointConfigName']})"
    old, new = variants  # the canary config lists the old variant first

    def traffic_back() -> None:
        live, _ = settled()
        weights = {v["VariantName"]: v.get("CurrentWeight") for v in live.get("ProductionVariants", [])}
        if weights.get(new["VariantName"]) != 0.0:
            endpoint.say(f"rolling back: all traffic to {old['VariantName']}")
            endpoint.set_weights({old["VariantName"]: 1.0, new["VariantName"]: 0.0},
                                 time.monotonic() + update_timeout)

    aws.until(retry_until, traffic_back, "moving traffic back", endpoint.say)
    restored = name_part(f"{endpoint.name}-{old['VariantName']}-restored", 63)

    def old_config() -> None:
        live, _ = settled()
        if live["EndpointConfigName"] != restored:
            endpoint.create_config(restored, [{**{k: old[k] for k in VARIANT_FIELDS if k in old}, "InitialVariantWeight": 1.0}],
                                   endpoint.config_extras(live["EndpointConfigName"]))
            endpoint.update(restored, time.monotonic() + update_timeout)

    aws.until(time.monotonic() + ROLLBACK_RETRY_SECONDS, old_config, "restoring the old config", endpoint.say)
    endpoint.delete_quietly(endpoint.sm.delete_endpoint_config, EndpointConfigName=described["EndpointConfigName"])
    if new["ModelName"] != old["ModelName"]:
        endpoint.delete_quietly(endpoint.sm.delete_model, ModelName=new["ModelName"])
    endpoint.say(f"rolled back to {old['VariantName']}")
    return f"all traffic is back on the old variant {old['VariantName']} (config {restored})"


def sensible(answer) -> bool:
    """One prediction whose score is a probability."""
    predictions = answer.get("predictions") if isinstance(answer, dict) else None
    if not isinstance(predictions, list) or len(predictions) != 1 or not isinstance(predictions[0], dict):
        return False
    score = predictions[0].get("score")
    return isinstance(score, (int, float)) and not isinstance(score, bool) and 0.0 <= score <= 1.0
