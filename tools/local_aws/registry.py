"""The SageMaker Model Registry as AWS keeps it, where moto only stores packages.

- CreateModelPackage: a version in a group is `PendingManualApproval` unless the request
  says otherwise, and is numbered after the highest version the group ever had (AWS never
  reuses a deleted version's number; moto counts the versions left). Its
  CustomerMetadataProperties and ModelPackageDescription are checked against the API
  model's constraints, as are UpdateModelPackage's.
- UpdateModelPackage changes what it is given and keeps the rest: given metadata merges
  into the package's, CustomerMetadataPropertiesToRemove go, and an omitted approval
  status or ApprovalDescription stays (moto clears them).
- Each new version and each update puts a "SageMaker Model Package State Change" event on
  the default event bus (detail: the package as DescribeModelPackage shows it, times in
  epoch milliseconds), so every matching rule's targets fire, CodeBuild ones included
  (builds.py).
- DeleteModelPackage (name or ARN) and DeleteModelPackageGroup, which moto lacks. A group
  that still holds versions is refused with ConflictException, the one error the API
  reference lists for it; a missing package or group is a ValidationException, as
  DescribeModelPackage and DescribeModelPackageGroup answer.
- CreateModel from a package (a container naming ModelPackageName) is refused when the
  package does not exist; its endpoint runs the package's first inference container with
  the model's Environment over the package container's (`container`).
"""

from __future__ import annotations

import json
import unicodedata
from datetime import datetime, timezone
from typing import Any

from moto.core.responses import EmptyResult
from moto.events.models import events_backends
from moto.sagemaker import models as sagemaker_models
from moto.sagemaker import responses as sagemaker_responses
from moto.sagemaker.exceptions import AWSValidationException, ConflictException, ValidationError

PENDING = "PendingManualApproval"
# service-2.json: CustomerMetadataMap, CustomerMetadataKey, CustomerMetadataValue, EntityDescription.
MAX_METADATA_ENTRIES, MAX_METADATA_KEY, MAX_METADATA_VALUE, MAX_DESCRIPTION = 50, 128, 256, 1024
# The keys' and values' pattern: [\p{L}\p{Z}\p{N}_.:\/=+\-@]
METADATA_PUNCTUATION = frozenset("_.:/=+-@")


def _metadata_text_problem(what: str, text: str, limit: int) -> str | None:
    if not 1 <= len(text) <= limit:
        return f"CustomerMetadataProperties {what} must be 1 to {limit} characters long, not {len(text)}"
    if not all(unicodedata.category(c)[0] in "LZN" or c in METADATA_PUNCTUATION for c in text):
        return f"CustomerMetadataProperties {what} {text!r} may hold only letters, digits, spaces and _.:/=+-@"
    return None


def check_metadata(properties: dict[str, str] | None) -> None:
    if properties is None:
        return
    if not 1 <= len(properties) <= MAX_METADATA_ENTRIES:
        raise ValidationError(
            f"CustomerMetadataProperties must have 1 to {MAX_METADATA_ENTRIES} entries, not {len(properties)}")
    for key, value in properties.items():
        problem = (_metadata_text_problem("key", key, MAX_METADATA_KEY)
                   or _metadata_text_problem(f"value of {key!r}", value, MAX_METADATA_VALUE))
        if problem:
            raise ValidationError(problem)


def check_description(description: str | None) -> None:
    if description is None:
        return
    if len(description) > MAX_DESCRIPTION:
        raise ValidationError(f"ModelPackageDescription must be at most {MAX_DESCRIPTION} characters, "
                              f"not {len(description)}")
    # EntityDescription's pattern admits every Unicode category but the control ones (C*).
    if any(unicodedata.category(c)[0] == "C" for c in description):
        raise ValidationError("ModelPackageDescription may not hold control characters (newlines, tabs, ...)")


def _create_version(backend, group_name: str, approval_status: str | None, rest: dict[str, Any]):
    group = backend.model_package_groups.get(group_name)
    if group is None:
        raise AWSValidationException(f"Model Package Group {group_name} does not exist.")
    # Kept on the group, so a group made anew starts at 1; DescribeModelPackageGroup lists
    # only its own fields, so this one stays out of the answer.
    group.highest_version = getattr(group, "highest_version", 0) + 1
    package = sagemaker_models.ModelPackage(
        model_package_name=group_name, model_package_group_name=group_name,
        model_package_version=group.highest_version, model_approval_status=approval_status or PENDING,
        approval_description=None, region_name=backend.region_name, account_id=backend.account_id,
        model_package_type="Versioned", **rest)
    # As moto registers a version: its ARN, and the group's name for the newest.
    backend.model_package_name_mapping[group_name] = package.arn
    backend.model_package_name_mapping[package.arn] = package.arn
    backend.model_packages[package.arn] = package
    return package


