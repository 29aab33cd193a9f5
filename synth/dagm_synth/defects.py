"""The defect kinds of classes 1-10 drawn into an image: where, how large, and how they look.

Each works on the ellipse's bounding box only. The hairline of class 8 is hard_case's.
"""

from __future__ import annotations

import math

import numpy as np

from dagm_synth.geometry import Ellipse, smoothstep
from dagm_synth.hard_case import hairline
from dagm_synth.spec import BLOB, HAIRLINE, MISSING, SCRATCH, ClassSpec, scale

# Mask areas at 512x512; the smallest real masks are a few pixels, the largest ~10,000
# (one of genuine Class 8's 150 Train masks reaches 18,700).
_MIN_AREA = 150.0
_MAX_AREA = 11000.0
# Hairline masks: moment-based aspect ratios on genuine Class 8 Train, quartiles 2.6-4.2.
_ASPECT = {SCRATCH: (4.0, 9.0), BLOB: (1.0, 2.2), MISSING: (1.0, 2.0), HAIRLINE: (1.8, 5.0)}
# A scratch running along the texture's own lines would be invisible, not just hard.
# Hairlines keep any angle: real class 8's spread evenly over 0-180 degrees, and a 1-px
# groove still shows along soft bands.
_MIN_SCRATCH_OFFSET_DEG = 20.0


def draw_angle(rng: np.random.Generator, spec: ClassSpec, kind: str) -> float:
    while True:
        angle = rng.uniform(0.0, 180.0)
        if kind != SCRATCH or all(
            abs((angle - d + 90.0) % 180.0 - 90.0) >= _MIN_SCRATCH_OFFSET_DEG
            for d in spec.directions
        ):
            return math.radians(angle)


def draw_ellipse(rng: np.random.Generator, spec: ClassSpec, kind: str, size: int) -> Ellipse:
    r2 = scale(size) ** 2
    sigma = spec.area_spread
    # log-normal with the class's mean, not its median
    area = spec.mean_area * math.exp(rng.normal(-0.5 * sigma**2, sigma))
    area = min(max(area, _MIN_AREA), _MAX_AREA) * r2
    aspect = rng.uniform(*_ASPECT[kind])
    a = min(math.sqrt(area * aspect / math.pi), 0.42 * size)
    b = max(area / (math.pi * a), 1.0)
    angle = draw_angle(rng, spec, kind)
    e = Ellipse(0.0, 0.0, a, b, angle)
    hx, hy = e.half_extent()
    cx = rng.uniform(hx + 1.0, size - hx - 1.0)
    cy = rng.uniform(hy + 1.0, size - hy - 1.0)
    return Ellipse(cx, cy, a, b, angle)


def box_blur(patch: np.ndarray, radius: int) -> np.ndarray:
    """Mean over a (2*radius+1)^2 window via cumulative sums; edges replicate."""
    k = 2 * radius + 1
    padded = np.pad(patch, radius + 1, mode="edge").astype(np.float64)
    c = padded.cumsum(0).cumsum(1)
    window = c[k:, k:] - c[:-k, k:] - c[k:, :-k] + c[:-k, :-k]
    return (window[: patch.shape[0], : patch.shape[1]] / (k * k)).astype(np.float32)


def apply_defect(
    img: np.ndarray, e: Ellipse, kind: str, spec: ClassSpec, rng: np.random.Generator
) -> np.ndarray:
    """Change `img` in place inside the ellipse; return the ellipse's pixels (box, bool)."""
    size = img.shape[0]
    r = scale(size)
    box = e.box(size)
    y0, y1, x0, x1 = box
    u, v = e.local(box)
    rho2 = (u / np.float32(e.a)) ** 2 + (v / np.float32(e.b)) ** 2
    inside = rho2 <= 1.0
    patch = img[y0:y1, x0:x1]
    variation = spec.variation

    if kind == BLOB:
        # flat-bottomed, soft-edged: diffuse like the real stains, gone by the mask edge
        weight = smoothstep((1.0 - rho2) / rng.uniform(0.5, 0.9))
        patch -= np.float32(rng.uniform(1.6, 2.6) * variation) * weight
    elif kind == MISSING:
        radius = max(2, round(max(e.b * 0.5, 6.0 * r)))
        local_mean = box_blur(patch, radius)
        local_mean += np.float32(rng.uniform(-0.5, 0.3) * spec.contrast)
        weight = np.float32(rng.uniform(0.6, 0.9)) * smoothstep((1.0 - rho2) / 0.35)
        patch += weight * (local_mean - patch)
    elif kind == HAIRLINE:
        # cut at the mask's edge: on the smallest ellipses the bow can reach past it
        patch += hairline(u, v, e, spec, rng, r) * inside
    else:  # SCRATCH
        bow = rng.uniform(-0.5, 0.5) * e.b
        centre = bow * (0.5 - (u / np.float32(e.a)) ** 2)
        width = max(rng.uniform(0.7, 1.5) * r, 0.6)
        line = np.exp(-((v - centre) ** 2) / np.float32(2.0 * width**2))
        # fade before the ellipse edge so the visible line always lies inside the mask
        line *= smoothstep((1.0 - rho2) / 0.3)
        sign = 1.0 if rng.random() < 0.5 else -1.0
        patch += np.float32(sign * rng.uniform(2.0, 3.2) * variation) * line
    return inside
