"""The docs' measured figures come from benchmark records, never typed: bench/figures.py
renders them between the docs' markers, --check catches a stale block, a record without
its provenance is refused, and the benchmarks and the suite write the records
(bench/record.py, bench/suite_record.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from conftest import REPO
from record import load_record

BENCH = REPO / "bench"
MACHINE = {"cpu": "AMD EPYC 7B13", "cores": 2, "memory_gb": 7.8, "gpu": None, "python": "3.11.9",
           "torch": "2.14.1"}
SERVING = {
    "clients": 4,
    "cold_start_s": 2.6, "cold_start_s_each": [2.58, 2.6, 2.71], "cold_start_to_first_answer_s": 2.64,
    "images_per_s": {"in_process": {"png_single": 115.0, "npy_16": 130.0, "json_png_16": 100.0},
                     "served": {"png_single": 101.0, "npy_16": 120.8, "json_png_16": 100.5}},
    "served_over_in_process": {"png_single": 0.878, "npy_16": 0.929, "json_png_16": 1.005},
    "served_over_in_process_lowest_highest_round": {"png_single": [0.87, 0.9], "npy_16": [0.9, 0.97],
                                                    "json_png_16": [0.98, 1.02]},
    "latency_ms_single_png": {"in_process": {"p50": 11.1, "p99": 15.0}, "served": {"p50": 12.59, "p99": 20.1},
                              "added_p50_ms": 1.49},
    "by_verdict_single_png": {
        "images": "labelled images of ../shared/data/dagm-real/Class8",
        "latency_ms": {"clean": {"p50": 12.59, "p99": 20.1}, "defective": {"p50": 12.89, "p99": 18.8}},
        "defective_added_p50_ms": 0.3, "images_per_s": {"clean": 115.4, "defective": 113.9},
        "defective_over_clean_images_per_s": 0.988, "defective_over_clean_lowest_highest_round": [0.97, 1.01]},
}
SEED = {"images": 160, "defective": 30, "ap": 1.0, "auroc": 1.0, "recall": 1.0, "precision": 1.0,
        "threshold": 0.153, "training_minutes": 3.71, "inference_images_per_sec": {"batch 8": 170.0, "batch 16": 171.4}}
REAL_DAGM = {
    "seeds": {"0": SEED, "1": {**SEED, "ap": 0.99, "training_minutes": 3.56,
                               "inference_images_per_sec": {"batch 8": 180.0, "batch 16": 185.7}}},
    "synthetic_only_on_genuine": {"trained_on": "synthetic class 8, 800 Train images", "images": 800,
                                  "defective": 150, "ap": 0.9997, "auroc": 0.9999, "recall": 0.9933,
                                  "precision": 1.0, "threshold": 0.2, "training_minutes": 4.32},
}
SUITE = {"seconds": 1038.4, "passed": 412, "failed": 0, "skipped": 5, "error": 0, "xfailed": 0, "xpassed": 0,
         "deselected": 0, "exit_status": 0, "workers": 2,
         "doc_commands": {"shown": 62, "ran": 51, "in_ci_run": 2, "not_run_here": 9, "missing": 0}}
PROVENANCE = ("Measured 2026-12-05 18:50 UTC on AMD EPYC 7B13 (2 cores, 7.8 GB, no GPU; Python 3.11.9, "
              "torch 2.14.1) at commit abc1234 by `python bench/serving.py --record docs/results/serving.json`.")


def write_record(root: Path, name: str, results: dict, **fields) -> Path:
    path = root / "docs" / "results" / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"benchmark": name, "date": "2026-12-05T18:50:07+00:00", "machine": MACHINE, "commit": "abc1234",
              "command": ["python", f"bench/{name.replace('-', '_')}.py", "--record", f"docs/results/{name}.json"],
              "results": results, **fields}
    path.write_text(json.dumps({k: v for k, v in record.items() if v is not None}))
    return path


def figures(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(BENCH / "figures.py"), "--root", str(root), *args],
                          capture_output=True, text=True, timeout=60)


@pytest.fixture
def site(tmp_path) -> Path:
    """A README with the summary block and a docs page with the three tables' blocks, none rendered."""
    (tmp_path / "docs" / "guide").mkdir(parents=True)
    (tmp_path / "README.md").write_text("# Title, quoting `<!-- figures: NAME -->` in prose\n\n"
                                        "<!-- figures: summary -->\n<!-- /figures -->\n\nAfter.\n")
    (tmp_path / "docs" / "guide" / "results.md").write_text(
        "Before.\n\n<!-- figures: serving -->\nold table\n<!-- /figures -->\n\nBetween.\n\n"
        "<!-- figures: real-dagm -->\n<!-- /figures -->\n\n<!-- figures: suite -->\n<!-- /figures -->\nEnd.\n")
    write_record(tmp_path, "serving", SERVING)
    write_record(tmp_path, "real-dagm", REAL_DAGM)
    write_record(tmp_path, "suite", SUITE)
    return tmp_path


