"""What a class is made of: its texture, grey levels, mask sizes and mix of defect kinds."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

# Lengths are in pixels at 512x512 and multiplied by scale(size) so a class looks the same
# at any size, only coarser.
REFERENCE_SIZE = 512

# A texture builder returns a float32 t x t array with mean 0 and std 1 from (rng, t,
# scale); the class spec scales it to grey levels.
TextureFn = Callable[[np.random.Generator, int, float], np.ndarray]

SCRATCH = "scratch"
BLOB = "blob"
MISSING = "missing"
# Real class 8's scratch: a groove whose two walls show as a dark and a bright 1-px line
# side by side. Their mean over the mask is about zero and a 2x downscale averages much of
# their peak away, which is what makes the class hard.
HAIRLINE = "hairline"
DEFECT_KINDS = (SCRATCH, BLOB, MISSING, HAIRLINE)


def scale(size: int) -> float:
    return size / REFERENCE_SIZE


@dataclass(frozen=True)
class ClassSpec:
    texture: TextureFn
    mean: float  # grey level of the background
    contrast: float  # texture std in grey levels
    grain: float  # std of the fresh per-image sensor noise
    isotropic: bool  # whether mirror flips keep the texture's look
    mean_area: float  # mean mask area in pixels at 512x512
    area_spread: float  # sigma of the log-normal mask area
    defects: tuple[tuple[str, float], ...]  # kind and probability
    directions: tuple[float, ...] = ()  # degrees of the texture's lines, x towards y

    @property
    def variation(self) -> float:
        return math.hypot(self.contrast, self.grain)
