"""Every training job tracked and explained, through the image's own entry command: one
MLflow run per job in the job's output (and on a real `mlflow server` when one is set),
the training report, and the rules firing on deliberately broken recipes."""

from __future__ import annotations

import json
import random
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from dagm_synth import generate_dataset
from local_aws.hosting import free_port

from conftest import TINY_HPS, run_training, start_training

pytestmark = pytest.mark.slow

RULE_HPS = {"image_size": "128", "data_workers": "1"}


def store_of(work: Path) -> Path:
    return work / "output" / "data" / "mlflow"


def store_client(store: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{store / 'mlflow.db'}")


def the_run(store: Path):
    client = store_client(store)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 1, [r.info.run_id for r in runs]
    return client, runs[0]


def report(work: Path) -> dict:
    return json.loads((work / "output" / "data" / "report.json").read_text())


def rule_status(work: Path) -> dict[str, str]:
    return {rule["name"]: rule["status"] for rule in report(work)["rules"]}


class MlflowServer:
    """`mlflow server` as a subprocess with a SQLite backend, on a free loopback port."""

    def __init__(self, root: Path) -> None:
        self.root, self.port = root, free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> "MlflowServer":
        self.root.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [str(Path(sys.executable).with_name("mlflow")), "server", "--host", "127.0.0.1", "--port", str(self.port),
             "--workers", "1", "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
             "--artifacts-destination", str(self.root / "artifacts")],
            stdout=(self.root / "server.log").open("ab"), stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert self.process.poll() is None, (self.root / "server.log").read_text()[-2000:]
            try:
                urllib.request.urlopen(f"{self.uri}/health", timeout=2)
                return self
            except OSError:
                time.sleep(0.3)
        raise AssertionError("mlflow server did not answer /health within 90 s")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            import os
            import signal

            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()

    def get(self, path: str, **query) -> dict:
        from urllib.parse import urlencode

        with urllib.request.urlopen(f"{self.uri}{path}?{urlencode(query)}", timeout=10) as answer:
            return json.loads(answer.read())


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def rules_dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("rules") / "data"
    generate_dataset(root, classes=[1], images_per_split=40, size=128, seed=7, workers=1)
    return root


def test_a_job_is_one_mlflow_run_with_settings_data_curves_files_and_model(trained_job):
    client, run = the_run(store_of(trained_job.work))
    assert run.info.status == "FINISHED" and run.info.run_name.startswith("local-")
    params = run.data.params
    assert params["epochs"] == "2" and params["image_size"] == "[128,128]" and params["device"] == "cpu"
    assert params["data.classes"] == "[1,2]" and params["data.train_images"] == "24"
    assert params["data.test_defective"] == "4" and len(params["data.content_hash"]) == 32
    [dataset] = run.inputs.dataset_inputs
    assert dataset.dataset.name == "dagm-class1-class2" and dataset.dataset.digest == params["data.content_hash"]
    assert json.loads(dataset.dataset.profile)["train_images"] == 24
    assert run.data.tags["mlflow.source.git.commit"] == subprocess.run(
        ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent).stdout.strip()
    assert run.data.tags["dagm.code_version"] == "0.1.0"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")] == [1, 2]
    for key in ("val_ap", "val_loss", "lr", "images_per_sec", "test_ap", "test_recall", "class_2_test_ap"):
        assert key in run.data.metrics, key
    files = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"evaluation.json", "report.html", "report.json", "pr_roc.png", "confusion.png", "masks.png",
            "model"} <= files
    # The job's outputs and the model's metadata name the run.
    record = json.loads((trained_job.work / "output" / "data" / "mlflow" / "run.json").read_text())
    assert record["run_id"] == run.info.run_id and record["server_run_id"] is None
    metadata = json.loads((trained_job.model_dir / "model.json").read_text())
    assert metadata["mlflow"] == {"run_id": run.info.run_id, "experiment": "dagm-defects"}
    assert trained_job.tokens("event=mlflow_run")[0]["run_id"] == run.info.run_id
    assert "\r" not in trained_job.output
    # The store started from make venv's template: no schema migrations in the job.
    assert "Creating initial MLflow database tables" not in trained_job.output


