"""Checkpoints in ``/opt/ml/checkpoints`` (synced to S3 by SageMaker): one file,
replaced atomically, so a spot interruption or a stop never leaves a torn one."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

CHECKPOINT_FILE = "last.pt"


class CheckpointError(RuntimeError):
    """A checkpoint that exists but cannot be used for this job."""


@dataclass
class TrainingState:
    epochs_done: int = 0
    history: list[dict] = field(default_factory=list)


def save_checkpoint(directory: str, model, optimizer, state: TrainingState, identity: dict) -> Path:
    path = Path(directory) / CHECKPOINT_FILE
    tmp = path.with_name(path.name + ".tmp")
    torch.save(
        {
            "epochs_done": state.epochs_done,
            "history": state.history,
            "identity": identity,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "torch_rng": torch.get_rng_state(),
        },
        tmp,
    )
    os.replace(tmp, path)
    return path


def load_checkpoint(directory: str, model, optimizer, identity: dict) -> TrainingState | None:
    """Restore model and optimizer from the last checkpoint, if there is one.

    `identity` holds the settings a checkpoint must match (architecture, classes, input
    size); a checkpoint of another job is refused rather than silently mixed in.
    """
    path = Path(directory) / CHECKPOINT_FILE
    if not path.is_file():
        return None
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"checkpoint {path} cannot be read ({exc}); delete it to start over") from None
    if saved.get("identity") != identity:
        raise CheckpointError(
            f"checkpoint {path} was written for {saved.get('identity')}, but this job is "
            f"{identity}; point the job's checkpoint location at an empty prefix"
        )
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    torch.set_rng_state(saved["torch_rng"])
    return TrainingState(epochs_done=int(saved["epochs_done"]), history=list(saved["history"]))
