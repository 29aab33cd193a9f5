"""The endpoint's wire format: request bodies in, answers out.

Request content types (one request may carry several images):
  image/png, image/jpeg     one image, parsed only as the declared format
  application/x-npy         HxW or NxHxW uint8 array (no pickles)
  application/json          {"instances": [{"b64": "<base64 PNG/JPEG>"}, ...]}
  application/jsonlines     one {"b64": ...} object per line (batch transform, SplitType=Line)
Responses, by Accept: application/json (default), application/jsonlines, image/png (the
mask of a single image), application/x-npy (float32 NxHxW probability maps).

A request is checked in full before any pixel is decoded: the image count, each image's
size and mode from its header (an .npy header before its array is touched; a JSON
body's instance count before any base64), and the pixels of the whole request against
`Limits.max_pixels`. So a refused request costs what reading its headers costs, and
the memory of a request that is decoded is bounded. Every problem is a `RequestError`
with the HTTP status and a message naming it; `decode_request` turns any other failure
of one request's bytes (a Pillow error of any kind, MemoryError, RecursionError) into
one too, so a bad request can only fail itself.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import logging
import threading
from dataclasses import dataclass
from http import HTTPStatus
from typing import Iterable

import numpy as np
from PIL import Image

from dagm_defects.imaging import MAX_PIXELS, ImageDecodeError, decode_opened, open_image

PNG = "image/png"
JPEG = "image/jpeg"
NPY = "application/x-npy"
JSON = "application/json"
JSONLINES = "application/jsonlines"
ANY = "*/*"
REQUEST_TYPES = (PNG, JPEG, NPY, JSON, JSONLINES)
RESPONSE_TYPES = (JSON, JSONLINES, PNG, NPY)
ALIASES = {"image/jpg": JPEG, "application/x-jsonlines": JSONLINES, "application/jsonl": JSONLINES}
JSON_SHAPE = '{"instances": [{"b64": "<base64 PNG or JPEG>"}, ...]}'
# Pillow's parsers per declared type: a body is never sniffed as some other format.
PILLOW_FORMATS = {PNG: ("PNG",), JPEG: ("JPEG",), JSON: ("PNG", "JPEG"), JSONLINES: ("PNG", "JPEG")}

# What np.save writes; a header this long is no image array.
NPY_HEADER_READERS = {1: np.lib.format.read_array_header_1_0, 2: np.lib.format.read_array_header_2_0}
NPY_MAX_HEADER = 10_000
# numpy parses an .npy header with ast.literal_eval, and CPython 3.11's AST constructor
# keeps its recursion depth in state every thread shares: two of the front's decode
# threads parsing at once can fail a valid header with "SystemError: AST constructor
# recursion depth mismatch" (python/cpython#106905; a valid body was answered 400 so
# while 4 clients posted x-npy). A parse takes microseconds, so one at a time.
_NPY_HEADER_LOCK = threading.Lock()

log = logging.getLogger(__name__)


class RequestError(Exception):
    """A request this server refuses; `status` is the HTTP status to answer with."""

    def __init__(self, status: HTTPStatus, message: str):
        super().__init__(message)
        self.status = int(status)
        self.message = message

    def body(self) -> bytes:
        return json.dumps({"error": self.message}).encode()


@dataclass(frozen=True)
class Limits:
    """What one request may hold (DAGM_MAX_IMAGES_PER_REQUEST, DAGM_MAX_PIXELS_PER_REQUEST)."""

    max_images: int
    max_pixels: int
    max_image_pixels: int = MAX_PIXELS


def media_type(header: str | None) -> str:
    """`image/PNG; charset=x` -> `image/png`."""
    value = (header or "").split(";", 1)[0].strip().lower()
    return ALIASES.get(value, value)


def negotiate(accept: str | None) -> str:
    """The first response type the Accept header allows; JSON for none or */*."""
    offered = [media_type(part) for part in (accept or "").split(",") if part.strip()]
    for wanted in offered or [ANY]:
        if wanted in (ANY, "application/*"):
            return JSON
        if wanted == "image/*":
            return PNG
        if wanted in RESPONSE_TYPES:
            return wanted
    raise RequestError(
        HTTPStatus.NOT_ACCEPTABLE,
        f"Accept {accept!r} is not supported; use one of {', '.join(RESPONSE_TYPES)}",
    )


def _too_many(count: int, limits: Limits) -> RequestError:
    return RequestError(
        HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
        f"{count} images in one request; at most {limits.max_images} (DAGM_MAX_IMAGES_PER_REQUEST)",
    )


def _check_pixels(sizes: Iterable[tuple[int, int]], limits: Limits) -> None:
    total = sum(w * h for w, h in sizes)
    if total > limits.max_pixels:
        raise RequestError(
            HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
            f"the request's images hold {total} pixels; at most {limits.max_pixels} per request "
            "(DAGM_MAX_PIXELS_PER_REQUEST)",
        )


def _open(data: bytes, name: str, kind: str, limits: Limits) -> Image.Image:
    try:
        return open_image(data, name, limits.max_image_pixels, allow_wide=False, formats=PILLOW_FORMATS[kind])
    except ImageDecodeError as exc:
        raise RequestError(HTTPStatus.BAD_REQUEST, str(exc)) from None


def _b64(item: object, name: str) -> bytes:
    if not isinstance(item, dict) or not isinstance(item.get("b64"), str):
        raise RequestError(HTTPStatus.BAD_REQUEST, f"{name} must be an object {{\"b64\": \"...\"}}")
    try:
        return base64.b64decode(item["b64"], validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(HTTPStatus.BAD_REQUEST, f"{name}: 'b64' is not valid base64") from None


def _json(text: bytes, where: str):
    try:
        return json.loads(text)
    except RecursionError:
        raise RequestError(HTTPStatus.BAD_REQUEST, f"{where} is nested too deeply") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise RequestError(HTTPStatus.BAD_REQUEST, f"{where} is not valid JSON ({exc})") from None


def _json_items(body: bytes, limits: Limits) -> list[tuple[object, str]]:
    document = _json(body, "body")
    instances = document.get("instances") if isinstance(document, dict) else None
    if not isinstance(instances, list) or not instances:
        raise RequestError(HTTPStatus.BAD_REQUEST, f"JSON body must be {JSON_SHAPE}")
    if len(instances) > limits.max_images:
        raise _too_many(len(instances), limits)
    return [(item, f"instances[{i}]") for i, item in enumerate(instances)]


def _jsonlines_items(body: bytes, limits: Limits) -> list[tuple[object, str]]:
    lines = [(number, line) for number, line in enumerate(body.splitlines(), start=1) if line.strip()]
    if not lines:
        raise RequestError(HTTPStatus.BAD_REQUEST, 'JSON lines body has no {"b64": ...} lines')
    if len(lines) > limits.max_images:
        raise _too_many(len(lines), limits)
    return [(_json(line, f"line {number}"), f"line {number}") for number, line in lines]


def _npy(body: bytes, limits: Limits) -> list[np.ndarray]:
    """The images of an .npy body, its header checked before the array is touched."""
    stream = io.BytesIO(body)
    try:
        major, _ = np.lib.format.read_magic(stream)
        read_header = NPY_HEADER_READERS.get(major)
        if read_header is None:
            raise ValueError(f".npy format version {major} is not supported; send version 1 or 2")
        with _NPY_HEADER_LOCK:
            shape, fortran, dtype = read_header(stream, max_header_size=NPY_MAX_HEADER)
    except (ValueError, TypeError, EOFError, SyntaxError) as exc:
        raise RequestError(HTTPStatus.BAD_REQUEST, f"body is not a .npy array ({exc})") from None
    if dtype != np.uint8 or len(shape) not in (2, 3):
        raise RequestError(HTTPStatus.BAD_REQUEST,
                           f"x-npy body must be an HxW or NxHxW uint8 array, got a {dtype} array of shape {shape}")
    count = shape[0] if len(shape) == 3 else 1
    height, width = shape[-2:]
    if count == 0 or min(height, width) == 0 or height * width > limits.max_image_pixels:
        raise RequestError(HTTPStatus.BAD_REQUEST, f"x-npy images are {width}x{height} (shape {shape}); "
                                                   f"each must have 1 to {limits.max_image_pixels} pixels")
    if count > limits.max_images:
        raise _too_many(count, limits)
    _check_pixels([(width, height)] * count, limits)
    offset, expected = stream.tell(), count * height * width
    if len(body) - offset != expected:
        raise RequestError(HTTPStatus.BAD_REQUEST,
                           f"x-npy header declares shape {shape} ({expected} bytes), the body carries {len(body) - offset}")
    array = np.frombuffer(body, np.uint8, expected, offset).reshape(shape, order="F" if fortran else "C")
    return [array] if array.ndim == 2 else list(array)


def _decode(body: bytes, kind: str, limits: Limits) -> list[np.ndarray]:
    if kind == NPY:
        return _npy(body, limits)
    if kind in (PNG, JPEG):
        opened = [(_open(body, "request body", kind, limits), "request body")]
    else:
        items = _json_items(body, limits) if kind == JSON else _jsonlines_items(body, limits)
        opened = [(_open(_b64(item, name), name, kind, limits), name) for item, name in items]
    _check_pixels((image.size for image, _ in opened), limits)
    try:
        return [_gray(image, name) for image, name in opened]
    finally:
        for image, _ in opened:
            image.close()


def _gray(image: Image.Image, name: str) -> np.ndarray:
    try:
        return decode_opened(image, name)[0]
    except ImageDecodeError as exc:
        raise RequestError(HTTPStatus.BAD_REQUEST, str(exc)) from None


def decode_request(body: bytes, content_type: str | None, limits: Limits) -> list[np.ndarray]:
    """The request's images as 8-bit HxW arrays, in request order."""
    kind = media_type(content_type)
    if kind not in REQUEST_TYPES:
        named = f"Content-Type {content_type!r}" if content_type else "a missing Content-Type"
        raise RequestError(
            HTTPStatus.UNSUPPORTED_MEDIA_TYPE, f"{named} is not supported; use one of {', '.join(REQUEST_TYPES)}"
        )
    if not body:
        raise RequestError(HTTPStatus.BAD_REQUEST, "request body is empty")
    try:
        return _decode(body, kind, limits)
    except RequestError:
        raise
    except MemoryError:
        raise RequestError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "the request's images do not fit in memory") from None
    except RecursionError:
        raise RequestError(HTTPStatus.BAD_REQUEST, "the body is nested too deeply") from None
    except Exception as exc:  # a parser's own bug on hostile bytes is still this request's problem
        log.warning("refused a %s body: %s: %s", kind, type(exc).__name__, exc)
        raise RequestError(HTTPStatus.BAD_REQUEST, f"the {kind} body cannot be decoded ({type(exc).__name__}: {exc})") from None


def check_answerable(accept: str, count: int) -> None:
    """Refuse before the forward pass what the response type cannot carry."""
    if accept == PNG and count != 1:
        raise RequestError(
            HTTPStatus.BAD_REQUEST, f"Accept image/png answers a single image; this request has {count}"
        )


def mask_png(mask: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8) * 255, mode="L").save(out, format="PNG", compress_level=1)
    return out.getvalue()


def encode_response(predictions: list, accept: str, with_mask: bool) -> bytes:
    """The answer body for `predictions` (prediction.Prediction) in the `accept` type."""
    if accept == PNG:
        return mask_png(predictions[0].mask)
    if accept == NPY:
        out = io.BytesIO()
        np.save(out, np.stack([p.probability_map for p in predictions]).astype(np.float32), allow_pickle=False)
        return out.getvalue()
    records = [p.to_dict() for p in predictions]
    if with_mask:
        for record, prediction in zip(records, predictions):
            record["mask_png_b64"] = base64.b64encode(mask_png(prediction.mask)).decode()
    if accept == JSONLINES:
        return "".join(json.dumps(r) + "\n" for r in records).encode()
    return json.dumps({"predictions": records}).encode()
