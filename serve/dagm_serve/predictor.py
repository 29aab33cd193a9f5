"""The loaded model and one batched forward pass over images of any size.

Images are resized to the model's square input (bilinear, as in training); the
predicted mask comes back at each image's own size, so `bbox` and `defect_area_px`
are in the caller's pixel coordinates.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from dagm_defects.artifact import Artifact, ArtifactError, load_artifact
from dagm_defects.device import Device
from dagm_defects.imaging import resize_square
from dagm_defects.model import inference_copy, predict
from dagm_serve.codec import Prediction

# A map pixel counts as defect above this probability (the segmentation head's own scale).
MASK_PROBABILITY = 0.5


def check_outputs(artifact: Artifact) -> None:
    """Refuse weights that answer NaN or infinity: such a model would pass /ping and then
    answer every request with nonsense."""
    size = artifact.image_size
    probs, maps = predict(artifact.model, torch.full((1, 1, size, size), 128, dtype=torch.uint8))
    if not (torch.isfinite(probs).all() and torch.isfinite(maps).all()):
        raise ArtifactError(f"model produces non-finite scores (NaN or infinity) on a plain gray {size}x{size} "
                            "image: its weights are broken")


class Predictor:
    def __init__(self, artifact: Artifact, device: Device):
        self.artifact = artifact
        self.device = device
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
        """One pass at the batch size MMS will send, so the first request is not the one
        that pays for kernel selection and allocator growth."""
        size = self.artifact.image_size
        self.forward([np.zeros((size, size), np.uint8)] * batch_size)

    def resized(self, images: list[np.ndarray]) -> np.ndarray:
        """N x S x S uint8: the images as the model sees them."""
        return np.stack([resize_square(image, self.artifact.image_size) for image in images])

    def forward(self, images: list[np.ndarray], resized: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Defect probabilities (N) and probability maps (N x S/d x S/d), one pass."""
        batch = torch.from_numpy(self.resized(images) if resized is None else resized).unsqueeze(1)
        with torch.inference_mode(), self.device.autocast():
            probs, maps = predict(self.model, self.device.images(batch))
        self.forward_passes += 1
        return probs.cpu().numpy(), maps.cpu().numpy()

    def predict(self, images: list[np.ndarray], thresholds: list[float | None],
                watch: Callable[[np.ndarray, np.ndarray], None] | None = None) -> list[Prediction]:
        """Predictions for `images` in one forward pass; `thresholds[i]` overrides the
        artefact's threshold for image i. `watch(resized images, defective flags)` sees
        every batch (drift.py)."""
        resized = self.resized(images)
        probs, maps = self.forward(images, resized)
        predictions = []
        for image, prob, prob_map, threshold in zip(images, probs, maps, thresholds):
            threshold = self.artifact.threshold if threshold is None else threshold
            score = float(prob)
            if score >= threshold:
                full = Image.fromarray(prob_map.astype(np.float32), mode="F").resize(
                    (image.shape[1], image.shape[0]), Image.Resampling.BILINEAR
                )
                mask = np.asarray(full) > MASK_PROBABILITY
            else:
                mask = np.zeros(image.shape, dtype=bool)
            predictions.append(Prediction(score, threshold, mask, prob_map))
        if watch is not None:
            watch(resized, np.array([p.score >= p.threshold for p in predictions], dtype=bool))
        return predictions
