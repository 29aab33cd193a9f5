#!/usr/bin/env bash
# `make demo`: sample DAGM data -> training job (the image's `train` entry) -> results.
#   local_test/demo.sh [OUT_DIR]   (default demo-output; DEMO_CLASSES, DEMO_IMAGES override)
# Serving the model arrives with the serving image; until then the demo prints the
# per-class evaluation the training job wrote.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-demo-output}"
classes="${DEMO_CLASSES:-3,4,6}"
images="${DEMO_IMAGES:-300}"
started=$(date +%s)

echo "== 1/3 sample DAGM data: classes $classes, $images images per split, 512x512 -> $out/data"
rm -rf "$out/data"
dagm-synth "$out/data" --classes "$classes" --images-per-split "$images" --seed 0

echo "== 2/3 training job (local_test/train_local.sh: the image's entry command, /opt/ml = $out/opt_ml)"
rm -rf "$out/opt_ml"
"$here/train_local.sh" "$out/data" "$out/opt_ml" "$here/demo_hyperparameters.json"

echo "== 3/3 evaluation on the Test split ($out/opt_ml/output/data: evaluation.json, pr_roc.png, confusion.png, masks.png)"
python -m dagm_defects.evaluation.report "$out/opt_ml/output/data/evaluation.json"
echo "model artefact: $(ls "$out/opt_ml/model" | tr '\n' ' ')in $out/opt_ml/model"
echo "demo finished in $(( $(date +%s) - started )) s"
