"""Synthetic defects drawn on good images, for training a class that has no defective image.

A CutPaste/DRAEM-style stand-in for real defects. The shapes are those our synthetic DAGM
generator draws (soft blobs, elongated streaks, patches of lost texture, thin bowed
scratches and class 8's hairlines); they are filled with the image's own texture, so what
the network learns is a break in the class's texture, not a foreign grey level. Every
region fades in over a soft rim, so a seam alone does not give a defect away.

The mask is the defect's footprint: every pixel its blend weight touches (weight > 0).
A pixel in the footprint whose change rounds to less than one grey level stays in the mask,
so masks are solid regions rather than speckle; outside the footprint no pixel changes.
Each footprint holds at least its centre pixel, so no mask is empty.

Only the defect's bounding box is worked on, so beyond one copy of the batch the cost does
not depend on the image size.
"""

from __future__ import annotations

import math

import numpy as np

_FAMILIES = ("cutpaste", "draem", "scratch")
_FAMILY_ODDS = (0.35, 0.35, 0.30)
# Footprint areas: from a few dozen pixels to 5 % of the image.
_MIN_AREA = 30.0
_MAX_AREA_FRACTION = 0.05
# Aspect ratios of dagm_synth.defects' blobs and scratch ellipses (its streak-like shape).
_BLOB_ASPECT = (1.0, 2.2)
_STREAK_ASPECT = (4.0, 9.0)
_RIM_PX = (1.5, 6.0)
# A texture with almost no variation still needs a change a few grey levels deep to show.
_MIN_SPREAD = 4.0

_Defect = tuple[int, int, np.ndarray, np.ndarray]  # y0, x0, weight (0-1), change (grey levels)


