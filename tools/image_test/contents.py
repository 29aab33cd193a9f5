"""What each built image holds: no build tools, not the other image's packages, the OCI
labels, the serving user."""

from __future__ import annotations

import json

from image_test.engines import Engine
from image_test.steps import check, log

COMPILERS = ["gcc", "cc", "x86_64-linux-gnu-gcc", "aarch64-linux-gnu-gcc", "/usr/include/python3.11/Python.h"]
FOREIGN = {"train": ["mms", "model_archiver", "sagemaker_inference", "aiohttp", "dagm_serve", "dagm_deploy", "java",
                     "dagm_synth"],
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


def check_contents(engine: Engine, kind: str, args: dict[str, str]) -> None:
    present = engine.shell(kind, INSPECT, *COMPILERS).split()
    check(not present, f"{kind} image holds build tools: {present}")
    modules = FOREIGN[kind] + NEEDED[kind]
    probe = ("import importlib.util, json, shutil, sys; "
             "print(json.dumps({m: (shutil.which(m) if m == 'java' else importlib.util.find_spec(m)) is not None "
             "for m in sys.argv[1:]}))")
    found = json.loads(engine.python(kind, probe, *modules))
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
