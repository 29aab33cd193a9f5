"""A job's embedded MLflow store: started from the template, and moved with the job's output."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from dagm_defects.tracking.store import StoreError, make_template, relocate, seed_from_template, store_uri


def test_a_store_seeded_from_the_template_is_one_mlflow_uses_as_it_is(tmp_path, monkeypatch):
    template = make_template(tmp_path / "template.db")
    monkeypatch.setenv("DAGM_MLFLOW_TEMPLATE", str(template))
    store = tmp_path / "job" / "mlflow"
    assert seed_from_template(store) is True
    assert seed_from_template(store) is False  # an existing store is never replaced
    client = MlflowClient(tracking_uri=store_uri(store))
    experiment = client.create_experiment("e", artifact_location=(store / "artifacts").as_uri())
    run = client.create_run(experiment)
    client.log_metric(run.info.run_id, "val_ap", 0.5, step=1)
    assert client.get_metric_history(run.info.run_id, "val_ap")[0].value == 0.5
    monkeypatch.setenv("DAGM_MLFLOW_TEMPLATE", str(tmp_path / "absent.db"))
    assert seed_from_template(tmp_path / "other") is False  # MLflow then makes its schema itself


def test_a_moved_store_is_pointed_at_its_own_files(tmp_path):
    where_the_job_was = tmp_path / "opt_ml" / "mlflow"
    client = MlflowClient(tracking_uri=f"sqlite:///{where_the_job_was / 'mlflow.db'}")
    (where_the_job_was / "artifacts").mkdir(parents=True)
    experiment = client.create_experiment("e", artifact_location=(where_the_job_was / "artifacts").as_uri())
    run = client.create_run(experiment)
    (tmp_path / "note.txt").write_text("kept")
    client.log_artifact(run.info.run_id, str(tmp_path / "note.txt"))

    unpacked = tmp_path / "downloads" / "mlflow"
    shutil.move(where_the_job_was, unpacked)
    assert relocate(unpacked) == 2  # the experiment and its run
    assert relocate(unpacked) == 0
    moved = MlflowClient(tracking_uri=store_uri(unpacked))
    uri = moved.get_run(run.info.run_id).info.artifact_uri
    assert uri == f"{(unpacked / 'artifacts').as_uri()}/{run.info.run_id}/artifacts"
    assert Path(moved.download_artifacts(run.info.run_id, "note.txt", str(tmp_path))).read_text() == "kept"


def test_a_folder_without_a_store_is_named(tmp_path):
    with pytest.raises(StoreError, match=f"{tmp_path} holds no MLflow store"):
        store_uri(tmp_path)
