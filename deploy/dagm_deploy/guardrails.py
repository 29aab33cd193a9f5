"""The guardrails strategy: SageMaker shifts the traffic itself (a blue/green
UpdateEndpoint with a DeploymentConfig) and rolls back on our alarms. There is no
pre-traffic check here: the first canary step is the first real traffic.

While SageMaker updates, the alarms are what protects the endpoint, so they are never
deleted then: a rollout interrupted (a signal, an AWS error) mid-update leaves them in
place and says so; SageMaker finishes or rolls back the update by itself, and the next
run, once the endpoint is InService again, removes the alarms it no longer needs.
"""

from __future__ import annotations

import time

from dagm_deploy import signals
from dagm_deploy.errors import Refused, cause, exit_code
from dagm_deploy.lock import Lock
from dagm_deploy.rolling import Rolling


def routing(steps: list[int], bake_seconds: float) -> dict:
    if steps == [100]:
        chosen = {"Type": "ALL_AT_ONCE"}
    elif len(steps) == 2:
        chosen = {"Type": "CANARY", "CanarySize": {"Type": "CAPACITY_PERCENT", "Value": steps[0]}}
    else:
        chosen = {"Type": "LINEAR", "LinearStepSize": {"Type": "CAPACITY_PERCENT", "Value": steps[0]}}
    return {**chosen, "WaitIntervalInSeconds": int(bake_seconds)}


def roll(rollout: Rolling, described: dict, lock: Lock) -> None:
    o, endpoint = rollout.o, rollout.endpoint
    old_models = {v["ModelName"] for v in endpoint.config_variants(described["EndpointConfigName"])}
    final = rollout.create_config(o.config("final"), [rollout.new_variant(1.0)])
    traffic = routing(o.steps, o.bake_seconds)
    alarms = rollout.alarms.create(o.variant, o.latency_ms, o.alarm_period)
    rollout.say(f"blue/green update to {o.variant}: {traffic['Type']} over steps {o.steps}")
    try:
        endpoint.sm.update_endpoint(EndpointName=o.endpoint, EndpointConfigName=final, DeploymentConfig={
            "BlueGreenUpdatePolicy": {"TrafficRoutingConfiguration": traffic,
                                      "TerminationWaitInSeconds": int(o.bake_seconds)},
            "AutoRollbackConfiguration": {"Alarms": [{"AlarmName": a} for a in alarms + o.alarms]},
        })
    except BaseException:  # SageMaker never started the update: nothing watches the alarms
        with signals.shielded("removing the alarms of an update that did not start"):
            endpoint.delete_quietly(rollout.alarms.delete, names=alarms)
        raise
    try:
        endpoint.wait_in_service(final, time.monotonic() + rollout.update_timeout)
    except Refused as stopped:  # SageMaker rolled back: InService on the old config again
        with signals.shielded("cleaning up after SageMaker's rollback"):
            endpoint.delete_quietly(rollout.alarms.delete, names=alarms)
            endpoint.delete_quietly(endpoint.sm.delete_endpoint_config, EndpointConfigName=final)
            endpoint.delete_quietly(endpoint.sm.delete_model, ModelName=o.model)
        raise Refused(f"rolled back: {stopped}") from None
    except BaseException as stop:
        raise Refused(f"{cause(stop)}: {rollout.state()}; SageMaker finishes or rolls back the blue/green update "
                      f"to {o.variant} by itself, watching alarms {', '.join(alarms + o.alarms)}, which are kept; "
                      f"a deploy refuses to start until the endpoint is InService, then removes them",
                      exit_code(stop)) from None
    rollout.say(f"done: {o.variant} serves all traffic")
    with signals.shielded("cleaning up after the rollout"):
        endpoint.delete_quietly(rollout.alarms.delete, names=alarms)
        endpoint.delete_quietly(endpoint.sm.delete_endpoint_config, EndpointConfigName=described["EndpointConfigName"])
        for model in old_models - {o.model}:
            endpoint.delete_quietly(endpoint.sm.delete_model, ModelName=model)
