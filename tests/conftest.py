"""Shared fixtures: small synthetic DAGM sets and the training entry run as the image runs it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from dagm_defects.data.synthetic import generate_dataset

REPO = Path(__file__).resolve().parents[1]
TRAIN_LOCAL = REPO / "local_test" / "train_local.sh"
# Tiny and fast: a few seconds of training at 64x64 on two cores.
TINY_HPS = {"epochs": "2", "batch_size": "8", "image_size": "64", "data_workers": "1"}


@dataclass
class Job:
    """A finished (or stopped) run of local_test/train_local.sh and its /opt/ml tree."""

    returncode: int
    output: str
    work: Path

    @property
    def failure(self) -> str | None:
        path = self.work / "output" / "failure"
        return path.read_text() if path.exists() else None

    @property
    def model_dir(self) -> Path:
        return self.work / "model"

    def tokens(self, prefix: str) -> list[dict[str, str]]:
        """The `name=value` lines that start with `prefix` (e.g. 'epoch=')."""
        rows = []
        for line in self.output.splitlines():
            if line.startswith(prefix):
                rows.append(dict(part.split("=", 1) for part in line.split() if "=" in part))
        return rows


def job_env() -> dict[str, str]:
    # The venv path, never a Docker daemon a developer machine might have.
    env = {**os.environ, "NO_DOCKER": "1", "PYTHONUNBUFFERED": "1"}
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    return env


def start_training(data: Path, work: Path, hps: dict | None = None) -> subprocess.Popen:
    args = [str(TRAIN_LOCAL), str(data), str(work)]
    if hps is not None:
        args.append(json.dumps(hps))
    return subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=job_env(),
        start_new_session=True,
    )


def run_training(data: Path, work: Path, hps: dict | None = None, timeout: float = 300) -> Job:
    process = start_training(data, work, hps)
    try:
        output, _ = process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    return Job(process.returncode, output, work)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dagm") / "tiny"
    generate_dataset(root, classes=[1, 2], images_per_split=16, size=128, seed=3, workers=1)
    return root


@pytest.fixture
def make_dataset(tmp_path):
    def make(name: str = "data", classes=(1,), images_per_split: int = 8, size: int = 64) -> Path:
        root = tmp_path / name
        generate_dataset(root, classes=list(classes), images_per_split=images_per_split,
                         size=size, seed=7, workers=1)
        return root

    return make


@pytest.fixture(scope="session")
def trained_job(tiny_dataset, tmp_path_factory) -> Job:
    job = run_training(tiny_dataset, tmp_path_factory.mktemp("opt_ml"), TINY_HPS)
    assert job.returncode == 0, job.output[-3000:]
    return job