def _epoch_ms(value: datetime) -> int:
    """json.dumps's `default`: a package's only non-JSON values are its (naive UTC) times."""
    return int(value.replace(tzinfo=timezone.utc).timestamp() * 1000)


def announce(backend, package) -> None:
    """The package's state on the default event bus, as SageMaker sends it after a change.
    EventBridge delivers after the call in AWS: a failure here never fails the call."""
    try:
        events_backends[backend.account_id][backend.region_name].put_events([{
            "Source": "aws.sagemaker", "DetailType": "SageMaker Model Package State Change",
            "Resources": [package.arn], "Detail": json.dumps(package.gen_response_object(), default=_epoch_ms)}])
    except Exception as exc:
        print(f"local AWS: state change event of {package.arn} not delivered: {exc!r}", flush=True)


def container(backend, model_name: str) -> dict[str, Any]:
    """The container a model's endpoint runs: its primary (else first) container, or for one
    naming a model package, the package's first inference container under the model's
    Environment over the package container's."""
    model = backend.describe_model(model_name)
    given = model.primary_container or next(iter(model.containers), {})
    if not given.get("ModelPackageName"):
        return given
    package = backend.describe_model_package(given["ModelPackageName"])
    containers = (package.inference_specification or {}).get("Containers") or []
    if not containers:
        raise ValueError(f"model package {package.arn} has no InferenceSpecification containers")
    environment = {**(containers[0].get("Environment") or {}), **(given.get("Environment") or {})}
    return {**containers[0], "Environment": environment}


def _delete_action(backend_method: str, parameter: str):
    def action(self):
        getattr(self.sagemaker_backend, backend_method)(self._get_param(parameter))
        return EmptyResult()

    return action


def install() -> None:
    Backend = sagemaker_models.SageMakerModelBackend
    original_create, original_update = Backend.create_model_package, Backend.update_model_package
    original_create_model = Backend.create_model

    def create_model_package(self, model_package_name=None, model_package_group_name=None,
                             model_approval_status=None, **rest):
        check_description(rest.get("model_package_description"))
        check_metadata(rest.get("customer_metadata_properties"))
        if model_package_name or not model_package_group_name:  # unversioned, or moto's refusal of both/neither
            return original_create(self, model_package_name=model_package_name,
                                   model_package_group_name=model_package_group_name,
                                   model_approval_status=model_approval_status, **rest)
        package = _create_version(self, model_package_group_name, model_approval_status, rest)
        announce(self, package)
        return package.arn

    def update_model_package(self, model_package_arn, model_approval_status, approval_description,
                             customer_metadata_properties, customer_metadata_properties_to_remove,
                             additional_inference_specifications_to_add):
        check_metadata(customer_metadata_properties)
        package = self.describe_model_package(model_package_arn)
        merged = {**(package.customer_metadata_properties or {}), **(customer_metadata_properties or {})}
        original_update(self, model_package_arn, model_approval_status or package.model_approval_status,
                        package.approval_description if approval_description is None else approval_description,
                        merged, customer_metadata_properties_to_remove, additional_inference_specifications_to_add)
        # All removed: DescribeModelPackage leaves the field out, as before any was set.
        package.customer_metadata_properties = package.customer_metadata_properties or None
        announce(self, package)
        return package.arn

    def delete_model_package(self, model_package_name):
        package = self.describe_model_package(model_package_name)
        del self.model_packages[package.arn]
        for name in [n for n, arn in self.model_package_name_mapping.items() if arn == package.arn]:
            del self.model_package_name_mapping[name]

    def delete_model_package_group(self, model_package_group_name):
        name = model_package_group_name.rsplit("/", 1)[-1]  # a name or the group's ARN
        self.describe_model_package_group(name)
        versions = sorted(p.model_package_version for p in self.model_packages.values()
                          if p.model_package_group_name == name)
        if versions:
            raise ConflictException(f"Model package group {name} still holds versions "
                                    f"{', '.join(map(str, versions))}: delete them first.")
        del self.model_package_groups[name]

    def create_model(self, model_name, execution_role_arn, primary_container, vpc_config, containers, tags):
        for given in [primary_container or {}, *(containers or [])]:
            if given.get("ModelPackageName"):
                self.describe_model_package(given["ModelPackageName"])  # ValidationException when missing
        return original_create_model(self, model_name, execution_role_arn, primary_container, vpc_config,
                                     containers, tags)

    Backend.create_model_package = create_model_package
    Backend.update_model_package = update_model_package
    Backend.delete_model_package = delete_model_package
    Backend.delete_model_package_group = delete_model_package_group
    Backend.create_model = create_model
    Response = sagemaker_responses.SageMakerResponse
    Response.delete_model_package = _delete_action("delete_model_package", "ModelPackageName")
    Response.delete_model_package_group = _delete_action("delete_model_package_group", "ModelPackageGroupName")
