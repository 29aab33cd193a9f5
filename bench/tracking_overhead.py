"""What tracking costs a whole training job: the CPU recipe (local_test/hyperparameters/
real-cpu.json) run through the image's entry command with ``tracking`` true (MLflow run,
rules, profile, training report, MLflow model) and false, alternated in pairs so the
machine's drift falls on both sides; prints each pair and the overall ratio as JSON
(target: tracked / untracked <= 1.02).

By default the job is synthetic and smaller than a genuine class (--images per split,
150), so tracking's fixed cost (importing MLflow, creating the store, the report's
figures) weighs more than in a full job; --data DIR runs the jobs on a DAGM folder as it
is (`--data ../shared/data/dagm-real`: genuine Class 8, the recipe's whole job).
Usage: python bench/tracking_overhead.py [--pairs 3] [--classes 8] [--images 150] [--data DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from dagm_synth import generate_dataset

REPO = Path(__file__).resolve().parents[1]


def job_seconds(data: Path, work: Path, tracking: bool) -> float:
    hps = json.loads((REPO / "local_test" / "hyperparameters" / "real-cpu.json").read_text())
    hps["tracking"] = "true" if tracking else "false"
    env = {**os.environ, "NO_DOCKER": "1", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env.pop("MLFLOW_TRACKING_URI", None)
    started = time.perf_counter()
    done = subprocess.run([str(REPO / "local_test" / "train_local.sh"), str(data), str(work), json.dumps(hps)],
                          env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode:
        raise SystemExit(f"training job failed (tracking={tracking}):\n{done.stdout[-3000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--classes", default="8")
    parser.add_argument("--images", type=int, default=150, help="images per split and class")
    parser.add_argument("--data", type=Path, help="a DAGM folder to train on instead of synthetic images")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data or Path(tmp, "data")
        if args.data is None:
            generate_dataset(data, classes=[int(c) for c in args.classes.split(",")], images_per_split=args.images,
                             size=512, seed=0)
        pairs = []
        for pair in range(args.pairs):
            # Which side goes first alternates too.
            order = (True, False) if pair % 2 == 0 else (False, True)
            seconds = {tracking: job_seconds(data, Path(tmp, f"job-{pair}-{tracking}"), tracking) for tracking in order}
            pairs.append({"tracked_s": round(seconds[True], 2), "untracked_s": round(seconds[False], 2),
                          "ratio": round(seconds[True] / seconds[False], 4)})
            print(json.dumps(pairs[-1]), file=sys.stderr)
    tracked = sum(p["tracked_s"] for p in pairs)
    untracked = sum(p["untracked_s"] for p in pairs)
    print(json.dumps({
        "date_utc": datetime.now(timezone.utc).isoformat(timespec="minutes"), "machine": platform.processor()
        or platform.machine(), "cpus": os.cpu_count(),
        "data": str(args.data) if args.data else f"synthetic classes {args.classes}, {args.images} images per split",
        "pairs": pairs, "ratio_overall": round(tracked / untracked, 4),
        "ratio_median_pair": round(statistics.median(p["ratio"] for p in pairs), 4),
    }, indent=2))


if __name__ == "__main__":
    main()
