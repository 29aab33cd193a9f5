"""The import rules of the layout, and lint: read from the sources (AST), and by importing
the deploy tools as the pipeline's lean install does.

- core (`dagm_defects`) knows no server and no AWS control plane;
- serving (`dagm_serve`) never imports deploy code, and deploy code (`dagm_deploy`)
  never imports serving code: what both need (the drift definitions) lives in core;
- every first-party import names its package (nothing relies on a script's own folder
  being on sys.path, and no module is called `code`)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

PACKAGES = {"dagm_defects": REPO / "code" / "dagm_defects", "dagm_serve": REPO / "serve" / "dagm_serve",
            "dagm_deploy": REPO / "deploy" / "dagm_deploy"}
FORBIDDEN = {
    "dagm_defects": {"dagm_serve", "dagm_deploy", "boto3", "botocore", "aiohttp", "sagemaker_inference", "mms"},
    "dagm_serve": {"dagm_deploy"},
    "dagm_deploy": {"dagm_serve", "torch", "torchvision", "aiohttp", "sagemaker_inference", "mms",
                    "sagemaker_training"},
}


def imported(path: Path) -> set[str]:
    """Top-level names of every module `path` imports, at any depth of the file."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def sources(package: str) -> list[Path]:
    return sorted(PACKAGES[package].rglob("*.py"))


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_each_package_keeps_to_its_side_of_the_layout(package):
    broken = {f"{path.relative_to(REPO)} imports {name}" for path in sources(package)
              for name in imported(path) & FORBIDDEN[package]}
    assert not broken, sorted(broken)


def test_first_party_imports_name_their_package():
    """A bare `import s3_objects` works only when the script's folder is on sys.path."""
    module_names = {path.stem for package in PACKAGES for path in sources(package)} - {"__init__", "__main__"}
    broken = {f"{path.relative_to(REPO)} imports {name}" for package in PACKAGES for path in sources(package)
              for name in imported(path) & (module_names | {"code"})}
    assert not broken, sorted(broken)


def test_the_rules_catch_a_violation(tmp_path):
    """The checks above read what they are meant to read."""
    sample = tmp_path / "sample.py"
    sample.write_text("import os\ndef f():\n    from dagm_serve.front import x\n    import s3_objects.y\n")
    assert imported(sample) == {"os", "dagm_serve", "s3_objects"}


def test_the_deploy_tools_import_without_torch_or_the_serving_package():
    """The pipeline's deploy and retrain stages install boto3, numpy and pillow, not torch."""
    code = ("import sys, dagm_deploy.cli, dagm_deploy.retrain, dagm_deploy.drift, dagm_deploy.train_stage; "
            "print(sorted(m for m in ('torch', 'dagm_serve', 'aiohttp') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_ruff_finds_nothing():
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "code", "serve", "deploy", "tests",
                             "bench", "local_test"], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
