"""The training report on its own: strict JSON, a self-contained HTML page, and the command
that re-renders it (whole jobs write it too: test_training_observed.py)."""

from __future__ import annotations

import base64
import copy
import json
import math
import re
import subprocess
import sys
import warnings

import numpy as np

from dagm_defects.evaluation import metrics
from dagm_defects.evaluation.training_report import REPORT_HTML, REPORT_JSON, main, write_training_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
RULES = [
    {"name": "exploding_gradients", "description": "a gradient norm above the threshold", "status": "fired",
     "stops_job": True, "parameters": {"threshold": 1e6}, "epoch": 2, "step": 7,
     "evidence": "gradient norm of a.<b>weight is 1e+09 (threshold 1e+06)"},
    {"name": "overfitting", "description": "validation loss rising while training loss falls", "status": "quiet",
     "stops_job": False, "parameters": {"window": 2}, "epoch": None, "step": None, "evidence": ""},
    {"name": "low_gpu_utilization", "description": "the GPU idle most of the step", "status": "not evaluated",
     "stops_job": False, "parameters": {"threshold": 0.5}, "epoch": None, "step": None, "evidence": ""},
]


def sample_report(evaluated: bool = True, epochs: int = 3) -> dict:
    rng = np.random.default_rng(0)
    labels = np.array([0] * 20 + [1] * 6)
    scores = np.clip(labels * 0.6 + rng.random(26) * 0.5, 0, 1)
    classes = np.array([1, 2] * 13)
    return {
        "job": {"name": "job-1", "status": "Completed" if evaluated else "Stopped by rule",
                "started_utc": "2026-12-05T09:00:00+00:00", "finished_utc": "2026-12-05T09:03:00+00:00",
                "seconds": 180.0, "device": "cpu",
                "failure_reason": None if evaluated else "rule loss_not_finite fired at epoch 1 step 3"},
        "mlflow": {"run_id": "abc123", "tracking_uri": "sqlite:////x/mlflow.db", "experiment": "dagm-defects"},
        "hyperparameters": {"epochs": epochs, "classes": None, "max_grad_norm": math.inf,
                            "rule_parameters": {"overfitting": {"window": 2}}},
        "dataset": {"classes": [1, 2], "train_images": 100, "content_hash": "f" * 32},
        "epochs": [{"epoch": n, "train_loss": 1.0 / n, "seg_loss": 0.5 / n, "dec_loss": 0.5 / n,
                    "val_loss": math.nan if n == 1 else 0.3, "val_ap": 0.9, "val_auroc": None, "lr": 0.001,
                    "images_per_sec": 40.0, "seconds": 20.0} for n in range(1, epochs + 1)],
        "rules": copy.deepcopy(RULES),
        "profile": {"steps": 30 if epochs else 0,
                    "seconds": ({"data": 0.1, "forward": 3.0, "backward": 5.0, "optimizer": 0.4, "other": 1.5}
                                if epochs else dict.fromkeys(("data", "forward", "backward", "optimizer", "other"),
                                                             0.0)),
                    "cpu_utilization": 0.9, "peak_memory_bytes": 3 * 2**28, "memory_limit_bytes": 2**34,
                    "device": "cpu"},
        "evaluation": metrics.summarize(labels, scores, classes, 0.5) if evaluated else None,
        "curves": metrics.curves(labels, scores, classes) if evaluated else None,
    }


def strict_loads(text: str):
    """json.loads that refuses NaN and Infinity, as a strict reader (a browser's JSON.parse) does."""
    def refuse(name):
        raise ValueError(f"{name} is not JSON")

    return json.loads(text, parse_constant=refuse)


def images(page: str) -> list[bytes]:
    return [base64.b64decode(data) for data in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)]


def row_of(page: str, first_cell: str) -> str:
    """The table row whose first cell starts with `first_cell` (HTML, as written)."""
    rows = [row for row in page.split("<tr>") if row.startswith(f"<td>{first_cell}")]
    assert len(rows) == 1, (first_cell, rows)
    return rows[0].split("</tr>")[0]


def test_the_json_is_strict_and_holds_the_report(tmp_path):
    report = sample_report()
    json_path, html_path = write_training_report(tmp_path / "new", report)
    assert (json_path, html_path) == (tmp_path / "new" / REPORT_JSON, tmp_path / "new" / REPORT_HTML)
    expected = copy.deepcopy(report)
    expected["epochs"][0]["val_loss"] = None
    expected["hyperparameters"]["max_grad_norm"] = None
    assert strict_loads(json_path.read_text()) == expected
    assert math.isnan(report["epochs"][0]["val_loss"])  # the caller's dict is left as it was


