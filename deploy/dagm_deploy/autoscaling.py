"""Target-tracking autoscaling of one variant on SageMakerVariantInvocationsPerInstance."""

from __future__ import annotations

from dataclasses import dataclass

from dagm_deploy import aws
from dagm_deploy.endpoint import Endpoint
from dagm_deploy.errors import Refused


@dataclass(frozen=True)
class Scaling:
    variant: str
    minimum: int
    maximum: int
    target: float
    scale_in_cooldown: int = 300
    scale_out_cooldown: int = 60


def autoscale(endpoint: Endpoint, s: Scaling) -> None:
    described = endpoint.describe()
    if described is None:
        raise Refused("no such endpoint")
    names = [v["VariantName"] for v in described.get("ProductionVariants", [])]
    if s.variant not in names:
        raise Refused(f"variant {s.variant!r} is not on the endpoint (it has {', '.join(names)})")
    if not 1 <= s.minimum <= s.maximum:
        raise Refused(f"--min {s.minimum} / --max {s.maximum}: need 1 <= min <= max")
    scaling = aws.control("application-autoscaling")
    resource = f"endpoint/{endpoint.name}/variant/{s.variant}"
    dimension = "sagemaker:variant:DesiredInstanceCount"
    scaling.register_scalable_target(ServiceNamespace="sagemaker", ResourceId=resource,
                                     ScalableDimension=dimension, MinCapacity=s.minimum, MaxCapacity=s.maximum)
    scaling.put_scaling_policy(
        PolicyName=f"{endpoint.name}-{s.variant}-invocations", ServiceNamespace="sagemaker",
        ResourceId=resource, ScalableDimension=dimension, PolicyType="TargetTrackingScaling",
        TargetTrackingScalingPolicyConfiguration={
            "TargetValue": s.target,
            "PredefinedMetricSpecification": {"PredefinedMetricType": "SageMakerVariantInvocationsPerInstance"},
            "ScaleInCooldown": s.scale_in_cooldown, "ScaleOutCooldown": s.scale_out_cooldown,
        })
    endpoint.say(f"{s.variant}: {s.minimum}-{s.maximum} instances, "
                 f"target {s.target:g} invocations per instance per minute")
