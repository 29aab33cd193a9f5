"""The SageMaker Model Registry as the pipeline keeps it: one model package group per
endpoint, one version per trained model with the evidence a reviewer needs, and the
Approved versions a deploy may take.

A version holds the serving image (by digest) and model.tar.gz; ModelMetrics point at the
job's own evaluation.json, copied beside its output.tar.gz; CustomerMetadataProperties carry
the test AP, AUROC and threshold, the AP of every class, the training job, dataset,
profile, commit and MLflow run. A model that passed the automatic quality gate is
registered PendingManualApproval, one that failed it Rejected with the gate's reasons as
its description: nothing trained is dropped, and only a reviewer's approval makes a
version deployable.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from botocore.exceptions import ClientError

from dagm_deploy.errors import Refused
from dagm_deploy.options import Options, name_part

# What the serving image accepts and answers (serve/dagm_serve/codec.py).
CONTENT_TYPES = ["image/png", "image/jpeg", "application/x-npy"]
RESPONSE_TYPES = ["application/json", "application/jsonlines", "image/png", "application/x-npy"]
PENDING, APPROVED, REJECTED = "PendingManualApproval", "Approved", "Rejected"
DESCRIPTION_LIMIT = 1024
METADATA_VALUE_LIMIT = 256
# CustomerMetadataValue's pattern: letters, numbers, spaces and _.:/=+-@
_UNSAFE = re.compile(r"[^\w\s.:/=+\-@]")


@dataclass
class Evidence:
    """What a trained model is registered with."""

    job: str
    model_data: str
    evaluation: dict  # the job's evaluation.json, with "mlflow": its run record or None
    evaluation_uri: str  # the same file, as its own S3 object
    dataset: str
    profile: str | None = None
    commit: str | None = None

    def metadata(self) -> dict[str, str]:
        overall, run = self.evaluation["overall"], self.evaluation.get("mlflow") or {}
        values = {"training-job": self.job, "dataset": self.dataset, "profile": self.profile, "commit": self.commit,
                  "mlflow-run-id": run.get("server_run_id") or run.get("run_id"),
                  "mlflow-tracking-uri": run.get("tracking_uri"),
                  "test-ap": overall.get("ap"), "test-auroc": overall.get("auroc"),
                  "threshold": self.evaluation.get("threshold")}
        values.update({f"ap-class-{name}": scores.get("ap") for name, scores in self.evaluation["per_class"].items()})
        return {key: _metadata_value(value) for key, value in values.items() if value is not None}


def _metadata_value(value) -> str:
    text = repr(float(value)) if isinstance(value, float) else str(value)
    return _UNSAFE.sub("-", text)[:METADATA_VALUE_LIMIT]


@dataclass
class Package:
    """One version of a group, as a deploy needs it."""

    arn: str
    group: str
    version: int
    status: str
    image: str
    model_data: str
    metadata: dict[str, str]

    @property
    def label(self) -> str:
        return f"{self.group} version {self.version}"


def ensure_group(sagemaker, group: str) -> None:
    try:
        sagemaker.describe_model_package_group(ModelPackageGroupName=group)
    except ClientError as error:
        if "does not exist" not in str(error):
            raise
        sagemaker.create_model_package_group(
            ModelPackageGroupName=group, ModelPackageGroupDescription="DAGM surface-defect models (dagm-defects)")


def register(sagemaker, group: str, image: str, evidence: Evidence, instance_types: list[str],
             gate_reasons: list[str] | None = None) -> str:
    """A new version of `group`: PendingManualApproval, or Rejected when the gate gave reasons.
    The package's ARN."""
    ensure_group(sagemaker, group)
    ap = evidence.evaluation["overall"].get("ap")
    if gate_reasons:
        status, description = REJECTED, "Quality gate failed: " + "; ".join(gate_reasons)
    else:
        # A good-only test set has no AP: the gate judged its false rejects alone.
        measured = "no test AP (no defective test image)" if ap is None else f"test AP {ap:.4f}"
        status, description = PENDING, f"Quality gate passed: {measured}; trained by {evidence.job}"
    request = {
        "ModelPackageGroupName": group,
        "ModelPackageDescription": description[:DESCRIPTION_LIMIT],
        "ModelApprovalStatus": status,
        "InferenceSpecification": {
            "Containers": [{"Image": image, "ModelDataUrl": evidence.model_data}],
            "SupportedContentTypes": CONTENT_TYPES, "SupportedResponseMIMETypes": RESPONSE_TYPES,
            "SupportedRealtimeInferenceInstanceTypes": instance_types},
        "ModelMetrics": {"ModelQuality": {"Statistics": {"ContentType": "application/json",
                                                         "S3Uri": evidence.evaluation_uri}}},
        "MetadataProperties": {"GeneratedBy": evidence.job, **({"CommitId": evidence.commit} if evidence.commit else {})},
        "CustomerMetadataProperties": evidence.metadata(),
    }
    return sagemaker.create_model_package(**request)["ModelPackageArn"]


def describe(sagemaker, arn: str) -> Package:
    try:
        described = sagemaker.describe_model_package(ModelPackageName=arn)
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") == "ValidationException":
            raise Refused(f"model package {arn}: {error.response['Error'].get('Message', error)}") from None
        raise
    container = described["InferenceSpecification"]["Containers"][0]
    return Package(described["ModelPackageArn"], described.get("ModelPackageGroupName", ""),
                   int(described.get("ModelPackageVersion") or 0), described.get("ModelApprovalStatus", ""),
                   container["Image"], container.get("ModelDataUrl", ""),
                   dict(described.get("CustomerMetadataProperties") or {}))


def versions(sagemaker, group: str) -> list[dict]:
    """Every version's summary, newest first."""
    pages = sagemaker.get_paginator("list_model_packages").paginate(ModelPackageGroupName=group)
    summaries = [summary for page in pages for summary in page["ModelPackageSummaryList"]]
    return sorted(summaries, key=lambda s: s.get("ModelPackageVersion") or 0, reverse=True)


def newest_approved(sagemaker, group: str) -> Package:
    """The group's highest Approved version; Refused naming what the group holds when none is."""
    try:
        summaries = versions(sagemaker, group)
    except ClientError as error:
        if "does not exist" in str(error):
            raise Refused(f"model package group {group} does not exist") from None
        raise
    for summary in summaries:
        if summary.get("ModelApprovalStatus") == APPROVED:
            return describe(sagemaker, summary["ModelPackageArn"])
    held = ", ".join(f"{s.get('ModelPackageVersion')} {s.get('ModelApprovalStatus')}" for s in summaries) or "none"
    raise Refused(f"model package group {group} has no Approved version (versions: {held})")


def deployable(package: Package) -> Package:
    if package.status != APPROVED:
        raise Refused(f"model package {package.arn} is {package.status or 'without an approval status'}, "
                      f"not Approved: only an approved model may be deployed")
    return package


def for_rollout(sagemaker, o: Options) -> Options:
    """`o` with the registered model it names (the group's newest Approved version, or the
    package given): its ARN, image, model data, and a version named after it. Refused unless
    that package is Approved. Options naming an image and model data come back as they are."""
    if o.package_group:
        package = newest_approved(sagemaker, o.package_group)
    elif o.package:
        package = deployable(describe(sagemaker, o.package))
    else:
        return o
    return replace(o, package=package.arn, image=package.image, model_data=package.model_data,
                   version=name_part(f"{package.group[:30]}-{package.version}", 40))
