"""A synthetic stand-in for DAGM 2007, written in exactly the competition layout.

The real archive needs a licence click-through and several gigabytes, so tests, the demo
and timing runs use this generator instead. It writes::

    Class{N}/{Train,Test}/NNNN.PNG                  8-bit grayscale, size x size
    Class{N}/{Train,Test}/Label/Labels.txt          via labels.write_labels
    Class{N}/{Train,Test}/Label/NNNN_label.PNG      0/255 filled ellipse, defective only

Each class has its own texture (smooth, brushed, granular, woven, blotchy, fibrous and
variants of those for classes 7, 9 and 10) and its own mix of the real defect kinds: thin
scratches, darker diffuse areas and missing texture, each covered by an elliptic mask whose
area follows the real class (about 9600 px for class 1 down to about 1000 px for class 9
at 512x512). These classes are easier than their real counterparts.

Class 8 is the calibrated hard case: its texture, defects and masks are fitted to summary
figures measured on genuine DAGM Class 8 Train images (no pixels of them are used). Soft
vertical fibre bands under a fine mottle (std about 36 grey levels) carry, as the only
defect, hairline scratches: a dark and a bright 1-px wall side by side, 20-60 px long,
each wall about 2.4 texture stds from the background, cancelling over the mask and losing
about half their peak at half the size; coarse ellipses around them have a median area of
about 940 px.

Everything an image looks like derives from ``np.random.default_rng([seed, cls, split,
number])`` and a per-class texture derived from ``[seed, cls, size]`` alone, so the files
are byte-identical whatever the number of worker processes.

Run ``python -m dagm_defects.data.synthetic OUT`` (or ``dagm-synth OUT``); ``--help``
lists the options.
"""

from __future__ import annotations

import argparse
import functools
import math
import multiprocessing
import os
import re
import struct
import sys
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import numpy as np

from dagm_defects.data.labels import LabelRow, write_labels
from dagm_defects.progress import Progress

ALL_CLASSES: tuple[int, ...] = tuple(range(1, 11))
SPLITS: tuple[str, ...] = ("Train", "Test")
DEFECTIVE_SHARE = 0.13
REFERENCE_SIZE = 512
MIN_SIZE = 64
MAX_IMAGES_PER_SPLIT = 9999  # four-digit file numbers

# Classes 1-6 are the development set of the competition, 7-10 the competition set.
REAL_IMAGES_PER_SPLIT: dict[int, int] = {c: 575 if c <= 6 else 1150 for c in ALL_CLASSES}

# Slot in the seed sequence that no (split, number) pair uses: the split index is 0 or 1.
_TEXTURE_STREAM = 2
# Image numbers start at 1, so number 0 is free for the split's choice of defective images.
_SPLIT_STREAM_NUMBER = 0

# Enough images per task to amortise the inter-process round trip, few enough that the
# last tasks do not leave one worker busy while the others idle.
_CHUNK = 24


# --------------------------------------------------------------------------------------
# Textures. Each builder returns a float32 t x t array with mean 0 and std 1; the class
# spec scales it to grey levels. Lengths are in pixels at 512x512 and multiplied by
# r = size / 512 so a class looks the same at any size, only coarser.
# --------------------------------------------------------------------------------------

TextureFn = Callable[[np.random.Generator, int, float], np.ndarray]


def _standardise(a: np.ndarray) -> np.ndarray:
    a = a - a.mean()
    return (a / max(float(a.std()), 1e-9)).astype(np.float32)


def _filtered_noise(
    rng: np.random.Generator,
    t: int,
    sigma_along: float,
    sigma_across: float | None = None,
    angle: float = 0.0,
) -> np.ndarray:
    """White noise blurred by a (possibly elongated) Gaussian, done in the Fourier domain.

    The FFT makes the texture periodic, so any crop of it is seamless, and costs the same
    for a 60-pixel kernel as for a 1-pixel one.
    """
    sigma_across = sigma_along if sigma_across is None else sigma_across
    fy = np.fft.fftfreq(t)[:, None]
    fx = np.fft.rfftfreq(t)[None, :]
    c, s = math.cos(angle), math.sin(angle)
    fu = fx * c + fy * s
    fv = -fx * s + fy * c
    gain = np.exp(-2.0 * math.pi**2 * ((sigma_along * fu) ** 2 + (sigma_across * fv) ** 2))
    spectrum = np.fft.rfft2(rng.standard_normal((t, t))) * gain
    return _standardise(np.fft.irfft2(spectrum, s=(t, t)))


