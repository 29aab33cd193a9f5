"""One image and its mask, decided by one random generator."""

from __future__ import annotations

import numpy as np

from dagm_synth.classes import CLASS_SPECS, class_texture
from dagm_synth.defects import apply_defect, draw_ellipse
from dagm_synth.spec import REFERENCE_SIZE


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
        ellipse = draw_ellipse(rng, spec, kind, size)
        inside = apply_defect(img, ellipse, kind, spec, rng)
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
