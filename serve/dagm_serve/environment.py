"""Every serving setting, read once from the environment into one typed object.

SageMaker configures a serving container only through environment variables (the
`SAGEMAKER_*` names below are its contract); the `DAGM_*` names are this image's own
knobs, documented in docs/serve.md. `serve` parses them before it starts anything, so a
malformed value stops the container with a message naming the variable, and the MMS
workers parse the same environment with the same function.
"""

from __future__ import annotations

import glob
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping, TypeVar

if TYPE_CHECKING:
    from dagm_serve.codec import Limits

T = TypeVar("T")

DEFAULT_PORT = 8080
SHARED_MEMORY = Path("/dev/shm")
BATCH_STRATEGIES = ("SINGLE_RECORD", "MULTI_RECORD")
# SageMaker's limit for a real-time request; batch transform allows up to 100 MB, and
# asynchronous inference up to 1 GB per request read from S3.
DEFAULT_MAX_PAYLOAD_MB = 6
MAX_BATCH_PAYLOAD_MB = 100
MAX_ASYNC_PAYLOAD_MB = 1024
# An asynchronous endpoint's requests: up to InvocationTimeoutSeconds' default (900 s) each.
ASYNC_RESPONSE_TIMEOUT_S = 900
# The names a model may be loaded as (models.py); they also name files (handler.py).
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
# Where `dagm-mms-class-archive` writes MMS's class-data archive unless told otherwise:
# beside the installed packages, so the image and a checkout's .venv each have their own.
DEFAULT_CLASS_ARCHIVE = Path(sys.prefix) / "share" / "dagm-serve" / "mms-classes.jsa"
# SageMaker's rule for endpoint and variant names.
_NAME = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")


class SettingsError(ValueError):
    """An environment variable with a value this server cannot use."""


@dataclass(frozen=True)
class ServingSettings:
    port: int
    safe_port_range: tuple[int, int] | None
    workers: int
    threads_per_worker: int
    multi_model: bool
    model_dir: Path
    batch_transform: bool
    # Behind an asynchronous endpoint (DAGM_ASYNC_INFERENCE, which dagm-deploy sets): large
    # payloads read from S3 and long requests are what it is for.
    async_inference: bool
    max_payload_mb: int
    batch_strategy: str
    max_concurrent_transforms: int
    server_batch_size: int
    server_batch_delay_ms: int
    max_images_per_request: int
    response_timeout_s: int
    device: str
    amp: str
    memory_reserve_mb: int
    # Where input statistics are published (deploy.py sets both on the model); None: not published.
    endpoint_name: str | None = None
    variant_name: str | None = None
    drift_publish_s: int = 60
    max_pixels_per_request: int = 64 * 2**20
    max_queued_requests: int = 256
    max_connections: int = 1024
    idle_timeout_s: int = 60
    drain_s: int = 25
    decode_threads: int = 2
    # Where batches pass to the workers as files (batch_files.py); None: inline through MMS.
    batch_files_dir: Path | None = None
    # Where a worker that refuses an artefact writes why, for serve to answer with
    # (model_server.py sets it); None: the worker's log line is all.
    load_reports_dir: Path | None = None
    # MMS's JVM maps the classes it loads at start-up from this archive when it exists
    # (class_archive.py); None: it loads them from its jars.
    mms_class_archive: Path | None = None
    # The workers' malloc keeps freed memory for the next batch (allocator.py).
    keep_freed_memory: bool = True

    @property
    def max_payload_bytes(self) -> int:
        return self.max_payload_mb * 1024 * 1024

    def limits(self) -> Limits:
        # codec brings numpy and Pillow, which serve does not need before MMS is starting.
        from dagm_serve.codec import Limits

        return Limits(self.max_images_per_request, self.max_pixels_per_request)

    def execution_parameters(self) -> dict:
        """The body of GET /execution-parameters (batch transform asks for it)."""
        return {
            "MaxConcurrentTransforms": self.max_concurrent_transforms,
            "BatchStrategy": self.batch_strategy,
            "MaxPayloadInMB": self.max_payload_mb,
        }