def _smooth(
    rng: np.random.Generator, t: int, r: float, *, scale: float, detail: float
) -> np.ndarray:
    return _standardise(
        _filtered_noise(rng, t, scale * r) + detail * _filtered_noise(rng, t, 1.5 * r)
    )


def _streaks(
    rng: np.random.Generator, t: int, r: float, *, angle_deg: float, length: float, width: float
) -> np.ndarray:
    streaks = _filtered_noise(rng, t, length * r, width * r, math.radians(angle_deg))
    shading = _filtered_noise(rng, t, 14.0 * r)
    return _standardise(streaks + 0.35 * shading)


def _granular(
    rng: np.random.Generator, t: int, r: float, *, grain: float, clump: float, clump_weight: float
) -> np.ndarray:
    return _standardise(
        _filtered_noise(rng, t, grain * r) + clump_weight * _filtered_noise(rng, t, clump * r)
    )


def _woven(
    rng: np.random.Generator, t: int, r: float, *, period: float, angle_deg: float, warp: float
) -> np.ndarray:
    """Basket weave: cells alternate between horizontal and vertical threads.

    Low-frequency phase warps keep the threads from looking machine-perfect, which real
    fabric-like DAGM classes are not either.
    """
    y, x = np.mgrid[0:t, 0:t].astype(np.float32)
    a = math.radians(angle_deg)
    xr = x * math.cos(a) + y * math.sin(a)
    yr = -x * math.sin(a) + y * math.cos(a)
    p = period * r
    phase_x = 2.0 * np.pi * xr / p + warp * _filtered_noise(rng, t, 40.0 * r)
    phase_y = 2.0 * np.pi * yr / p + warp * _filtered_noise(rng, t, 40.0 * r)
    cells = np.sin(phase_x / 2.0) * np.sin(phase_y / 2.0) > 0
    weave = np.where(cells, np.cos(phase_y), np.cos(phase_x))
    return _standardise(weave + 0.45 * _filtered_noise(rng, t, 1.0 * r))


def _blotches(
    rng: np.random.Generator, t: int, r: float, *, scale: float, sharpness: float
) -> np.ndarray:
    patches = np.tanh(sharpness * _filtered_noise(rng, t, scale * r))
    return _standardise(
        patches + 0.3 * _filtered_noise(rng, t, 6.0 * r) + 0.3 * _filtered_noise(rng, t, 2.0 * r)
    )


def _fibres(
    rng: np.random.Generator,
    t: int,
    r: float,
    *,
    count: int,
    length: float,
    width: float,
    threshold: float,
) -> np.ndarray:
    """Sparse thin lines at a few random orientations over a soft background.

    Thresholding elongated noise keeps only its ridges, which read as separate fibres
    rather than as a uniform brushed pattern.
    """
    fibres = np.zeros((t, t), np.float32)
    for _ in range(count):
        ridge = _filtered_noise(rng, t, length * r, width * r, rng.uniform(0.0, math.pi))
        fibres += np.maximum(ridge - threshold, 0.0)
    return _standardise(fibres + 0.25 * _filtered_noise(rng, t, 5.0 * r))


def _vertical_fibres(
    rng: np.random.Generator,
    t: int,
    r: float,
    *,
    width: float,
    length: float,
    mottle_along: float,
    mottle_across: float,
    mottle_weight: float,
    shading: float,
    shading_weight: float,
) -> np.ndarray:
    """Soft vertical fibre bands under a fine, horizontally smeared mottle (real class 8).

    The bands carry most of the variance and stay correlated over hundreds of pixels
    vertically but only a dozen horizontally; the mottle, a few pixels long along x and
    shorter along y, is why real class 8 decorrelates faster vertically than horizontally
    at a 1-3 px lag although its fibres are vertical.
    """
    bands = _filtered_noise(rng, t, length * r, width * r, math.pi / 2)
    mottle = _filtered_noise(rng, t, mottle_along * r, mottle_across * r)
    return _standardise(
        bands + mottle_weight * mottle + shading_weight * _filtered_noise(rng, t, shading * r)
    )


