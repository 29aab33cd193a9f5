"""Autoscaling of one variant: target tracking on SageMakerVariantInvocationsPerInstance,
or for an asynchronous endpoint on its queue (ApproximateBacklogSizePerInstance) down to
zero instances, with the step policy AWS's async guide adds to scale out from zero as soon
as a request waits (HasBacklogWithoutCapacity), not only once the backlog passes the target."""

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
    # Queued requests per instance to hold (asynchronous endpoints); None: invocations.
    backlog: float | None = None


def autoscale(endpoint: Endpoint, s: Scaling) -> None:
    described = endpoint.describe()
    if described is None:
        raise Refused("no such endpoint")
    names = [v["VariantName"] for v in described.get("ProductionVariants", [])]
    if s.variant not in names:
        raise Refused(f"variant {s.variant!r} is not on the endpoint (it has {', '.join(names)})")
    asynchronous = bool(endpoint.config_extras(described["EndpointConfigName"]).get("AsyncInferenceConfig"))
    if s.backlog is not None and not asynchronous:
        raise Refused("--backlog-per-instance is for asynchronous endpoints: this one is real-time")
    lowest = 0 if s.backlog is not None else 1
    if not lowest <= s.minimum <= s.maximum or s.maximum < 1:
        raise Refused(f"--min {s.minimum} / --max {s.maximum}: need {lowest} <= min <= max, max >= 1"
                      + ("" if lowest == 0 else " (only an asynchronous endpoint scales to zero)"))
    scaling = aws.control("application-autoscaling")
    resource = f"endpoint/{endpoint.name}/variant/{s.variant}"
    dimension = "sagemaker:variant:DesiredInstanceCount"
    scaling.register_scalable_target(ServiceNamespace="sagemaker", ResourceId=resource,
                                     ScalableDimension=dimension, MinCapacity=s.minimum, MaxCapacity=s.maximum)
    if s.backlog is not None:
        _on_backlog(endpoint, s, scaling, resource, dimension)
        return
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


def _on_backlog(endpoint: Endpoint, s: Scaling, scaling, resource: str, dimension: str) -> None:
    queue = [{"Name": "EndpointName", "Value": endpoint.name}]
    scaling.put_scaling_policy(
        PolicyName=f"{endpoint.name}-{s.variant}-backlog", ServiceNamespace="sagemaker",
        ResourceId=resource, ScalableDimension=dimension, PolicyType="TargetTrackingScaling",
        TargetTrackingScalingPolicyConfiguration={
            "TargetValue": s.backlog,
            "CustomizedMetricSpecification": {"MetricName": "ApproximateBacklogSizePerInstance",
                                              "Namespace": "AWS/SageMaker", "Dimensions": queue,
                                              "Statistic": "Average"},
            "ScaleInCooldown": s.scale_in_cooldown, "ScaleOutCooldown": s.scale_out_cooldown,
        })
    from_zero = scaling.put_scaling_policy(
        PolicyName=f"{endpoint.name}-{s.variant}-from-zero", ServiceNamespace="sagemaker",
        ResourceId=resource, ScalableDimension=dimension, PolicyType="StepScaling",
        StepScalingPolicyConfiguration={
            "AdjustmentType": "ChangeInCapacity", "MetricAggregationType": "Average",
            "Cooldown": s.scale_out_cooldown,
            "StepAdjustments": [{"MetricIntervalLowerBound": 0, "ScalingAdjustment": 1}],
        })["PolicyARN"]
    aws.control("cloudwatch").put_metric_alarm(
        AlarmName=f"{endpoint.name}-{s.variant}-backlog-without-capacity", MetricName="HasBacklogWithoutCapacity",
        Namespace="AWS/SageMaker", Dimensions=queue, Statistic="Average", Period=60, EvaluationPeriods=2,
        DatapointsToAlarm=2, Threshold=1, ComparisonOperator="GreaterThanOrEqualToThreshold",
        TreatMissingData="missing", AlarmActions=[from_zero])
    endpoint.say(f"{s.variant}: {s.minimum}-{s.maximum} instances, target {s.backlog:g} queued requests "
                 f"per instance; a request waiting with no instance scales out from zero")
