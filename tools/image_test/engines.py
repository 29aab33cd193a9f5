"""The container engines the image test builds and runs the images with: Docker where a
daemon answers, else buildah (vfs storage, chroot isolation) on a Debian 12 Python base
made here with debootstrap."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from image_test.steps import CheckFailed, Steps, check, run

REPO = Path(__file__).resolve().parents[2]
IMAGES = {"train": "localhost/dagm-defects-train:image-test", "serve": "localhost/dagm-defects-serve:image-test"}
BASE_IMAGE = "localhost/dagm-python-base:bookworm"
DEBIAN_MIRROR = os.environ.get("DEBIAN_MIRROR", "http://deb.debian.org/debian")


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

    def python(self, kind: str, code: str, *args: str) -> str:
        """The last line `code` prints, run by the image's own Python (/opt/venv) with args."""
        out = self.shell(kind, 'code="$1"; shift; exec /opt/venv/bin/python -c "$code" "$@"', code, *args)
        return out.strip().splitlines()[-1]

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


def wait_for(engine: Engine, kind: str, process: subprocess.Popen, timeout: float) -> int:
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        engine.kill(kind, process)
        raise CheckFailed(f"the container did not exit within {timeout:.0f} s") from None
