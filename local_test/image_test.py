"""Build both images from the committed Dockerfiles and run them for real (`make image-test`).

    python local_test/image_test.py [--engine auto|docker|buildah] [--keep] [--work DIR]

With a Docker daemon it uses Docker and the Dockerfiles' default (CUDA) base. Without one
it uses buildah (vfs storage, chroot isolation, a storage root of its own under --work) on
a Debian 12 Python 3.11 base made here with debootstrap (PYTHON_BASE build argument).
Then, inside the built images, run as SageMaker runs them (the image's ENTRYPOINT with
`train` or `serve`, /opt/ml mounted):
  train   a tiny synthetic job: exit 0, model.pt, model.json, evaluation.json;
          a bad hyperparameter: non-zero exit and output/failure naming it;
  serve   that model: /ping 200, /invocations predictions, a bad body answered 4xx,
          SIGTERM stops it and leaves no process behind;
and check what each image holds: no compiler or headers, not the other image's packages,
the OCI labels, the serving user, the size. Every step prints its time. Images, containers
and the storage root are removed at the end unless --keep. Exit 0 only if every check held.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# Where Dockerfile.serve has dagm-mms-class-archive write MMS's JVM class-data archive.
CLASS_ARCHIVE = "/opt/venv/share/dagm-serve/mms-classes.jsa"
IMAGES = {"train": "localhost/dagm-defects-train:image-test", "serve": "localhost/dagm-defects-serve:image-test"}
BASE_IMAGE = "localhost/dagm-python-base:bookworm"
DEBIAN_MIRROR = os.environ.get("DEBIAN_MIRROR", "http://deb.debian.org/debian")
TINY_HPS = {"epochs": "2", "batch_size": "8", "image_size": "128", "data_workers": "1"}
# What each final image must not hold: build tools, and the other image's packages.
COMPILERS = ["gcc", "cc", "x86_64-linux-gnu-gcc", "aarch64-linux-gnu-gcc", "/usr/include/python3.11/Python.h"]
FOREIGN = {"train": ["mms", "model_archiver", "sagemaker_inference", "aiohttp", "dagm_serve", "dagm_deploy", "java"],
           "serve": ["sagemaker_training", "matplotlib", "paramiko", "gevent", "dagm_deploy", "mlflow", "sqlalchemy"]}
NEEDED = {"train": ["torch", "sagemaker_training", "matplotlib", "dagm_defects.training.launch", "mlflow", "sqlalchemy",
                   "alembic", "sagemaker_mlflow"],
          "serve": ["torch", "mms", "sagemaker_inference", "aiohttp", "dagm_serve.serve", "java"]}
INSPECT = r"""
for path in "$@"; do
  case "$path" in
    /*) [ -e "$path" ] && echo "present $path" ;;
    *) command -v "$path" >/dev/null 2>&1 && echo "present $path" ;;
  esac
done
exit 0
"""


class CheckFailed(Exception):
    """One of the image test's checks did not hold."""


def check(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


def log(message: str) -> None:
    print(message, flush=True)


@dataclass
class Steps:
    """Each step's time, printed as it ends and again as a table at the end."""

    rows: list[tuple[str, float, str]] = field(default_factory=list)

    @contextlib.contextmanager
    def step(self, name: str):
        log(f"== {name}")
        start = time.monotonic()
        outcome = "failed"
        try:
            yield
            outcome = "ok"
        finally:
            seconds = time.monotonic() - start
            self.rows.append((name, seconds, outcome))
            log(f"-- {name}: {outcome} in {seconds:.1f} s")

    def table(self) -> str:
        width = max((len(name) for name, _, _ in self.rows), default=4)
        lines = [f"{'step'.ljust(width)}  seconds  result"]
        lines += [f"{name.ljust(width)}  {seconds:7.1f}  {outcome}" for name, seconds, outcome in self.rows]
        return "\n".join(lines)


def run(cmd: list[str], *, timeout: float = 3600, quiet: bool = False, **kwargs) -> subprocess.CompletedProcess:
    """Run a command; its output goes to ours unless quiet (then it is kept for the error)."""
    if quiet:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)
    else:
        result = subprocess.run(cmd, timeout=timeout, **kwargs)
    if result.returncode != 0:
        detail = ((result.stdout or "") + (result.stderr or ""))[-3000:] if quiet else ""
        raise CheckFailed(f"{' '.join(cmd[:4])} ... exited {result.returncode}\n{detail}")
    return result


class Engine:
    """What the test needs of a container engine: build, run as the image runs, stop, inspect."""

    name = ""
    build_base_args: dict[str, str] = {}

    def prepare(self, steps: Steps) -> None:
        pass

    def build(self, kind: str, build_args: dict[str, str]) -> None:
        raise NotImplementedError

    def start(self, kind: str, args: list[str], *, env: dict[str, str], mounts: list[tuple[Path, str, bool]],
              port: int | None = None) -> subprocess.Popen:
        raise NotImplementedError

    def terminate(self, kind: str, process: subprocess.Popen) -> None:
        """SIGTERM to the container's main process, as `docker stop` and SageMaker send it."""
        raise NotImplementedError

    def leftovers(self, kind: str) -> list[str]:
        """Processes of the container still running."""
        raise NotImplementedError

    def kill(self, kind: str, process: subprocess.Popen) -> None:
        """After a failed check: stop the container and everything in it, now."""
        process.kill()
        process.wait(30)

    def shell(self, kind: str, script: str, *args: str) -> str:
        raise NotImplementedError

    def mapped_files(self, kind: str, process: subprocess.Popen, program: str) -> str:
        """/proc/PID/maps of the running container's processes named `program`."""
        raise NotImplementedError

    def config(self, kind: str) -> dict:
        """The image's config: Labels, User, Entrypoint, Cmd, Env."""
        raise NotImplementedError

    def size(self, kind: str) -> str:
        """The image's size, in decimal GB."""
        raise NotImplementedError

    def exists(self, kind: str) -> bool:
        raise NotImplementedError

    def cleanup(self) -> None:
        pass


class Docker(Engine):
    name = "docker"

    def __init__(self) -> None:
        self.containers: dict[str, str] = {}

    def build(self, kind, build_args):
        args = [f"--build-arg={k}={v}" for k, v in build_args.items()]
        run(["docker", "build", *args, "-f", f"Dockerfile.{kind}", "-t", IMAGES[kind], "."], cwd=REPO)

    def start(self, kind, args, *, env, mounts, port=None):
        name = f"dagm-image-test-{kind}-{os.getpid()}"
        self.containers[kind] = name
        cmd = ["docker", "run", "--rm", "--name", name]
        for source, target, read_only in mounts:
            cmd += ["-v", f"{source}:{target}{':ro' if read_only else ''}"]
        for key, value in env.items():
            cmd += ["-e", f"{key}={value}"]
        if port is not None:
            cmd += ["-p", f"127.0.0.1:{port}:{env.get('SAGEMAKER_BIND_TO_PORT', '8080')}"]
        return subprocess.Popen([*cmd, IMAGES[kind], *args])

    def terminate(self, kind, process):
        run(["docker", "kill", "--signal", "TERM", self.containers[kind]], quiet=True)

    def kill(self, kind, process):
        subprocess.run(["docker", "rm", "-f", self.containers[kind]], capture_output=True)
        super().kill(kind, process)

    def leftovers(self, kind):
        result = subprocess.run(["docker", "ps", "-q", "--filter", f"name={self.containers[kind]}"],
                                capture_output=True, text=True)
        return result.stdout.split()

    def shell(self, kind, script, *args):
        return run(["docker", "run", "--rm", "--user", "0", "--entrypoint", "/bin/sh", IMAGES[kind], "-c", script,
                    "sh", *args], quiet=True).stdout

    def mapped_files(self, kind, process, program):
        script = 'for d in /proc/[0-9]*; do [ "$(cat "$d/comm")" = "$1" ] && cat "$d/maps"; done; true'
        return run(["docker", "exec", "--user", "0", self.containers[kind], "/bin/sh", "-c", script, "sh", program],
                   quiet=True).stdout

    def config(self, kind):
        out = run(["docker", "image", "inspect", "--format", "{{json .Config}}", IMAGES[kind]], quiet=True).stdout
        return json.loads(out)

    def exists(self, kind: str) -> bool:
        return subprocess.run(["docker", "image", "inspect", IMAGES[kind]], capture_output=True).returncode == 0

    def size(self, kind):
        size = int(run(["docker", "image", "inspect", "--format", "{{.Size}}", IMAGES[kind]], quiet=True).stdout)
        return f"{size / 1e9:.2f} GB"

    def cleanup(self):
        for name in self.containers.values():
            subprocess.run(["docker", "rm", "-f", name], capture_output=True)
        subprocess.run(["docker", "rmi", "-f", *IMAGES.values()], capture_output=True)


class Buildah(Engine):
    """buildah without a daemon: vfs storage and chroot isolation, which share the host's
    network and process table, so the server's port is the host's and the container's
    processes are ours to find (by their root directory) and signal."""

    name = "buildah"

    def __init__(self, work: Path) -> None:
        self.work = work
        self.storage = ["--storage-driver", "vfs", "--root", str(work / "storage"), "--runroot", str(work / "run")]
        self.containers: dict[str, str] = {}
        self.roots: dict[str, str] = {}
        # `buildah run` keeps each container's run-time files in $TMPDIR (/var/tmp by default)
        # and leaves some behind: keep them under the work folder, which cleanup removes.
        os.environ["TMPDIR"] = str(work / "tmp")
        (work / "tmp").mkdir(parents=True, exist_ok=True)
        self.build_volumes = pip_settings_volumes(work)
        self.build_base_args = {"PYTHON_BASE": BASE_IMAGE}

    def buildah(self, *args: str, quiet: bool = True, timeout: float = 3600) -> str:
        return run(["buildah", *self.storage, *args], quiet=quiet, timeout=timeout).stdout or ""

    def prepare(self, steps):
        with steps.step("python base: Debian 12 + python3.11 (debootstrap)"):
            make_python_base(self, self.work / "base")

    def build(self, kind, build_args):
        args = [f"--build-arg={k}={v}" for k, v in build_args.items()]
        volumes = [f"--volume={source}:{target}:ro" for source, target in self.build_volumes]
        run(["buildah", *self.storage, "bud", "--isolation", "chroot", *volumes, *args,
             "-f", str(REPO / f"Dockerfile.{kind}"), "-t", IMAGES[kind], str(REPO)])

    def container(self, kind: str) -> str:
        if kind not in self.containers:
            self.containers[kind] = self.buildah("from", "--pull-never", IMAGES[kind]).strip()
        return self.containers[kind]

    def start(self, kind, args, *, env, mounts, port=None):
        cfg = self.config(kind)
        cmd = ["buildah", *self.storage, "run", "--isolation", "chroot"]
        for source, target, read_only in mounts:
            cmd += ["--volume", f"{source}:{target}:{'ro' if read_only else 'rw'}"]
        for key, value in env.items():
            cmd += ["--env", f"{key}={value}"]
        # `buildah run` runs a command, not the image's ENTRYPOINT: run that entrypoint.
        return subprocess.Popen([*cmd, self.container(kind), "--", *cfg["Entrypoint"], *args])

    def container_root(self, process: subprocess.Popen) -> str:
        """The root directory `buildah run` chroots the container's processes into."""
        pending = [process.pid]
        while pending:
            pid = pending.pop()
            with contextlib.suppress(OSError):
                root = os.readlink(f"/proc/{pid}/root")
                if root != "/":
                    return root
            pending += children(pid)
        raise CheckFailed("found no process of the container under `buildah run`")

    def processes(self, root: str) -> list[int]:
        """Every process chrooted into root, whoever its parent now is (orphans included)."""
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError):
                    if os.readlink(entry / "root") in (root, f"{root} (deleted)"):
                        found.append(int(entry.name))
        return found

    def terminate(self, kind, process):
        self.roots[kind] = root = self.container_root(process)
        # buildah's own helper (buildah-chroot-exec) starts the entry command; the main process
        # is the entrypoint's (what PID 1 is under Docker): the first one inside that is not buildah's.
        inside = {pid for pid in self.processes(root) if not command_line(pid).startswith("buildah-chroot")}
        main = [pid for pid in inside if parent(pid) not in inside]
        check(len(main) == 1, f"expected one main process in the container, found {main}")
        os.kill(main[0], signal.SIGTERM)

    def leftovers(self, kind):
        return [f"{pid} {command_line(pid)}" for pid in self.processes(self.roots[kind])]

    def mapped_files(self, kind, process, program):
        maps = ""
        for pid in self.processes(self.container_root(process)):
            with contextlib.suppress(OSError):
                if Path(f"/proc/{pid}/comm").read_text().strip() == program:
                    maps += Path(f"/proc/{pid}/maps").read_text()
        return maps

    def kill(self, kind, process):
        # Killing `buildah run` alone leaves the container's processes running (chroot
        # isolation has no PID namespace to take them down with it).
        with contextlib.suppress(CheckFailed):
            for pid in self.processes(self.roots.get(kind) or self.container_root(process)):
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
        super().kill(kind, process)

    def shell(self, kind, script, *args):
        out = run(["buildah", *self.storage, "run", "--isolation", "chroot", "--user", "0:0", self.container(kind),
                   "--", "/bin/sh", "-c", script, "sh", *args], quiet=True)
        return out.stdout

    def config(self, kind):
        return json.loads(self.buildah("inspect", "--type", "image", IMAGES[kind]))["OCIv1"]["config"]

    def exists(self, kind: str) -> bool:
        return subprocess.run(["buildah", *self.storage, "inspect", "--type", "image", IMAGES[kind]],
                              capture_output=True).returncode == 0

    def size(self, kind):
        return json.loads(self.buildah("images", "--json", IMAGES[kind]))[0]["size"]  # as buildah prints it

    def remove(self, kind: str) -> None:
        if kind in self.containers:
            subprocess.run(["buildah", *self.storage, "rm", self.containers.pop(kind)], capture_output=True)
        subprocess.run(["buildah", *self.storage, "rmi", "-f", IMAGES[kind]], capture_output=True)

    def cleanup(self):
        subprocess.run(["buildah", *self.storage, "rm", "--all"], capture_output=True)
        subprocess.run(["buildah", *self.storage, "rmi", "--all", "--force"], capture_output=True)
        # vfs leaves read-only directories from some layers behind; make them removable.
        subprocess.run(["chmod", "-R", "u+w", str(self.work)], capture_output=True)
        shutil.rmtree(self.work, ignore_errors=True)


def parent(pid: int) -> int:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    return int(stat.rsplit(")", 1)[1].split()[1])


def children(pid: int) -> list[int]:
    """pid's children, whichever of its threads started them (buildah is a Go program)."""
    found = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                found += [int(p) for p in (task / "children").read_text().split()]
    return found


def command_line(pid: int) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    return "?"


def pip_settings_volumes(work: Path) -> list[tuple[str, str]]:
    """pip's settings on this machine (index, local wheel folders, CA bundle), mounted read-only
    into each RUN of the build so the image's pip reaches what the host's pip reaches. The
    Dockerfiles know nothing of them; a Docker host with plain PyPI needs none."""
    listed = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
    settings = {}
    for line in listed.splitlines():
        key, _, value = line.partition("=")
        name = key.split(".", 1)[-1]
        if name in {"index-url", "extra-index-url", "find-links", "cert", "trusted-host", "timeout", "default-timeout"}:
            settings[name] = value.strip().strip("'\"")
    volumes = []
    for value in " ".join(settings.get(k, "") for k in ("index-url", "extra-index-url", "find-links", "cert")).split():
        path = value.removeprefix("file://").rstrip("/")
        if path.startswith("/") and os.path.exists(path):
            # A file:// index's pages link to its files beside simple/: mount the folder above it.
            volumes.append(os.path.dirname(path) if path.endswith("/simple") else path)
    if not settings:
        return []
    conf = work / "pip.conf"
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text("[global]\n" + "".join(f"{k} = {v}\n" for k, v in settings.items()))
    return [(str(conf), "/etc/pip.conf"), *((v, v) for v in sorted(set(volumes)))]


def make_python_base(engine: Buildah, work: Path) -> None:
    """Debian 12 (minbase) with python3.11 and its venv module, imported as BASE_IMAGE."""
    rootfs = work / "rootfs"
    shutil.rmtree(rootfs, ignore_errors=True)
    rootfs.mkdir(parents=True)
    run(["debootstrap", "--variant=minbase", "bookworm", str(rootfs), DEBIAN_MIRROR], quiet=True, timeout=1800)
    # TMPDIR points at the host's work folder (see Buildah), which does not exist in the chroot.
    run(["env", "-u", "TMPDIR", "chroot", str(rootfs), "/bin/sh", "-c",
         "export DEBIAN_FRONTEND=noninteractive && apt-get update -q"
         " && apt-get install -y -q --no-install-recommends python3.11 python3.11-venv ca-certificates"
         " && apt-get clean && rm -rf /var/lib/apt/lists/*"], quiet=True, timeout=1800)
    (work / "base.tar").unlink(missing_ok=True)
    run(["tar", "-C", str(rootfs), "-cf", str(work / "base.tar"), "."], quiet=True)
    (work / "Containerfile").write_text("FROM scratch\nADD base.tar /\nCMD [\"/bin/bash\"]\n")
    run(["buildah", *engine.storage, "bud", "--isolation", "chroot", "-t", BASE_IMAGE,
         "-f", str(work / "Containerfile"), str(work)], quiet=True)
    shutil.rmtree(rootfs, ignore_errors=True)
    (work / "base.tar").unlink()


def docker_answers() -> bool:
    return shutil.which("docker") is not None and subprocess.run(
        ["docker", "info"], capture_output=True, timeout=60).returncode == 0


def choose_engine(name: str, work: Path) -> Engine:
    if name == "docker" or (name == "auto" and docker_answers()):
        return Docker()
    missing = [tool for tool in ("buildah", "debootstrap") if shutil.which(tool) is None]
    if missing:
        raise CheckFailed(f"no Docker daemon answers and {', '.join(missing)} is not installed "
                          "(Debian: apt-get install buildah debootstrap; .ci/run installs them)")
    if os.geteuid() != 0:
        raise CheckFailed("buildah with vfs storage and chroot isolation, and debootstrap, need root here")
    return Buildah(work)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def build_args() -> dict[str, str]:
    revision = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    return {"SOURCE": "https://example.invalid/dagm-defects", "REVISION": revision or "unknown", "VERSION": "image-test"}


def check_contents(engine: Engine, kind: str, args: dict[str, str]) -> None:
    present = engine.shell(kind, INSPECT, *COMPILERS).split()
    check(not present, f"{kind} image holds build tools: {present}")
    modules = FOREIGN[kind] + NEEDED[kind]
    probe = ("import importlib.util, json, shutil, sys; "
             "print(json.dumps({m: (shutil.which(m) if m == 'java' else importlib.util.find_spec(m)) is not None "
             "for m in sys.argv[1:]}))")
    found = json.loads(engine.shell(kind, 'probe="$1"; shift; exec /opt/venv/bin/python -c "$probe" "$@"', probe, *modules).strip()
                       .splitlines()[-1])
    check(all(found[m] for m in NEEDED[kind]), f"{kind} image lacks {[m for m in NEEDED[kind] if not found[m]]}")
    check(not any(found[m] for m in FOREIGN[kind]),
          f"{kind} image holds what it does not run: {[m for m in FOREIGN[kind] if found[m]]}")
    cfg = engine.config(kind)
    labels = cfg.get("Labels") or {}
    for key, arg in (("source", "SOURCE"), ("revision", "REVISION"), ("version", "VERSION")):
        check(labels.get(f"org.opencontainers.image.{key}") == args[arg],
              f"{kind} image's label org.opencontainers.image.{key} is {labels.get(f'org.opencontainers.image.{key}')!r}")
    user = (cfg.get("User") or "0").split(":")[0]
    if kind == "serve":
        check(user not in ("", "0", "root"), f"the serving image runs as {user!r}, not a non-root user")
        check(labels.get("com.amazonaws.sagemaker.capabilities.accept-bind-to-port") == "true",
              "the serving image lacks the accept-bind-to-port label")
    log(f"   {kind}: no compiler or headers; lacks {', '.join(FOREIGN[kind])}; labels source, revision, version; "
        f"user {user}; {engine.size(kind)}")


def tiny_job(work: Path, hyperparameters: dict[str, str]) -> tuple[Path, list[tuple[Path, str, bool]]]:
    """An /opt/ml job tree (local_test/opt_ml_layout.py) with its channels as mounts."""
    data = work / "data"
    if not data.exists():
        run([sys.executable, "-m", "dagm_defects.data.synthetic", "--classes", "1", "--images-per-split", "16",
             "--size", "128", "--seed", "3", "--workers", "1", str(data)], quiet=True)
    job = Path(tempfile.mkdtemp(prefix="opt_ml-", dir=work))
    run([sys.executable, str(REPO / "local_test" / "opt_ml_layout.py"), str(data), str(job),
         json.dumps(hyperparameters)], quiet=True)
    mounts = [(job, "/opt/ml", False)]
    for link in sorted((job / "input" / "data").iterdir()):
        mounts.append((link.resolve(), f"/opt/ml/input/data/{link.name}", True))
        link.unlink()
        link.mkdir()
    return job, mounts


def wait_for(engine: Engine, kind: str, process: subprocess.Popen, timeout: float) -> int:
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        engine.kill(kind, process)
        raise CheckFailed(f"the container did not exit within {timeout:.0f} s") from None


def test_train(engine: Engine, work: Path) -> Path:
    job, mounts = tiny_job(work, TINY_HPS)
    code = wait_for(engine, "train", engine.start("train", ["train"], env={}, mounts=mounts), 1800)
    check(code == 0, f"train exited {code}: {(job / 'output' / 'failure').read_text()[:2000] if (job / 'output' / 'failure').exists() else ''}")
    for name in ("model.pt", "model.json"):
        check((job / "model" / name).is_file(), f"train wrote no model/{name}")
    evaluation = job / "output" / "data" / "evaluation.json"
    check(evaluation.is_file(), "train wrote no output/data/evaluation.json")
    report = json.loads(evaluation.read_text())
    # The job's MLflow run in its embedded store, and the training report beside it.
    record = job / "output" / "data" / "mlflow" / "run.json"
    check(record.is_file() and json.loads(record.read_text())["run_id"] and json.loads(record.read_text())["warning"] is None,
          f"train left no complete MLflow run ({record.read_text()[:500] if record.exists() else 'no run.json'})")
    for name in ("report.html", "report.json"):
        check((job / "output" / "data" / name).is_file(), f"train wrote no output/data/{name}")
    log(f"   train: exit 0, model.pt and model.json, evaluation.json ({', '.join(sorted(report)[:6])}, ...), "
        f"MLflow run {json.loads(record.read_text())['run_id']}, report.html")
    return job / "model"


def test_failing_train(engine: Engine, work: Path) -> None:
    job, mounts = tiny_job(work, {**TINY_HPS, "epochs": "many"})
    code = wait_for(engine, "train", engine.start("train", ["train"], env={}, mounts=mounts), 600)
    failure = job / "output" / "failure"
    check(code != 0, "train with epochs='many' exited 0")
    check(failure.is_file() and "epochs" in failure.read_text(),
          f"train with epochs='many' wrote no output/failure naming it ({failure.read_text()[:500] if failure.exists() else 'absent'})")
    log(f"   failing train: exit {code}, output/failure: {failure.read_text().strip().splitlines()[0][:160]}")


def png(seed: int) -> bytes:
    from PIL import Image  # the test's own client side, from .venv
    import numpy as np

    pixels = np.random.default_rng(seed).integers(0, 256, (128, 128), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def post(port: int, body: bytes, content_type: str) -> tuple[int, dict]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body, method="POST",
                                     headers={"Content-Type": content_type, "Accept": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def test_serve(engine: Engine, model: Path) -> None:
    port = free_port()
    env = {"SAGEMAKER_BIND_TO_PORT": str(port)}
    process = engine.start("serve", ["serve"], env=env, mounts=[(model, "/opt/ml/model", True)], port=port)
    try:
        started = time.monotonic()
        while True:
            check(process.poll() is None, f"serve exited {process.returncode} before /ping answered 200")
            check(time.monotonic() - started < 240, "serve did not answer /ping 200 within 240 s")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as answer:
                    if answer.status == 200:
                        break
            time.sleep(0.5)
        log(f"   serve: /ping 200 after {time.monotonic() - started:.1f} s")
        check(CLASS_ARCHIVE in engine.mapped_files("serve", process, "java"),
              f"MMS's JVM did not map its class-data archive {CLASS_ARCHIVE} (Dockerfile.serve builds it)")
        status, answer = post(port, png(1), "image/png")
        check(status == 200 and "predictions" in answer, f"/invocations with a PNG answered {status}: {answer}")
        prediction = answer["predictions"][0]
        check(0.0 <= prediction["score"] <= 1.0 and isinstance(prediction["defective"], bool),
              f"/invocations answered an odd prediction: {prediction}")
        status, answer = post(port, b"not an image", "image/png")
        check(400 <= status < 500, f"a body that is not a PNG answered {status}, not 4xx: {answer}")
        log(f"   serve: a PNG -> score {prediction['score']:.3f}; a bad body -> {status}")
        stopping = time.monotonic()
        engine.terminate("serve", process)
        code = wait_for(engine, "serve", process, 60)
        left = engine.leftovers("serve")
        check(not left, f"SIGTERM left processes of the serving container: {left}")
        log(f"   serve: SIGTERM -> exit {code} in {time.monotonic() - stopping:.1f} s, no process left")
    finally:
        if process.poll() is None:
            engine.kill("serve", process)


def build_and_inspect(engine: Engine, steps: Steps, kind: str, args: dict[str, str], reuse: set[str]) -> None:
    if kind not in reuse:
        with steps.step(f"build {kind} image (Dockerfile.{kind})"):
            engine.build(kind, args)
    with steps.step(f"{kind} image holds what it needs, nothing more"):
        check_contents(engine, kind, args)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", choices=["auto", "docker", "buildah"], default="auto")
    parser.add_argument("--keep", action="store_true", help="keep the images and the work folder")
    parser.add_argument("--reuse", action="store_true",
                        help="use images a --keep run left instead of building them (to rerun the checks)")
    parser.add_argument("--work", type=Path, default=Path(os.environ.get("IMAGE_TEST_DIR", "/var/tmp/dagm-image-test")),
                        help="buildah's storage root and the test's files (default %(default)s)")
    options = parser.parse_args(argv)
    steps = Steps()
    engine: Engine | None = None
    try:
        with steps.step("engine"):
            engine = choose_engine(options.engine, options.work)
            options.work.mkdir(parents=True, exist_ok=True)
            log(f"   {engine.name}")
        args = {**engine.build_base_args, **build_args()}
        reuse = {kind for kind in IMAGES if options.reuse and engine.exists(kind)}
        if len(reuse) < len(IMAGES):
            engine.prepare(steps)
        build_and_inspect(engine, steps, "train", args, reuse)
        with steps.step("train: a tiny synthetic job"):
            model = test_train(engine, options.work)
        with steps.step("train: a bad hyperparameter"):
            test_failing_train(engine, options.work)
        if isinstance(engine, Buildah) and not options.keep:
            engine.remove("train")  # vfs copies every layer: free the space before the next build
        build_and_inspect(engine, steps, "serve", args, reuse)
        with steps.step("serve: ping, predict, a bad body, SIGTERM"):
            test_serve(engine, model)
    except CheckFailed as failure:
        log(f"FAILED: {failure}")
        return 1
    finally:
        if engine is not None and not options.keep:
            with steps.step("clean up images, containers and storage"):
                engine.cleanup()
        log("\n" + steps.table())
    log("image test passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
