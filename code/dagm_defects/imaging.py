"""Decode and shape images the same way for training and serving.

Grayscale policy (documented in docs/serve.md): 8-bit grayscale is used as is; colour,
palette and alpha images are converted to grayscale (ITU-R 601 luma, Pillow's "L");
16-bit and 32-bit grayscale are scaled to 8 bits. Each conversion is reported back to
the caller as a note, so training can say how many images it converted. Masks are read
by another rule (`mask_pixels`): any non-zero value or palette index is defect.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Callable, TypeVar

import numpy as np
from PIL import Image, UnidentifiedImageError

# A DAGM image is 512x512; anything above this is a mistake or a decompression bomb.
MAX_PIXELS = 4096 * 4096
WIDE_MODES = ("I;16", "I;16B", "I;16L", "I", "F")
T = TypeVar("T")


class ImageDecodeError(ValueError):
    """Bytes or a file that is not a usable image; the message names why."""


def to_gray(image: Image.Image) -> tuple[np.ndarray, str | None]:
    """An opened image's pixels as 8-bit HxW, and a note when it had to be converted."""
    mode = image.mode
    if mode == "L":
        return np.asarray(image, dtype=np.uint8), None
    if mode in WIDE_MODES:
        wide = np.asarray(image.convert("I") if mode.startswith("I;16") else image)
        top = 65535.0 if mode.startswith("I;16") or wide.max(initial=0) > 255 else 255.0
        scaled = np.clip(wide.astype(np.float64) * (255.0 / top), 0, 255)
        return scaled.round().astype(np.uint8), f"converted {mode} to 8-bit grayscale"
    if mode == "1":
        return np.asarray(image.convert("L"), dtype=np.uint8), "converted 1-bit to 8-bit grayscale"
    return np.asarray(image.convert("L"), dtype=np.uint8), f"converted {mode} to grayscale"


def open_image(
    data: bytes,
    name: str,
    max_pixels: int = MAX_PIXELS,
    allow_wide: bool = True,
    formats: tuple[str, ...] | None = None,
) -> Image.Image:
    """Read only an image's header, so that its size, mode and format can be refused before
    a single pixel is decoded; `formats` (Pillow's names, e.g. ("PNG",)) limits which
    parsers may look at the bytes. Decode with `decode_opened`."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=formats)
    except UnidentifiedImageError:
        expected = f"a {' or '.join(formats)} image" if formats else "a decodable image"
        raise ImageDecodeError(f"{name}: not {expected} (unrecognised or corrupt format)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageDecodeError(f"{name}: refused as a decompression bomb ({exc})") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageDecodeError(f"{name}: corrupt or truncated image ({exc})") from None
    width, height = image.size
    if width * height > max_pixels or min(width, height) < 1:
        raise ImageDecodeError(f"{name}: {width}x{height} is outside the 1 to {max_pixels} pixels allowed")
    if not allow_wide and image.mode in WIDE_MODES:
        raise ImageDecodeError(
            f"{name}: {image.mode} images ({'16' if image.mode.startswith('I;16') else '32'}-bit) "
            "are not accepted; send 8-bit grayscale or colour"
        )
    return image


def decode_opened(image: Image.Image, name: str, convert: Callable[[Image.Image], T] = to_gray) -> T:
    """`convert` of an `open_image` result once its pixels are decoded: by default the
    8-bit HxW pixels and their conversion note (`to_gray`)."""
    try:
        with warnings.catch_warnings(), image:
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image.load()
            return convert(image)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageDecodeError(f"{name}: refused as a decompression bomb ({exc})") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageDecodeError(f"{name}: corrupt or truncated image ({exc})") from None


def decode_gray(
    source: bytes | Path | str,
    name: str | None = None,
    max_pixels: int = MAX_PIXELS,
    allow_wide: bool = True,
) -> tuple[np.ndarray, str | None]:
    """Decode PNG/JPEG/... bytes or a file into an 8-bit HxW array and a conversion note.

    Errors name the image as `name` (default: the path, or "image bytes"). With
    `allow_wide=False`, 16/32-bit images are refused instead of scaled: a server cannot
    know which bit range a camera used, and a wrong guess gives confident nonsense."""
    where = name or ("image bytes" if isinstance(source, bytes) else str(source))
    return decode_opened(open_image(_read(source, where), where, max_pixels, allow_wide), where)


def _read(source: bytes | Path | str, where: str) -> bytes:
    if isinstance(source, bytes):
        return source
    try:
        return Path(source).read_bytes()
    except OSError as exc:
        raise ImageDecodeError(f"{where}: cannot be read ({exc.strerror or exc})") from None


def mask_pixels(image: Image.Image) -> np.ndarray:
    """An opened mask as 0/1 uint8 HxW: any non-zero value is defect, whatever the
    encoding (0/255, 0/1, 16-bit). A palette image is read by its indices, not their
    colours: luma would turn a dark-coloured defect index into 0; colour is read per
    channel for the same reason, and alpha is ignored."""
    mode = image.mode
    if mode in ("P", "L", "1") or mode in WIDE_MODES:
        values = np.asarray(image.convert("I") if mode.startswith("I;16") else image)
        return (values != 0).astype(np.uint8)
    return np.asarray(image.convert("RGB")).any(axis=2).astype(np.uint8)


def decode_mask(source: bytes | Path | str, name: str | None = None, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode a mask's bytes or file into a 0/1 uint8 HxW array (`mask_pixels`)."""
    where = name or ("mask bytes" if isinstance(source, bytes) else str(source))
    return decode_opened(open_image(_read(source, where), where, max_pixels), where, mask_pixels)


