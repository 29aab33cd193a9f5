"""The loaded model and one batched forward pass, in an MMS worker."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from dagm_defects.artifact import Artifact, ArtifactError, load_artifact
from dagm_defects.device import Device
from dagm_defects.model import inference_copy, predict


class Predictor:
    def __init__(self, artifact: Artifact, device: Device):
        self.image_size = artifact.image_size  # (height, width)
        self.canvas = artifact.config.canvas  # where the front places an image on it
        self.threshold = artifact.threshold
        self.training_statistics = artifact.metadata.get("training_statistics") or {}
        self.device = device
        # Only the BatchNorm-folded copy is kept: the artefact's own model is not needed again.
        self.model = inference_copy(artifact.model).to(device.device)
        if device.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.forward_passes = 0

    @classmethod
    def load(cls, model_dir: str | Path, device: Device) -> "Predictor":
        return cls(load_artifact(model_dir, map_location="cpu"), device)

    @property
    def forward_id(self) -> str:
        """Which forward pass answered: equal ids mean one pass served those images."""
        return f"{os.getpid()}-{self.forward_passes}"

    def warm_up(self, batch_size: int) -> None:
        """One pass at the batch size the front sends, so the first request is not the one
        that pays for kernel selection and allocator growth. The same pass refuses
        weights that answer NaN or infinity: such a model would pass /ping and then
        answer every request with nonsense."""
        height, width = self.image_size
        probs, maps = self.forward(np.full((batch_size, height, width), 128, np.uint8))
        if not (np.isfinite(probs).all() and np.isfinite(maps).all()):
            raise ArtifactError(f"model produces non-finite scores (NaN or infinity) on a plain gray {width}x{height} "
                                "image: its weights are broken")

    def forward(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Defect probabilities (N) and probability maps (N x H/d x W/d) of N x H x W uint8
        images, in one pass."""
        if images.ndim != 3 or images.shape[1:] != self.image_size:
            raise ValueError(f"expected N x {self.image_size[0]} x {self.image_size[1]} images, "
                             f"got shape {images.shape}")
        if not images.flags.writeable:  # torch wants memory it may write; a view of bytes is not
            images = images.copy()
        batch = torch.from_numpy(np.ascontiguousarray(images)).unsqueeze(1)
        with torch.inference_mode(), self.device.autocast():
            probs, maps = predict(self.model, self.device.images(batch))
        self.forward_passes += 1
        return probs.float().cpu().numpy(), maps.float().cpu().numpy()
