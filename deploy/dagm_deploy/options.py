"""What a rollout is asked to do, parsed once from the command line."""

from __future__ import annotations

import argparse
import re
import struct
import time
import zlib
from dataclasses import dataclass, field

from dagm_deploy import modes
from dagm_deploy.errors import Refused


def name_part(text: str, limit: int) -> str:
    """SageMaker names: letters, digits and hyphens, at most 63 characters."""
    return re.sub(r"[^A-Za-z0-9-]+", "-", text).strip("-")[:limit].strip("-") or "v"


def sample_png(size: int = 64) -> bytes:
    """A gray test image, written with the standard library (the deploy tools need only boto3)."""
    raw = b"".join(b"\x00" + bytes([128]) * size for _ in range(size))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", size, size, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


@dataclass
class Options:
    endpoint: str
    image: str
    model_data: str
    role: str
    version: str
    instance_type: str = "ml.m5.large"
    instance_count: int = 1
    steps: list[int] = field(default_factory=lambda: [10, 50, 100])
    bake_seconds: float = 300
    alarms: list[str] = field(default_factory=list)
    samples: list[bytes] = field(default_factory=lambda: [sample_png()])
    latency_ms: float = 2000
    alarm_period: int = 60
    strategy: str = "variants"
    # More container environment for the new model (DAGM_* serving settings).
    model_env: dict[str, str] = field(default_factory=dict)
    poll_seconds: float = 15
    # Seconds one pre-traffic InvokeEndpoint may take before the candidate is refused.
    check_timeout: float = 60
    lock_table: str = "dagm-deploy-locks"
    lease_seconds: float = 300
    # Seconds to wait for another deploy's lock before refusing (event-driven deploys queue).
    lock_wait: float = 0
    # A registered model: the package's ARN (image and model_data are then the package's).
    package: str | None = None
    # Deploy the newest Approved version of this group, as it stands once the lock is held.
    package_group: str | None = None
    # Real-time, asynchronous or serverless, and the containers around the serving image.
    mode: modes.Mode = field(default_factory=modes.Mode)
    # Before the canary: the candidate as a shadow variant, judged by agreement (shadow.py).
    shadow: modes.ShadowTest | None = None

    @property
    def model(self) -> str:
        return name_part(f"{self.endpoint}-{self.version}", 63)

    @property
    def variant(self) -> str:
        return name_part(f"v-{self.version}", 63)

    def config(self, stage: str) -> str:
        """The endpoint config of one stage of this rollout (canary, final)."""
        return name_part(f"{self.endpoint}-{self.version}-{stage}", 63)


def steps(text: str) -> list[int]:
    """Traffic percentages like 10,50,100; ValueError saying what they must be."""
    try:
        parsed = [int(s) for s in text.split(",")]
    except ValueError:
        raise ValueError("expected percentages like 10,50,100") from None
    if not parsed or parsed != sorted(parsed) or not 0 < parsed[0] <= parsed[-1] == 100:
        raise ValueError("rising percentages from 1 that end at 100")
    return parsed


def from_args(args: argparse.Namespace) -> Options:
    given = [name for name, value in (("--model-data/--image", args.model_data or args.image),
                                      ("--model-package", args.model_package),
                                      ("--model-package-group", args.model_package_group)) if value]
    if len(given) != 1:
        raise Refused("give the model as --image with --model-data, or --model-package ARN, or "
                      f"--model-package-group NAME{' (not ' + ' and '.join(given) + ')' if given else ''}")
    if bool(args.model_data) != bool(args.image):
        raise Refused("--image and --model-data go together")
    if args.model_data and not args.model_data.startswith("s3://"):
        raise Refused(f"--model-data {args.model_data!r}: expected an s3:// URI")
    samples = []
    for path in args.samples:
        try:
            with open(path, "rb") as handle:
                samples.append(handle.read())
        except OSError as exc:
            raise Refused(f"--samples: {exc}") from None
    model_env = {}
    for item in args.model_env:
        key, sep, value = item.partition("=")
        if not key or not sep:
            raise Refused(f"--model-env {item!r}: expected KEY=VALUE")
        model_env[key] = value
    if not args.lease_seconds >= 10:
        raise Refused(f"--lease-seconds {args.lease_seconds:g}: expected at least 10")
    if not args.lock_wait >= 0:
        raise Refused(f"--lock-wait {args.lock_wait:g}: expected seconds, at least 0")
    try:
        percentages = steps(args.steps)
    except ValueError as exc:
        raise Refused(f"--steps {args.steps!r}: {exc}") from None
    mode = modes.from_args(args)
    if args.strategy == "guardrails" and mode.name != "real-time":
        raise Refused(f"--strategy guardrails is for real-time endpoints, not {mode.name} ones")
    shadow = None
    if args.shadow_requests is not None:
        if mode.name != "real-time" or args.strategy == "guardrails":
            raise Refused(f"--shadow-requests: shadow tests are for real-time endpoints with --strategy variants "
                          f"(SageMaker has no shadow variants for {mode.name} endpoints)")
        if args.shadow_requests < 1 or not 0 <= args.max_disagreement <= 1 or not args.shadow_timeout > 0:
            raise Refused("--shadow-requests must be at least 1, --max-disagreement from 0 to 1, "
                          "--shadow-timeout above 0")
        shadow = modes.ShadowTest(args.shadow_requests, args.max_disagreement, args.shadow_timeout)
    if (mode.before or mode.after) and not args.image:
        raise Refused("--before-container/--after-container need the serving image as --image with --model-data")
    model_env = {**mode.model_env(), **model_env}
    # A registered model's version is named once the package is known (registry.for_rollout).
    version = args.version or (args.image and args.image.rpartition(":")[2]) or (
        "" if args.model_data is None else str(int(time.time())))
    return Options(args.endpoint, args.image or "", args.model_data or "", args.role, name_part(version, 40) if version else "",
                   args.instance_type, args.instance_count, percentages, args.bake_seconds,
                   [a for a in args.alarms.split(",") if a], samples or [sample_png()], args.latency_ms,
                   args.alarm_period, args.strategy, model_env, args.poll_seconds, args.check_timeout,
                   args.lock_table, args.lease_seconds, args.lock_wait, args.model_package, args.model_package_group,
                   mode, shadow)