def test_the_mlflow_model_loads_and_predicts_as_the_artifact_does(trained_job):
    import mlflow.pyfunc
    import torch

    from dagm_defects.artifact import load_artifact

    _, run = the_run(store_of(trained_job.work))
    mlflow.set_tracking_uri(store_client(store_of(trained_job.work)).tracking_uri)
    model = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/model")
    assert model.metadata.get_input_schema().inputs[0].shape == (-1, 128, 128)
    images = np.random.default_rng(0).integers(0, 256, (3, 128, 128), dtype=np.uint8)
    predicted = model.predict(images)
    artifact = load_artifact(trained_job.model_dir)
    with torch.no_grad():
        expected = torch.sigmoid(artifact.model(torch.from_numpy(images))[1]).numpy()
    np.testing.assert_allclose(predicted["score"], expected, atol=1e-5)
    assert list(predicted["defective"]) == list(expected >= artifact.threshold)
    with pytest.raises(Exception, match="shape"):
        model.predict(np.zeros((1, 64, 64), np.uint8))


def test_the_training_report_has_rules_profile_and_evaluation(trained_job):
    document = report(trained_job.work)
    assert document["job"]["status"] == "Completed" and document["job"]["failure_reason"] is None
    assert [e["epoch"] for e in document["epochs"]] == [1, 2]
    assert len(document["rules"]) == 9
    seconds = document["profile"]["seconds"]
    assert seconds["forward"] > 0 and seconds["backward"] > 0 and seconds["optimizer"] > 0
    assert document["profile"]["steps"] == 6 and document["evaluation"]["overall"]["n"] == 32
    html = (trained_job.work / "output" / "data" / "report.html").read_text()
    assert "exploding_gradients" in html and "<script src" not in html and "data:image/png;base64," in html


