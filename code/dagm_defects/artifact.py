"""The model artefact: what ``/opt/ml/model`` holds and serving loads.

Two files and nothing else: ``model.pt`` (a plain state dict, loadable with
``torch.load(..., weights_only=True)``) and ``model.json`` (architecture, input size,
decision threshold, classes, training-data statistics). Loading needs only this module
and ``model.py``, never the training code.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from dagm_defects.model import SegDecNet, build_model
from dagm_defects.model_config import ModelConfig
from dagm_defects.model_files import FORMAT_VERSION, METADATA_FILE, WEIGHTS_FILE, ArtifactError, read_metadata

__all__ = ["Artifact", "ArtifactError", "FORMAT_VERSION", "METADATA_FILE", "WEIGHTS_FILE", "load_artifact",
           "save_artifact", "update_metadata"]


@dataclass
class Artifact:
    model: SegDecNet
    metadata: dict

    @property
    def config(self) -> ModelConfig:
        return self.model.config

    @property
    def threshold(self) -> float:
        return float(self.metadata["threshold"])

    @property
    def image_size(self) -> tuple[int, int]:
        """The input's (height, width)."""
        return self.config.image_size


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def save_artifact(
    model_dir: str | Path,
    model: SegDecNet,
    threshold: float,
    classes: list[int],
    training_statistics: dict,
    extra: dict | None = None,
) -> Path:
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    _atomic_write(model_dir / WEIGHTS_FILE, lambda p: torch.save(state, p))
    metadata = {
        "format_version": FORMAT_VERSION,
        "architecture": "segdecnet",
        "model_config": model.config.to_dict(),
        "input": {"height": model.config.image_size[0], "width": model.config.image_size[1],
                  "channels": 1, "dtype": "uint8", "resize": "bilinear", "placement": model.config.placement},
        "threshold": float(threshold),
        "classes": [int(c) for c in classes],
        "training_statistics": training_statistics,
        **(extra or {}),
    }
    _write_metadata(model_dir, metadata)
    return model_dir


def _write_metadata(model_dir: Path, metadata: dict) -> None:
    _atomic_write(model_dir / METADATA_FILE,
                  lambda p: p.write_text(json.dumps(metadata, indent=2, sort_keys=True) + "\n"))


def update_metadata(model_dir: str | Path, key: str, value) -> None:
    """Set one key of a saved model's metadata (what is only known after saving)."""
    metadata = json.loads((Path(model_dir) / METADATA_FILE).read_text())
    metadata[key] = value
    _write_metadata(Path(model_dir), metadata)


def load_artifact(model_dir: str | Path, map_location: str | torch.device = "cpu") -> Artifact:
    metadata = read_metadata(model_dir)
    weights, config = Path(model_dir) / WEIGHTS_FILE, metadata.config
    try:
        state = torch.load(weights, map_location=map_location, weights_only=True)
        model = build_model(config)
        model.load_state_dict(state)
    except Exception as exc:  # any unpickling or shape error means the same thing
        raise ArtifactError(f"{weights} cannot be loaded as weights for {config}: {exc}") from None
    return Artifact(model=model.eval(), metadata=metadata.document)
