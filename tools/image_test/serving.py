"""The serving image run as SageMaker runs it: /ping, /invocations, a bad body, SIGTERM."""

from __future__ import annotations

import contextlib
import io
import json
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

from image_test.engines import REPO, Engine, wait_for
from image_test.steps import check, log

# Where Dockerfile.serve has dagm-mms-class-archive write MMS's JVM class-data archive.
CLASS_ARCHIVE = "/opt/venv/share/dagm-serve/mms-classes.jsa"
# Core's modules the serving image leaves out (Dockerfile.serve deletes them before installing).
SERVE_OMITS = REPO / "docker" / "serve-omits.txt"
# Run by the image's Python: which modules fail to import because they themselves are
# missing (not something they import), and which console scripts import any of them.
OMISSION_PROBE = r"""
import importlib, json, pathlib, re, sys
modules = sys.argv[1:]
missing = {}
for module in modules:
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as error:
        missing[module] = error.name
named = re.compile(r"^(from|import) (%s)([. ]|$)" % "|".join(map(re.escape, modules)), re.M)
scripts = [path.name for path in pathlib.Path("/opt/venv/bin").iterdir()
           if path.is_file() and named.search(path.open("rb").read(4096).decode(errors="replace"))]
print(json.dumps({"missing": missing, "scripts": scripts}))
"""


def serve_omits() -> list[str]:
    """docker/serve-omits.txt's paths, relative to code/ (`#` lines are comments)."""
    lines = (line.strip() for line in SERVE_OMITS.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def module_name(path: str) -> str:
    """dagm_defects/training -> dagm_defects.training; dagm_defects/progress.py -> dagm_defects.progress."""
    return path.removesuffix(".py").replace("/", ".")


def check_omissions(engine: Engine) -> None:
    """None of core's training-only modules, nor the synthetic generator, imports in the
    serving image, and no console script is left naming one."""
    modules = [module_name(path) for path in serve_omits()] + ["dagm_synth"]
    found = json.loads(engine.python("serve", OMISSION_PROBE, *modules))
    present = [module for module in modules if found["missing"].get(module) != module]
    check(not present, f"the serving image imports what it does not run: {present} (missing: {found['missing']})")
    check(not found["scripts"], f"the serving image's console scripts {found['scripts']} import modules it lacks")
    log(f"   serve: {', '.join(modules)}: none imports; no console script names them")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


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
