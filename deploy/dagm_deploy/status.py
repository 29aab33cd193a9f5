"""What an endpoint runs now (variants, weights, models, alarms, the deploy lock), and
deleting it with everything this tool made for it."""

from __future__ import annotations

from botocore.exceptions import ClientError

from dagm_deploy import aws, lock
from dagm_deploy.alarms import Alarms
from dagm_deploy.endpoint import Endpoint
from dagm_deploy.errors import Refused


def status(endpoint: Endpoint, lock_table: str | None = None) -> dict:
    described = endpoint.describe()
    if described is None:
        raise Refused("no such endpoint")
    alarms = Alarms(endpoint.name)
    variants = []
    for given, live in zip(endpoint.config_variants(described["EndpointConfigName"]),
                           described.get("ProductionVariants", [])):
        model = endpoint.sm.describe_model(ModelName=given["ModelName"]).get("PrimaryContainer", {})
        variants.append({"variant": given["VariantName"], "weight": live.get("CurrentWeight"),
                         "instances": live.get("CurrentInstanceCount"), "model": given["ModelName"],
                         "image": model.get("Image"), "model_data": model.get("ModelDataUrl"),
                         "alarms": alarms.states(alarms.names(given["VariantName"]))})
    report = {"endpoint": endpoint.name, "status": described["EndpointStatus"],
              "config": described["EndpointConfigName"], "failure_reason": described.get("FailureReason"),
              "variants": variants}
    if lock_table:
        report["lock"] = held_lock(lock_table, endpoint.name)
    return report


def held_lock(table: str, endpoint: str) -> dict | str | None:
    try:
        held = lock.holder(aws.control("dynamodb"), table, endpoint)
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") == "ResourceNotFoundException":
            return None
        return f"unknown ({error})"
    return {**held, "description": lock.describe(held)} if held else None


def delete(endpoint: Endpoint) -> None:
    described = endpoint.describe()
    if described is None:
        raise Refused("no such endpoint")
    variants = endpoint.config_variants(described["EndpointConfigName"])
    endpoint.sm.delete_endpoint(EndpointName=endpoint.name)
    endpoint.delete_quietly(endpoint.sm.delete_endpoint_config, EndpointConfigName=described["EndpointConfigName"])
    alarms = Alarms(endpoint.name)
    for variant in variants:
        endpoint.delete_quietly(endpoint.sm.delete_model, ModelName=variant["ModelName"])
        endpoint.delete_quietly(alarms.delete, names=alarms.names(variant["VariantName"]))
    endpoint.say("deleted")
