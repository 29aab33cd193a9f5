"""Benchmark records: a benchmark's printed JSON with where, when and how it was measured.

A record is {"benchmark": NAME, "date": ISO UTC, "machine": {...}, "commit": "abc1234" or
"abc1234-dirty", "command": argv, "results": the printed JSON}. The benchmarks the docs
quote write one with --record PATH (`make bench` and `make bench-real` into
docs/results/), the test suite with pytest's --suite-record PATH (suite_record.py), and
bench/figures.py renders the docs' tables from them, refusing a record without its
provenance.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "docs" / "results"
FIELDS = ("benchmark", "date", "machine", "commit", "command", "results")
MACHINE_FIELDS = ("cpu", "cores", "memory_gb", "gpu", "python", "torch")


class RecordError(ValueError):
    """A file that is not a complete benchmark record."""


def add_record_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--record", type=Path, metavar="PATH",
                        help="also write the printed JSON as a benchmark record (e.g. docs/results/NAME.json)")


def report(name: str, results: dict, path: Path | None) -> None:
    """Print `results` as the benchmark's JSON and, given `path`, write its record there."""
    print(json.dumps(results, indent=2), flush=True)
    if path is not None:
        write_record(path, name, results)
        print(f"record: {path}", file=sys.stderr)


def write_record(path: Path, name: str, results: dict, command: list[str] | None = None) -> dict:
    """Write the record of `results`; `command` defaults to this process's argv, as run
    from the repository root."""
    record = {
        "benchmark": name,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "commit": commit(),
        "command": command or ["python", *script_argv()],
        "results": results,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n")
    return record


def script_argv() -> list[str]:
    script = Path(sys.argv[0]).resolve()
    return [str(script.relative_to(REPO)) if script.is_relative_to(REPO) else sys.argv[0], *sys.argv[1:]]


def machine() -> dict:
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "gpu": gpu_name(),
        "python": platform.python_version(),
        "torch": package_version("torch"),
    }


def cpu_model() -> str:
    with_name = Path("/proc/cpuinfo")
    if with_name.exists():
        for line in with_name.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def gpu_name() -> str | None:
    """The first GPU's name: torch's where the benchmark has it loaded, else nvidia-smi's
    (the suite's process need not import torch for its record)."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    if shutil.which("nvidia-smi"):
        listed = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                                capture_output=True, text=True, timeout=30)
        if listed.returncode == 0 and listed.stdout.strip():
            return listed.stdout.splitlines()[0].strip()
    return None


def package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def commit() -> str:
    """HEAD's short hash, "-dirty" when the tree differs from it. The records themselves
    are left out: writing one must not make the next benchmark's commit dirty."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()

    try:
        head = git("rev-parse", "--short", "HEAD")
        changes = git("status", "--porcelain", "--", ".", f":(exclude){RESULTS.relative_to(REPO)}")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{head}-dirty" if changes else head


def load_record(path: Path) -> dict:
    """The record at `path`, refused (RecordError naming what is missing) unless it has
    every field, its machine every field, and a date in ISO format."""
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise RecordError(f"{path}: not readable as JSON: {exc}") from exc
    if not isinstance(record, dict):
        raise RecordError(f"{path}: not a benchmark record (a JSON object with {', '.join(FIELDS)})")
    missing = [field for field in FIELDS if record.get(field) in (None, "", [])]
    if missing:
        raise RecordError(f"{path}: not a benchmark record: missing {', '.join(missing)} "
                          f"(write it with the benchmark's --record)")
    lacking = [field for field in MACHINE_FIELDS if field not in record["machine"]] \
        if isinstance(record["machine"], dict) else list(MACHINE_FIELDS)
    if lacking:
        raise RecordError(f"{path}: machine lacks {', '.join(lacking)}")
    try:
        datetime.fromisoformat(record["date"])
    except (TypeError, ValueError) as exc:
        raise RecordError(f"{path}: date {record['date']!r} is not ISO 8601") from exc
    return record
