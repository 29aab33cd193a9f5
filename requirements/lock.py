"""Write the per-image lock files from the three distributions' declared dependencies,
with the versions installed in the running environment (the project's .venv).

    python requirements/lock.py            # rewrite requirements/*.lock
    python requirements/lock.py --check    # exit 1, naming the difference, if they disagree

Each lock is the full dependency closure of one install target, so each image gets exactly
what it needs and nothing of the other's. To move a version: change the range in a
pyproject.toml (or `pip install` the new version into .venv), then run this and `make test`.
"""

from __future__ import annotations

import argparse
import sys
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parent.parent
HERE = REPO / "requirements"
# The first-party distributions, read from their pyproject.toml (never from installed metadata,
# which an editable install leaves stale).
PROJECTS = {"dagm-defects": REPO / "code", "dagm-serve": REPO / "serve", "dagm-deploy": REPO / "deploy"}
# What each lock installs: the training image, the serving image, the pipeline's deploy stages.
TARGETS = {
    "train.lock": ("the training image", ["dagm-defects[train]"]),
    "serve.lock": ("the serving image", ["dagm-serve"]),
    "deploy.lock": ("the pipeline's deploy, train-stage and retrain CodeBuild steps", ["dagm-deploy"]),
    "local-mode.lock": ("the SageMaker Python SDK for local_test/local_mode.py (development only)",
                        ["dagm-defects[local-mode]"]),
}
# The images build the first-party distributions with --no-build-isolation, so the build
# backend is locked with them.
BUILD_TOOLS = ["setuptools"]
# Declared by a dependency but left out of the images on purpose (docker/build-venv.sh's
# pip check accepts exactly these, read from the lock's "# omitted:" lines).
TRITON = ("torch.compile's GPU compiler (0.9 GB): nothing here calls torch.compile, and triton cannot "
          "build kernels in an image without a C compiler")
OMITTED = {"train.lock": {"triton": TRITON}, "serve.lock": {"triton": TRITON}}


def project_requirements(name: str, extras: set[str]) -> list[Requirement]:
    project = tomllib.loads((PROJECTS[name] / "pyproject.toml").read_text())["project"]
    declared = [Requirement(r) for r in project.get("dependencies", [])]
    for extra in sorted(extras):
        optional = project.get("optional-dependencies", {})
        if extra not in optional:
            raise SystemExit(f"{name} has no extra [{extra}]")
        declared += [Requirement(r) for r in optional[extra]]
    return declared


def installed_requirements(name: str, extras: set[str]) -> list[Requirement]:
    environment = default_environment()
    wanted = []
    for line in metadata.requires(name) or []:
        requirement = Requirement(line)
        marker = requirement.marker
        if marker is None or any(marker.evaluate({**environment, "extra": e}) for e in extras | {""}):
            requirement.marker = None
            wanted.append(requirement)
    return wanted


def closure(roots: list[str]) -> dict[str, str]:
    """{distribution name: installed version} for the roots and everything they need."""
    pins: dict[str, str] = {}
    seen: set[tuple[str, frozenset[str]]] = set()
    pending = [Requirement(r) for r in roots + BUILD_TOOLS]
    while pending:
        requirement = pending.pop()
        name = canonicalize_name(requirement.name)
        key = (name, frozenset(requirement.extras))
        if key in seen:
            continue
        seen.add(key)
        if name in PROJECTS:
            pending += project_requirements(name, set(requirement.extras))
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            raise SystemExit(f"{requirement} is not installed here: install it into this environment first") from None
        if not requirement.specifier.contains(dist.version, prereleases=True):
            raise SystemExit(f"{dist.metadata['Name']} {dist.version} is installed, but {requirement} is declared")
        pins[dist.metadata["Name"]] = dist.version
        pending += installed_requirements(name, set(requirement.extras))
    return pins


def render(lock: str) -> str:
    purpose, roots = TARGETS[lock]
    lines = [
        f"# {purpose}: {', '.join(roots)} and everything it needs, pinned.",
        "# Written by requirements/lock.py from the pyproject.toml files; do not edit by hand.",
    ]
    omitted = OMITTED.get(lock, {})
    lines += [f"# omitted: {name} {reason}" for name, reason in sorted(omitted.items())]
    pins = {name: version for name, version in closure(roots).items() if canonicalize_name(name) not in omitted}
    lines += [f"{name}=={pins[name]}" for name in sorted(pins, key=str.lower)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args(argv)
    stale = []
    for lock in TARGETS:
        path, wanted = HERE / lock, render(lock)
        if args.check:
            if not path.exists() or path.read_text() != wanted:
                stale.append(lock)
        else:
            path.write_text(wanted)
    if stale:
        print(f"requirements/{', '.join(stale)} disagree with the pyproject.toml files and this environment: "
              "run `python requirements/lock.py` and commit the result", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