# --------------------------------------------------------------------------------------
# Class specifications.
# --------------------------------------------------------------------------------------

SCRATCH = "scratch"
BLOB = "blob"
MISSING = "missing"
# Real class 8's scratch: a groove whose two walls show as a dark and a bright 1-px line
# side by side. Their mean over the mask is about zero and a 2x downscale averages much of
# their peak away, which is what makes the class hard.
HAIRLINE = "hairline"
DEFECT_KINDS = (SCRATCH, BLOB, MISSING, HAIRLINE)


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


P = functools.partial
CLASS_SPECS: dict[int, ClassSpec] = {
    1: ClassSpec(P(_smooth, scale=7.0, detail=0.35), 125, 10, 4, True, 9600, 0.10,
                 ((BLOB, 0.85), (SCRATCH, 0.15))),
    2: ClassSpec(P(_streaks, angle_deg=0, length=50, width=0.8), 105, 16, 5, False, 3500, 0.45,
                 ((SCRATCH, 0.7), (BLOB, 0.3)), directions=(0,)),
    3: ClassSpec(P(_granular, grain=1.0, clump=4.0, clump_weight=0.5), 140, 18, 5, True, 4500, 0.45,
                 ((MISSING, 0.5), (BLOB, 0.5))),
    4: ClassSpec(P(_woven, period=16, angle_deg=0, warp=0.8), 115, 18, 5, False, 6000, 0.4,
                 ((MISSING, 0.6), (SCRATCH, 0.4)), directions=(0, 90)),
    5: ClassSpec(P(_blotches, scale=20, sharpness=2.5), 130, 22, 4, True, 2500, 0.5,
                 ((SCRATCH, 0.6), (BLOB, 0.4))),
    # no scratches: a bright line would be just one more fibre
    6: ClassSpec(P(_fibres, count=5, length=30, width=0.8, threshold=1.0), 110, 16, 5, True, 5500,
                 0.45, ((MISSING, 0.6), (BLOB, 0.4))),
    7: ClassSpec(P(_smooth, scale=16.0, detail=0.2), 85, 12, 8, True, 3800, 0.45,
                 ((BLOB, 0.6), (SCRATCH, 0.4))),
    # The calibrated hard case: texture, grain, grey level and mask areas fitted to figures
    # measured on genuine Class 8 Train images (autocorrelations along x and y, pixel
    # difference stds, column- and row-mean stds; areas: median 940, quartiles 490-1720).
    8: ClassSpec(P(_vertical_fibres, width=12.5, length=140, mottle_along=3.7, mottle_across=2.3,
                   mottle_weight=0.68, shading=95, shading_weight=0.17), 110, 35, 6.2, False,
                 1440, 0.93, ((HAIRLINE, 1.0),), directions=(90,)),
    9: ClassSpec(P(_granular, grain=2.5, clump=8.0, clump_weight=0.6), 170, 16, 6, True, 1000, 0.55,
                 ((BLOB, 0.5), (SCRATCH, 0.3), (MISSING, 0.2))),
    10: ClassSpec(P(_woven, period=24, angle_deg=30, warp=1.2), 95, 16, 5, False, 3000, 0.45,
                  ((MISSING, 0.6), (SCRATCH, 0.4)), directions=(30, 120)),
}
del P

# Mask areas at 512x512; the smallest real masks are a few pixels, the largest ~10,000
# (one of genuine Class 8's 150 Train masks reaches 18,700).
_MIN_AREA = 150.0
_MAX_AREA = 11000.0


def _scale(size: int) -> float:
    return size / REFERENCE_SIZE


