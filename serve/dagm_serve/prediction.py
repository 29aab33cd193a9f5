"""What the endpoint predicts for one image, from the model's outputs for it.

The worker answers a defect probability and a probability map at the model's map
resolution per image (wire.py); this turns them into the caller's terms: the decision
at the request's threshold, and the defect mask back at the image's own size, so
`bbox` and `defect_area_px` are in the caller's pixel coordinates.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

# A map pixel counts as defect above this probability (the segmentation head's own scale).
MASK_PROBABILITY = 0.5


@dataclass(frozen=True)
class Prediction:
    score: float
    threshold: float
    mask: np.ndarray  # bool, at the input image's own size; empty unless defective
    probability_map: np.ndarray  # float32 at the model's map resolution

    @classmethod
    def from_outputs(cls, score: float, probability_map: np.ndarray, image_shape: tuple[int, int],
                     threshold: float) -> "Prediction":
        if score >= threshold:
            full = Image.fromarray(probability_map.astype(np.float32), mode="F").resize(
                (image_shape[1], image_shape[0]), Image.Resampling.BILINEAR
            )
            mask = np.asarray(full) > MASK_PROBABILITY
        else:
            mask = np.zeros(image_shape, dtype=bool)
        return cls(float(score), threshold, mask, probability_map)

    @property
    def defective(self) -> bool:
        return self.score >= self.threshold

    def to_dict(self) -> dict:
        rows, cols = np.nonzero(self.mask)
        bbox = [int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1] if len(rows) else None
        return {
            "score": round(self.score, 6),
            "defective": self.defective,
            "threshold": self.threshold,
            "defect_area_px": int(len(rows)),
            "bbox": bbox,
        }
