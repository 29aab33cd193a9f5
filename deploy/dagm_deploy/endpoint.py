"""Reading and changing one endpoint: its state, configs, models and variant weights."""

from __future__ import annotations

import time

from botocore.exceptions import ClientError

from dagm_deploy import aws
from dagm_deploy.errors import Refused

# Fields of a config's production variant that describe it (not its weight).
VARIANT_FIELDS = ("VariantName", "ModelName", "InstanceType", "InitialInstanceCount", "ServerlessConfig")
# What a config holds beside its variants that every config of the endpoint keeps: the
# canary, final and restored configs of an asynchronous endpoint stay asynchronous.
ENDPOINT_FIELDS = ("AsyncInferenceConfig", "DataCaptureConfig")


def missing(error: ClientError) -> bool:
    return "Could not find" in str(error) or error.response["Error"]["Code"] == "ValidationException"


class Endpoint:
    def __init__(self, name: str, poll_seconds: float = 15.0):
        self.name = name
        self.poll = poll_seconds
        self.sm = aws.control("sagemaker")

    def say(self, message: str) -> None:
        print(f"[{self.name}] {message}", flush=True)

    def describe(self) -> dict | None:
        try:
            return self.sm.describe_endpoint(EndpointName=self.name)
        except ClientError as error:
            if missing(error):
                return None
            raise

    def config_variants(self, config_name: str) -> list[dict]:
        return self.sm.describe_endpoint_config(EndpointConfigName=config_name)["ProductionVariants"]

    def config_extras(self, config_name: str) -> dict:
        described = self.sm.describe_endpoint_config(EndpointConfigName=config_name)
        return {key: described[key] for key in ENDPOINT_FIELDS if described.get(key)}

    def wait_in_service(self, config_name: str | None = None, deadline: float | None = None) -> dict:
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
            if deadline is not None and time.monotonic() >= deadline:
                raise Refused(f"the endpoint is still {status} after the time allowed")
            time.sleep(self.poll)

    def create_config(self, name: str, variants: list[dict], extras: dict | None = None) -> str:
        try:
            self.sm.describe_endpoint_config(EndpointConfigName=name)
        except ClientError:
            self.sm.create_endpoint_config(EndpointConfigName=name, ProductionVariants=variants, **(extras or {}))
        return name

    def update(self, config_name: str, deadline: float | None = None) -> dict:
        self.sm.update_endpoint(EndpointName=self.name, EndpointConfigName=config_name)
        return self.wait_in_service(config_name, deadline)

    def set_weights(self, weights: dict[str, float], deadline: float | None = None) -> None:
        self.sm.update_endpoint_weights_and_capacities(
            EndpointName=self.name,
            DesiredWeightsAndCapacities=[{"VariantName": v, "DesiredWeight": w} for v, w in weights.items()])
        self.wait_in_service(deadline=deadline)

    def delete_quietly(self, call, **kwargs) -> None:
        """Clean-up of what is no longer used: a failure is reported, never fatal."""
        try:
            call(**kwargs)
        except ClientError as error:
            if not missing(error):
                self.say(f"could not clean up ({error})")
