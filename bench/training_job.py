"""One training job as a user runs it: local_test/train_local.sh from an empty /opt/ml
(a checkpoint left by an earlier run would resume it instead of training it), its lines
streamed with a prefix, timed as a whole."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from dagm_defects.progress import write_line

REPO = Path(__file__).resolve().parent.parent


@dataclass
class JobResult:
    minutes: float
    # The job's failure file (or its exit code) when it failed, else None.
    failure: str | None
    tail: list[str] = field(default_factory=list)


def run_job(data: Path, work: Path, hyperparameters: dict, name: str, test: Path | None = None,
            env: dict[str, str] | None = None, tail_lines: int = 30) -> JobResult:
    """Train on `data` into `work`; `test` becomes the job's test channel, `env` adds to its
    environment. Without a Docker daemon train_local.sh runs the entry command from .venv."""
    shutil.rmtree(work, ignore_errors=True)
    job_env = {**os.environ, "PATH": f"{REPO / '.venv' / 'bin'}:{os.environ['PATH']}",
               "EXTRA_CHANNELS": f"test={test}" if test else "", **(env or {})}
    tail: deque[str] = deque(maxlen=tail_lines)
    started = time.monotonic()
    job = subprocess.Popen(
        [str(REPO / "local_test" / "train_local.sh"), str(data), str(work), json.dumps(hyperparameters)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=job_env,
    )
    for line in job.stdout:
        write_line(f"[{name}] {line.rstrip()}")
        tail.append(line.rstrip())
    code = job.wait()
    minutes = (time.monotonic() - started) / 60
    if not code:
        return JobResult(minutes, None)
    failure = work / "output" / "failure"
    return JobResult(minutes, failure.read_text().strip() if failure.exists() else f"exit code {code}", list(tail))