def test_blocks_are_rendered_from_their_records_with_the_provenance_line(site):
    result = figures(site)
    assert result.returncode == 0, result.stderr
    assert "rewrote: docs/guide/results.md: figures block 'serving'" in result.stdout
    page = (site / "docs" / "guide" / "results.md").read_text()
    assert page.startswith("Before.\n\n<!-- figures: serving -->\n\n| single PNG, one request at a time | p50 | p99 |")
    assert "old table" not in page and "\nBetween.\n" in page and page.endswith("<!-- /figures -->\nEnd.\n")
    for line in ["| served over HTTP | 12.59 ms | 20.10 ms |", "| added by serving | +1.49 ms |  |",
                 "| single PNGs, 16 clients | 101.0 | 115.0 | 0.878 (0.870-0.900) |",
                 "| 16 images in one x-npy body, 4 clients | 120.8 | 130.0 | 0.929 (0.900-0.970) |",
                 "| 16 base64 PNGs in one JSON body, 4 clients | 100.5 | 100.0 | 1.005 (0.980-1.020) |",
                 "| defective | 12.89 ms | 18.80 ms | 113.9 |",
                 "| defective vs clean | +0.30 ms |  | 0.988 (0.970-1.010) |",
                 "| process start to ready (`/ping` 200) | 2.60 (each: 2.58, 2.60, 2.71) |",
                 "| process start to the first answer | 2.64 |", PROVENANCE,
                 "| seed 0 | 160 (30) | 1.0000 | 1.0000 | 1.0000 | 1.0000 | 0.153 | 3.71 | 170.0 | 171.4 |",
                 "| seed 1 | 160 (30) | 0.9900 | 1.0000 | 1.0000 | 1.0000 | 0.153 | 3.56 | 180.0 | 185.7 |",
                 "| mean of 2 |  | 0.9950 | 1.0000 | 1.0000 | 1.0000 | 0.153 | 3.63 | 175.0 | 178.6 |",
                 "| synthetic only, on genuine | 800 (150) | 0.9997 | 0.9999 | 0.9933 | 1.0000 | 0.200 | 4.32 |  |  |",
                 "| `make test` | 2 | 17.3 | 1038.4 | 412 passed, 0 failed, 5 skipped | 0 | 62 shown: 51 ran in the "
                 "suite, 2 by .ci/run, 9 cannot run here, 0 did not run |"]:
        assert line in page.splitlines(), line
    readme = (site / "README.md").read_text()
    for line in ["| genuine DAGM Class 8, held-out AP (2 seeds) | mean 0.9950, lowest 0.9900 |",
                 "| single PNG served, p50 defective vs clean | 12.89 ms vs 12.59 ms (+0.30 ms) |",
                 "| test suite (`make test`) | 17.3 min, 412 passed, 0 failed, 5 skipped |", f"serving: {PROVENANCE}"]:
        assert line in readme.splitlines(), line
    assert readme.endswith("<!-- /figures -->\n\nAfter.\n")


def test_check_names_each_stale_block_and_passes_once_rendered(site):
    stale = figures(site, "--check")
    assert stale.returncode == 1
    assert stale.stdout.splitlines() == ["stale: README.md: figures block 'summary'"] + [
        f"stale: docs/guide/results.md: figures block '{name}'" for name in ("serving", "real-dagm", "suite")]
    assert "old table" in (site / "docs" / "guide" / "results.md").read_text()  # --check wrote nothing
    assert figures(site).returncode == 0
    current = figures(site, "--check")
    assert (current.returncode, current.stdout) == (0, "")
    # A new measurement makes exactly the blocks quoting it stale again.
    write_record(site, "suite", {**SUITE, "seconds": 900.0})
    again = figures(site, "--check")
    assert again.returncode == 1
    assert again.stdout.splitlines() == ["stale: README.md: figures block 'summary'",
                                         "stale: docs/guide/results.md: figures block 'suite'"]


@pytest.mark.parametrize("field", ["date", "commit", "machine"])
def test_a_record_without_its_provenance_is_refused(site, field):
    write_record(site, "serving", SERVING, **{field: None})
    before = (site / "README.md").read_text()
    result = figures(site)
    assert result.returncode == 2
    assert f"serving.json: not a benchmark record: missing {field}" in result.stderr
    assert (site / "README.md").read_text() == before


def test_a_table_without_its_record_says_which_command_makes_it(site):
    (site / "docs" / "results" / "suite.json").unlink()
    assert figures(site).returncode == 0
    page = (site / "docs" / "guide" / "results.md").read_text()
    assert "Not measured yet: run `make test`, then `make figures`." in page.splitlines()
    assert "| test suite (`make test`) | not measured yet (`make test`) |" in (
        site / "README.md").read_text()