def test_mlflow_ui_serves_the_jobs_run_its_curves_and_files(trained_job, tmp_path):
    """What `mlflow ui` shows, read through the same server's REST API, from the store as a
    user has it after unpacking the job's output.tar.gz somewhere else."""
    store = tmp_path / "unpacked" / "mlflow"
    shutil.copytree(trained_job.work / "output" / "data" / "mlflow", store)
    relocated = subprocess.run([str(Path(sys.executable).with_name("dagm-runs")), "relocate", "--store", str(store)],
                               capture_output=True, text=True, timeout=120)
    assert relocated.returncode == 0 and "runs now read their files from" in relocated.stdout, relocated.stderr
    _, run = the_run(store)
    assert run.info.artifact_uri.startswith((store / "artifacts").as_uri())
    compared = subprocess.run([str(Path(sys.executable).with_name("dagm-runs")), "compare", "--store", str(store),
                               "--json"], capture_output=True, text=True, timeout=120)
    assert compared.returncode == 0, compared.stderr
    assert json.loads(compared.stdout)["best_run_id"] == run.info.run_id
    server = MlflowServer(tmp_path / "ui")
    server.root.mkdir(parents=True)
    server.process = subprocess.Popen(
        [str(Path(sys.executable).with_name("mlflow")), "ui", "--host", "127.0.0.1", "--port", str(server.port),
         "--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}"],
        stdout=(server.root / "server.log").open("ab"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                urllib.request.urlopen(f"{server.uri}/health", timeout=2)
                break
            except OSError:
                assert time.monotonic() < deadline and server.process.poll() is None
                time.sleep(0.3)
        experiment = server.get("/api/2.0/mlflow/experiments/get-by-name", experiment_name="dagm-defects")
        got = server.get("/api/2.0/mlflow/runs/get", run_id=run.info.run_id)["run"]
        assert got["info"]["experiment_id"] == experiment["experiment"]["experiment_id"]
        history = server.get("/api/2.0/mlflow/metrics/get-history", run_id=run.info.run_id, metric_key="val_ap")
        assert [m["step"] for m in history["metrics"]] == [1, 2]
        listed = server.get("/api/2.0/mlflow/artifacts/list", run_id=run.info.run_id)
        assert {"report.html", "model"} <= {f["path"] for f in listed["files"]}
    finally:
        server.stop()


def test_a_job_tracks_to_a_server_and_runs_compare(tiny_dataset, tmp_path, mlflow_server):
    env = {"MLFLOW_TRACKING_URI": mlflow_server.uri, "MLFLOW_EXPERIMENT_NAME": "line-3"}
    jobs = [run_training(tiny_dataset, tmp_path / f"ml{seed}", {**TINY_HPS, "epochs": "1", "seed": str(seed)}, env=env)
            for seed in (0, 1)]
    remote_ids = []
    for job in jobs:
        assert job.returncode == 0, job.output[-3000:]
        record = json.loads((job.work / "output" / "data" / "mlflow" / "run.json").read_text())
        assert record["tracking_uri"] == mlflow_server.uri and record["warning"] is None
        remote_ids.append(record["server_run_id"])
        assert json.loads((job.model_dir / "model.json").read_text())["mlflow"]["server_run_id"] == record["server_run_id"]
        got = mlflow_server.get("/api/2.0/mlflow/runs/get", run_id=record["server_run_id"])["run"]
        assert got["info"]["status"] == "FINISHED"
        assert {t["key"]: t["value"] for t in got["data"]["tags"]}["dagm.local_run_id"] == record["run_id"]
        listed = mlflow_server.get("/api/2.0/mlflow/artifacts/list", run_id=record["server_run_id"])
        assert {"report.html", "evaluation.json", "model"} <= {f["path"] for f in listed["files"]}

    compare = subprocess.run([str(Path(sys.executable).with_name("dagm-runs")), "compare", "--tracking-uri",
                              mlflow_server.uri, "--experiment", "line-3", "--json", "--against", remote_ids[0]],
                             capture_output=True, text=True, timeout=120)
    assert compare.returncode == 0, compare.stderr
    table = json.loads(compare.stdout)
    assert {row["run_id"] for row in table["runs"]} == set(remote_ids)
    best = max(table["runs"], key=lambda row: row["test_ap"])
    assert table["best_run_id"] == best["run_id"] and best["best"]
    text = subprocess.run([str(Path(sys.executable).with_name("dagm-runs")), "compare", "--tracking-uri",
                           mlflow_server.uri, "--experiment", "line-3"], capture_output=True, text=True, timeout=120)
    assert text.returncode == 0 and text.stdout.count("\n") == 4 and "* best by test_ap" in text.stdout
    missing = subprocess.run([str(Path(sys.executable).with_name("dagm-runs")), "compare", "--tracking-uri",
                              mlflow_server.uri, "--experiment", "nope"], capture_output=True, text=True, timeout=120)
    assert missing.returncode == 1 and missing.stderr.strip() == "dagm-runs: no experiment named 'nope' in this store"


def test_a_server_stopped_mid_job_costs_a_warning_and_the_run_uploads_later(tiny_dataset, tmp_path, mlflow_server):
    work = tmp_path / "ml"
    process = start_training(tiny_dataset, work, {**TINY_HPS, "epochs": "4"},
                             env={"MLFLOW_TRACKING_URI": mlflow_server.uri})
    lines = []
    for line in process.stdout:
        lines.append(line)
        if line.startswith("epoch=1 "):
            mlflow_server.stop()
    assert process.wait(120) == 0, "".join(lines)[-3000:]
    output = "".join(lines)
    store = work / "output" / "data" / "mlflow"
    assert (f"warning: the MLflow run was not uploaded to {mlflow_server.uri} (" in output
            and f"upload it with: dagm-runs upload --store {store} --tracking-uri {mlflow_server.uri}" in output)
    client, run = the_run(store_of(work))
    assert run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_ap")] == [1, 2, 3, 4]
    record = json.loads((store / "run.json").read_text())
    assert record["server_run_id"] is None and "dagm-runs upload" in record["warning"]

    # As a user has it: the job's output unpacked somewhere else, the job's folder gone.
    unpacked = tmp_path / "downloaded" / "mlflow"
    shutil.move(store, unpacked)
    mlflow_server.start()
    upload = [str(Path(sys.executable).with_name("dagm-runs")), "upload", "--store", str(unpacked),
              "--tracking-uri", mlflow_server.uri]
    done = subprocess.run(upload, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    remote_id = done.stdout.split()[-1]
    history = mlflow_server.get("/api/2.0/mlflow/metrics/get-history", run_id=remote_id, metric_key="val_ap")
    assert [m["step"] for m in history["metrics"]] == [1, 2, 3, 4]
    listed = mlflow_server.get("/api/2.0/mlflow/artifacts/list", run_id=remote_id)
    assert {"report.html", "evaluation.json", "model"} <= {f["path"] for f in listed["files"]}
    # Uploading again finds the run already there.
    again = subprocess.run(upload, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and again.stdout.split()[-1] == remote_id


def test_a_server_that_never_answers_holds_the_job_only_boundedly(tiny_dataset, tmp_path):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    held = []
    stop = threading.Event()

    def accept() -> None:  # takes connections and never answers them
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    uri = f"http://127.0.0.1:{listener.getsockname()[1]}"
    try:
        started = time.monotonic()
        job = run_training(tiny_dataset, tmp_path / "ml", {**TINY_HPS, "epochs": "1"},
                           env={"MLFLOW_TRACKING_URI": uri, "DAGM_MLFLOW_UPLOAD_SECONDS": "3"})
        elapsed = time.monotonic() - started
    finally:
        stop.set()
        thread.join()
        for connection in held:
            connection.close()
        listener.close()
    assert job.returncode == 0, job.output[-3000:]
    assert f"warning: the MLflow run was not uploaded to {uri} (no answer within 3 s)" in job.output
    assert held, "the job never tried the server"
    assert elapsed < 60
    _, run = the_run(store_of(job.work))
    assert run.info.status == "FINISHED"


def test_a_server_that_refuses_costs_a_warning_naming_it(tiny_dataset, tmp_path):
    import http.server

    class Refuse(http.server.BaseHTTPRequestHandler):
        def _refuse(self) -> None:
            body = b'{"error_code": "PERMISSION_DENIED", "message": "no access for this job"}'
            self.send_response(403)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _refuse

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Refuse)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    uri = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        # No template store either: the job's store gets MLflow's own schema migrations.
        job = run_training(tiny_dataset, tmp_path / "ml", {**TINY_HPS, "epochs": "1"},
                           env={"MLFLOW_TRACKING_URI": uri, "DAGM_MLFLOW_TEMPLATE": str(tmp_path / "absent.db")})
    finally:
        server.shutdown()
        server.server_close()
    assert job.returncode == 0, job.output[-3000:]
    warning = next(line for line in job.output.splitlines() if line.startswith("warning: the MLflow run"))
    assert warning.startswith(f"warning: the MLflow run was not uploaded to {uri} (") and "PERMISSION_DENIED" in warning
    assert json.loads((store_of(job.work) / "run.json").read_text())["server_run_id"] is None
    assert "Creating initial MLflow database tables" in job.output
    assert the_run(store_of(job.work))[1].info.status == "FINISHED"


def test_a_malformed_upload_bound_fails_the_job_naming_it(tiny_dataset, tmp_path):
    job = run_training(tiny_dataset, tmp_path / "ml", TINY_HPS, env={"DAGM_MLFLOW_UPLOAD_SECONDS": "soon"})
    assert job.returncode == 1
    assert job.failure.startswith("DAGM_MLFLOW_UPLOAD_SECONDS must be a number of seconds")


def test_tracking_false_trains_without_run_or_report(tiny_dataset, tmp_path):
    job = run_training(tiny_dataset, tmp_path / "ml", {**TINY_HPS, "epochs": "1", "tracking": "false"})
    assert job.returncode == 0, job.output[-3000:]
    data = job.work / "output" / "data"
    assert (data / "evaluation.json").is_file()
    assert not (data / "mlflow").exists() and not (data / "report.json").exists()
    assert "mlflow" not in json.loads((job.model_dir / "model.json").read_text())


# The rules on broken recipes, and quiet where nothing is wrong.

@pytest.mark.xfail(strict=False, reason="issue 38: with the balanced losses (decision weight 0 at the start) lr 10 "
                   "no longer explodes before validation_not_improving fires; the recipe that explodes is to be re-found")
def test_learning_rate_10_fires_exploding_gradients_and_stops_the_job_when_asked(rules_dataset, tmp_path):
    stopped = run_training(rules_dataset, tmp_path / "stopped",
                           {**RULE_HPS, "epochs": "5", "learning_rate": "10", "stop_on_rules": "true"})
    assert stopped.returncode == 1
    reason = stopped.failure.strip()
    found = re.fullmatch(r"rule exploding_gradients fired at epoch (\d) step \d+: gradient norm of [\w.]+ is [\d.e+]+ "
                         r"\(threshold 100\); the job was stopped \(stop_on_rules\); (.*)", reason)
    assert found, reason
    epoch = int(found[1])
    # Gradients are sampled every 10th step: the rule fires at the first sampled step past 100.
    assert found[2] == (f"the checkpoint of epoch {epoch - 1} is kept in {stopped.work / 'checkpoints'}" if epoch > 1
                        else "no epoch had finished, so there is no checkpoint")
    assert not (stopped.work / "model" / "model.pt").exists()
    document = report(stopped.work)
    assert document["job"]["status"] == "Stopped by rule" and document["evaluation"] is None
    _, run = the_run(store_of(stopped.work))
    assert run.info.status == "FAILED" and run.data.tags["dagm.rules_fired"].startswith("exploding_gradients")


def test_shuffled_labels_fire_overfitting_and_validation_not_improving(rules_dataset, tmp_path):
    shuffled, validation = tmp_path / "shuffled", tmp_path / "validation"
    shutil.copytree(rules_dataset, shuffled)
    rng = random.Random(0)
    for labels in shuffled.glob("Class*/*/Label/Labels.txt"):
        header, *rows = labels.read_text().splitlines()
        fields = [row.split("\t") for row in rows]
        # Each image takes another image's label and mask.
        answers = [(f[1], f[3:]) for f in fields]
        rng.shuffle(answers)
        labels.write_text("\n".join([header, *("\t".join([f[0], a[0], f[2], *a[1]]) for f, a in zip(fields, answers))]))
    generate_dataset(validation, classes=[1], images_per_split=48, size=128, seed=11, workers=1)
    shutil.rmtree(validation / "Class1" / "Test")
    hps = {**RULE_HPS, "epochs": "20", "learning_rate": "0.003"}
    job = run_training(shuffled, tmp_path / "ml", hps, env={"EXTRA_CHANNELS": f"validation={validation}"})
    assert job.returncode == 0, job.output[-3000:]
    fired = rule_status(job.work)
    assert fired["overfitting"] == "fired" and fired["validation_not_improving"] == "fired"
    assert fired["exploding_gradients"] == "quiet" and fired["loss_not_finite"] == "quiet"


def test_a_learning_rate_near_zero_fires_loss_not_decreasing_and_thresholds_fire_their_rules(rules_dataset, tmp_path):
    # No recipe here makes gradients vanish or memory run out: their thresholds are moved instead.
    parameters = {"vanishing_gradients": {"threshold": 1000, "samples": 1},
                  "memory_near_limit": {"limit_bytes": 100 * 2**20}}
    job = run_training(rules_dataset, tmp_path / "ml", {**RULE_HPS, "epochs": "10", "learning_rate": "1e-9",
                                                        "rule_parameters": json.dumps(parameters)})
    assert job.returncode == 0, job.output[-3000:]
    rules = {rule["name"]: rule for rule in report(job.work)["rules"]}
    assert rules["loss_not_decreasing"]["status"] == "fired"
    assert rules["vanishing_gradients"]["status"] == "fired"
    assert rules["memory_near_limit"]["status"] == "fired"
    assert "of 100 MiB (the limit_bytes parameter)" in rules["memory_near_limit"]["evidence"]
    assert rules["exploding_gradients"]["status"] == "quiet" and rules["loss_not_finite"]["status"] == "quiet"


def _site(tmp_path: Path, body: str) -> dict[str, str]:
    """A sitecustomize that breaks the job's own process (the toolkit's `train`) on purpose."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import os, sys\nif os.path.basename(sys.argv[0]) == 'train':\n" + body)
    return {"PYTHONPATH": str(site)}


def test_a_slowed_data_loader_fires_starving_and_low_utilization(rules_dataset, tmp_path):
    # Each batch waits twice as long as the loop's last step took (at least 0.4 s), so the
    # wait is most of the step time however busy the machine is (a fixed 0.4 s was not, once,
    # beside another job).
    env = _site(tmp_path, (
        "    import time\n    from dagm_defects.training import loop\n    original = loop.batches\n"
        "    def slowed(*args, **kwargs):\n        step = 0.2\n"
        "        for batch in original(*args, **kwargs):\n"
        "            time.sleep(2 * step)\n            handed = time.monotonic()\n            yield batch\n"
        "            step = max(0.2, time.monotonic() - handed)\n    loop.batches = slowed\n"))
    job = run_training(rules_dataset, tmp_path / "ml", {**RULE_HPS, "epochs": "2"}, env=env)
    assert job.returncode == 0, job.output[-3000:]
    fired = rule_status(job.work)
    assert fired["data_loader_starving"] == "fired" and fired["low_utilization"] == "fired"
    assert report(job.work)["profile"]["seconds"]["data"] > 2.0


def test_a_nan_loss_fires_and_stops_keeping_the_last_checkpoint(rules_dataset, tmp_path):
    # From the second epoch's third step on, the loss the loop sees is NaN.
    env = _site(tmp_path, (
        "    from dagm_defects.training import loop\n    original = loop.train_step\n    calls = [0]\n"
        "    def broken(*args, **kwargs):\n        loss, seg, dec = original(*args, **kwargs)\n"
        "        calls[0] += 1\n        return (loss * float('nan') if calls[0] >= 7 else loss), seg, dec\n"
        "    loop.train_step = broken\n"))
    job = run_training(rules_dataset, tmp_path / "ml", {**RULE_HPS, "epochs": "3", "stop_on_rules": "loss_not_finite"},
                       env=env)
    assert job.returncode == 1
    reason = job.failure.strip()
    assert reason.startswith("rule loss_not_finite fired at epoch 2 step 6: loss nan at this step")
    assert reason.endswith(f"the checkpoint of epoch 1 is kept in {job.work / 'checkpoints'}")
    import torch

    assert torch.load(job.work / "checkpoints" / "last.pt", weights_only=True)["epochs_done"] == 1
