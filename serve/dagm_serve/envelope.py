"""One MMS request that carries a whole batch of client requests, and its answer.

Why not MMS's own batching: with `batch_size > 1`, MMS 1.1.11's frontend decodes a
worker's multi-request answer with `CodecUtils.readMap`/`readInt`, which do not handle a
frame split across socket reads; once an answer passes Netty's first 2 KB read buffer, a
split inside a later request's status or headers throws "Invalid message size: -3" and
MMS kills the worker (reproduced by tests/test_serving_batching.py before this module
existed). So the front gathers concurrent requests itself and sends each batch as one
request in this envelope; MMS runs with `batch_size=1`, and every answer's MMS header
(status, no content type, no headers) sits inside the first read.

Layout, both ways: one JSON line describing the parts, then the parts' bodies back to back.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

CONTENT_TYPE = "application/x-dagm-batch"


class EnvelopeError(ValueError):
    """Bytes that are not an envelope this code wrote."""


@dataclass(frozen=True)
class Part:
    """One client request (`status` 0) or one answer."""

    body: bytes
    content_type: str | None = None
    accept: str | None = None
    attributes: str | None = None
    status: int = 0
    forward_id: str | None = None
    batch_images: int = 0


def pack(parts: list[Part]) -> bytes:
    header = [{k: v for k, v in asdict(p).items() if k != "body"} | {"length": len(p.body)} for p in parts]
    return json.dumps(header).encode() + b"\n" + b"".join(p.body for p in parts)


def unpack(data: bytes) -> list[Part]:
    line, newline, rest = data.partition(b"\n")
    try:
        header = json.loads(line) if newline else None
        if not isinstance(header, list):
            raise EnvelopeError("no part list")
        parts, offset = [], 0
        for entry in header:
            length = entry.pop("length")
            parts.append(Part(body=rest[offset:offset + length], **entry))
            offset += length
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise EnvelopeError(f"not a batch envelope: {exc}") from None
    if offset != len(rest):
        raise EnvelopeError(f"batch envelope declares {offset} body bytes, carries {len(rest)}")
    return parts
