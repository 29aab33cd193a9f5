"""The recommended CPU configuration on genuine DAGM images, trained as a user trains it.

For each seed, runs the training image's entry command (``local_test/train_local.sh``) on
``../shared/data/dagm-real`` (genuine Class 8 Train images; a user's clone does not have
them) with ``local_test/hyperparameters/real-cpu.json``, streaming the job's own progress
lines. The folder holds only a Train split, so the job validates on a stratified 20% of
it and evaluates on that same held-out part (the report says so). Then scores the
served artefact's batch inference speed at its input size on those genuine images.

Prints JSON: per seed the held-out AP, AUROC, recall and precision at the threshold the
job chose, training minutes (the whole job), and batch inference images/s; then the
worst seed's figures. Without the data it says what is missing and exits 0.
Usage: python bench/real_dagm.py [--data DIR] [--config FILE] [--seeds 0,1,2] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from dagm_defects.artifact import load_artifact
from dagm_defects.data.arrays import load_arrays
from dagm_defects.data.reader import read_index
from dagm_defects.model import inference_copy, predict
from dagm_defects.progress import write_line

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATA = REPO.parent / "shared" / "data" / "dagm-real"
DEFAULT_CONFIG = REPO / "local_test" / "hyperparameters" / "real-cpu.json"
INFERENCE_BATCH = 16


def train(data: Path, work: Path, hyperparameters: dict) -> float:
    """Run one job through train_local.sh, its lines prefixed; return its wall minutes."""
    started = time.monotonic()
    job = subprocess.Popen(
        [str(REPO / "local_test" / "train_local.sh"), str(data), str(work), json.dumps(hyperparameters)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_job_env(),
    )
    for line in job.stdout:
        write_line(f"[seed {hyperparameters['seed']}] {line.rstrip()}")
    if job.wait():
        failure = work / "output" / "failure"
        reason = failure.read_text().splitlines()[0] if failure.exists() else f"exit code {job.returncode}"
        raise SystemExit(f"training job for seed {hyperparameters['seed']} failed: {reason}")
    return (time.monotonic() - started) / 60


def _job_env() -> dict:
    # Without a Docker daemon train_local.sh runs the entry command from .venv.
    return {**os.environ, "PATH": f"{REPO / '.venv' / 'bin'}:{os.environ['PATH']}"}


def inference_rate(model_dir: Path, images: np.ndarray, seconds: float = 5.0) -> float:
    """Images/s of the served model's forward pass, batches of genuine images in memory."""
    model = inference_copy(load_artifact(model_dir).model).to(memory_format=torch.channels_last)
    batch = torch.from_numpy(images[:INFERENCE_BATCH]).unsqueeze(1).contiguous(memory_format=torch.channels_last)
    predict(model, batch)  # oneDNN picks its kernels on the first call
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds or count < 2:
        predict(model, batch)
        count += len(batch)
    return count / (time.perf_counter() - started)


def seed_result(work: Path, minutes: float, images: np.ndarray) -> dict:
    evaluation = json.loads((work / "output" / "data" / "evaluation.json").read_text())
    overall = evaluation["overall"]
    return {
        "evaluated_on": evaluation["source"],
        "images": overall["n"],
        "defective": overall["n_defective"],
        "ap": overall["ap"],
        "auroc": overall["auroc"],
        "threshold": evaluation["threshold"],
        "recall": overall["recall"],
        "precision": overall["precision"],
        "training_minutes": round(minutes, 2),
        "inference_images_per_sec": round(inference_rate(work / "model", images), 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--out", type=Path, default=REPO / "bench-output" / "real")
    args = parser.parse_args()
    if not (args.data / "Class8" / "Train" / "Label" / "Labels.txt").exists():
        print(f"bench-real: skipped, no genuine DAGM data at {args.data} (expects "
              f"Class8/Train with Label/Labels.txt; a user's clone does not have it)")
        return 0
    base = json.loads(args.config.read_text())
    size = int(base.get("image_size", 512))
    images = load_arrays(read_index(args.data, None, splits=("Train",))[:64], size, str(args.data),
                         "decode sample for inference", 1).images
    results = {}
    for seed in (int(s) for s in args.seeds.split(",")):
        work = args.out / f"seed-{seed}"
        minutes = train(args.data, work, {**base, "seed": str(seed)})
        results[seed] = seed_result(work, minutes, images)
        write_line(f"bench-real: seed {seed}: {json.dumps(results[seed])}")
    worst = {key: min(r[key] for r in results.values()) for key in ("ap", "auroc", "recall", "precision")}
    worst["training_minutes"] = max(r["training_minutes"] for r in results.values())
    print(json.dumps({
        "benchmark": "real_dagm",
        "config": str(args.config.relative_to(REPO)) if args.config.is_relative_to(REPO) else str(args.config),
        "hyperparameters": base,
        "data": str(args.data),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "seeds": results,
        "worst_seed": worst,
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
