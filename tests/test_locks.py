"""One source of truth for versions: requirements/*.lock are the dependency closures of the
three distributions' declared dependencies at the versions .venv has installed, each image
installs its own lock, and neither carries the other's dependencies."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from conftest import REPO

LOCKS = REPO / "requirements"


def pins(lock: str) -> dict[str, str]:
    lines = (LOCKS / lock).read_text().splitlines()
    return {name.lower().replace("_", "-"): version
            for name, version in (line.split("==") for line in lines if line and not line.startswith("#"))}


def test_the_locks_are_the_closures_of_the_pyproject_files():
    result = subprocess.run([sys.executable, str(LOCKS / "lock.py"), "--check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_the_check_names_a_lock_that_disagrees(tmp_path):
    """The check really compares: a copy of the tool beside a doctored lock fails, naming it."""
    (tmp_path / "requirements").mkdir()
    for path in ("code", "serve", "deploy"):
        (tmp_path / path).mkdir()
        (tmp_path / path / "pyproject.toml").write_text((REPO / path / "pyproject.toml").read_text())
    tool = tmp_path / "requirements" / "lock.py"
    tool.write_text((LOCKS / "lock.py").read_text())
    for lock in ("train.lock", "serve.lock", "deploy.lock", "local-mode.lock"):
        (tmp_path / "requirements" / lock).write_text((LOCKS / lock).read_text())
    serve = tmp_path / "requirements" / "serve.lock"
    serve.write_text(re.sub(r"(?m)^aiohttp==.*\n", "aiohttp==3.9.0\n", serve.read_text()))
    result = subprocess.run([sys.executable, str(tool), "--check"], capture_output=True, text=True)
    assert result.returncode == 1 and "requirements/serve.lock disagree" in result.stderr


@pytest.mark.parametrize("lock, lacks", [
    ("local-mode.lock", {"torch"}),
    ("train.lock", {"multi-model-server", "model-archiver", "sagemaker-inference", "aiohttp"}),
    ("serve.lock", {"sagemaker-training", "matplotlib", "paramiko", "gevent", "scikit-learn"}),
    ("deploy.lock", {"torch", "torchvision", "sagemaker-training", "sagemaker-inference", "multi-model-server",
                     "scikit-learn"}),
])
def test_each_lock_lacks_what_it_does_not_run(lock, lacks):
    assert not lacks & set(pins(lock)), sorted(lacks & set(pins(lock)))


def test_the_locks_agree_with_each_other_and_dev_installs_all_three():
    seen: dict[str, str] = {}
    for lock in ("train.lock", "serve.lock", "deploy.lock", "local-mode.lock"):
        for name, version in pins(lock).items():
            assert seen.setdefault(name, version) == version, f"{name}: {seen[name]} and {version} in {lock}"
    dev = (REPO / "requirements-dev.lock").read_text()
    for lock in ("train.lock", "serve.lock", "deploy.lock", "local-mode.lock"):
        assert f"-r requirements/{lock}\n" in dev
    assert {"torch", "sagemaker-training", "multi-model-server", "boto3", "sagemaker"} <= set(seen)
    # A pin of the dev lock's own agrees with the locks too.
    for line in dev.splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==")
            name = name.lower().replace("_", "-")
            assert seen.get(name, version) == version, f"requirements-dev.lock pins {name}=={version}, a lock {seen[name]}"


@pytest.mark.parametrize("kind", ["train", "serve"])
def test_each_image_installs_its_own_lock(kind):
    text = (REPO / f"Dockerfile.{kind}").read_text()
    assert f"COPY docker/build-venv.sh requirements/{kind}.lock /tmp/build/" in text
    assert f"RUN /tmp/build/build-venv.sh lock /tmp/build/{kind}.lock" in text
    assert f"/tmp/build/build-venv.sh projects /tmp/build/{kind}.lock /src/code" in text
    other = {"train": "serve", "serve": "train"}[kind]
    assert f"{other}.lock" not in text
