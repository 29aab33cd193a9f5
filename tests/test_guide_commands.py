"""The guide's commands that no other test runs, run as the guide shows them with its
placeholders filled in: `make demo`, `make local-aws` with the `aws` CLI and
tools/create_repositories.sh against it, and curl and predict.sh against `serve_local.sh` (tests/command_ledger.py checks that every
command the docs show ran)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import boto3
import pytest

from conftest import REPO, TINY_HPS, aws_env, job_env
from local_aws.hosting import free_port

pytestmark = pytest.mark.slow
AWS = str(Path(sys.executable).parent / "aws")


def stop(process: subprocess.Popen) -> int:
    """SIGTERM to the process group a command started (make and what it runs), then its exit."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
    try:
        return process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        return process.wait()


def test_make_demo_runs_data_training_serving_and_predictions_then_stops_its_server(tmp_path):
    out, port = tmp_path / "demo", free_port()
    env = {**job_env(), "DEMO_CLASSES": "1", "DEMO_IMAGES": "12", "DEMO_SIZE": "128",
           "DEMO_HYPERPARAMETERS": json.dumps(TINY_HPS), "DEMO_PORT": str(port)}
    result = subprocess.run(["make", "demo", f"DEMO_DIR={out}"], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for step in ("== 1/4", "== 2/4", "== 3/4", "== 4/4", "demo finished in"):
        assert step in result.stdout, step
    assert (out / "data" / "Class1" / "Test" / "Label" / "Labels.txt").is_file()
    evaluation = json.loads((out / "opt_ml" / "output" / "data" / "evaluation.json").read_text())
    assert evaluation, "the job wrote an empty evaluation"
    assert (out / "opt_ml" / "model" / "model.pt").is_file()
    # predict.sh's table: a header, then the two defective and two clean Test images of class 1.
    rows = [line for line in result.stdout.splitlines() if "/Class1/Test/" in line and line.split()[0].endswith(".PNG")]
    assert len(rows) == 4, result.stdout[-2000:]
    assert {row.split()[2] for row in rows} <= {"True", "False"}
    with pytest.raises(OSError):  # the demo's server ended with it
        urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2)


def test_make_local_aws_answers_the_aws_cli_and_create_repositories_sh(tmp_path):
    port = free_port()
    log = tmp_path / "local-aws.log"
    with open(log, "w") as out:  # a file, not a pipe nobody reads: the server logs every call
        server = subprocess.Popen(["make", "local-aws", f"PORT={port}"], cwd=REPO, stdout=out,
                                  stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        s3 = boto3.client("s3", endpoint_url=url, region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, log.read_text()
            try:
                s3.create_bucket(Bucket="dagm-data")
                break
            except Exception:
                assert time.monotonic() < deadline, "make local-aws never answered"
                time.sleep(0.5)
        copied = subprocess.run([AWS, "s3", "cp", "deploy/examples/profile.csv", "s3://dagm-data/profiles/2026-11.csv"],
                                cwd=REPO, env=aws_env(url), capture_output=True, text=True, timeout=120)
        assert copied.returncode == 0, copied.stderr
        body = s3.get_object(Bucket="dagm-data", Key="profiles/2026-11.csv")["Body"].read()
        assert body == (REPO / "deploy" / "examples" / "profile.csv").read_bytes()

        # The images' repositories, twice: the second run finds them.
        env = {**aws_env(url), "PATH": f"{Path(AWS).parent}:{os.environ['PATH']}"}
        runs = [subprocess.run(["tools/create_repositories.sh"], cwd=REPO, env=env, capture_output=True, text=True,
                               timeout=120) for _ in range(2)]
        assert [r.returncode for r in runs] == [0, 0], runs[0].stderr + runs[1].stderr
        assert runs[0].stdout.splitlines() == ["ECR repository dagm-defects-train created",
                                               "ECR repository dagm-defects-serve created"]
        assert runs[1].stdout.splitlines() == ["ECR repository dagm-defects-train exists",
                                               "ECR repository dagm-defects-serve exists"]
        ecr = boto3.client("ecr", endpoint_url=url, region_name="us-east-1",
                           aws_access_key_id="testing", aws_secret_access_key="testing")
        repositories = ecr.describe_repositories()["repositories"]
        assert sorted(r["repositoryName"] for r in repositories) == ["dagm-defects-serve", "dagm-defects-train"]
        assert all(r["imageScanningConfiguration"]["scanOnPush"] for r in repositories)
    finally:
        status = stop(server)
    assert status != 0 and status in (-signal.SIGTERM, 128 + signal.SIGTERM, 2), status


def test_curl_and_predict_sh_against_serve_local_as_the_guide_shows(trained_job, tiny_dataset, tmp_path):
    port = free_port()
    image = next(iter(sorted((tiny_dataset / "Class1" / "Test").glob("*.PNG"))))
    shutil.copy(image, tmp_path / "0001.PNG")
    server = subprocess.Popen([str(REPO / "local_test" / "serve_local.sh"), str(trained_job.model_dir), str(port)],
                              env=job_env(), stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                              start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            ping = subprocess.run(["curl", "-s", f"localhost:{port}/ping", "-o", "/dev/null", "-w", "%{http_code}\n"],
                                  capture_output=True, text=True, timeout=30)
            if ping.stdout.strip() == "200":
                break
            assert server.poll() is None, "serve_local.sh exited"
            assert time.monotonic() < deadline, f"/ping answered {ping.stdout!r}"
            time.sleep(0.5)
        answer = subprocess.run(["curl", "-s", "-X", "POST", f"localhost:{port}/invocations",
                                 "-H", "Content-Type: image/png", "--data-binary", "@0001.PNG"],
                                cwd=tmp_path, capture_output=True, text=True, timeout=60, check=True)
        [prediction] = json.loads(answer.stdout)["predictions"]
        assert {"score", "defective", "bbox"} <= set(prediction), prediction
        images = [str(tmp_path / "0001.PNG"), str(image)]
        table = subprocess.run([str(REPO / "local_test" / "predict.sh"), *images, "--url", f"http://localhost:{port}",
                                "--attributes", "threshold=0.3"], capture_output=True, text=True, timeout=60)
        assert table.returncode == 0, table.stderr
        rows = table.stdout.splitlines()[1:]
        assert [row.split()[0] for row in rows] == images
        # Both files are the same image: one answer, twice.
        assert rows[0].split()[1:] == rows[1].split()[1:]
        assert float(rows[0].split()[1]) == pytest.approx(prediction["score"], abs=1e-4)
    finally:
        status = stop(server)
    assert status in (0, -signal.SIGTERM, 128 + signal.SIGTERM), status
