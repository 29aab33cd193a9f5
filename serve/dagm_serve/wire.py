"""The one format between the front and the MMS workers: arrays with a JSON line.

Both ways a body is one JSON line, `{"meta": {...}, "arrays": [{"dtype", "shape"}, ...]}`,
then the arrays' bytes back to back in C order. The front sends one batch of images it
has already decoded, checked and resized (uint8 N x S x S); the worker answers the
model's outputs for them (float32 scores N and maps N x M x M) and which forward pass
made them. Nothing in a batch is a client's raw bytes, so the worker parses nothing
a client wrote and one client's bad input cannot reach another's batch.

The arrays' bytes may instead lie in a file of the shared-memory directory both sides
know (batch_files.py): the line then names it (`"file"`) and is the whole body, so MMS
carries about a hundred bytes instead of the pixels, which it would copy five times
(measured: 1.2 ms per call for a tiny body, 2.7 ms for one 512x512 image, 6.4 ms for
1 MB). A reader accepts only files directly in the directory it was given.

Why not MMS's own batching: with `batch_size > 1`, MMS 1.1.11's frontend decodes a
worker's multi-request answer with `CodecUtils.readMap`/`readInt`, which do not handle a
frame split across socket reads ("Invalid message size: -3", and MMS kills the worker).
MMS runs with `batch_size=1` and each of its requests is one whole batch.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

CONTENT_TYPE = "application/x-dagm-arrays"


class WireError(ValueError):
    """Bytes that are not a body this module wrote."""


def pack(meta: dict, arrays: list[np.ndarray], file: Path | None = None) -> bytes:
    """The body for `meta` and `arrays`; with `file`, the arrays' bytes are written over
    that existing file's (then cut to their length) and the body names it. OSError when
    the file cannot be written (a full /dev/shm): the caller sends the arrays inline
    instead."""
    arrays = [np.ascontiguousarray(a) for a in arrays]
    header = {"meta": meta, "arrays": [{"dtype": a.dtype.str, "shape": list(a.shape)} for a in arrays]}
    data = [memoryview(a.reshape(-1)).cast("B") for a in arrays]
    if file is None:
        # One copy of the pixels: join reads each array's buffer directly.
        return b"".join([json.dumps(header).encode(), b"\n", *data])
    # r+b, not wb: a file its reader gave up on (and removed) is not made again. Cut
    # after writing, not before: a reused file's pages are overwritten, not freed and
    # allocated anew (batch_files.py).
    with open(file, "r+b") as out:
        for chunk in data:
            out.write(chunk)
        out.truncate()
    return json.dumps({**header, "file": str(file)}).encode() + b"\n"


def pack_into(meta: dict, arrays: list[np.ndarray], file: Path | None) -> bytes:
    """`pack` into `file` when there is one and it can be written, else inline (a full
    /dev/shm, or a reader that gave up and removed the file)."""
    if file is not None:
        try:
            return pack(meta, arrays, file)
        except OSError as exc:
            log.warning("arrays go inline through MMS: %s", exc)
    return pack(meta, arrays)


def batch_file(name: object, directory: Path | None) -> Path | None:
    """`name` as a path when it names a file directly in `directory`, else None."""
    if directory is None or not isinstance(name, str):
        return None
    path = Path(name)
    return path if path.parent == directory and path.name not in ("", ".", "..") else None


def unpack(data: bytes | bytearray, directory: Path | None = None) -> tuple[dict, list[np.ndarray]]:
    """The meta and the arrays: views of `data` (writable when it is a bytearray), or
    read from the file the body names, which must lie directly in `directory`."""
    line, newline, _ = data.partition(b"\n")
    try:
        header = json.loads(line) if newline else None
        offset, arrays = len(line) + 1, []
        if header.get("file") is not None:
            data, offset = _read(header["file"], directory, len(data) - offset), 0
        for spec in header["arrays"]:
            dtype, shape = np.dtype(spec["dtype"]), tuple(int(n) for n in spec["shape"])
            count = int(np.prod(shape, dtype=np.int64))
            arrays.append(np.frombuffer(data, dtype, count, offset).reshape(shape))
            offset += count * dtype.itemsize
        meta = header["meta"]
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise WireError(f"not a {CONTENT_TYPE} body: {exc}") from None
    if offset != len(data) or not isinstance(meta, dict):
        raise WireError(f"not a {CONTENT_TYPE} body: {len(data) - offset} bytes left over")
    return meta, arrays


def _read(name: str, directory: Path | None, trailing: int) -> bytearray:
    path = batch_file(name, directory)
    if path is None or trailing:
        raise WireError(f"not a {CONTENT_TYPE} body: {name!r} is not a batch file this side may read")
    try:
        with open(path, "rb") as source:
            size = os.fstat(source.fileno()).st_size
            data = bytearray(size)
            if source.readinto(data) != size:
                raise WireError(f"batch file {name} changed while it was read")
    except OSError as exc:
        raise WireError(f"batch file {name} cannot be read: {exc.strerror}") from None
    return data
