"""8-bit grayscale PNG files, written without Pillow."""

from __future__ import annotations

import struct
import zlib

import numpy as np

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
