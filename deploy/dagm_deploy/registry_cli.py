"""dagm-registry: review the models the pipeline registered, and approve or reject them.

    dagm-registry list --group NAME
    dagm-registry show --model-package ARN
    dagm-registry approve --model-package ARN [--note TEXT]
    dagm-registry reject --model-package ARN --note TEXT

`list` prints one line per version, newest first: version, approval status, test AP,
training job, and the description (the quality gate's verdict). `show` prints a version's
evidence as JSON: metadata, metrics, image and model data. `approve` and `reject` change
its ModelApprovalStatus (UpdateModelPackage, which pipeline.yml allows the approver role
alone) with the note as ApprovalDescription; the approval event then deploys the group's
newest Approved version, and rejecting the serving version returns the endpoint to the
previous Approved one. Exit 0 when done, 1 with a one-line reason on an AWS error or an
unknown package.
"""

from __future__ import annotations

import argparse
import json
import sys

from botocore.exceptions import BotoCoreError, ClientError

from dagm_deploy import aws, registry
from dagm_deploy.errors import Refused


def listing(sagemaker, group: str) -> str:
    rows = []
    for summary in registry.versions(sagemaker, group):
        package = sagemaker.describe_model_package(ModelPackageName=summary["ModelPackageArn"])
        metadata = package.get("CustomerMetadataProperties") or {}
        rows.append(f"{package.get('ModelPackageVersion'):>4}  {package.get('ModelApprovalStatus', ''):<21}  "
                    f"{metadata.get('test-ap', 'n/a')[:6]:>6}  {metadata.get('training-job', ''):<28}  "
                    f"{package.get('ModelPackageDescription', '')}")
    return "\n".join(["   #  status                 test AP  training job                  description", *rows]
                     if rows else [f"model package group {group} has no versions"])


def decide(sagemaker, arn: str, status: str, note: str | None) -> str:
    before = registry.describe(sagemaker, arn)
    sagemaker.update_model_package(ModelPackageArn=arn, ModelApprovalStatus=status,
                                   **({"ApprovalDescription": note} if note else {}))
    return f"{before.label}: {before.status} -> {status}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dagm-registry", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="the group's versions, newest first").add_argument("--group", required=True)
    commands.add_parser("show", help="one version's evidence").add_argument("--model-package", required=True)
    approve = commands.add_parser("approve", help="make a version deployable (starts its deploy)")
    approve.add_argument("--model-package", required=True)
    approve.add_argument("--note", help="why: kept as the package's ApprovalDescription")
    reject = commands.add_parser("reject", help="refuse a version (rolls the endpoint back if it serves)")
    reject.add_argument("--model-package", required=True)
    reject.add_argument("--note", required=True, help="why: kept as the package's ApprovalDescription")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    sagemaker = aws.control("sagemaker")
    try:
        if args.command == "list":
            print(listing(sagemaker, args.group))
        elif args.command == "show":
            print(json.dumps(sagemaker.describe_model_package(ModelPackageName=args.model_package), indent=2,
                             default=str))
        else:
            status = registry.APPROVED if args.command == "approve" else registry.REJECTED
            print(decide(sagemaker, args.model_package, status, args.note))
    except Refused as refused:
        print(f"registry: {refused}", file=sys.stderr)
        return 1
    except (ClientError, BotoCoreError) as error:
        print(f"registry: AWS error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
