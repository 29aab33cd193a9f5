#!/usr/bin/env bash
# The images' ENTRYPOINT. SageMaker starts a training container as `IMAGE train` and a
# serving container as `IMAGE serve`; local_test/ and the tests run this same script, so
# what they exercise is exactly what the images run. `exec` keeps one process, so
# SIGTERM from SageMaker (or `docker stop`) reaches Python directly.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

usage() {
    echo "usage: $(basename "$0") train|serve" >&2
    echo "  train   run the SageMaker training job laid out under \${SAGEMAKER_BASE_DIR:-/opt/ml}" >&2
    echo "  serve   serve \${SAGEMAKER_BASE_DIR:-/opt/ml}/model on port \${SAGEMAKER_BIND_TO_PORT:-8080}" >&2
}

command="${1:-}"
case "$command" in
    train)
        shift
        base="${SAGEMAKER_BASE_DIR:-/opt/ml}"
        # The toolkit exits 0, silently, when it cannot write output/failure (measured
        # with an empty /opt/ml), so make sure it can, and name a missing job layout.
        mkdir -p "$base/output"
        if [ ! -f "$base/input/config/resourceconfig.json" ]; then
            message="$base/input/config/resourceconfig.json is missing: this is not a SageMaker training job layout (SageMaker writes it; locally, use local_test/train_local.sh)"
            echo "error: $message" >&2
            echo "$message" > "$base/output/failure"
            exit 1
        fi
        export SAGEMAKER_TRAINING_MODULE="${SAGEMAKER_TRAINING_MODULE:-dagm_defects.training.launch:main}"
        exec train "$@"
        ;;
    serve)
        shift
        export MMS_CONFIG_FILE="${MMS_CONFIG_FILE:-$here/mms.properties}"
        export DAGM_MMS_LOG_CONFIG="${DAGM_MMS_LOG_CONFIG:-$here/mms-log4j2.xml}"
        exec dagm-serve "$@"
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
