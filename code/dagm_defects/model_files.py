"""What a model directory holds, and its metadata read, without importing torch.

The serving front unpacks model directories and reads their metadata (input size,
threshold) while multi-model-server's workers import torch and load the weights:
it never imports torch itself (artifact.py does, to load weights).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from dagm_defects.model_config import ModelConfig

WEIGHTS_FILE = "model.pt"
METADATA_FILE = "model.json"
FORMAT_VERSION = 1


class ArtifactError(RuntimeError):
    """A model directory that cannot be served; the message says what is wrong."""


@dataclass(frozen=True)
class Metadata:
    """`model.json`, checked: what the model is and how to feed and read it."""

    document: dict
    config: ModelConfig
    threshold: float


def read_metadata(model_dir: str | Path) -> Metadata:
    """The metadata of a model directory that holds both files, or ArtifactError."""
    model_dir = Path(model_dir)
    meta_path = model_dir / METADATA_FILE
    missing = [name for name in (WEIGHTS_FILE, METADATA_FILE) if not (model_dir / name).is_file()]
    if missing:
        raise ArtifactError(f"model directory {model_dir} lacks {', '.join(missing)}")
    try:
        document = json.loads(meta_path.read_text())
        config = ModelConfig.from_dict(document["model_config"])
        threshold = float(document["threshold"])
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ArtifactError(f"{meta_path} is not valid model metadata: {exc}") from None
    if document.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(f"{meta_path} has format_version {document.get('format_version')}, "
                            f"this code reads {FORMAT_VERSION}")
    return Metadata(document, config, threshold)
