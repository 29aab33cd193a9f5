"""Background textures, one builder per look: smooth, brushed, granular, woven, blotchy, fibrous.

Each builder has the signature of spec.TextureFn: a float32 t x t array with mean 0 and std 1
from (rng, t, r). Lengths are in pixels at 512x512 and multiplied by r = size / 512 so a class
looks the same at any size, only coarser.
"""

from __future__ import annotations

import math

import numpy as np


def standardise(a: np.ndarray) -> np.ndarray:
    a = a - a.mean()
    return (a / max(float(a.std()), 1e-9)).astype(np.float32)


def filtered_noise(
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
    return standardise(np.fft.irfft2(spectrum, s=(t, t)))


def smooth(
    rng: np.random.Generator, t: int, r: float, *, scale: float, detail: float
) -> np.ndarray:
    return standardise(
        filtered_noise(rng, t, scale * r) + detail * filtered_noise(rng, t, 1.5 * r)
    )


def streaks(
    rng: np.random.Generator, t: int, r: float, *, angle_deg: float, length: float, width: float
) -> np.ndarray:
    streaks = filtered_noise(rng, t, length * r, width * r, math.radians(angle_deg))
    shading = filtered_noise(rng, t, 14.0 * r)
    return standardise(streaks + 0.35 * shading)


def granular(
    rng: np.random.Generator, t: int, r: float, *, grain: float, clump: float, clump_weight: float
) -> np.ndarray:
    return standardise(
        filtered_noise(rng, t, grain * r) + clump_weight * filtered_noise(rng, t, clump * r)
    )


def woven(
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
    phase_x = 2.0 * np.pi * xr / p + warp * filtered_noise(rng, t, 40.0 * r)
    phase_y = 2.0 * np.pi * yr / p + warp * filtered_noise(rng, t, 40.0 * r)
    cells = np.sin(phase_x / 2.0) * np.sin(phase_y / 2.0) > 0
    weave = np.where(cells, np.cos(phase_y), np.cos(phase_x))
    return standardise(weave + 0.45 * filtered_noise(rng, t, 1.0 * r))


def blotches(
    rng: np.random.Generator, t: int, r: float, *, scale: float, sharpness: float
) -> np.ndarray:
    patches = np.tanh(sharpness * filtered_noise(rng, t, scale * r))
    return standardise(
        patches + 0.3 * filtered_noise(rng, t, 6.0 * r) + 0.3 * filtered_noise(rng, t, 2.0 * r)
    )


def fibres(
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
        ridge = filtered_noise(rng, t, length * r, width * r, rng.uniform(0.0, math.pi))
        fibres += np.maximum(ridge - threshold, 0.0)
    return standardise(fibres + 0.25 * filtered_noise(rng, t, 5.0 * r))
