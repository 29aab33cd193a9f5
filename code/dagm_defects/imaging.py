"""Decode and shape images the same way for training and serving.

Grayscale policy (documented in the README): 8-bit grayscale is used as is; colour,
palette and alpha images are converted to grayscale (ITU-R 601 luma, Pillow's "L");
16-bit and 32-bit grayscale are scaled to 8 bits. Each conversion is reported back to
the caller as a note, so training can say how many images it converted.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

# A DAGM image is 512x512; anything above this is a mistake or a decompression bomb.
MAX_PIXELS = 4096 * 4096


class ImageDecodeError(ValueError):
    """Bytes or a file that is not a usable image; the message names why."""


def _to_gray(image: Image.Image) -> tuple[np.ndarray, str | None]:
    mode = image.mode
    if mode == "L":
        return np.asarray(image, dtype=np.uint8), None
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        wide = np.asarray(image.convert("I") if mode.startswith("I;16") else image)
        top = 65535.0 if mode.startswith("I;16") or wide.max(initial=0) > 255 else 255.0
        scaled = np.clip(wide.astype(np.float64) * (255.0 / top), 0, 255)
        return scaled.round().astype(np.uint8), f"converted {mode} to 8-bit grayscale"
    if mode == "1":
        return np.asarray(image.convert("L"), dtype=np.uint8), "converted 1-bit to 8-bit grayscale"
    return np.asarray(image.convert("L"), dtype=np.uint8), f"converted {mode} to grayscale"


def decode_gray(
    source: bytes | Path | str, name: str | None = None, max_pixels: int = MAX_PIXELS
) -> tuple[np.ndarray, str | None]:
    """Decode PNG/JPEG/... bytes or a file into an 8-bit HxW array and a conversion note.

    Errors name the image as `name` (default: the path, or "image bytes")."""
    where = name or ("image bytes" if isinstance(source, bytes) else str(source))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            handle = io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb")
            with handle, Image.open(handle) as image:
                width, height = image.size
                if width * height > max_pixels:
                    raise ImageDecodeError(
                        f"{where}: {width}x{height} is larger than the {max_pixels} pixels allowed"
                    )
                image.load()
                return _to_gray(image)
    except ImageDecodeError:
        raise
    except UnidentifiedImageError:
        raise ImageDecodeError(f"{where}: not a decodable image (unrecognised or corrupt format)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageDecodeError(f"{where}: refused as a decompression bomb ({exc})") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageDecodeError(f"{where}: corrupt or truncated image ({exc})") from None


def resize_square(gray: np.ndarray, size: int) -> np.ndarray:
    """Resize an 8-bit HxW array to size x size (antialiased), as the model expects."""
    if gray.shape == (size, size):
        return gray
    resized = Image.fromarray(gray, mode="L").resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.uint8)


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """Resize a 0/255 mask to a 0/1 mask of size x size; thin defects survive downscaling."""
    if mask.shape != (size, size):
        mask = np.asarray(
            Image.fromarray(mask, mode="L").resize((size, size), Image.Resampling.BOX), dtype=np.uint8
        )
    return (mask > 0).astype(np.uint8)


STATISTICS = ("mean", "std", "contrast", "texture")


def image_statistics(images: np.ndarray) -> dict[str, np.ndarray]:
    """Cheap per-image statistics of an NxHxW uint8 batch, used to describe and watch inputs.

    mean/std: intensity; contrast: the 1st-99th percentile spread; texture: mean absolute
    difference between horizontal and vertical neighbours (edge energy).
    """
    x = images.astype(np.float32)
    flat = x.reshape(len(x), -1)
    low, high = np.percentile(flat, [1, 99], axis=1)
    texture = 0.5 * (
        np.abs(np.diff(x, axis=2)).mean(axis=(1, 2)) + np.abs(np.diff(x, axis=1)).mean(axis=(1, 2))
    )
    return {
        "mean": flat.mean(axis=1),
        "std": flat.std(axis=1),
        "contrast": high - low,
        "texture": texture,
    }


def summarize_statistics(per_image: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """Mean and spread of each statistic across a set of images (what the artefact carries)."""
    return {
        name: {"mean": float(values.mean()), "std": float(values.std()), "n": int(len(values))}
        for name, values in per_image.items()
    }
