#!/usr/bin/env bash
# Create the ECR repositories for both images if they do not exist yet (idempotent).
#   tools/create_repositories.sh [REPOSITORY...]
# Defaults: $TRAIN_REPOSITORY and $SERVE_REPOSITORY (dagm-defects-train/-serve). Region
# and account come from the AWS CLI's usual configuration (AWS_DEFAULT_REGION, ...).
set -euo pipefail
if [ $# -eq 0 ]; then
    set -- "${TRAIN_REPOSITORY:-dagm-defects-train}" "${SERVE_REPOSITORY:-dagm-defects-serve}"
fi
for repository in "$@"; do
    if aws ecr describe-repositories --repository-names "$repository" >/dev/null 2>&1; then
        echo "ECR repository $repository exists"
    else
        aws ecr create-repository --repository-name "$repository" \
            --image-scanning-configuration scanOnPush=true --image-tag-mutability MUTABLE >/dev/null
        echo "ECR repository $repository created"
    fi
done