def _read(env: Mapping[str, str], name: str, parse: Callable[[str], T], default: T, rule: str) -> T:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        return parse(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is invalid: expected {rule}") from None


def _bounded_int(low: int, high: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        value = int(raw)
        if not low <= value <= high:
            raise ValueError(raw)
        return value

    return parse


def _bool(raw: str) -> bool:
    lowered = raw.lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise ValueError(raw)


def _choice(options: tuple[str, ...]) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        if raw.lower() not in (o.lower() for o in options):
            raise ValueError(raw)
        return next(o for o in options if o.lower() == raw.lower())

    return parse


def _name(raw: str) -> str:
    if not _NAME.match(raw):
        raise ValueError(raw)
    return raw


def _absolute_path_or_none(raw: str) -> Path | None:
    if raw.lower() == "none":
        return None
    if not raw.startswith("/"):
        raise ValueError(raw)
    return Path(raw)


def _port_range(raw: str) -> tuple[int, int]:
    low, _, high = raw.partition("-")
    low_port, high_port = int(low), int(high)
    if not 1 <= low_port < high_port <= 65535:
        raise ValueError(raw)
    return low_port, high_port


def gpu_count(env: Mapping[str, str]) -> int:
    """NVIDIA GPUs this container sees, read from the driver's /proc entries rather than
    torch, which the front process does not import (importing it costs a second of cold
    start); CUDA_VISIBLE_DEVICES narrows them as it does for torch."""
    found = len(glob.glob("/proc/driver/nvidia/gpus/*"))
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and found:
        found = min(found, len([d for d in visible.split(",") if d.strip() and not d.strip().startswith("-")]))
    return found


def default_workers(gpus: int) -> int:
    """Two workers per GPU, so one decodes images while the other runs the GPU; on a CPU
    one worker, since torch's own threads already use every core for each forward pass."""
    return 2 * gpus if gpus else 1


def from_env(env: Mapping[str, str] | None = None, gpus: int | None = None) -> ServingSettings:
    env = os.environ if env is None else env
    cpus = os.cpu_count() or 1
    gpus = gpu_count(env) if gpus is None else gpus
    workers = _read(env, "SAGEMAKER_MODEL_SERVER_WORKERS", _bounded_int(1, 256),
                    default_workers(gpus), "an integer from 1 to 256")
    batch_transform = _read(env, "SAGEMAKER_BATCH", _bool, False, "true or false")
    async_inference = _read(env, "DAGM_ASYNC_INFERENCE", _bool, False, "true or false")
    payload_cap = (MAX_ASYNC_PAYLOAD_MB if async_inference else MAX_BATCH_PAYLOAD_MB if batch_transform
                   else DEFAULT_MAX_PAYLOAD_MB)
    payload_default = MAX_BATCH_PAYLOAD_MB if async_inference else DEFAULT_MAX_PAYLOAD_MB
    base = Path(env.get("SAGEMAKER_BASE_DIR") or "/opt/ml")
    return ServingSettings(
        port=_read(env, "SAGEMAKER_BIND_TO_PORT", _bounded_int(1, 65535), DEFAULT_PORT,
                   "a port number from 1 to 65535"),
        safe_port_range=_read(env, "SAGEMAKER_SAFE_PORT_RANGE", _port_range, None,
                              "LOW-HIGH, e.g. 20000-20999"),
        workers=workers,
        # A container that sets OMP_NUM_THREADS means it for each worker's torch threads.
        threads_per_worker=_read(env, "OMP_NUM_THREADS", _bounded_int(1, 1024), max(1, cpus // workers),
                                 "an integer from 1 to 1024"),
        multi_model=_read(env, "SAGEMAKER_MULTI_MODEL", _bool, False, "true or false"),
        model_dir=base / "model",
        batch_transform=batch_transform,
        async_inference=async_inference,
        max_payload_mb=_read(env, "SAGEMAKER_MAX_PAYLOAD_IN_MB", _bounded_int(1, payload_cap),
                             payload_default, f"an integer from 1 to {payload_cap} (MB)"),
        batch_strategy=_read(env, "SAGEMAKER_BATCH_STRATEGY", _choice(BATCH_STRATEGIES),
                             "MULTI_RECORD", " or ".join(BATCH_STRATEGIES)),
        max_concurrent_transforms=_read(env, "SAGEMAKER_MAX_CONCURRENT_TRANSFORMS",
                                        _bounded_int(1, 1024), workers, "an integer from 1 to 1024"),
        server_batch_size=_read(env, "DAGM_SERVER_BATCH_SIZE", _bounded_int(1, 1024), 64 if gpus else 16,
                                "an integer from 1 to 1024 (images)"),
        server_batch_delay_ms=_read(env, "DAGM_SERVER_BATCH_DELAY_MS", _bounded_int(0, 10000), 0,
                                    "milliseconds from 0 to 10000"),
        max_images_per_request=_read(env, "DAGM_MAX_IMAGES_PER_REQUEST", _bounded_int(1, 1024),
                                     1024 if async_inference else 64, "an integer from 1 to 1024"),
        response_timeout_s=_read(env, "SAGEMAKER_MODEL_SERVER_TIMEOUT", _bounded_int(1, 3600),
                                 ASYNC_RESPONSE_TIMEOUT_S if async_inference else 60, "seconds from 1 to 3600"),
        device=_read(env, "DAGM_DEVICE", _choice(("auto", "cpu", "cuda")), "auto", "auto, cpu or cuda"),
        amp=_read(env, "DAGM_AMP", _choice(("auto", "true", "false")), "auto", "auto, true or false"),
        memory_reserve_mb=_read(env, "DAGM_MEMORY_RESERVE_MB", _bounded_int(0, 10_000_000), 256,
                                "megabytes, an integer >= 0"),
        endpoint_name=_read(env, "DAGM_ENDPOINT_NAME", _name, None, "a SageMaker endpoint name"),
        variant_name=_read(env, "DAGM_VARIANT_NAME", _name, None, "a SageMaker variant name"),
        drift_publish_s=_read(env, "DAGM_DRIFT_PUBLISH_SECONDS", _bounded_int(1, 3600), 60,
                              "seconds from 1 to 3600"),
        max_pixels_per_request=_read(env, "DAGM_MAX_PIXELS_PER_REQUEST", _bounded_int(1, 2**31 - 1), 64 * 2**20,
                                     "an integer from 1 to 2147483647 (pixels)"),
        max_queued_requests=_read(env, "DAGM_MAX_QUEUED_REQUESTS", _bounded_int(1, 100_000), 256,
                                  "an integer from 1 to 100000"),
        max_connections=_read(env, "DAGM_MAX_CONNECTIONS", _bounded_int(1, 100_000), 1024,
                              "an integer from 1 to 100000"),
        idle_timeout_s=_read(env, "DAGM_IDLE_TIMEOUT_SECONDS", _bounded_int(1, 3600), 60, "seconds from 1 to 3600"),
        drain_s=_read(env, "DAGM_DRAIN_SECONDS", _bounded_int(0, 3600), 25, "seconds from 0 to 3600"),
        decode_threads=max(1, cpus),
        batch_files_dir=_read(env, "DAGM_BATCH_FILES_DIR", _absolute_path_or_none,
                              SHARED_MEMORY if SHARED_MEMORY.is_dir() else None, "an absolute directory or none"),
        load_reports_dir=_read(env, "DAGM_LOAD_REPORTS_DIR", _absolute_path_or_none, None, "an absolute directory or none"),
        mms_class_archive=_read(env, "DAGM_MMS_CLASS_ARCHIVE", _absolute_path_or_none, DEFAULT_CLASS_ARCHIVE,
                                "an absolute file path or none"),
        keep_freed_memory=_read(env, "DAGM_KEEP_FREED_MEMORY", _bool, True, "true or false"),
    )


def mms_files(env: Mapping[str, str] | None = None) -> tuple[Path, Path]:
    """MMS's configuration and log configuration (docker/entrypoint.sh points at the
    copies in docker/, in the image and in a checkout alike)."""
    env = os.environ if env is None else env
    files = []
    for name in ("MMS_CONFIG_FILE", "DAGM_MMS_LOG_CONFIG"):
        value = env.get(name, "").strip()
        if not value or not Path(value).is_file():
            raise SettingsError(f"{name}={value!r} is not a file (docker/entrypoint.sh sets it)")
        files.append(Path(value).absolute())  # MMS runs in a directory of its own
    return files[0], files[1]
