"""The training image's entry point, run by the sagemaker-training toolkit.

The image sets ``SAGEMAKER_TRAINING_MODULE=dagm_defects.training.launch:main``, so the
toolkit's ``train`` command calls :func:`main` in its own process: SIGTERM reaches this
code directly. One process per host trains in place; more (GPUs, hosts, or
``processes_per_host``) run as ranks under torchrun, which this process starts and
forwards SIGTERM to.

Every failure leaves the toolkit a ``ClientError`` whose text is one readable line of
reason (then details); the toolkit writes it to ``/opt/ml/output/failure`` and exits 1.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import traceback

from dagm_defects.artifact import ArtifactError
from dagm_defects.data.reader import DatasetError
from dagm_defects.progress import write_line
from dagm_defects.tracking.settings import TrackingConfigError
from dagm_defects.training.checkpoint import CheckpointError
from dagm_defects.training.hyperparameters import HyperparameterError
from dagm_defects.training.rules import RuleStopped
from dagm_defects.training.settings import SETTINGS_ENV, ChannelError, TrainingSettings, settings_from_toolkit
from dagm_defects.training.stop import StopFlag, StopRequested
from dagm_defects.training.supervision import SupervisionError


class RankFailure(RuntimeError):
    """A torchrun rank failed; the message is the reason that rank left behind."""


# Failures whose message is the whole story for the user.
USER_ERRORS = (
    HyperparameterError, ChannelError, DatasetError, CheckpointError, ArtifactError,
    StopRequested, RankFailure, RuleStopped, TrackingConfigError, SupervisionError,
)
HOST_RESOLVE_SECONDS = 300


def failure_reason(exc: BaseException) -> str:
    if isinstance(exc, USER_ERRORS):
        return str(exc)
    # Unexpected: the traceback goes to the log, the reason to the user stays readable.
    traceback.print_exc()
    return f"internal error: {type(exc).__name__}: {exc} (the training log has the traceback)"


def _wait_for_hosts(hosts: tuple[str, ...]) -> None:
    deadline = time.monotonic() + HOST_RESOLVE_SECONDS
    for host in hosts:
        while True:
            try:
                socket.gethostbyname(host)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise ChannelError(f"host {host} of resourceconfig.json does not resolve") from None
                time.sleep(1)


def _torchrun(settings: TrainingSettings, stop: StopFlag) -> None:
    multi_host = len(settings.hosts) > 1
    if multi_host:
        _wait_for_hosts(settings.hosts)
    master = settings.hosts[0] if multi_host else "127.0.0.1"
    command = [
        sys.executable, "-m", "torch.distributed.run",
        f"--nnodes={len(settings.hosts)}", f"--node_rank={settings.node_rank}",
        f"--nproc_per_node={settings.processes_per_host}",
        f"--master_addr={master}", f"--master_port={settings.master_port}",
        "-m", "dagm_defects.training.worker",
    ]
    write_line("starting ranks: " + " ".join(command))
    settings.failure_file.unlink(missing_ok=True)
    child = subprocess.Popen(command, env={**os.environ, SETTINGS_ENV: settings.to_json()})

    def forward(signum, _frame):
        stop.request(signum)
        child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    code = child.wait()
    if code:
        reason = settings.failure_file.read_text().strip() if settings.failure_file.is_file() else ""
        raise RankFailure(reason or f"a training rank failed with exit code {code}; see the log")


def main() -> None:
    """Called by the toolkit's ``train``; raises ClientError to report a failure."""
    from sagemaker_training.errors import ClientError

    stop = StopFlag().install()
    try:
        settings = settings_from_toolkit()
        if settings.world_size > 1:
            _torchrun(settings, stop)
        else:
            from dagm_defects.training.run import run_training

            run_training(settings, stop)
    except Exception as exc:
        raise ClientError(failure_reason(exc)) from None
