"""When a command that ran is one the docs show (doc_commands.py), and the plugin that fails
a run in which a shown command did not run (command_ledger.py), run as `make test` runs it:
pytest with two xdist workers and `--doc-commands`."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from command_ledger import NOT_RUN_HERE
from doc_commands import REPO, shapes, shown_commands


def runs(shown: str, ran: list[str] | str) -> bool:
    [shape] = shapes(shown)
    return any(shape.is_run_by(other) for other in shapes(ran))


@pytest.mark.parametrize(("shown", "ran"), [
    (".venv/bin/dagm-deploy deploy --endpoint dagm --role ARN",
     [sys.executable, "-m", "dagm_deploy", "deploy", "--role=r", "--endpoint", "e", "--version", "1"]),
    (".venv/bin/dagm-drift --endpoint dagm", [sys.executable, "-u", "-m", "dagm_deploy.drift_cli", "--endpoint", "e"]),
    ("local_test/serve_local.sh MODEL_DIR 8080", ["bash", str(REPO / "local_test" / "serve_local.sh"), "/m", "1"]),
    ("make demo DEMO_DIR=/tmp/dagm-demo", "cd /repo && make demo DEMO_DIR=/tmp/x DEMO_PORT=1"),
    ("aws s3 cp a.csv s3://b/a.csv", ["/venv/bin/aws", "s3", "cp", "x", "s3://y/x"]),
    (".venv/bin/mlflow ui --backend-store-uri sqlite:///x.db", [str(REPO / ".venv/bin/mlflow"), "ui",
                                                                "--backend-store-uri", "sqlite:///y.db", "--port", "1"]),
])
def test_a_shown_command_is_run_by_the_same_program_subcommand_and_options(shown, ran):
    assert runs(shown, ran)


@pytest.mark.parametrize(("shown", "ran"), [
    (".venv/bin/dagm-deploy deploy --endpoint dagm --role ARN", [sys.executable, "-m", "dagm_deploy", "deploy",
                                                                 "--endpoint", "e"]),
    (".venv/bin/dagm-deploy rollback --endpoint dagm", [sys.executable, "-m", "dagm_deploy", "status",
                                                        "--endpoint", "dagm"]),
    ("make demo DEMO_DIR=/tmp/dagm-demo", ["make", "demo"]),
    ("make demo", ["make", "--dry-run", "demo"]),
    ("aws s3 cp a.csv s3://b/a.csv", ["aws", "s3", "ls"]),
    (".venv/bin/dagm-drift --endpoint dagm", [sys.executable, "-m", "dagm_deploy.label_draft", "--endpoint", "e"]),
])
def test_another_subcommand_a_missing_option_or_a_dry_run_is_not_the_command(shown, ran):
    assert not runs(shown, ran)


def test_every_reason_not_to_run_names_a_command_the_docs_show():
    named = {(shape.program, shape.subcommand) for shape in shown_commands()}
    assert set(NOT_RUN_HERE) <= named


INNER_TEST = '''
import subprocess, sys
from pathlib import Path

def test_generate(tmp_path):
    synth = str(Path(sys.executable).parent / "dagm-synth")
    subprocess.run([synth, str(tmp_path / "d"), "--classes", "1", "--images-per-split", "2", "--size", "{size}",
                    "--seed", "0"], capture_output=True)
'''


@pytest.mark.parametrize(("size", "counted"), [(64, True), (7, False)], ids=["exit-0", "refused"])
def test_a_run_without_the_shown_commands_fails_naming_them(tmp_path, size, counted):
    """One shown command (`dagm-synth DIR --classes ... --images-per-split ... --seed ...`)
    runs on an xdist worker; the run fails and names every other one. A refused run
    (`--size 7`, exit 2) is no run of it."""
    (tmp_path / "test_inner.py").write_text(INNER_TEST.format(size=size))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(REPO / p) for p in ("tests", "bench"))}
    result = subprocess.run([sys.executable, "-m", "pytest", "-p", "command_ledger", "-n", "2", "--doc-commands",
                             "-p", "no:cacheprovider", "test_inner.py"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 1, result.stdout[-3000:]
    assert "1 passed" in result.stdout
    summary = result.stdout.partition("commands the docs show")[2]
    ran = int(re.search(r"(\d+) ran in this run", summary).group(1))
    missing = re.findall(r"^DID NOT RUN: (.*?)  \(shown in", summary, re.MULTILINE)
    synth = "dagm-synth --classes --images-per-split --seed"
    assert (ran, synth not in missing) == ((1, True) if counted else (0, False))
    assert "dagm-deploy status --endpoint" in missing and "make demo" in missing
    assert "make test" not in missing  # .ci/run runs it