STATISTICS = ("mean", "std", "contrast", "texture")
# Images per step of image_statistics: a training set never needs a wide copy of itself.
_CHUNK = 256
_LEVELS = np.arange(256, dtype=np.float64)


def image_statistics(images: np.ndarray) -> dict[str, np.ndarray]:
    """Cheap per-image statistics of an NxHxW uint8 batch, used to describe and watch inputs.

    mean/std: intensity; contrast: the 1st-99th percentile spread (interpolated as
    np.percentile does); texture: mean absolute difference between horizontal and vertical
    neighbours (edge energy). Serving computes them for every image, so they come from
    histograms and integer differences: 0.15 to 0.4 ms per 256x256 image on one core,
    where the same formulas in float arithmetic took 1.7 ms.
    """
    parts = [_chunk_statistics(images[i:i + _CHUNK]) for i in range(0, len(images), _CHUNK)]
    return {name: np.concatenate([p[name] for p in parts]) if parts else np.zeros(0) for name in STATISTICS}


def _percentile(cumulative: np.ndarray, q: float) -> np.ndarray:
    """np.percentile's linear interpolation, read off cumulative histograms (N x 256):
    the k-th smallest pixel is the first level whose cumulative count exceeds k."""
    pixels = int(cumulative[0, -1])
    position = q / 100 * (pixels - 1)
    below = int(position)
    at = (cumulative <= below).sum(axis=1)
    above = (cumulative <= min(below + 1, pixels - 1)).sum(axis=1)
    return at + (position - below) * (above - at)


def _absolute_differences(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per image, the sum of |a - b| over uint8 images, exactly, without widening them:
    max - min stays in uint8. Both directions of 16 512x512 images: 4.4-4.6 ms, against
    13.5-14.1 ms for abs(diff) of an int16 copy (measured side by side)."""
    difference = np.maximum(a, b)
    difference -= np.minimum(a, b)
    return difference.sum(axis=(1, 2), dtype=np.int64)


def _chunk_statistics(images: np.ndarray) -> dict[str, np.ndarray]:
    _, height, width = images.shape
    pixels = height * width
    counts = np.stack([np.bincount(image.ravel(), minlength=256) for image in images]).astype(np.float64)
    mean = counts @ _LEVELS / pixels
    variance = counts @ (_LEVELS**2) / pixels - mean**2
    across = _absolute_differences(images[:, :, 1:], images[:, :, :-1]) / (height * (width - 1))
    down = _absolute_differences(images[:, 1:], images[:, :-1]) / ((height - 1) * width)
    cumulative = counts.cumsum(axis=1)
    return {
        "mean": mean,
        "std": np.sqrt(np.maximum(variance, 0.0)),
        "contrast": _percentile(cumulative, 99) - _percentile(cumulative, 1),
        "texture": 0.5 * (across + down),
    }


def summarize_statistics(per_image: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """Mean and spread of each statistic across a set of images (what the artefact carries)."""
    return {
        name: {"mean": float(values.mean()), "std": float(values.std()), "n": int(len(values))}
        for name, values in per_image.items()
    }
