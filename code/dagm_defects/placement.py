"""Where an image sits on the network's input canvas: one rule for training and serving.

A canvas is the network's input, height x width. An image gets there one of two ways:

- resize (``image_size`` "512" or "HxW"): stretched to fill the canvas, aspect as chosen;
- pad (``image_size`` "native"): at its own scale (times the set's uniform `scale`, and
  smaller still if it would not fit), at the top-left, the rest filled by reflecting the
  image. Reflection keeps the border's texture, so per-image standardisation is not
  skewed by a flat border, and it draws no straight edge that looks like a scratch. The
  mask is reflected with it: a defect mirrored into the padding is still labelled one.

Training decodes its arrays with `place`/`place_mask`; serving places each request image
with `place` and reads the probability map back over `map_extent`, so the served mask
lines up with the image it was asked about.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
from PIL import Image

# The native canvas never exceeds this many pixels (a 1024x1024 image): above it the
# whole set is scaled down by one factor, so defects keep their relative size.
NATIVE_MAX_PIXELS = 1024 * 1024


@dataclass(frozen=True)
class Canvas:
    height: int
    width: int
    pad: bool = False
    # Pad only: the factor every image is scaled by before it is placed.
    scale: float = 1.0

    @property
    def shape(self) -> tuple[int, int]:
        return self.height, self.width

    def region(self, shape: tuple[int, int]) -> tuple[int, int]:
        """The (height, width) an image of `shape` covers on the canvas."""
        if not self.pad:
            return self.shape
        height, width = shape
        factor = min(self.scale, self.height / height, self.width / width)
        return (min(self.height, max(1, round(height * factor))),
                min(self.width, max(1, round(width * factor))))


def _resize(array: np.ndarray, shape: tuple[int, int], resample: Image.Resampling) -> np.ndarray:
    if array.shape == shape:
        return array
    resized = Image.fromarray(array, mode="L").resize((shape[1], shape[0]), resample)
    return np.asarray(resized, dtype=np.uint8)


def _pad(array: np.ndarray, canvas: Canvas) -> np.ndarray:
    rows, cols = canvas.height - array.shape[0], canvas.width - array.shape[1]
    return np.pad(array, ((0, rows), (0, cols)), mode="reflect") if rows or cols else array


def place(gray: np.ndarray, canvas: Canvas) -> np.ndarray:
    """An 8-bit HxW image as the canvas-sized uint8 array the model takes."""
    return _pad(_resize(gray, canvas.region(gray.shape), Image.Resampling.BILINEAR), canvas)


def place_mask(mask: np.ndarray, canvas: Canvas) -> np.ndarray:
    """A 0/1 mask placed as its image is, still 0/1. The box filter on 0/255 keeps any
    cell a thin defect touches (0/1 values would round a sliver of one away)."""
    scaled = _resize(mask * np.uint8(255), canvas.region(mask.shape), Image.Resampling.BOX)
    return _pad((scaled > 0).astype(np.uint8), canvas)


def map_extent(shape: tuple[int, int], canvas: Canvas, map_shape: tuple[int, int]) -> tuple[float, float]:
    """How many rows and columns of a probability map over `canvas` the image of `shape`
    covers (fractional where its region ends inside a map cell)."""
    height, width = canvas.region(shape)
    return map_shape[0] * height / canvas.height, map_shape[1] * width / canvas.width


def image_shapes(paths: Iterable[str | Path]) -> list[tuple[int, int]]:
    """The (height, width) of each image whose header reads; one that does not is left
    out here and named, with every other problem of the set, when the set is decoded."""
    shapes = []
    for path in paths:
        try:
            with Image.open(path) as image:
                shapes.append((image.height, image.width))
        except (OSError, ValueError, Image.DecompressionBombError):
            continue
    return shapes


def native_canvas(shapes: Iterable[tuple[int, int]], multiple: int, minimum: int) -> Canvas:
    """The pad canvas for a training set of image `shapes`: the largest height and width,
    each rounded up to `multiple` (at least `minimum`); when that exceeds
    NATIVE_MAX_PIXELS, the set's largest extent scaled down uniformly to fit, each side
    rounded down instead, so nothing is ever cropped."""
    shapes = list(shapes)
    if not shapes:
        raise ValueError("image_size 'native' needs at least one training image to size the canvas")
    tallest, widest = max(h for h, _ in shapes), max(w for _, w in shapes)

    def up(side: float) -> int:
        return max(minimum, math.ceil(side / multiple) * multiple)

    def down(side: float) -> int:
        return max(minimum, math.floor(side / multiple) * multiple)

    if up(tallest) * up(widest) <= NATIVE_MAX_PIXELS:
        return Canvas(up(tallest), up(widest), pad=True)
    shrink = math.sqrt(NATIVE_MAX_PIXELS / (tallest * widest))
    # The shorter side first: if it is held at `minimum`, the longer one takes what is left.
    if tallest <= widest:
        height = down(tallest * shrink)
        width = down(min(widest * shrink, NATIVE_MAX_PIXELS / height))
    else:
        width = down(widest * shrink)
        height = down(min(tallest * shrink, NATIVE_MAX_PIXELS / width))
    return Canvas(height, width, pad=True, scale=min(1.0, height / tallest, width / widest))
