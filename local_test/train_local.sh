#!/usr/bin/env bash
# Run a training job locally exactly as SageMaker runs the training image.
#   local_test/train_local.sh DATA_DIR WORK_DIR [HYPERPARAMETERS_JSON]
# DATA_DIR is a DAGM-layout dataset (the `train` channel); WORK_DIR becomes /opt/ml
# (model/, output/, checkpoints/ appear there). HYPERPARAMETERS_JSON is a JSON object or
# a file holding one. EXTRA_CHANNELS="model=DIR,test=DIR" adds channels (`model`: the
# serving model to compare against or warm-start from). With a Docker daemon it runs the
# image (IMAGE, default dagm-defects-train:latest); without one, the same entry command
# from .venv. The exit code is the job's.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(dirname "$here")"
if [ $# -lt 2 ] || [ $# -gt 3 ]; then
    sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 64
fi
data_dir="$(cd "$1" && pwd)"
mkdir -p "$2"
work_dir="$(cd "$2" && pwd)"
python3 "$here/opt_ml_layout.py" "$data_dir" "$work_dir" "${3:-}"

if [ -z "${NO_DOCKER:-}" ] && docker info >/dev/null 2>&1; then
    gpus=()
    command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && gpus=(--gpus all)
    mounts=()
    for link in "$work_dir"/input/data/*; do  # the container mounts each channel's directory instead
        mounts+=(-v "$(readlink -f "$link"):/opt/ml/input/data/$(basename "$link"):ro")
        rm "$link"
    done
    exec docker run --rm "${gpus[@]}" --shm-size=2g -v "$work_dir:/opt/ml" "${mounts[@]}" \
        "${IMAGE:-dagm-defects-train:latest}" train
fi
export PATH="$repo/.venv/bin:$PATH" SAGEMAKER_BASE_DIR="$work_dir"
exec "$repo/docker/entrypoint.sh" train