@functools.lru_cache(maxsize=None)
def class_texture(cls: int, size: int, seed: int = 0) -> np.ndarray:
    """The class's texture in grey levels around 0, 2*size square, read-only.

    Cached per process: every image of a class is a crop of it, which makes the expensive
    FFT filtering a once-per-worker cost instead of a per-image one.
    """
    spec = CLASS_SPECS[cls]
    rng = np.random.default_rng([seed, cls, _TEXTURE_STREAM, size])
    texture = spec.texture(rng, 2 * size, _scale(size)) * np.float32(spec.contrast)
    texture.flags.writeable = False
    return texture


# --------------------------------------------------------------------------------------
# Defects. Each works on the ellipse's bounding box only, so their cost does not depend
# on the image size.
# --------------------------------------------------------------------------------------


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


# Hairline masks: moment-based aspect ratios on genuine Class 8 Train, quartiles 2.6-4.2.
_ASPECT = {SCRATCH: (4.0, 9.0), BLOB: (1.0, 2.2), MISSING: (1.0, 2.0), HAIRLINE: (1.8, 5.0)}
# A scratch running along the texture's own lines would be invisible, not just hard.
# Hairlines keep any angle: real class 8's spread evenly over 0-180 degrees, and a 1-px
# groove still shows along soft bands.
_MIN_SCRATCH_OFFSET_DEG = 20.0


def _draw_angle(rng: np.random.Generator, spec: ClassSpec, kind: str) -> float:
    while True:
        angle = rng.uniform(0.0, 180.0)
        if kind != SCRATCH or all(
            abs((angle - d + 90.0) % 180.0 - 90.0) >= _MIN_SCRATCH_OFFSET_DEG
            for d in spec.directions
        ):
            return math.radians(angle)


def _draw_ellipse(rng: np.random.Generator, spec: ClassSpec, kind: str, size: int) -> Ellipse:
    r2 = _scale(size) ** 2
    sigma = spec.area_spread
    # log-normal with the class's mean, not its median
    area = spec.mean_area * math.exp(rng.normal(-0.5 * sigma**2, sigma))
    area = min(max(area, _MIN_AREA), _MAX_AREA) * r2
    aspect = rng.uniform(*_ASPECT[kind])
    a = min(math.sqrt(area * aspect / math.pi), 0.42 * size)
    b = max(area / (math.pi * a), 1.0)
    angle = _draw_angle(rng, spec, kind)
    e = Ellipse(0.0, 0.0, a, b, angle)
    hx, hy = e.half_extent()
    cx = rng.uniform(hx + 1.0, size - hx - 1.0)
    cy = rng.uniform(hy + 1.0, size - hy - 1.0)
    return Ellipse(cx, cy, a, b, angle)


def _smoothstep(t: np.ndarray) -> np.ndarray:
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _box_blur(patch: np.ndarray, radius: int) -> np.ndarray:
    """Mean over a (2*radius+1)^2 window via cumulative sums; edges replicate."""
    k = 2 * radius + 1
    padded = np.pad(patch, radius + 1, mode="edge").astype(np.float64)
    c = padded.cumsum(0).cumsum(1)
    window = c[k:, k:] - c[:-k, k:] - c[k:, :-k] + c[:-k, :-k]
    return (window[: patch.shape[0], : patch.shape[1]] / (k * k)).astype(np.float32)


def _apply_defect(
    img: np.ndarray, e: Ellipse, kind: str, spec: ClassSpec, rng: np.random.Generator
) -> np.ndarray:
    """Change `img` in place inside the ellipse; return the ellipse's pixels (box, bool)."""
    size = img.shape[0]
    r = _scale(size)
    box = e.box(size)
    y0, y1, x0, x1 = box
    u, v = e.local(box)
    rho2 = (u / np.float32(e.a)) ** 2 + (v / np.float32(e.b)) ** 2
    inside = rho2 <= 1.0
    patch = img[y0:y1, x0:x1]
    variation = spec.variation

    if kind == BLOB:
        # flat-bottomed, soft-edged: diffuse like the real stains, gone by the mask edge
        weight = _smoothstep((1.0 - rho2) / rng.uniform(0.5, 0.9))
        patch -= np.float32(rng.uniform(1.6, 2.6) * variation) * weight
    elif kind == MISSING:
        radius = max(2, round(max(e.b * 0.5, 6.0 * r)))
        local_mean = _box_blur(patch, radius)
        local_mean += np.float32(rng.uniform(-0.5, 0.3) * spec.contrast)
        weight = np.float32(rng.uniform(0.6, 0.9)) * _smoothstep((1.0 - rho2) / 0.35)
        patch += weight * (local_mean - patch)
    elif kind == HAIRLINE:
        # cut at the mask's edge: on the smallest ellipses the bow can reach past it
        patch += _hairline(u, v, e, spec, rng, r) * inside
    else:  # SCRATCH
        bow = rng.uniform(-0.5, 0.5) * e.b
        centre = bow * (0.5 - (u / np.float32(e.a)) ** 2)
        width = max(rng.uniform(0.7, 1.5) * r, 0.6)
        line = np.exp(-((v - centre) ** 2) / np.float32(2.0 * width**2))
        # fade before the ellipse edge so the visible line always lies inside the mask
        line *= _smoothstep((1.0 - rho2) / 0.3)
        sign = 1.0 if rng.random() < 0.5 else -1.0
        patch += np.float32(sign * rng.uniform(2.0, 3.2) * variation) * line
    return inside