def test_a_block_of_no_known_table_is_refused(site):
    (site / "docs" / "other.md").write_text("<!-- figures: servng -->\n<!-- /figures -->\n")
    result = figures(site)
    assert result.returncode == 2
    assert "docs/other.md: no table called 'servng'" in result.stderr


def test_bench_real_record_option_writes_the_wrapped_json(make_dataset, tmp_path):
    """The cheapest path through a quoted benchmark: bench/real_dagm.py on a tiny class 8
    with no seeds and no synthetic model, which still prints its JSON."""
    data = make_dataset("data", classes=(8,), images_per_split=4, size=64)
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"image_size": 64, "space_to_depth": 1}))
    record_path = tmp_path / "records" / "real-dagm.json"
    argv = ["bench/real_dagm.py", "--data", str(data), "--config", str(config), "--seeds", "", "--no-synthetic",
            "--out", str(tmp_path / "out"), "--record", str(record_path)]
    started = datetime.now(timezone.utc)
    result = subprocess.run([sys.executable, *argv], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr
    record = load_record(record_path)
    # The JSON follows the progress lines the bench writes to stdout.
    assert record["results"] == json.loads(result.stdout[result.stdout.index("\n{\n") + 1:])
    assert record["results"]["seeds"] == {} and record["results"]["synthetic_only_on_genuine"] is None
    assert record["benchmark"] == "real-dagm" and record["command"] == ["python", *argv]
    assert abs(datetime.fromisoformat(record["date"]) - started) < timedelta(minutes=5)
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO)
    assert record["commit"] in (head.stdout.strip(), head.stdout.strip() + "-dirty")
    assert record["machine"]["cores"] == os.cpu_count() and record["machine"]["python"] == sys.version.split()[0]
    assert record["machine"]["memory_gb"] > 0 and record["machine"]["cpu"]


