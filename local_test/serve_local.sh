#!/usr/bin/env bash
# Serve a model locally exactly as SageMaker runs the serving image.
#   local_test/serve_local.sh MODEL_DIR [PORT]
# MODEL_DIR holds model.pt + model.json (or a model.tar.gz); it becomes /opt/ml/model.
# PORT (default 8080) is where /ping and /invocations answer. SAGEMAKER_* and DAGM_*
# variables set in the calling shell reach the server (e.g. SAGEMAKER_MULTI_MODEL=true,
# then MODEL_DIR is the directory models are loaded from). With a Docker daemon it runs
# the image (IMAGE, default dagm-defects-serve:latest); without one, the same entry
# command from .venv. Stop it with Ctrl-C (SIGINT) or SIGTERM.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(dirname "$here")"
if [ $# -lt 1 ] || [ $# -gt 2 ] || [ ! -d "$1" ]; then
    sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//' >&2
    [ $# -ge 1 ] && [ ! -d "$1" ] && echo "error: MODEL_DIR $1 is not a directory" >&2
    exit 64
fi
model_dir="$(cd "$1" && pwd)"
port="${2:-8080}"

if [ -z "${NO_DOCKER:-}" ] && docker info >/dev/null 2>&1; then
    args=(--rm --init -p "$port:8080" -v "$model_dir:/opt/ml/model:ro")
    command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && args+=(--gpus all)
    while IFS='=' read -r name _; do
        case "$name" in SAGEMAKER_BIND_TO_PORT | SAGEMAKER_BASE_DIR) ;; SAGEMAKER_* | DAGM_*) args+=(-e "$name") ;; esac
    done < <(env)
    exec docker run "${args[@]}" "${IMAGE:-dagm-defects-serve:latest}" serve
fi
# Without Docker: an /opt/ml per port whose model/ is a link to MODEL_DIR.
base="${TMPDIR:-/tmp}/dagm-serve-local-$port"
rm -rf "$base" && mkdir -p "$base"
ln -s "$model_dir" "$base/model"
export PATH="$repo/.venv/bin:$PATH" SAGEMAKER_BASE_DIR="$base" SAGEMAKER_BIND_TO_PORT="$port"
exec "$repo/docker/entrypoint.sh" serve
