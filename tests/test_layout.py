"""The import rules of the layout, and lint: read from the sources (AST), and by importing
the deploy tools as the pipeline's lean install does.

- core (`dagm_defects`) knows no server and no AWS control plane;
- serving (`dagm_serve`) never imports deploy code, and deploy code (`dagm_deploy`)
  never imports serving code: what both need (the drift definitions) lives in core;
- every first-party import names its package (nothing relies on a script's own folder
  being on sys.path, and no module is called `code`)."""

from __future__ import annotations

import ast
import graphlib
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

PACKAGES = {"dagm_defects": REPO / "code" / "dagm_defects", "dagm_serve": REPO / "serve" / "dagm_serve",
            "dagm_deploy": REPO / "deploy" / "dagm_deploy", "dagm_synth": REPO / "synth" / "dagm_synth"}
FORBIDDEN = {
    "dagm_defects": {"dagm_serve", "dagm_deploy", "boto3", "botocore", "aiohttp", "sagemaker_inference", "mms"},
    "dagm_serve": {"dagm_deploy"},
    "dagm_deploy": {"dagm_serve", "torch", "torchvision", "aiohttp", "sagemaker_inference", "mms",
                    "sagemaker_training"},
    # the generator needs core's labels and progress lines only: it must install without the model
    "dagm_synth": {"dagm_serve", "dagm_deploy", "boto3", "botocore", "torch", "torchvision", "aiohttp", "mms",
                   "sagemaker_inference", "sagemaker_training"},
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



def import_graph(roots: list[Path]) -> dict[str, set[str]]:
    """Module -> the first-party modules it imports, anywhere in the file (TYPE_CHECKING
    blocks included: a cycle there is still two modules that need each other)."""
    def name(path: Path, root: Path) -> str:
        parts = path.relative_to(root.parent).with_suffix("").parts
        return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)

    paths = {name(path, root): path for root in roots for path in root.rglob("*.py")}
    graph = {}
    for module, path in paths.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        wanted = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                wanted.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module
                if node.level:  # `from . import x` in pkg.a: relative to pkg, one level up per extra dot
                    parent = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join([*parent, *([node.module] if node.module else [])])
                wanted.add(base)
                wanted.update(f"{base}.{alias.name}" for alias in node.names)
        graph[module] = {target for target in wanted if target in paths and target != module}
    return graph


def first_party_roots() -> list[Path]:
    tools = [path.parent for path in (REPO / "tools").glob("*/__init__.py")]
    return [*PACKAGES.values(), *tools]


def test_no_import_circle():
    try:
        graphlib.TopologicalSorter(import_graph(first_party_roots())).prepare()
    except graphlib.CycleError as circle:
        pytest.fail(f"import circle: {' -> '.join(circle.args[1])}")


def test_the_circle_check_sees_a_circle(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.b import B\n")
    (package / "b.py").write_text("from . import a\n")
    assert import_graph([package]) == {"pkg": set(), "pkg.a": {"pkg.b"}, "pkg.b": {"pkg", "pkg.a"}}
    with pytest.raises(graphlib.CycleError):
        graphlib.TopologicalSorter(import_graph([package])).prepare()

def test_the_deploy_tools_import_without_torch_or_the_serving_package():
    """The pipeline's deploy and retrain stages install boto3, numpy and pillow, not torch."""
    code = ("import sys, dagm_deploy.cli, dagm_deploy.retrain, dagm_deploy.drift_cli, dagm_deploy.train_stage; "
            "print(sorted(m for m in ('torch', 'dagm_serve', 'aiohttp', 'sklearn') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_ruff_finds_nothing():
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "code", "serve", "deploy", "synth",
                             "tests", "bench", "local_test", "tools"],
                            capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