def test_bench_real_without_its_data_writes_no_record(tmp_path):
    result = subprocess.run([sys.executable, "bench/real_dagm.py", "--data", str(tmp_path / "none"),
                             "--record", str(tmp_path / "real-dagm.json")],
                            capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "bench-real: skipped" in result.stdout and not (tmp_path / "real-dagm.json").exists()


def test_the_serving_bench_keeps_its_flags_after_its_split():
    result = subprocess.run([sys.executable, "bench/serving.py", "--help"], capture_output=True, text=True,
                            cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr
    for flag in ("--seconds", "--rounds", "--clients", "--latency-requests", "--starts", "--model-dir",
                 "--verdict-images", "--record"):
        assert flag in result.stdout, flag


@pytest.mark.parametrize("workers", [[], ["-p", "xdist", "-n", "2"]], ids=["one process", "two xdist workers"])
def test_the_suite_writes_its_own_record(tmp_path, workers):
    """Once, by the controller, when xdist workers run the tests (`make test` runs two)."""
    (tmp_path / "test_sample.py").write_text(
        "import time\nimport pytest\n\ndef test_passes():\n    time.sleep(0.3)\n\ndef test_fails():\n    assert False\n\n"
        "@pytest.mark.skip(reason='sample')\ndef test_skipped():\n    pass\n")
    record_path = tmp_path / "suite.json"
    result = subprocess.run([sys.executable, "-m", "pytest", "-p", "suite_record", "-p", "no:cacheprovider", *workers,
                             "--suite-record", str(record_path), "test_sample.py"],
                            capture_output=True, text=True, cwd=tmp_path, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(BENCH)})
    assert result.returncode == 1, result.stdout  # the sample's failure
    record = load_record(record_path)
    assert record["benchmark"] == "suite"
    assert record["command"] == ["python", "-m", "pytest", "-p", "suite_record", "-p", "no:cacheprovider", *workers,
                                 "--suite-record", str(record_path), "test_sample.py"]
    results = record["results"]
    assert (results["passed"], results["failed"], results["skipped"], results["exit_status"]) == (1, 1, 1, 1)
    assert results["workers"] == (2 if workers else 0)
    assert 0.3 <= results["seconds"] < 120


def test_the_committed_figures_are_current():
    if not list((REPO / "docs" / "results").glob("*.json")):
        pytest.skip("docs/results has no benchmark records yet (make bench, make bench-real, make figures)")
    result = figures(REPO, "--check")
    assert result.returncode == 0, result.stdout + result.stderr


OK_BUDGET = {"status": "ok", "labelled": {"good": 455, "defective": 105, "masks": 5}, "training_minutes": 2.61,
             "supervision": "mixed", "evaluated_on": "test channel", "ap": 0.9712, "auroc": 0.995, "recall": 0.9333,
             "test_defective": 45, "false_reject_rate": 0.0205, "false_rejects": 4, "test_good": 195,
             "threshold": 0.4123}
ALL_BUDGET = {**OK_BUDGET, "labelled": {"good": 455, "defective": 105, "masks": 105}, "supervision": "full",
              "ap": 1.0, "auroc": 1.0, "recall": 1.0, "false_reject_rate": 0.0, "false_rejects": 0}
LABEL_BUDGET = {
    "benchmark": "label_budget", "hyperparameters": {}, "epochs_override": None, "seed": 0,
    "sets": {
        "dagm": {"data": "../shared/data/dagm-real", "class": 8,
                 "test": "a stratified 30% of Class8/Train held out (seed 0), never trained on",
                 "train_part": {"good": 455, "defective": 105, "masks": 105},
                 "test_part": {"good": 195, "defective": 45, "masks": 45},
                 "budgets": {"masks-5": OK_BUDGET, "masks-all": ALL_BUDGET,
                             "defects-0": {"status": "failed", "labelled": {"good": 455, "defective": 0, "masks": 0},
                                           "training_minutes": 0.4,
                                           "error": "no defect | at all\n--- last lines of the job ---\n..."},
                             "defects-3": {**OK_BUDGET, "labelled": {"good": 455, "defective": 3, "masks": 3},
                                           "supervision": None, "ap": 0.5},
                             "defects-all": {**ALL_BUDGET, "same_job_as": "masks-all"}}},
    },
    "skipped": {"tile": "no ../shared/data/magnetic-tile/Class1/Train/Label/Labels.txt"},
    "failed": ["dagm defects-0"],
}


def test_the_label_budget_record_renders_its_table_and_its_plot(tmp_path):
    (tmp_path / "docs").mkdir()
    page = tmp_path / "docs" / "results.md"
    page.write_text("<!-- figures: label-budget -->\n<!-- /figures -->\n")
    assert figures(tmp_path).returncode == 0
    assert "Not measured yet: run `make bench-labels`, then `make figures`." in page.read_text().splitlines()
    assert not (tmp_path / "docs" / "results" / "label-budget.png").exists()

    write_record(tmp_path, "label-budget", LABEL_BUDGET)
    result = figures(tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["rewrote: docs/results.md: figures block 'label-budget'",
                                          "rewrote: docs/results/label-budget.png: plot"]
    lines = page.read_text().splitlines()
    for line in [
        "| set | budget | labelled: good / defective / masks | supervision | AP | AUROC | recall (test defects) | "
        "false-reject rate (false rejects of good test images) | threshold | training job, min |",
        "| dagm (Class 8) | masks-5 | 455 / 105 / 5 | mixed | 0.9712 | 0.9950 | 0.9333 (45) | 0.0205 (4 of 195) "
        "| 0.412 | 2.61 |",
        "| dagm (Class 8) | defects-0 | 455 / 0 / 0 | failed: no defect \\| at all |  |  |  |  |  | 0.40 |",
        "| dagm (Class 8) | defects-3 | 455 / 3 / 3 | not reported | 0.5000 | 0.9950 | 0.9333 (45) | 0.0205 (4 of 195) "
        "| 0.412 | 2.61 |",
        "| dagm (Class 8) | defects-all (the masks-all job) | 455 / 105 / 105 | full | 1.0000 | 1.0000 | 1.0000 (45) "
        "| 0.0000 (0 of 195) | 0.412 | 2.61 |",
        "Tested: dagm on a stratified 30% of Class8/Train held out (seed 0), never trained on (195 good, 45 defective).",
        "Not run, without their data: tile (no ../shared/data/magnetic-tile/Class1/Train/Label/Labels.txt).",
        "![AP against the label budget, one line per set and budget family](results/label-budget.png)",
        PROVENANCE.replace("serving.py", "label_budget.py").replace("serving.json", "label-budget.json")]:
        assert line in lines, line
    assert not any(line.startswith("Epochs overridden") for line in lines)
    png = (tmp_path / "docs" / "results" / "label-budget.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    current = figures(tmp_path, "--check")
    assert (current.returncode, current.stdout) == (0, ""), current.stderr  # the same record draws the same bytes

    # A smoke run says so; a stale plot is named by --check.
    write_record(tmp_path, "label-budget", {**LABEL_BUDGET, "epochs_override": 1})
    (tmp_path / "docs" / "results" / "label-budget.png").write_bytes(b"old")
    stale = figures(tmp_path, "--check")
    assert stale.returncode == 1
    assert stale.stdout.splitlines() == ["stale: docs/results.md: figures block 'label-budget'",
                                         "stale: docs/results/label-budget.png: plot"]
    assert figures(tmp_path).returncode == 0
    assert "Epochs overridden to 1: a smoke run, not the recipe's figures." in page.read_text().splitlines()
    assert (tmp_path / "docs" / "results" / "label-budget.png").read_bytes() == png
