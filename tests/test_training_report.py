"""The training report on its own: strict JSON, a self-contained HTML page, and the command
that re-renders it (whole jobs write it too: test_training_observed.py)."""

from __future__ import annotations

import base64
import json
import math
import re

import numpy as np

from dagm_defects.evaluation import metrics
from dagm_defects.evaluation.training_report import main, write_training_report
from dagm_defects.training.rules import RuleBook, StepFacts


def sample_report(evaluated: bool = True, epochs: int = 3) -> dict:
    rng = np.random.default_rng(0)
    labels = np.array([0] * 20 + [1] * 6)
    scores = np.clip(labels * 0.6 + rng.random(26) * 0.5, 0, 1)
    classes = np.array([1, 2] * 13)
    book = RuleBook()
    book.check_step(StepFacts(2, 7, math.nan, {"a.<b>weight": 1.0}))
    return {
        "job": {"name": "job-1", "status": "Completed" if evaluated else "Stopped by rule", "started_utc": "2026-12-05T09:00:00+00:00",
                "finished_utc": "2026-12-05T09:03:00+00:00", "seconds": 180.0, "device": "cpu",
                "failure_reason": None if evaluated else "rule loss_not_finite fired"},
        "mlflow": {"run_id": "abc123", "tracking_uri": "sqlite:////x/mlflow.db", "experiment": "dagm-defects"},
        "hyperparameters": {"epochs": epochs, "classes": None, "rule_parameters": {"overfitting": {"window": 2.0}}},
        "dataset": {"classes": [1, 2], "train_images": 100, "content_hash": "f" * 32},
        "epochs": [{"epoch": n, "train_loss": 1.0 / n, "seg_loss": 0.5 / n, "dec_loss": 0.5 / n,
                    "val_loss": math.nan if n == 1 else 0.3, "val_ap": 0.9, "val_auroc": None, "lr": 0.001,
                    "images_per_sec": 40.0, "seconds": 20.0} for n in range(1, epochs + 1)],
        "rules": book.to_list(),
        "profile": {"steps": 30 if epochs else 0, "seconds": {"data": 0.1, "forward": 3.0, "backward": 5.0,
                                                               "optimizer": 0.4, "other": 0.0},
                    "cpu_utilization": 0.9, "peak_memory_bytes": 2**30, "memory_limit_bytes": 2**34, "device": "cpu"},
        "evaluation": metrics.summarize(labels, scores, classes, 0.5) if evaluated else None,
        "curves": metrics.curves(labels, scores, classes) if evaluated else None,
    }


def test_the_report_is_strict_json_and_a_self_contained_page(tmp_path):
    json_path, html_path = write_training_report(tmp_path, sample_report())
    document = json.loads(json_path.read_text(), parse_constant=lambda name: (_ for _ in ()).throw(ValueError(name)))
    assert document["epochs"][0]["val_loss"] is None  # NaN became null
    assert document["rules"][0] == {**sample_report()["rules"][0], "parameters": {}}
    page = html_path.read_text()
    assert not re.search(r'(src|href)="https?:', page) and "<script" not in page and "<link" not in page
    images = re.findall(r'data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == 3  # training curves, PR/ROC, the profile
    assert all(base64.b64decode(data).startswith(b"\x89PNG\r\n\x1a\n") for data in images)
    assert "1 of 9 rules fired." in page and 'class="fired">fired' in page and 'class="quiet">quiet' in page
    assert 'class="not-evaluated">not evaluated' in page
    # Evidence is text, escaped: a layer name with markup in it stays text.
    assert "a.&lt;b&gt;weight" in page and "a.<b>weight" not in page
    assert "loss nan at this step" in page
    for row in ("<td>1</td>", "<td>2</td>", "<td>all</td>"):
        assert row in page


def test_a_job_stopped_before_evaluation_still_gets_a_report(tmp_path):
    _, html_path = write_training_report(tmp_path, sample_report(evaluated=False, epochs=0))
    page = html_path.read_text()
    assert "No evaluation: the job stopped before it." in page and "No epoch finished." in page
    assert "rule loss_not_finite fired" in page


def test_the_command_renders_the_page_again_and_names_bad_input(tmp_path, capsys):
    json_path, html_path = write_training_report(tmp_path, sample_report())
    html_path.unlink()
    assert main([str(json_path)]) == 0 and html_path.read_text().startswith("<!DOCTYPE html>")
    assert main([]) == 64
    (tmp_path / "broken.json").write_text("{")
    assert main([str(tmp_path / "broken.json")]) == 1
    assert main([str(tmp_path / "missing.json")]) == 1
    assert "missing.json cannot be read as a training report" in capsys.readouterr().err