# Measured on genuine Class 8 Train images: the scratch spans half the mask's major axis
# (0.48-0.52 of it), bows by 3-11% of its length at its middle, and each of its walls peaks
# at about 2.4 texture stds from the local background (medians -86 and +90 grey levels).
# The two ranges below are fitted so the same measurement gives those figures here: the
# profile is narrower than a pixel, so averaging over the pixel lowers its peak.
_HAIRLINE_SAG = (0.02, 0.11)
_HAIRLINE_WIDTH = (0.34, 0.46)  # sigma of the groove's profile, pixels at 512
_HAIRLINE_PEAK = (3.6, 4.2)  # the profile's peak before pixel averaging, times texture std


def _hairline(
    u: np.ndarray, v: np.ndarray, e: Ellipse, spec: ClassSpec, rng: np.random.Generator, r: float
) -> np.ndarray:
    """The grey-level change of a thin groove along the ellipse's major axis (box, float32).

    The profile across the line is a Gaussian's derivative, averaged over one pixel: a
    bright wall beside a dark one. At half the size they share pixels and partly cancel,
    as the walls of a real scratch do when its image is downscaled.
    """
    half = 0.5 * e.a
    sag = rng.uniform(*_HAIRLINE_SAG) * 2.0 * half * (1.0 if rng.random() < 0.5 else -1.0)
    d = v - np.float32(sag) * (1.0 - (u / np.float32(half)) ** 2)
    width = rng.uniform(*_HAIRLINE_WIDTH) * r
    two_var = np.float32(2.0 * width**2)
    # the mean over [d - 0.5, d + 0.5] of -(d / width) * exp(0.5 - d**2 / two_var)
    profile = np.float32(width * math.exp(0.5)) * (
        np.exp(-((d + 0.5) ** 2) / two_var) - np.exp(-((d - 0.5) ** 2) / two_var)
    )
    peak = rng.uniform(*_HAIRLINE_PEAK) * spec.contrast * (1.0 if rng.random() < 0.5 else -1.0)
    # the real scratches end abruptly: a 2 px taper centred on each end only stops aliasing
    taper = _smoothstep(0.5 + (half - np.abs(u)) / np.float32(2.0 * r))
    return (np.float32(peak) * profile * taper).astype(np.float32)


# --------------------------------------------------------------------------------------
# One image.
# --------------------------------------------------------------------------------------


def image_rng(seed: int, cls: int, split_index: int, number: int) -> np.random.Generator:
    """The generator that alone decides image `number` (1-based) of a class's split."""
    return np.random.default_rng([seed, cls, split_index, number])


