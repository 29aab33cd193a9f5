"""What an endpoint runs now (variants, weights, models and the registered model packages
they come from, alarms, the deploy lock), and
deleting it with everything this tool made for it."""

from __future__ import annotations

from botocore.exceptions import ClientError

from dagm_deploy import aws, lock, modes, registry
from dagm_deploy.alarms import Alarms
from dagm_deploy.endpoint import Endpoint
from dagm_deploy.errors import Refused


def status(endpoint: Endpoint, lock_table: str | None = None) -> dict:
    described = endpoint.describe()
    if described is None:
        raise Refused("no such endpoint")
    alarms = Alarms(endpoint.name)
    config = endpoint.sm.describe_endpoint_config(EndpointConfigName=described["EndpointConfigName"])
    variants = []
    for given, live in zip(config["ProductionVariants"], described.get("ProductionVariants", [])):
        model = endpoint.sm.describe_model(ModelName=given["ModelName"])
        containers = model.get("Containers") or [model.get("PrimaryContainer", {})]
        # In a pipeline the serving image's container is the one dagm-deploy named the variant in.
        serving = next((c for c in containers if "DAGM_VARIANT_NAME" in (c.get("Environment") or {})), containers[0])
        variants.append({"variant": given["VariantName"], "weight": live.get("CurrentWeight"),
                         "instances": live.get("CurrentInstanceCount"), "model": given["ModelName"],
                         **({"serverless": given["ServerlessConfig"]} if given.get("ServerlessConfig") else {}),
                         **({"pipeline": [c.get("Image") or c.get("ModelPackageName") for c in containers]}
                            if len(containers) > 1 else {}),
                         **source(endpoint.sm, serving), "alarms": alarms.states(alarms.names(given["VariantName"]))})
    report = {"endpoint": endpoint.name, "status": described["EndpointStatus"], "mode": modes.of_config(config),
              "config": described["EndpointConfigName"], "failure_reason": described.get("FailureReason"),
              "variants": variants}
    if config.get("AsyncInferenceConfig"):
        report["async"] = config["AsyncInferenceConfig"]
    if config.get("DataCaptureConfig"):
        report["capture"] = config["DataCaptureConfig"]
    if lock_table:
        report["lock"] = held_lock(lock_table, endpoint.name)
    return report


def source(sagemaker, container: dict) -> dict:
    """Where a model's container comes from: its image and model data, and for a registered
    model the package (ARN, version, approval status, metadata) they come from."""
    arn = container.get("ModelPackageName")
    if not arn:
        return {"image": container.get("Image"), "model_data": container.get("ModelDataUrl")}
    try:
        package = registry.describe(sagemaker, arn)
    except Refused as gone:  # deleted from the registry while it serves
        return {"image": None, "model_data": None, "model_package": arn, "model_package_error": str(gone)}
    return {"image": package.image, "model_data": package.model_data, "model_package": package.arn,
            "model_package_version": package.version, "approval": package.status, "metadata": package.metadata}


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
