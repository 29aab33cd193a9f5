"""What the endpoint predicts for one image, from the model's outputs for it.

The worker answers a defect probability and a probability map at the model's map
resolution per image (wire.py); this turns them into the caller's terms: the decision
at the request's threshold, and the defect mask back at the image's own size, so
`bbox` and `defect_area_px` are in the caller's pixel coordinates. On a padded canvas
(a "native" model) only the part of the map the image covers is scaled back. The mask
is made only for a defective image, and only once: for a clean one it is empty; and only
where the map comes near 0.5.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property, lru_cache

import numpy as np

# A map pixel counts as defect above this probability (the segmentation head's own scale).
MASK_PROBABILITY = 0.5


@dataclass(frozen=True)
class Prediction:
    score: float
    threshold: float
    probability_map: np.ndarray  # float32 at the model's map resolution
    image_shape: tuple[int, int]  # the input image's (height, width)
    # The map rows and columns the image covers (placement.map_extent): all of it for a
    # resized image, the top-left part for a padded one.
    map_extent: tuple[float, float]

    @classmethod
    def from_outputs(cls, score: float, probability_map: np.ndarray, image_shape: tuple[int, int],
                     threshold: float, map_extent: tuple[float, float] | None = None) -> "Prediction":
        return cls(float(score), threshold, probability_map, (int(image_shape[0]), int(image_shape[1])),
                   map_extent or probability_map.shape)

    @property
    def defective(self) -> bool:
        return self.score >= self.threshold

    @cached_property
    def mask(self) -> np.ndarray:
        """bool at the image's own size: where the map, scaled back, exceeds 0.5; empty
        unless the image is defective."""
        mask = np.zeros(self.image_shape, dtype=bool)
        if not self.defective:
            return mask
        probabilities = self.probability_map.astype(np.float32)
        rows, cols = probabilities.shape
        height, width = self.image_shape
        # A scaled pixel mixes at most 2x2 map pixels with weights summing to 1, so it can
        # exceed 0.5 only next to a map pixel that does (the margin absorbs rounding): only
        # the window around those is scaled, a small part of the image for a real defect.
        near = probabilities > MASK_PROBABILITY - 1e-6
        row_weights = _bilinear(height, rows, float(self.map_extent[0]))
        col_weights = _bilinear(width, cols, float(self.map_extent[1]))
        top, bottom = _span(row_weights, near.any(axis=1))
        left, right = _span(col_weights, near.any(axis=0))
        if top < bottom and left < right:
            scaled = row_weights[top:bottom] @ probabilities @ col_weights[left:right].T
            mask[top:bottom, left:right] = scaled > MASK_PROBABILITY
        return mask

    def to_dict(self) -> dict:
        area, bbox = 0, None
        if self.defective:
            mask = self.mask
            area = int(np.count_nonzero(mask))
            if area:
                rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
                bbox = [int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1]
        return {
            "score": round(self.score, 6),
            "defective": self.defective,
            "threshold": self.threshold,
            "defect_area_px": area,
            "bbox": bbox,
        }


def _span(weights: np.ndarray, hot: np.ndarray) -> tuple[int, int]:
    """The scaled positions [start, stop) that draw on the `hot` map positions' span
    (none when those lie only in a padded canvas's padding)."""
    found = np.flatnonzero(hot)
    drawing = np.flatnonzero(weights[:, found[0]:found[-1] + 1].any(axis=1)) if found.size else found
    return (int(drawing[0]), int(drawing[-1]) + 1) if drawing.size else (0, 0)


@lru_cache(maxsize=64)
def _bilinear(size: int, source: int, extent: float | None = None) -> np.ndarray:
    """size x source weights of bilinear interpolation of the first `extent` (default:
    all) of `source` map pixels onto `size`, pixel centres aligned (as Pillow's and torch's
    align_corners=False), edges clamped to the pixels the extent touches: scaling a map
    is then two small matrix products, ten times faster than Pillow's float resize at
    512x512."""
    extent = source if extent is None else extent
    last = min(source, max(1, math.ceil(extent - 1e-6))) - 1
    centres = np.clip((np.arange(size) + 0.5) * (extent / size) - 0.5, 0, last)
    low = np.floor(centres).astype(int)
    high = np.minimum(low + 1, last)
    weights = np.zeros((size, source), np.float32)
    np.add.at(weights, (np.arange(size), low), 1 - (centres - low))
    np.add.at(weights, (np.arange(size), high), centres - low)
    return weights