def render_image(
    cls: int, rng: np.random.Generator, size: int = REFERENCE_SIZE, defective: bool = False,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray | None]:
    """One image (uint8, size x size) and, when `defective`, its 0/255 mask."""
    spec = CLASS_SPECS[cls]
    texture = class_texture(cls, size, seed)
    oy, ox = (int(o) for o in rng.integers(0, size + 1, 2))
    crop = texture[oy : oy + size, ox : ox + size]
    flip = int(rng.integers(0, 4))
    if not spec.isotropic:
        # a single mirror would turn a 35-degree streak into a 145-degree one
        flip = 3 if flip & 1 else 0
    if flip & 1:
        crop = crop[::-1]
    if flip & 2:
        crop = crop[:, ::-1]

    gain = np.float32(rng.uniform(0.85, 1.15))
    img = crop * gain
    img += np.float32(spec.mean + rng.normal(0.0, 6.0) + 0.5)  # + 0.5: astype truncates
    # gentle uneven lighting, as across real camera frames
    ramp = np.linspace(-1.0, 1.0, size, dtype=np.float32)
    img += ramp[:, None] * np.float32(rng.uniform(-5.0, 5.0))
    img += ramp[None, :] * np.float32(rng.uniform(-5.0, 5.0))

    mask = None
    if defective:
        names = [k for k, _ in spec.defects]
        probs = np.array([p for _, p in spec.defects])
        kind = names[int(rng.choice(len(names), p=probs / probs.sum()))]
        ellipse = _draw_ellipse(rng, spec, kind, size)
        inside = _apply_defect(img, ellipse, kind, spec, rng)
        y0, y1, x0, x1 = ellipse.box(size)
        mask = np.zeros((size, size), np.uint8)
        mask[y0:y1, x0:x1][inside] = 255

    # Fresh sensor noise after the defect, so even missing texture keeps its grain. Two
    # random nibbles summed give a triangular distribution (std 6.52) at a fraction of
    # the cost of drawing normals.
    raw = np.frombuffer(rng.bytes(size * size), np.uint8).reshape(size, size)
    grain = ((raw >> 4) + (raw & 15)).astype(np.float32)
    grain -= np.float32(15.0)
    grain *= np.float32(spec.grain / 6.52)
    img += grain
    np.clip(img, 0.0, 255.0, out=img)
    return img.astype(np.uint8), mask


# --------------------------------------------------------------------------------------
# Writing.
# --------------------------------------------------------------------------------------

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_chunk(tag: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(tag + payload)
    return struct.pack(">I", len(payload)) + tag + payload + struct.pack(">I", crc)


def encode_png(gray: np.ndarray, strategy: int = zlib.Z_RLE) -> bytes:
    """An 8-bit grayscale PNG of a 2-D uint8 array; `strategy` is zlib's.

    Hand-rolled rather than Pillow: Pillow tries five row filters on every row, which costs
    more than rendering the image. The PNG "Up" filter on every row removes the textures'
    low frequencies (files ~15% smaller than unfiltered). zlib's run-length strategy
    compresses noise as well as its default in under half the time while still collapsing
    the masks' long zero runs; Huffman-only is another 10% faster on the grainy images,
    which have no runs to find.
    """
    if gray.dtype != np.uint8 or gray.ndim != 2:
        raise ValueError(f"expected a 2-D uint8 array, got {gray.dtype} {gray.shape}")
    h, w = gray.shape
    rows = np.empty((h, w + 1), np.uint8)
    rows[:, 0] = 2  # filter type Up; the row above the first counts as zeros
    rows[0, 1:] = gray[0]
    np.subtract(gray[1:], gray[:-1], out=rows[1:, 1:])  # uint8 wraps: PNG's modulo 256
    compressor = zlib.compressobj(1, zlib.DEFLATED, 15, 9, strategy)
    data = compressor.compress(rows) + compressor.flush()
    header = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)  # 8-bit, grayscale, no interlace
    return (
        _PNG_SIGNATURE
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", data)
        + _png_chunk(b"IEND", b"")
    )


def defective_count(n: int) -> int:
    if n < 2:
        return 0
    return max(1, round(DEFECTIVE_SHARE * n))


def defective_numbers(seed: int, cls: int, split_index: int, n: int) -> frozenset[int]:
    """The 1-based numbers of a split's defective images: exactly defective_count(n)."""
    rng = np.random.default_rng([seed, cls, split_index, _SPLIT_STREAM_NUMBER])
    chosen = rng.choice(n, size=defective_count(n), replace=False)
    return frozenset(int(i) + 1 for i in chosen)


