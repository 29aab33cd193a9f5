#!/usr/bin/env bash
# The images' ENTRYPOINT. SageMaker starts a training container as `IMAGE train` and a
# serving container as `IMAGE serve`; local_test/ and the tests run this same script, so
# what they exercise is exactly what the images run. `exec` keeps one process, so
# SIGTERM from SageMaker (or `docker stop`) reaches Python directly.
set -euo pipefail

usage() {
    echo "usage: $(basename "$0") train" >&2
    echo "  train   run the SageMaker training job laid out under \${SAGEMAKER_BASE_DIR:-/opt/ml}" >&2
}

command="${1:-}"
case "$command" in
    train)
        shift
        export SAGEMAKER_TRAINING_MODULE="${SAGEMAKER_TRAINING_MODULE:-dagm_defects.training.launch:main}"
        exec train "$@"
        ;;
    "" | -h | --help)
        usage
        exit 64
        ;;
    *)
        echo "error: unknown command '$command'" >&2
        usage
        exit 64
        ;;
esac