def paste_anomalies(images: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(N, H, W) uint8 good images -> (images with one synthetic defect each (N, H, W) uint8,
    masks (N, H, W) uint8 0/1), every mask non-empty; pixels outside the mask unchanged."""
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(f"expected (N, H, W) uint8 images, got {images.shape} {images.dtype}")
    out = images.copy()
    masks = np.zeros(images.shape, np.uint8)
    for image, mask in zip(out, masks):
        _paste(image, mask, _FAMILIES[rng.choice(len(_FAMILIES), p=_FAMILY_ODDS)], rng)
    return out, masks


def _paste(image: np.ndarray, mask: np.ndarray, family: str, rng: np.random.Generator) -> None:
    """Draw one defect of `family` into `image` and its footprint into `mask`, in place."""
    y0, x0, weight, change = _DRAW[family](image, rng)
    h, w = weight.shape
    view = image[y0 : y0 + h, x0 : x0 + w]
    changed = np.rint(view + change)
    np.clip(changed, 0.0, 255.0, out=changed)
    view[...] = changed
    mask[y0 : y0 + h, x0 : x0 + w] = weight > 0.0


def _cutpaste(image: np.ndarray, rng: np.random.Generator) -> _Defect:
    """A blob or streak filled with a flipped or turned patch from elsewhere in the image."""
    aspect = _BLOB_ASPECT if rng.random() < 0.5 else _STREAK_ASPECT
    y0, x0, weight = _ellipse(image.shape, aspect, rng)
    patch = _patch(image, y0, x0, weight.shape)
    source = _relit(_elsewhere(image, y0, x0, weight.shape, rng), (0.8, 1.25), 0.3, rng)
    return y0, x0, weight, weight * (source - patch)


def _draem(image: np.ndarray, rng: np.random.Generator) -> _Defect:
    """An irregular smooth region blended, at a random opacity, with a transformed copy of
    the texture (another patch, or the texture blurred away) or a darker/brighter shift."""
    y0, x0, weight = _irregular(image.shape, rng)
    patch = _patch(image, y0, x0, weight.shape)
    kind = rng.integers(3)
    if kind == 0:
        source = _relit(_elsewhere(image, y0, x0, weight.shape, rng), (0.6, 1.5), 0.5, rng)
    elif kind == 1:
        # dagm_synth's "missing" defect: the texture smoothed towards its local mean
        source = _box_blur(patch, int(rng.integers(2, 9))) + _shift(patch, (0.0, 0.6), rng)
    else:
        source = patch + _shift(patch, (0.8, 3.0), rng)
    opacity = np.float32(rng.uniform(0.5, 1.0))
    return y0, x0, weight, (opacity * weight) * (source - patch)


def _scratch(image: np.ndarray, rng: np.random.Generator) -> _Defect:
    """A thin bowed line, 1-3 px wide and 20-150 px long, darker or brighter than the
    texture; some are class 8's hairlines, a dark and a bright wall side by side."""
    height, width = image.shape
    length = rng.uniform(20.0, min(150.0, 0.8 * min(height, width)))
    half = 0.5 * length
    thickness = rng.uniform(1.0, 3.0)
    sag = rng.uniform(-0.1, 0.1) * length
    angle = rng.uniform(0.0, math.pi)
    c, s = abs(math.cos(angle)), abs(math.sin(angle))
    reach = abs(sag) + thickness
    y0, x0, u, v = _frame(image.shape, half * c + reach * s, half * s + reach * c, angle, rng)
    d = v - np.float32(sag) * (1.0 - (u / np.float32(half)) ** 2)
    # a 2 px fade at each end only keeps the ends from aliasing
    taper = np.clip((np.float32(half) - np.abs(u)) * np.float32(0.5), 0.0, 1.0)
    if rng.random() < 0.3:
        wall = np.float32(0.5 * thickness)
        dark, bright = _coverage(d + 0.5 * wall, wall), _coverage(d - 0.5 * wall, wall)
        weight, profile = (dark + bright) * taper, (bright - dark) * taper
    else:
        weight = _coverage(d, np.float32(thickness)) * taper
        profile = weight
    patch = _patch(image, y0, x0, weight.shape)
    return y0, x0, weight, _shift(patch, (0.8, 3.0), rng) * profile


_DRAW = {"cutpaste": _cutpaste, "draem": _draem, "scratch": _scratch}


def _frame(
    shape: tuple[int, ...], hx: float, hy: float, angle: float, rng: np.random.Generator
) -> tuple[int, int, np.ndarray, np.ndarray]:
    """A box of half extents (hx, hy) placed at random inside the image: its corner and the
    pixel centres' coordinates along (u) and across (v) `angle`, from the box's centre."""
    height, width = shape
    h = min(math.ceil(2.0 * hy) + 2, height)
    w = min(math.ceil(2.0 * hx) + 2, width)
    y0 = int(rng.integers(0, height - h + 1))
    x0 = int(rng.integers(0, width - w + 1))
    dy = np.arange(h, dtype=np.float32)[:, None] + np.float32(0.5 - 0.5 * h)
    dx = np.arange(w, dtype=np.float32)[None, :] + np.float32(0.5 - 0.5 * w)
    c, s = np.float32(math.cos(angle)), np.float32(math.sin(angle))
    return y0, x0, dx * c + dy * s, dy * c - dx * s


def _ellipse(
    shape: tuple[int, ...], aspect_range: tuple[float, float], rng: np.random.Generator, grow: float = 1.0
) -> tuple[int, int, np.ndarray]:
    """A soft-rimmed ellipse of random area (`grow` times a footprint's, up to the largest
    footprint), aspect and angle: its box corner and weight."""
    height, width = shape
    top = max(_MIN_AREA, _MAX_AREA_FRACTION * height * width)
    area = min(grow * math.exp(rng.uniform(math.log(_MIN_AREA), math.log(top))), top)
    aspect = rng.uniform(*aspect_range)
    a = min(math.sqrt(area * aspect / math.pi), 0.45 * min(height, width))
    b = min(max(area / (math.pi * a), 1.0), a)
    angle = rng.uniform(0.0, math.pi)
    c, s = math.cos(angle), math.sin(angle)
    hx, hy = math.hypot(a * c, b * s), math.hypot(a * s, b * c)
    y0, x0, u, v = _frame(shape, hx, hy, angle, rng)
    rho = np.sqrt((u / np.float32(a)) ** 2 + (v / np.float32(b)) ** 2)
    # the rim is measured across the minor axis; no wider than b, so the centre stays at 1
    rim = min(rng.uniform(*_RIM_PX), b)
    return y0, x0, _smoothstep((1.0 - rho) * np.float32(b / rim))


def _irregular(shape: tuple[int, ...], rng: np.random.Generator) -> tuple[int, int, np.ndarray]:
    """A thresholded smooth-noise region inside a soft ellipse (DRAEM's Perlin masks)."""
    # the threshold keeps about half of the ellipse, so it is drawn twice the footprint's size
    y0, x0, envelope = _ellipse(shape, (1.0, 3.0), rng, grow=2.0)
    noise = _value_noise(envelope.shape, rng)
    threshold = np.float32(rng.uniform(-0.5, 0.3))
    softness = np.float32(rng.uniform(0.15, 0.5))
    # lift the noise so that it clears the threshold somewhere in the ellipse's core
    core = np.where(envelope > 0.5, noise, -np.inf).max()
    noise += max(np.float32(0.0), threshold + softness - core)
    return y0, x0, envelope * _smoothstep((noise - threshold) / softness)


def _value_noise(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Two octaves of smooth value noise over `shape`, mean 0 and std about 1."""
    # a few cells across the box: finer noise shatters the region into specks
    cells = int(rng.integers(1, 4))
    noise = _octave(shape, cells, rng) + 0.35 * _octave(shape, 2 * cells, rng)
    noise -= noise.mean()
    noise /= max(float(noise.std()), 1e-6)
    return noise


def _octave(shape: tuple[int, int], cells: int, rng: np.random.Generator) -> np.ndarray:
    grid = rng.standard_normal((cells + 1, cells + 1)).astype(np.float32)
    return _upsampler(shape[0], cells) @ grid @ _upsampler(shape[1], cells).T


def _upsampler(n: int, cells: int) -> np.ndarray:
    """(n, cells + 1) weights that interpolate grid values smoothly onto n pixels."""
    t = (np.arange(n, dtype=np.float32) + np.float32(0.5)) * np.float32(cells / n)
    i = np.minimum(t.astype(np.int64), cells - 1)
    f = _smoothstep(t - i)
    weights = np.zeros((n, cells + 1), np.float32)
    rows = np.arange(n)
    weights[rows, i] = 1.0 - f
    weights[rows, i + 1] = f
    return weights


def _patch(image: np.ndarray, y0: int, x0: int, shape: tuple[int, int]) -> np.ndarray:
    return image[y0 : y0 + shape[0], x0 : x0 + shape[1]].astype(np.float32)


def _elsewhere(
    image: np.ndarray, y0: int, x0: int, shape: tuple[int, int], rng: np.random.Generator
) -> np.ndarray:
    """A patch of `shape` from another place in the image, maybe turned and mirrored."""
    height, width = image.shape
    h, w = shape
    turns = int(rng.integers(4)) if h <= width and w <= height else 2 * int(rng.integers(2))
    sh, sw = (w, h) if turns % 2 else (h, w)
    # a few tries to land clear of the defect itself; overlapping only makes it subtler
    for _ in range(4):
        sy, sx = int(rng.integers(0, height - sh + 1)), int(rng.integers(0, width - sw + 1))
        if abs(sy - y0) >= h / 2 or abs(sx - x0) >= w / 2:
            break
    source = np.rot90(image[sy : sy + sh, sx : sx + sw], turns)
    if rng.random() < 0.5:
        source = source[:, ::-1]
    return source.astype(np.float32)


def _relit(
    source: np.ndarray, gain_range: tuple[float, float], bias: float, rng: np.random.Generator
) -> np.ndarray:
    """`source` with its contrast scaled and its mean moved by up to `bias` of its spread."""
    mean = np.float32(source.mean())
    spread = max(float(source.std()), _MIN_SPREAD)
    gain = np.float32(rng.uniform(*gain_range))
    return (source - mean) * gain + (mean + np.float32(rng.uniform(-bias, bias) * spread))


def _shift(patch: np.ndarray, depth_range: tuple[float, float], rng: np.random.Generator) -> np.float32:
    """A darker or brighter offset of `depth_range` times the texture's spread, turned
    towards the side with room so that clipping does not swallow it."""
    mean = float(patch.mean())
    depth = rng.uniform(*depth_range) * max(float(patch.std()), _MIN_SPREAD)
    sign = 1.0 if rng.random() < 0.5 else -1.0
    if not 0.0 <= mean + sign * depth <= 255.0:
        sign = -sign
    return np.float32(sign * depth)


def _box_blur(patch: np.ndarray, radius: int) -> np.ndarray:
    """Mean over a (2 * radius + 1)^2 window via cumulative sums; edges replicate."""
    k = 2 * radius + 1
    padded = np.pad(patch, radius + 1, mode="edge").astype(np.float64)
    c = padded.cumsum(0).cumsum(1)
    window = c[k:, k:] - c[:-k, k:] - c[k:, :-k] + c[:-k, :-k]
    return (window[: patch.shape[0], : patch.shape[1]] / (k * k)).astype(np.float32)


def _coverage(d: np.ndarray, width: np.float32) -> np.ndarray:
    """How much of each pixel a line `width` wide covers, at distance `d` from its centre."""
    return np.clip(np.float32(0.5) * width + np.float32(0.5) - np.abs(d), 0.0, 1.0)


def _smoothstep(t: np.ndarray) -> np.ndarray:
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)
