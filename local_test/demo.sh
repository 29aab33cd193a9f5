#!/usr/bin/env bash
# `make demo`: sample DAGM data -> training job (the image's `train` entry) -> results ->
# serving (the image's `serve` entry) -> predictions over HTTP.
#   local_test/demo.sh [OUT_DIR]   (default demo-output; DEMO_CLASSES, DEMO_IMAGES, DEMO_SIZE,
#   DEMO_HYPERPARAMETERS, a JSON file or text, and DEMO_PORT, default 8080, override)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-demo-output}"
# Class 8 is the generator's hard case (1-px scratches calibrated on genuine Class 8).
# Two classes: at width 0.125 one model for 3,4,6 and 8 never learned class 8 (docs/train.md).
classes="${DEMO_CLASSES:-3,8}"
images="${DEMO_IMAGES:-300}"
size="${DEMO_SIZE:-512}"
hyperparameters="${DEMO_HYPERPARAMETERS:-$here/hyperparameters/real-cpu.json}"
started=$(date +%s)

echo "== 1/4 sample DAGM data: classes $classes, $images images per split, ${size}x$size -> $out/data"
rm -rf "$out/data"
dagm-synth "$out/data" --classes "$classes" --images-per-split "$images" --size "$size" --seed 0

echo "== 2/4 training job (local_test/train_local.sh: the image's entry command, /opt/ml = $out/opt_ml), hyperparameters $hyperparameters"
rm -rf "$out/opt_ml"
"$here/train_local.sh" "$out/data" "$out/opt_ml" "$hyperparameters"

echo "== 3/4 evaluation on the Test split ($out/opt_ml/output/data: evaluation.json, pr_roc.png, confusion.png, masks.png)"
python -m dagm_defects.evaluation.report "$out/opt_ml/output/data/evaluation.json"
echo "model artefact: $(ls "$out/opt_ml/model" | tr '\n' ' ')in $out/opt_ml/model"
store="$(cd "$out/opt_ml/output/data/mlflow" && pwd)"
python3 - "$out/opt_ml/output/data/report.json" <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))
fired = [r["name"] for r in report["rules"] if r["status"] == "fired"]
print(f"training report: {sys.argv[1][:-4]}html; rules fired: {', '.join(fired) or 'none'} "
      f"(of {len(report['rules'])}); MLflow run {report['mlflow']['run_id']}")
PY
echo "open the MLflow run:  mlflow ui --backend-store-uri sqlite:///$store/mlflow.db   (then http://127.0.0.1:5000)"
echo "compare runs:         dagm-runs compare --store $store"

port="${DEMO_PORT:-8080}"
echo "== 4/4 serving (local_test/serve_local.sh: the image's entry command) on port $port, then predictions"
"$here/serve_local.sh" "$out/opt_ml/model" "$port" > "$out/serve.log" 2>&1 &
server=$!
trap 'kill -TERM "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true' EXIT
for _ in $(seq 1 240); do
    python3 -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:$port/ping', timeout=2)" 2>/dev/null && break
    kill -0 "$server" 2>/dev/null || { cat "$out/serve.log" >&2; echo "error: serve exited" >&2; exit 1; }
    sleep 0.5
done
# The first two defective and two clean Test images of each class (Labels.txt: id, label, file).
samples=()
for class in ${classes//,/ }; do
    dir="$out/data/Class$class/Test"
    while read -r file; do samples+=("$dir/$file"); done < <(
        { awk '$2 == 1 {print $3}' "$dir/Label/Labels.txt" | head -2
          awk '$2 == 0 {print $3}' "$dir/Label/Labels.txt" | head -2; })
done
"$here/predict.sh" "${samples[@]}" --url "http://127.0.0.1:$port"
echo "server log: $out/serve.log (stopped when the demo ends)"
echo "demo finished in $(( $(date +%s) - started )) s"
