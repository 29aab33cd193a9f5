"""Create deploy/pipeline.yml's event-driven resources on the local AWS, from the template:
retraining on new profiles, deploying what is approved in the model registry, and the
hourly capture monitor.

    AWS_ENDPOINT_URL=http://127.0.0.1:4566 .venv/bin/python tools/retraining_stack.py \\
        --bucket dagm-data --endpoint dagm --topic SNS_ARN [--role ARN] [--hosting-role ARN] \\
        [--training-image dagm-defects-train:latest] [--parameter Name=Value ...] \
        [--variable NAME=VALUE ...] [--alarm-period 300]

The data bucket's EventBridge notifications, the RetrainProject, DeployProject and
MonitorProject CodeBuild projects (their buildspecs and every environment variable as the
template computes it from the parameters), the RetrainOnProfile, RetrainOnDrift,
DeployOnApproval and MonitorSchedule rules with their targets, the model package group,
the DriftAlarm and the CapturedDriftAlarm: what a `cloudformation deploy`
of the stack would create for them, with the stack's bucket, topic, role and training
repository given on the command line (the local AWS has no CloudFormation). Then dropping
a profile under the profiles prefix runs the whole flow (dagm-retrain), which registers
the model; approving it (dagm-registry approve) deploys it, as in the cloud. `--parameter`
sets template parameters (e.g. RetrainHyperparameters, BakeSeconds); `--variable` overrides
an environment variable of the projects that have it (e.g. POLL_SECONDS), and
`--alarm-period` the drift alarm's period, to make a demonstration quick. Prints what it
made as JSON.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import boto3
import yaml

TEMPLATE = Path(__file__).resolve().parent.parent / "deploy" / "pipeline.yml"
REGION, ACCOUNT = "us-east-1", "123456789012"


class Tag:
    def __init__(self, name: str, value):
        self.name, self.value = name, value


class Loader(yaml.SafeLoader):
    """CloudFormation YAML: short-form intrinsic functions kept as Tag objects."""


Loader.add_multi_constructor("!", lambda loader, suffix, node: Tag(suffix, (
    loader.construct_scalar(node) if isinstance(node, yaml.ScalarNode) else
    loader.construct_sequence(node, deep=True) if isinstance(node, yaml.SequenceNode) else
    loader.construct_mapping(node, deep=True))))


class Stack:
    """The template's values, resolved against parameters and the given resources."""

    def __init__(self, template: dict, parameters: dict[str, str], resources: dict[str, str]):
        self.template = template
        self.names = {"AWS::Region": REGION, "AWS::AccountId": ACCOUNT, "AWS::Partition": "aws", **resources}
        for name, spec in template["Parameters"].items():
            self.names[name] = str(parameters.get(name, spec.get("Default", "")))
        unknown = set(parameters) - set(template["Parameters"])
        if unknown:
            raise SystemExit(f"retraining_stack: unknown template parameter(s): {', '.join(sorted(unknown))}")

    def resolve(self, value):
        if isinstance(value, dict):
            return {k: self.resolve(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.resolve(v) for v in value]
        if not isinstance(value, Tag):
            return value
        if value.name in ("Ref", "GetAtt"):
            return self.lookup(value.value if isinstance(value.value, str) else ".".join(value.value))
        if value.name == "Sub":
            return re.sub(r"\$\{([^}]+)\}", lambda m: self.lookup(m.group(1)), value.value)
        if value.name == "If":
            condition, when_true, when_false = value.value
            return self.resolve(when_true if self.condition(condition) else when_false)
        raise SystemExit(f"retraining_stack: !{value.name} is not supported here")

    def condition(self, name: str) -> bool:
        spec = self.template["Conditions"][name]
        if isinstance(spec, Tag) and spec.name == "Equals":
            left, right = (self.resolve(v) for v in spec.value)
            return left == right
        raise SystemExit(f"retraining_stack: condition {name} is not an !Equals")

    def lookup(self, name: str) -> str:
        if name not in self.names:
            raise SystemExit(f"retraining_stack: the template refers to {name}, which this script does not provide")
        return self.names[name]

    def properties(self, resource: str) -> dict:
        return self.resolve(self.template["Resources"][resource]["Properties"])


def create(args: argparse.Namespace) -> dict:
    template = yaml.load(TEMPLATE.read_text(), Loader=Loader)
    parameters = dict(item.split("=", 1) for item in args.parameter)
    codebuild, events, cloudwatch = boto3.client("codebuild"), boto3.client("events"), boto3.client("cloudwatch")
    prefix = parameters.get("ProjectName", template["Parameters"]["ProjectName"]["Default"])
    endpoint = parameters.get("EndpointName", args.endpoint)
    alarm_arn = f"arn:aws:cloudwatch:{REGION}:{ACCOUNT}:alarm:{endpoint}"
    resources = {
        "DataBucket": args.bucket, "NotificationTopic": args.topic,
        "TrainingExecutionRole.Arn": args.role, "HostingExecutionRole.Arn": args.hosting_role or args.role,
        "TrainRepository.RepositoryUri": args.training_image, "RetrainEventsRole.Arn": args.role,
        "RetrainRole.Arn": args.role, "DeployRole.Arn": args.role, "DeployEventsRole.Arn": args.role,
        "MonitorRole.Arn": args.role, "MonitorEventsRole.Arn": args.role,
        "MonitorProject.Arn": f"arn:aws:codebuild:{REGION}:{ACCOUNT}:project/{prefix}-monitor",
        "CapturedDriftAlarm.Arn": f"{alarm_arn}-captured-drift",
        "RetrainProject.Arn": f"arn:aws:codebuild:{REGION}:{ACCOUNT}:project/{prefix}-retrain",
        "DeployProject.Arn": f"arn:aws:codebuild:{REGION}:{ACCOUNT}:project/{prefix}-deploy",
        "DriftAlarm.Arn": f"{alarm_arn}-input-drift",
    }
    stack = Stack(template, {"EndpointName": args.endpoint, **parameters}, resources)
    # The deploy lock's table, by the template's name (dagm-deploy creates it when missing).
    stack.names["DeployLockTable"] = stack.properties("DeployLockTable")["TableName"]
    group = stack.properties("ModelPackageGroup")
    stack.names["ModelPackageGroup"] = group["ModelPackageGroupName"]
    stack.names["ModelPackageGroup.ModelPackageGroupArn"] = (
        f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:model-package-group/{group['ModelPackageGroupName']}")
    boto3.client("sagemaker").create_model_package_group(**group)

    boto3.client("s3").put_bucket_notification_configuration(
        Bucket=args.bucket, NotificationConfiguration={"EventBridgeConfiguration": {}})
    overrides = dict(item.split("=", 1) for item in args.variable)
    projects = {name: make_project(codebuild, stack.properties(name), overrides, args.role)
                for name in ("RetrainProject", "DeployProject", "MonitorProject")}
    unknown = set(overrides) - {key for variables in projects.values() for key in variables}
    if unknown:
        raise SystemExit(f"retraining_stack: no project has the variable(s) {', '.join(sorted(unknown))}")
    for alarm_resource in ("DriftAlarm", "CapturedDriftAlarm"):
        alarm = stack.properties(alarm_resource)
        alarm.pop("AlarmActions")  # the topic hears from retrain.py itself; the local AWS sends no alarm actions
        if args.alarm_period and alarm_resource == "DriftAlarm":
            alarm.update(Period=args.alarm_period, EvaluationPeriods=1)
        cloudwatch.put_metric_alarm(**{**alarm, "Threshold": float(alarm["Threshold"])})
    alarm = stack.properties("DriftAlarm")
    rules = {}
    for rule_name in ("RetrainOnProfile", "RetrainOnDrift", "DeployOnApproval", "MonitorSchedule"):
        rule = stack.properties(rule_name)
        when = ({"ScheduleExpression": rule["ScheduleExpression"]} if "ScheduleExpression" in rule
                else {"EventPattern": json.dumps(rule["EventPattern"])})
        events.put_rule(Name=rule_name, Description=rule["Description"], **when)
        events.put_targets(Rule=rule_name, Targets=rule["Targets"])
        rules[rule_name] = rule.get("EventPattern") or rule["ScheduleExpression"]
    return {"bucket": args.bucket, "project": stack.properties("RetrainProject")["Name"],
            "deploy_project": stack.properties("DeployProject")["Name"], "model_package_group": group["ModelPackageGroupName"],
            "monitor_project": stack.properties("MonitorProject")["Name"],
            "alarm": alarm["AlarmName"], "captured_alarm": stack.properties("CapturedDriftAlarm")["AlarmName"],
            "rules": rules, "environment": projects["RetrainProject"],
            "deploy_environment": projects["DeployProject"], "monitor_environment": projects["MonitorProject"]}


def make_project(codebuild, project: dict, overrides: dict[str, str], role: str) -> dict[str, str]:
    """The CodeBuild project as the template declares it, with `overrides` for the variables
    it has; its environment variables."""
    variables = {v["Name"]: str(v["Value"]) for v in project["Environment"]["EnvironmentVariables"]}
    variables.update({name: value for name, value in overrides.items() if name in variables})
    codebuild.create_project(
        name=project["Name"], serviceRole=role, artifacts={"type": project["Artifacts"]["Type"]},
        source={"type": project["Source"]["Type"], "location": project["Source"]["Location"],
                "buildspec": project["Source"]["BuildSpec"]},
        environment={"type": project["Environment"]["Type"], "image": project["Environment"]["Image"],
                     "computeType": project["Environment"]["ComputeType"],
                     "environmentVariables": [{"name": name, "value": value} for name, value in variables.items()]})
    return variables


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bucket", required=True, help="the stack's data bucket")
    parser.add_argument("--endpoint", required=True, help="the EndpointName parameter")
    parser.add_argument("--topic", required=True, help="the stack's SNS topic ARN")
    parser.add_argument("--role", default=f"arn:aws:iam::{ACCOUNT}:role/sagemaker-execution",
                        help="stands for the stack's roles (the training execution role among them)")
    parser.add_argument("--hosting-role", help="the hosting execution role (default: --role)")
    parser.add_argument("--training-image", default="dagm-defects-train:latest")
    parser.add_argument("--parameter", nargs="*", default=[], metavar="Name=Value", help="template parameters")
    parser.add_argument("--variable", nargs="*", default=[], metavar="NAME=VALUE",
                        help="environment overrides for the RetrainProject and DeployProject variables of that name")
    parser.add_argument("--alarm-period", type=int, help="seconds per drift alarm evaluation (one period)")
    args = parser.parse_args(argv)
    if any("=" not in item for item in args.parameter + args.variable):
        parser.error("--parameter and --variable take Name=Value items")
    print(json.dumps(create(args), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
