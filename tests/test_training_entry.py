"""The training entry point, run through local_test/train_local.sh exactly as the image runs it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from PIL import Image

from dagm_defects.artifact import load_artifact
from dagm_defects.training.checkpoint import CHECKPOINT_FILE

from conftest import REPO, TINY_HPS, job_env, model_tarball, run_training, start_training

pytestmark = pytest.mark.slow


def test_successful_job_writes_model_evaluation_and_checkpoint(trained_job):
    job = trained_job
    # The model directory is what SageMaker tars up for hosting: exactly two files.
    assert sorted(p.name for p in job.model_dir.iterdir()) == ["model.json", "model.pt"]
    state = torch.load(job.model_dir / "model.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    meta = json.loads((job.model_dir / "model.json").read_text())
    assert meta["model_config"]["image_size"] == [128, 128] and meta["model_config"]["space_to_depth"] == 2
    assert meta["classes"] == [1, 2]
    assert 0.0 <= meta["threshold"] <= 1.0
    assert set(meta["training_statistics"]["overall"]) == {"mean", "std", "contrast", "texture"}
    assert set(meta["training_statistics"]["per_class"]) == {"1", "2"}

    data = job.work / "output" / "data"
    evaluation = json.loads((data / "evaluation.json").read_text())
    assert set(evaluation["per_class"]) == {"1", "2"}
    for key in ("ap", "auroc", "accuracy", "precision", "recall", "tp", "fp", "tn", "fn"):
        assert key in evaluation["overall"]
    assert evaluation["overall"]["n"] == 32 and evaluation["source"] == "train channel, Test split"
    for plot in ("pr_roc.png", "confusion.png", "masks.png"):
        assert (data / plot).stat().st_size > 10_000
    assert (job.work / "checkpoints" / CHECKPOINT_FILE).is_file()
    assert (job.work / "output" / "success").exists() and job.failure is None

    # The guide's way to read it: a table with a row per class and one for all.
    table = subprocess.run([sys.executable, "-m", "dagm_defects.evaluation.report", str(data / "evaluation.json")],
                           capture_output=True, text=True, timeout=120)
    assert table.returncode == 0, table.stderr
    rows = {line.split()[0]: line.split() for line in table.stdout.splitlines()[2:]}
    assert set(rows) == {"1", "2", "all"}
    assert rows["all"][1:3] == [str(evaluation["overall"]["n"]), str(evaluation["overall"]["n_defective"])]
    assert float(rows["all"][3]) == pytest.approx(evaluation["overall"]["ap"], abs=5e-4)


def test_metrics_are_logged_as_stable_tokens_for_metric_definitions(trained_job):
    epochs = trained_job.tokens("epoch=")
    assert [e["epoch"] for e in epochs] == ["1", "2"]
    for e in epochs:
        float(e["train_loss"]), float(e["val_ap"]), float(e["val_auroc"])
    assert trained_job.tokens("event=evaluation")[0]["test_ap"]
    assert "\r" not in trained_job.output


def test_train_split_alone_validates_and_evaluates_on_held_out_train_images(make_dataset, tmp_path):
    """A user's own data usually has no Test split: the job holds out part of Train, and
    the report says the figures come from that held-out part."""
    data = make_dataset(classes=(1,), images_per_split=20, size=128)
    shutil.rmtree(data / "Class1" / "Test")
    job = run_training(data, tmp_path / "ml", {**TINY_HPS, "epochs": "1", "validation_fraction": "0.25"})
    assert job.returncode == 0, job.output[-3000:]
    evaluation = json.loads((job.work / "output" / "data" / "evaluation.json").read_text())
    assert evaluation["source"] == ("the validation set (25% of the train channel's Train split, held out): "
                                    "no test channel and no Test split")
    assert evaluation["overall"]["n"] == 5 and len(evaluation["scores"]) == 5
    data_line = next(line for line in job.output.splitlines() if line.startswith("event=data"))
    assert 'test_source="the validation set (25%' in data_line


def test_a_last_batch_of_one_image_is_left_out_not_a_batch_norm_error(make_dataset, tmp_path):
    """15 training images in batches of 7 leave one image over, which batch norm cannot
    train on ("Expected more than 1 value per channel"): the epoch trains on 14 (the
    epoch's line says how many)."""
    data = make_dataset(classes=(1,), images_per_split=20, size=128)
    shutil.rmtree(data / "Class1" / "Test")
    job = run_training(data, tmp_path / "ml", {**TINY_HPS, "epochs": "1", "batch_size": "7",
                                               "validation_fraction": "0.25"})
    assert job.returncode == 0, job.output[-3000:]
    epoch = next(line for line in job.output.splitlines() if line.startswith("epoch=1 "))
    assert " epoch_images=14 " in epoch, epoch


def test_artifact_loads_without_training_code(trained_job):
    artifact = load_artifact(trained_job.model_dir)
    probabilities = torch.sigmoid(artifact.model(torch.zeros(2, 1, 128, 128, dtype=torch.uint8))[1])
    assert probabilities.shape == (2,)
    assert artifact.threshold == json.loads((trained_job.model_dir / "model.json").read_text())["threshold"]


def _model_channel(tmp_path, model_dir):
    # What SageMaker downloads for an S3Uri naming one model.tar.gz object.
    channel = tmp_path / "model-channel"
    channel.mkdir()
    (channel / "model.tar.gz").write_bytes(model_tarball(model_dir))
    return channel


def test_model_channel_warm_starts_and_is_scored_on_the_same_test_images(trained_job, tiny_dataset, tmp_path,
                                                                        monkeypatch):
    monkeypatch.setenv("EXTRA_CHANNELS", f"model={_model_channel(tmp_path, trained_job.model_dir)}")
    job = run_training(tiny_dataset, tmp_path / "ml", {**TINY_HPS, "epochs": "1", "warm_start": "true"})
    assert job.returncode == 0, job.output[-3000:]
    assert job.tokens("event=warm_start")
    evaluation = json.loads((job.work / "output" / "data" / "evaluation.json").read_text())
    baseline = evaluation["baseline"]
    assert set(baseline["per_class"]) == set(evaluation["per_class"]) == {"1", "2"}
    # The baseline is the trained job's model on the same test images: its own numbers.
    own = json.loads((trained_job.work / "output" / "data" / "evaluation.json").read_text())
    assert baseline["overall"]["ap"] == pytest.approx(own["overall"]["ap"])
    assert baseline["threshold"] == pytest.approx(own["threshold"])
    assert float(job.tokens("event=baseline")[0]["baseline_test_ap"]) == pytest.approx(own["overall"]["ap"], abs=1e-4)


def test_warm_start_needs_a_model_channel_of_the_same_architecture(trained_job, tiny_dataset, tmp_path, monkeypatch):
    job = run_training(tiny_dataset, tmp_path / "no-channel", {**TINY_HPS, "warm_start": "true"})
    assert job.returncode != 0 and "warm_start=true needs a 'model' channel" in job.failure
    monkeypatch.setenv("EXTRA_CHANNELS", f"model={_model_channel(tmp_path, trained_job.model_dir)}")
    job = run_training(tiny_dataset, tmp_path / "other", {**TINY_HPS, "warm_start": "true", "width": "0.25"})
    assert job.returncode != 0 and "warm_start: the 'model' channel holds" in job.failure, job.output[-2000:]


def test_bad_hyperparameters_fail_naming_each_key(tiny_dataset, tmp_path):
    job = run_training(tiny_dataset, tmp_path / "ml", {"epochs": "ten", "lerning_rate": "0.1"})
    assert job.returncode != 0
    first_line = job.failure.splitlines()[0]
    assert "hyperparameter 'epochs' must be a whole number" in first_line
    assert "unknown hyperparameter 'lerning_rate' (did you mean 'learning_rate'?)" in first_line
    assert "Traceback" not in job.failure
    assert not (tmp_path / "ml" / "model" / "model.pt").exists()


def test_json_encoded_hyperparameters_are_accepted(tiny_dataset, tmp_path):
    # The SageMaker SDK sends '"2"' where the console sends '2'.
    hps = {k: json.dumps(v) for k, v in {**TINY_HPS, "epochs": "1", "classes": "2"}.items()}
    job = run_training(tiny_dataset, tmp_path / "ml", hps)
    assert job.returncode == 0, job.output[-2000:]
    assert json.loads((job.model_dir / "model.json").read_text())["classes"] == [2]


def test_bad_data_fails_with_the_complete_report(make_dataset, tmp_path):
    root = make_dataset(classes=(1, 2, 3), images_per_split=8)
    (root / "Class1" / "Train" / "Label" / "Labels.txt").unlink()
    (root / "Class2" / "Train" / "0002.PNG").unlink()
    for split in ("Train", "Test"):
        (root / "Class3" / split / "Label" / "Labels.txt").write_text("1\n")
    job = run_training(root, tmp_path / "ml", TINY_HPS)
    assert job.returncode != 0
    # The channel is what the job sees; Class1 also counts as having no labelled images.
    channel = tmp_path / "ml" / "input" / "data" / "train"
    assert job.failure.startswith(f"dataset at {channel} has 4 problem(s)")
    for problem in ("Class1/Train: missing Label/Labels.txt", "names 0002.PNG, which is missing",
                    "Class3: no labelled images"):
        assert problem in job.failure


def test_corrupt_image_and_mismatched_mask_fail_the_job(make_dataset, tmp_path):
    root = make_dataset(classes=(1,), images_per_split=12)
    (root / "Class1" / "Train" / "0003.PNG").write_bytes(b"garbage")
    labels = (root / "Class1" / "Train" / "Label" / "Labels.txt").read_text().splitlines()
    mask = next(line.split("\t")[4] for line in labels[1:] if line.split("\t")[1] == "1")
    Image.new("L", (16, 16)).save(root / "Class1" / "Train" / "Label" / mask)
    job = run_training(root, tmp_path / "ml", TINY_HPS)
    assert job.returncode != 0
    assert "Class1/Train/0003.PNG: not a decodable image" in job.failure
    assert "is 16x16 but the image is 64x64" in job.failure


def test_missing_train_channel_is_named(tiny_dataset, tmp_path):
    work = tmp_path / "ml"
    job = run_training(tiny_dataset, work, TINY_HPS)  # lay out once, then break the channel
    assert job.returncode == 0
    config = work / "input" / "config" / "inputdataconfig.json"
    config.write_text(json.dumps({"training": {"TrainingInputMode": "File"}}))
    os.rename(work / "input" / "data" / "train", work / "input" / "data" / "training")
    result = subprocess.run(
        [str(REPO / "docker" / "entrypoint.sh"), "train"], capture_output=True, text=True,
        env={**job_env(), "SAGEMAKER_BASE_DIR": str(work)},
    )
    assert result.returncode != 0
    failure = (work / "output" / "failure").read_text()
    assert failure.startswith("missing required input channel 'train' (channels given: training)")


def test_sigterm_saves_a_checkpoint_and_a_rerun_resumes(tiny_dataset, tmp_path):
    work = tmp_path / "ml"
    hps = {**TINY_HPS, "epochs": "200", "batch_size": "2"}
    process = start_training(tiny_dataset, work, hps)
    lines = []
    for line in process.stdout:
        lines.append(line)
        if line.startswith("epoch=2 "):
            break
    sent = time.monotonic()
    # SageMaker signals the container's main process: the one the entry script exec'd.
    process.send_signal(signal.SIGTERM)
    rest, _ = process.communicate(timeout=120)
    assert time.monotonic() - sent < 60
    assert process.returncode != 0
    failure = (work / "output" / "failure").read_text()
    assert failure.startswith("stopped by SIGTERM during epoch")
    saved = torch.load(work / "checkpoints" / CHECKPOINT_FILE, weights_only=True)
    done = saved["epochs_done"]
    assert done >= 2

    job = run_training(tiny_dataset, work, {**hps, "epochs": str(done + 1)})
    assert job.returncode == 0, job.output[-2000:]
    assert job.tokens("event=resumed")[0]["epochs_done"] == str(done)
    assert [e["epoch"] for e in job.tokens("epoch=")] == [str(done + 1)]


def test_two_process_ddp_ranks_agree(tiny_dataset, tmp_path):
    job = run_training(tiny_dataset, tmp_path / "ml", {**TINY_HPS, "processes_per_host": "2"})
    assert job.returncode == 0, job.output[-3000:]
    finished = job.tokens("event=finished")
    assert sorted(f["rank"] for f in finished) == ["0", "1"]
    assert {f["world_size"] for f in finished} == {"2"}
    assert len({f["params_checksum"] for f in finished}) == 1
    assert (job.model_dir / "model.pt").is_file()
    # One MLflow run for the job, written by rank 0, not one per rank.
    assert len(job.tokens("event=mlflow_run")) == 1
    from mlflow.tracking import MlflowClient

    store = MlflowClient(tracking_uri=f"sqlite:///{job.work / 'output' / 'data' / 'mlflow' / 'mlflow.db'}")
    [run] = store.search_runs([e.experiment_id for e in store.search_experiments()])
    assert run.data.params["world_size"] == "2"


def test_checkpoint_of_another_architecture_is_refused(tiny_dataset, tmp_path):
    work = tmp_path / "ml"
    assert run_training(tiny_dataset, work, {**TINY_HPS, "epochs": "1"}).returncode == 0
    job = run_training(tiny_dataset, work, {**TINY_HPS, "width": "0.25"})
    assert job.returncode != 0
    assert "point the job's checkpoint location at an empty prefix" in job.failure
