"""The ellipse a defect and its mask fill, and the soft edge defects fade with.

Defects work on the ellipse's bounding box only, so their cost does not depend on the image
size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Ellipse:
    cx: float
    cy: float
    a: float  # semi-major axis, pixels
    b: float  # semi-minor axis, pixels
    angle: float  # of the major axis, radians, x towards y

    @property
    def area(self) -> float:
        return math.pi * self.a * self.b

    def half_extent(self) -> tuple[float, float]:
        c, s = math.cos(self.angle), math.sin(self.angle)
        return math.hypot(self.a * c, self.b * s), math.hypot(self.a * s, self.b * c)

    def box(self, size: int) -> tuple[int, int, int, int]:
        hx, hy = self.half_extent()
        x0 = max(0, math.floor(self.cx - hx) - 1)
        y0 = max(0, math.floor(self.cy - hy) - 1)
        x1 = min(size, math.ceil(self.cx + hx) + 2)
        y1 = min(size, math.ceil(self.cy + hy) + 2)
        return y0, y1, x0, x1

    def local(self, box: tuple[int, int, int, int]) -> tuple[np.ndarray, np.ndarray]:
        """Pixel-centre coordinates of the box along the major (u) and minor (v) axes."""
        y0, y1, x0, x1 = box
        dy = np.arange(y0, y1, dtype=np.float32)[:, None] + np.float32(0.5 - self.cy)
        dx = np.arange(x0, x1, dtype=np.float32)[None, :] + np.float32(0.5 - self.cx)
        c, s = np.float32(math.cos(self.angle)), np.float32(math.sin(self.angle))
        return dx * c + dy * s, -dx * s + dy * c


def smoothstep(t: np.ndarray) -> np.ndarray:
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)