@dataclass(frozen=True)
class _Chunk:
    root: str
    cls: int
    split_index: int
    start: int
    stop: int  # exclusive
    defective: frozenset[int]
    size: int
    seed: int


def _render_chunk(chunk: _Chunk) -> int:
    split_dir = Path(chunk.root) / f"Class{chunk.cls}" / SPLITS[chunk.split_index]
    for number in range(chunk.start, chunk.stop):
        rng = image_rng(chunk.seed, chunk.cls, chunk.split_index, number)
        image, mask = render_image(
            chunk.cls, rng, chunk.size, defective=number in chunk.defective, seed=chunk.seed
        )
        (split_dir / f"{number:04d}.PNG").write_bytes(encode_png(image, zlib.Z_HUFFMAN_ONLY))
        if mask is not None:
            (split_dir / "Label" / f"{number:04d}_label.PNG").write_bytes(encode_png(mask))
    return chunk.stop - chunk.start


_GENERATED_NAME = re.compile(r"^(\d{4})(_label)?\.PNG$")


def _prepare_split_dir(split_dir: Path, n: int, defective: frozenset[int]) -> None:
    """Create the directories and drop files an earlier, larger run left behind.

    A stale mask next to a now-good image would contradict Labels.txt for any reader that
    globs masks. Only names this generator writes are touched.
    """
    label_dir = split_dir / "Label"
    label_dir.mkdir(parents=True, exist_ok=True)
    for directory, want_label in ((split_dir, False), (label_dir, True)):
        for entry in os.scandir(directory):
            m = _GENERATED_NAME.match(entry.name)
            if not m or bool(m.group(2)) != want_label or not entry.is_file():
                continue
            number = int(m.group(1))
            keep = number in defective if want_label else 1 <= number <= n
            if not keep:
                os.unlink(entry.path)


def _label_rows(n: int, defective: frozenset[int]) -> list[LabelRow]:
    rows = []
    for number in range(1, n + 1):
        stem = f"{number:04d}"
        bad = number in defective
        rows.append(LabelRow(stem, bad, f"{stem}.PNG", f"{stem}_label.PNG" if bad else None))
    return rows


def _default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))  # the CPUs this container may actually use
    except AttributeError:
        return os.cpu_count() or 1


def _check_args(classes: Sequence[int], images_per_split: int | None, size: int, seed: int) -> None:
    bad = [c for c in classes if c not in CLASS_SPECS]
    if bad or not classes:
        raise ValueError(f"classes must be a non-empty subset of 1-10, got {list(classes)}")
    if images_per_split is not None and not 1 <= images_per_split <= MAX_IMAGES_PER_SPLIT:
        raise ValueError(
            f"images_per_split must be 1-{MAX_IMAGES_PER_SPLIT}, got {images_per_split}"
        )
    if size < MIN_SIZE or size % 8:
        raise ValueError(f"size must be a multiple of 8 and at least {MIN_SIZE}, got {size}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")


