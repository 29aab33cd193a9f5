"""The ten classes (what each looks like, how large its defects are and which kinds it has)
and each class's texture, made once per process."""

from __future__ import annotations

import functools

import numpy as np

from dagm_synth.backgrounds import blotches, fibres, granular, smooth, streaks, woven
from dagm_synth.hard_case import HARD_CASE
from dagm_synth.spec import BLOB, MISSING, SCRATCH, ClassSpec, scale

ALL_CLASSES: tuple[int, ...] = tuple(range(1, 11))
# Classes 1-6 are the development set of the competition, 7-10 the competition set.
REAL_IMAGES_PER_SPLIT: dict[int, int] = {c: 575 if c <= 6 else 1150 for c in ALL_CLASSES}

# Slot in the seed sequence that no (split, number) pair uses: the split index is 0 or 1.
_TEXTURE_STREAM = 2

P = functools.partial
CLASS_SPECS: dict[int, ClassSpec] = {
    1: ClassSpec(P(smooth, scale=7.0, detail=0.35), 125, 10, 4, True, 9600, 0.10,
                 ((BLOB, 0.85), (SCRATCH, 0.15))),
    2: ClassSpec(P(streaks, angle_deg=0, length=50, width=0.8), 105, 16, 5, False, 3500, 0.45,
                 ((SCRATCH, 0.7), (BLOB, 0.3)), directions=(0,)),
    3: ClassSpec(P(granular, grain=1.0, clump=4.0, clump_weight=0.5), 140, 18, 5, True, 4500, 0.45,
                 ((MISSING, 0.5), (BLOB, 0.5))),
    4: ClassSpec(P(woven, period=16, angle_deg=0, warp=0.8), 115, 18, 5, False, 6000, 0.4,
                 ((MISSING, 0.6), (SCRATCH, 0.4)), directions=(0, 90)),
    5: ClassSpec(P(blotches, scale=20, sharpness=2.5), 130, 22, 4, True, 2500, 0.5,
                 ((SCRATCH, 0.6), (BLOB, 0.4))),
    # no scratches: a bright line would be just one more fibre
    6: ClassSpec(P(fibres, count=5, length=30, width=0.8, threshold=1.0), 110, 16, 5, True, 5500,
                 0.45, ((MISSING, 0.6), (BLOB, 0.4))),
    7: ClassSpec(P(smooth, scale=16.0, detail=0.2), 85, 12, 8, True, 3800, 0.45,
                 ((BLOB, 0.6), (SCRATCH, 0.4))),
    8: HARD_CASE,  # the calibrated hard case
    9: ClassSpec(P(granular, grain=2.5, clump=8.0, clump_weight=0.6), 170, 16, 6, True, 1000, 0.55,
                 ((BLOB, 0.5), (SCRATCH, 0.3), (MISSING, 0.2))),
    10: ClassSpec(P(woven, period=24, angle_deg=30, warp=1.2), 95, 16, 5, False, 3000, 0.45,
                  ((MISSING, 0.6), (SCRATCH, 0.4)), directions=(30, 120)),
}
del P


@functools.lru_cache(maxsize=None)
def class_texture(cls: int, size: int, seed: int = 0) -> np.ndarray:
    """The class's texture in grey levels around 0, 2*size square, read-only.

    Cached per process: every image of a class is a crop of it, which makes the expensive
    FFT filtering a once-per-worker cost instead of a per-image one.
    """
    spec = CLASS_SPECS[cls]
    rng = np.random.default_rng([seed, cls, _TEXTURE_STREAM, size])
    texture = spec.texture(rng, 2 * size, scale(size)) * np.float32(spec.contrast)
    texture.flags.writeable = False
    return texture
