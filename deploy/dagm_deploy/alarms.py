"""The CloudWatch alarms a rollout creates on its new variant and watches."""

from __future__ import annotations

from dagm_deploy import aws


class Alarms:
    def __init__(self, endpoint: str):
        self.endpoint = endpoint
        self.cloudwatch = aws.control("cloudwatch")

    def names(self, variant: str) -> list[str]:
        return [f"{self.endpoint}-{variant}-5xx", f"{self.endpoint}-{variant}-latency"]

    def create(self, variant: str, latency_ms: float, period: int) -> list[str]:
        """Any 5xx, or a ModelLatency average above `latency_ms`, within one `period`."""
        dims = [{"Name": "EndpointName", "Value": self.endpoint}, {"Name": "VariantName", "Value": variant}]
        five, latency = self.names(variant)
        common = dict(Namespace="AWS/SageMaker", Dimensions=dims, Period=period, EvaluationPeriods=1,
                      TreatMissingData="notBreaching")
        self.cloudwatch.put_metric_alarm(AlarmName=five, MetricName="Invocation5XXErrors", Statistic="Sum",
                                         Threshold=0, ComparisonOperator="GreaterThanThreshold", **common)
        self.cloudwatch.put_metric_alarm(AlarmName=latency, MetricName="ModelLatency", Statistic="Average",
                                         Threshold=latency_ms * 1000, ComparisonOperator="GreaterThanThreshold",
                                         **common)
        return [five, latency]

    def states(self, names: list[str]) -> dict[str, str]:
        if not names:
            return {}
        alarms = self.cloudwatch.describe_alarms(AlarmNames=names)["MetricAlarms"]
        return {a["AlarmName"]: a["StateValue"] for a in alarms}

    def firing(self, names: list[str]) -> list[str]:
        return [name for name, state in self.states(names).items() if state == "ALARM"]

    def delete(self, names: list[str]) -> None:
        if names:
            self.cloudwatch.delete_alarms(AlarmNames=names)

    def own(self) -> list[str]:
        """Every alarm this tool made on the endpoint. A deploy starts by removing them:
        once the endpoint is InService none is watching anything (a rollout interrupted
        while SageMaker still updated leaves them, on purpose, for the next run)."""
        pages = self.cloudwatch.get_paginator("describe_alarms").paginate(AlarmNamePrefix=f"{self.endpoint}-v-")
        return [a["AlarmName"] for page in pages for a in page["MetricAlarms"]
                if a["AlarmName"].endswith(("-5xx", "-latency"))]
