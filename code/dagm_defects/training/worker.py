"""One rank of a torchrun training job (``python -m dagm_defects.training.worker``)."""

from __future__ import annotations

import os
import sys

import torch.distributed as dist

from dagm_defects.progress import write_line
from dagm_defects.training.launch import failure_reason
from dagm_defects.training.run import run_training
from dagm_defects.training.settings import SETTINGS_ENV, TrainingSettings
from dagm_defects.training.stop import StopFlag


def main() -> int:
    settings = TrainingSettings.from_json(os.environ[SETTINGS_ENV])
    stop = StopFlag().install()
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    import torch

    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    try:
        run_training(settings, stop, rank=rank, world=world, local_rank=local_rank)
        dist.barrier()
        return 0
    except Exception as exc:
        reason = failure_reason(exc)
        write_line(f"rank {rank} failed: {reason}", sys.stderr)
        # The first rank to fail leaves the reason for the launcher to report.
        if not settings.failure_file.exists():
            settings.failure_file.write_text(reason + "\n")
        return 1
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