def test_the_page_is_self_contained(tmp_path):
    _, html_path = write_training_report(tmp_path, sample_report())
    page = html_path.read_text()
    assert not re.search(r'(src|href)\s*=\s*["\']?(https?:)?//', page)
    assert "<script" not in page and "<link" not in page and "url(" not in page and "@import" not in page
    assert all(src.startswith("data:image/png;base64,") for src in re.findall(r'src="([^"]*)"', page))
    pngs = images(page)
    assert len(pngs) == 3  # training curves, PR/ROC, the profile
    assert all(data.startswith(PNG_SIGNATURE) for data in pngs)


def test_the_page_shows_the_job_rules_evaluation_and_profile(tmp_path):
    report = sample_report()
    _, html_path = write_training_report(tmp_path, report)
    page = html_path.read_text()
    assert "<td>job-1</td>" in page and "<td>abc123</td>" in page and "sqlite:////x/mlflow.db" in page
    assert "1 of 3 rules fired." in page
    for rule, css in zip(RULES, ("fired", "quiet", "not-evaluated")):
        assert f'class="{css}">{rule["status"]}</span>' in row_of(page, f"<b>{rule['name']}</b>")
    fired = row_of(page, "<b>exploding_gradients</b>")
    assert "<td>yes</td>" in fired and "epoch 2 step 7" in fired
    # Evidence is text: a layer name with markup in it is escaped, never markup.
    assert "a.&lt;b&gt;weight is 1e+09" in fired and "a.<b>weight" not in page
    for name, block in [*report["evaluation"]["per_class"].items(), ("all", report["evaluation"]["overall"])]:
        assert row_of(page, f"{name}</td>").startswith(f"<td>{name}</td><td>{block['n']}</td>"
                                                       f"<td>{block['n_defective']}</td>")
    assert f"<td>{report['evaluation']['per_class']['1']['ap']:.3f}</td>" in row_of(page, "1</td>")
    assert "<td>backward</td><td>5.00</td><td>50.0 %</td>" in page
    assert "<td>768 MiB</td>" in page and "<td>16.00 GiB</td>" in page and "<td>90.0 %</td>" in page
    # Nested values are compact JSON, escaped like any other text.
    assert "<td>rule_parameters</td><td>{&quot;overfitting&quot;:{&quot;window&quot;:2}}</td>" in page


def test_one_epoch_without_validation_metrics_draws_without_warnings(tmp_path):
    report = sample_report(epochs=1)
    report["evaluation"]["per_class"]["1"]["ap"] = None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, html_path = write_training_report(tmp_path, report)
    page = html_path.read_text()
    assert len(images(page)) == 3
    assert "<td>n/a</td>" in row_of(page, "1</td>")


def test_a_job_stopped_before_evaluation_still_gets_a_report(tmp_path):
    _, html_path = write_training_report(tmp_path, sample_report(evaluated=False, epochs=0))
    page = html_path.read_text()
    assert "No evaluation: the job stopped before it." in page and "No epoch finished." in page
    assert "rule loss_not_finite fired at epoch 1 step 3" in page
    # No step ran: the profile is a table of zeros without a figure, and nothing else draws.
    assert images(page) == [] and "<td>data</td><td>0.00</td><td>n/a</td>" in page


def test_the_command_renders_the_page_again(tmp_path):
    json_path, html_path = write_training_report(tmp_path, sample_report())
    written = json_path.read_bytes()
    html_path.unlink()
    assert main([str(json_path)]) == 0
    assert html_path.read_text().startswith("<!DOCTYPE html>") and json_path.read_bytes() == written
    # A report saved under another name gets its page beside it and no second report.json.
    other = tmp_path / "copy"
    other.mkdir()
    (other / "job-1.json").write_bytes(written)
    assert main([str(other / "job-1.json")]) == 0
    assert sorted(p.name for p in other.iterdir()) == ["job-1.json", REPORT_HTML]


def test_the_command_names_bad_input(tmp_path, capsys):
    assert main([]) == 64 and main(["a.json", "b.json"]) == 64
    assert capsys.readouterr().err.count("usage: ") == 2
    (tmp_path / "broken.json").write_text("{")
    (tmp_path / "list.json").write_text("[]")
    (tmp_path / "partial.json").write_text('{"job": {}}')
    for name in ("broken.json", "list.json", "partial.json", "missing.json"):
        assert main([str(tmp_path / name)]) == 1
        err = capsys.readouterr().err
        assert err.startswith("error: ") and str(tmp_path / name) in err and err.count("\n") == 1, err
    assert not (tmp_path / REPORT_HTML).exists()


def test_python_dash_m_runs_the_command(tmp_path):
    json_path, html_path = write_training_report(tmp_path, sample_report(evaluated=False, epochs=0))
    html_path.unlink()
    command = [sys.executable, "-m", "dagm_defects.evaluation.training_report"]
    assert subprocess.run([*command, str(json_path)], capture_output=True, timeout=120).returncode == 0
    assert html_path.is_file()
    assert subprocess.run(command, capture_output=True, timeout=120).returncode == 64
