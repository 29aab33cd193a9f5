"""Class 8, the calibrated hard case: its texture and its only defect, a hairline scratch.

Its texture, defects and masks are fitted to summary figures measured on genuine DAGM
Class 8 Train images (no pixels of them are used). Soft vertical fibre bands under a fine
mottle (std about 36 grey levels) carry, as the only defect, hairline scratches: a dark and
a bright 1-px wall side by side, 20-60 px long, each wall about 2.4 texture stds from the
background, cancelling over the mask and losing about half their peak at half the size;
coarse ellipses around them have a median area of about 940 px.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from dagm_synth.backgrounds import filtered_noise, standardise
from dagm_synth.geometry import Ellipse, smoothstep
from dagm_synth.spec import HAIRLINE, ClassSpec


def vertical_fibres(
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
    bands = filtered_noise(rng, t, length * r, width * r, math.pi / 2)
    mottle = filtered_noise(rng, t, mottle_along * r, mottle_across * r)
    return standardise(
        bands + mottle_weight * mottle + shading_weight * filtered_noise(rng, t, shading * r)
    )


# The calibrated hard case: texture, grain, grey level and mask areas fitted to figures
# measured on genuine Class 8 Train images (autocorrelations along x and y, pixel
# difference stds, column- and row-mean stds; areas: median 940, quartiles 490-1720).
HARD_CASE = ClassSpec(
    functools.partial(vertical_fibres, width=12.5, length=140, mottle_along=3.7, mottle_across=2.3,
                      mottle_weight=0.68, shading=95, shading_weight=0.17),
    110, 35, 6.2, False, 1440, 0.93, ((HAIRLINE, 1.0),), directions=(90,),
)


# Measured on genuine Class 8 Train images: the scratch spans half the mask's major axis
# (0.48-0.52 of it), bows by 3-11% of its length at its middle, and each of its walls peaks
# at about 2.4 texture stds from the local background (medians -86 and +90 grey levels).
# The two ranges below are fitted so the same measurement gives those figures here: the
# profile is narrower than a pixel, so averaging over the pixel lowers its peak.
HAIRLINE_SAG = (0.02, 0.11)
HAIRLINE_WIDTH = (0.34, 0.46)  # sigma of the groove's profile, pixels at 512
HAIRLINE_PEAK = (3.6, 4.2)  # the profile's peak before pixel averaging, times texture std


def hairline(
    u: np.ndarray, v: np.ndarray, e: Ellipse, spec: ClassSpec, rng: np.random.Generator, r: float
) -> np.ndarray:
    """The grey-level change of a thin groove along the ellipse's major axis (box, float32).

    The profile across the line is a Gaussian's derivative, averaged over one pixel: a
    bright wall beside a dark one. At half the size they share pixels and partly cancel,
    as the walls of a real scratch do when its image is downscaled.
    """
    half = 0.5 * e.a
    sag = rng.uniform(*HAIRLINE_SAG) * 2.0 * half * (1.0 if rng.random() < 0.5 else -1.0)
    d = v - np.float32(sag) * (1.0 - (u / np.float32(half)) ** 2)
    width = rng.uniform(*HAIRLINE_WIDTH) * r
    two_var = np.float32(2.0 * width**2)
    # the mean over [d - 0.5, d + 0.5] of -(d / width) * exp(0.5 - d**2 / two_var)
    profile = np.float32(width * math.exp(0.5)) * (
        np.exp(-((d + 0.5) ** 2) / two_var) - np.exp(-((d - 0.5) ** 2) / two_var)
    )
    peak = rng.uniform(*HAIRLINE_PEAK) * spec.contrast * (1.0 if rng.random() < 0.5 else -1.0)
    # the real scratches end abruptly: a 2 px taper centred on each end only stops aliasing
    taper = smoothstep(0.5 + (half - np.abs(u)) / np.float32(2.0 * r))
    return (np.float32(peak) * profile * taper).astype(np.float32)
