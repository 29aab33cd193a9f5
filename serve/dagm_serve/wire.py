"""The one format between the front and the MMS workers: arrays with a JSON line.

Both ways a body is one JSON line, `{"meta": {...}, "arrays": [{"dtype", "shape"}, ...]}`,
then the arrays' bytes back to back in C order. The front sends one batch of images it
has already decoded, checked and resized (uint8 N x S x S); the worker answers the
model's outputs for them (float32 scores N and maps N x M x M) and which forward pass
made them. Nothing in a batch is a client's raw bytes, so the worker parses nothing
a client wrote and one client's bad input cannot reach another's batch.

Why not MMS's own batching: with `batch_size > 1`, MMS 1.1.11's frontend decodes a
worker's multi-request answer with `CodecUtils.readMap`/`readInt`, which do not handle a
frame split across socket reads ("Invalid message size: -3", and MMS kills the worker).
MMS runs with `batch_size=1` and each of its requests is one whole batch.
"""

from __future__ import annotations

import json

import numpy as np

CONTENT_TYPE = "application/x-dagm-arrays"


class WireError(ValueError):
    """Bytes that are not a body this module wrote."""


def pack(meta: dict, arrays: list[np.ndarray]) -> bytes:
    arrays = [np.ascontiguousarray(a) for a in arrays]
    header = {"meta": meta, "arrays": [{"dtype": a.dtype.str, "shape": list(a.shape)} for a in arrays]}
    # One copy of the pixels: join reads each array's buffer directly.
    return b"".join([json.dumps(header).encode(), b"\n", *(memoryview(a.reshape(-1)).cast("B") for a in arrays)])


def unpack(data: bytes | bytearray) -> tuple[dict, list[np.ndarray]]:
    """The meta and the arrays: views of `data`, writable when `data` is a bytearray."""
    line, newline, _ = data.partition(b"\n")
    try:
        header = json.loads(line) if newline else None
        offset, arrays = len(line) + 1, []
        for spec in header["arrays"]:
            dtype, shape = np.dtype(spec["dtype"]), tuple(int(n) for n in spec["shape"])
            count = int(np.prod(shape, dtype=np.int64))
            arrays.append(np.frombuffer(data, dtype, count, offset).reshape(shape))
            offset += count * dtype.itemsize
        meta = header["meta"]
    except (ValueError, TypeError, KeyError) as exc:
        raise WireError(f"not a {CONTENT_TYPE} body: {exc}") from None
    if offset != len(data) or not isinstance(meta, dict):
        raise WireError(f"not a {CONTENT_TYPE} body: {len(data) - offset} bytes left over")
    return meta, arrays