def generate_dataset(
    root: str | os.PathLike[str],
    classes: Iterable[int] = ALL_CLASSES,
    images_per_split: int | None = None,
    size: int = REFERENCE_SIZE,
    seed: int = 0,
    workers: int | None = None,
    stream: TextIO | None = None,
) -> dict:
    """Write a synthetic DAGM 2007 set under `root`; return what was written.

    images_per_split=None uses the real counts (575 for classes 1-6, 1150 for 7-10).
    `workers` is the number of processes (default: the CPUs available). Progress lines go
    to `stream` (stdout when None). The files depend only on the other arguments.

    The summary: ``{"root", "size", "seed", "workers", "classes": {cls: {"Train":
    {"images", "defective"}, "Test": {...}}}, "images", "defective", "seconds"}``.
    """
    started = time.monotonic()
    classes = list(dict.fromkeys(int(c) for c in classes))
    _check_args(classes, images_per_split, size, seed)
    workers = _default_workers() if workers is None else workers
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    root = Path(root)

    chunks: list[_Chunk] = []
    labels: list[tuple[Path, list[LabelRow]]] = []
    summary_classes: dict[int, dict[str, dict[str, int]]] = {}
    for cls in classes:
        n = images_per_split or REAL_IMAGES_PER_SPLIT[cls]
        summary_classes[cls] = {}
        for split_index, split in enumerate(SPLITS):
            defective = defective_numbers(seed, cls, split_index, n)
            split_dir = root / f"Class{cls}" / split
            _prepare_split_dir(split_dir, n, defective)
            labels.append((split_dir / "Label" / "Labels.txt", _label_rows(n, defective)))
            summary_classes[cls][split] = {"images": n, "defective": len(defective)}
            for start in range(1, n + 1, _CHUNK):
                stop = min(start + _CHUNK, n + 1)
                mine = frozenset(d for d in defective if start <= d < stop)
                chunks.append(_Chunk(str(root), cls, split_index, start, stop, mine, size, seed))

    total = sum(c.stop - c.start for c in chunks)
    progress = Progress("dagm-synth", total, stream=stream)
    workers = min(workers, len(chunks))
    if workers == 1:
        for chunk in chunks:
            progress.advance(_render_chunk(chunk))
    else:
        with multiprocessing.get_context().Pool(workers) as pool:
            for done in pool.imap_unordered(_render_chunk, chunks):
                progress.advance(done)
    # Labels last: a Labels.txt on disk means every file it names is there.
    for path, rows in labels:
        write_labels(path, rows)
    progress.done()

    return {
        "root": str(root),
        "size": size,
        "seed": seed,
        "workers": workers,
        "classes": summary_classes,
        "images": total,
        "defective": sum(s["defective"] for c in summary_classes.values() for s in c.values()),
        "seconds": time.monotonic() - started,
    }


# --------------------------------------------------------------------------------------
# Command line.
# --------------------------------------------------------------------------------------


def _classes_arg(text: str) -> list[int]:
    if text.strip().lower() == "all":
        return list(ALL_CLASSES)
    classes = []
    for part in text.split(","):
        part = part.strip()
        try:
            cls = int(part)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected 'all' or comma-separated class numbers, got {text!r}"
            ) from None
        if cls not in CLASS_SPECS:
            raise argparse.ArgumentTypeError(f"class {cls} out of range 1-10")
        classes.append(cls)
    return classes


def _int_arg(low: int, high: int | None = None, multiple: int = 1) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low or (high is not None and value > high):
            bounds = f"at least {low}" if high is None else f"between {low} and {high}"
            raise argparse.ArgumentTypeError(f"{value} must be {bounds}")
        if value % multiple:
            raise argparse.ArgumentTypeError(f"{value} is not a multiple of {multiple}")
        return value

    return parse


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dagm-synth",
        description="Write a synthetic DAGM 2007 data set in the competition layout.",
    )
    parser.add_argument("out", type=Path, help="root directory; Class1..Class10 go under it")
    parser.add_argument(
        "--classes", type=_classes_arg, metavar="all|1,3,7", default=list(ALL_CLASSES),
        help="'all' (default) or comma-separated class numbers, e.g. 1,3,7",
    )
    parser.add_argument(
        "--images-per-split", type=_int_arg(1, MAX_IMAGES_PER_SPLIT), metavar="N", default=None,
        help="images in each of Train and Test (default: the real 575 or 1150 per class)",
    )
    parser.add_argument(
        "--size", type=_int_arg(MIN_SIZE, multiple=8), metavar="PX", default=REFERENCE_SIZE,
        help=f"image side in pixels, a multiple of 8, at least {MIN_SIZE} (default 512)",
    )
    parser.add_argument("--seed", type=_int_arg(0), default=0, metavar="N", help="default 0")
    parser.add_argument(
        "--workers", type=_int_arg(1), default=None, metavar="N",
        help="processes (default: the CPUs available)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    summary = generate_dataset(
        args.out,
        classes=args.classes,
        images_per_split=args.images_per_split,
        size=args.size,
        seed=args.seed,
        workers=args.workers,
    )
    class_list = ",".join(str(c) for c in summary["classes"])
    print(
        f"dagm-synth: wrote {summary['images']} images ({summary['defective']} defective) "
        f"of classes {class_list} at {args.size}x{args.size} to {summary['root']} "
        f"in {summary['seconds']:.1f}s with {summary['workers']} workers",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
