"""The endpoint's wire format: request bodies in, predictions out.

Request content types (one request may carry several images):
  image/png, image/jpeg     one image
  application/x-npy         HxW or NxHxW uint8 array (no pickles)
  application/json          {"instances": [{"b64": "<base64 PNG/JPEG>"}, ...]}
  application/jsonlines     one {"b64": ...} object per line (batch transform, SplitType=Line)
Responses, by Accept: application/json (default), application/jsonlines, image/png (the
mask of a single image), application/x-npy (float32 NxHxW probability maps).
Every problem is a `RequestError` with the HTTP status and a message naming it.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
from dataclasses import dataclass
from http import HTTPStatus

import numpy as np
from PIL import Image
from sagemaker_inference import content_types
from sagemaker_inference.errors import BaseInferenceToolkitError

from dagm_defects.imaging import MAX_PIXELS, ImageDecodeError, decode_gray

PNG = "image/png"
JPEG = "image/jpeg"
JSONLINES = "application/jsonlines"
REQUEST_TYPES = (PNG, JPEG, content_types.NPY, content_types.JSON, JSONLINES)
RESPONSE_TYPES = (content_types.JSON, JSONLINES, PNG, content_types.NPY)
ALIASES = {"image/jpg": JPEG, "application/x-jsonlines": JSONLINES, "application/jsonl": JSONLINES}
JSON_SHAPE = '{"instances": [{"b64": "<base64 PNG or JPEG>"}, ...]}'


class RequestError(BaseInferenceToolkitError):
    """A request this server refuses; `status_code` is the HTTP status to answer with."""

    def __init__(self, status: HTTPStatus, message: str):
        super().__init__(int(status), message, status.phrase)

    def body(self) -> bytes:
        return json.dumps({"error": self.message}).encode()


def media_type(header: str | None) -> str:
    """`image/PNG; charset=x` -> `image/png`."""
    value = (header or "").split(";", 1)[0].strip().lower()
    return ALIASES.get(value, value)


def negotiate(accept: str | None) -> str:
    """The first response type the Accept header allows; JSON for none or */*."""
    offered = [media_type(part) for part in (accept or "").split(",") if part.strip()]
    for wanted in offered or [content_types.ANY]:
        if wanted in (content_types.ANY, "application/*"):
            return content_types.JSON
        if wanted == "image/*":
            return PNG
        if wanted in RESPONSE_TYPES:
            return wanted
    raise RequestError(
        HTTPStatus.NOT_ACCEPTABLE,
        f"Accept {accept!r} is not supported; use one of {', '.join(RESPONSE_TYPES)}",
    )


def _image(data: bytes, name: str) -> np.ndarray:
    try:
        gray, _ = decode_gray(data, name=name, allow_wide=False)
    except ImageDecodeError as exc:
        raise RequestError(HTTPStatus.BAD_REQUEST, str(exc)) from None
    return gray


def _b64_image(item: object, name: str) -> np.ndarray:
    if not isinstance(item, dict) or not isinstance(item.get("b64"), str):
        raise RequestError(HTTPStatus.BAD_REQUEST, f"{name} must be an object {{\"b64\": \"...\"}}")
    try:
        data = base64.b64decode(item["b64"], validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(HTTPStatus.BAD_REQUEST, f"{name}: 'b64' is not valid base64") from None
    return _image(data, name)


def _json_images(body: bytes) -> list[np.ndarray]:
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise RequestError(HTTPStatus.BAD_REQUEST, f"body is not valid JSON ({exc})") from None
    instances = document.get("instances") if isinstance(document, dict) else None
    if not isinstance(instances, list) or not instances:
        raise RequestError(HTTPStatus.BAD_REQUEST, f"JSON body must be {JSON_SHAPE}")
    return [_b64_image(item, f"instances[{i}]") for i, item in enumerate(instances)]


def _jsonlines_images(body: bytes) -> list[np.ndarray]:
    images = []
    for number, line in enumerate(body.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except (UnicodeDecodeError, ValueError) as exc:
            raise RequestError(HTTPStatus.BAD_REQUEST, f"line {number} is not valid JSON ({exc})") from None
        images.append(_b64_image(item, f"line {number}"))
    if not images:
        raise RequestError(HTTPStatus.BAD_REQUEST, 'JSON lines body has no {"b64": ...} lines')
    return images


def _npy_images(body: bytes) -> list[np.ndarray]:
    try:
        array = np.load(io.BytesIO(body), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise RequestError(HTTPStatus.BAD_REQUEST, f"body is not a .npy array ({exc})") from None
    if not isinstance(array, np.ndarray) or array.dtype != np.uint8 or array.ndim not in (2, 3):
        described = f"{getattr(array, 'dtype', type(array).__name__)} array of shape {getattr(array, 'shape', '?')}"
        raise RequestError(HTTPStatus.BAD_REQUEST, f"x-npy body must be an HxW or NxHxW uint8 array, got a {described}")
    height, width = array.shape[-2:]
    if min(height, width) == 0 or height * width > MAX_PIXELS:
        raise RequestError(
            HTTPStatus.BAD_REQUEST, f"x-npy images are {width}x{height}; each must have 1 to {MAX_PIXELS} pixels"
        )
    return [array] if array.ndim == 2 else list(array)


def decode_request(body: bytes, content_type: str | None, max_images: int) -> list[np.ndarray]:
    """The request's images as 8-bit HxW arrays, in request order."""
    kind = media_type(content_type)
    if kind not in REQUEST_TYPES:
        named = f"Content-Type {content_type!r}" if content_type else "a missing Content-Type"
        raise RequestError(
            HTTPStatus.UNSUPPORTED_MEDIA_TYPE, f"{named} is not supported; use one of {', '.join(REQUEST_TYPES)}"
        )
    if not body:
        raise RequestError(HTTPStatus.BAD_REQUEST, "request body is empty")
    if kind in (PNG, JPEG):
        images = [_image(body, "request body")]
    elif kind == content_types.NPY:
        images = _npy_images(body)
    elif kind == content_types.JSON:
        images = _json_images(body)
    else:
        images = _jsonlines_images(body)
    if len(images) > max_images:
        raise RequestError(
            HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
            f"{len(images)} images in one request; at most {max_images} (DAGM_MAX_IMAGES_PER_REQUEST)",
        )
    return images


def count_images(body: bytes, content_type: str | None) -> int:
    """About how many images a request carries, without decoding them (for batching
    only: a wrong guess sizes one batch badly, the worker still checks everything)."""
    kind = media_type(content_type)
    if kind == content_types.NPY:
        try:
            stream = io.BytesIO(body)
            major, _ = np.lib.format.read_magic(stream)
            read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
            shape, _, _ = read_header(stream)
            return int(shape[0]) if len(shape) == 3 else 1
        except (ValueError, TypeError, EOFError):
            return 1
    if kind == content_types.JSON:
        return max(1, body.count(b'"b64"'))
    if kind == JSONLINES:
        return max(1, sum(1 for line in body.splitlines() if line.strip()))
    return 1


@dataclass(frozen=True)
class Prediction:
    score: float
    threshold: float
    mask: np.ndarray  # bool, at the input image's own size; empty unless defective
    probability_map: np.ndarray  # float32 at the model's map resolution

    @property
    def defective(self) -> bool:
        return self.score >= self.threshold

    def to_dict(self, with_mask: bool) -> dict:
        rows, cols = np.nonzero(self.mask)
        bbox = [int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1] if len(rows) else None
        record = {
            "score": round(self.score, 6),
            "defective": self.defective,
            "threshold": self.threshold,
            "defect_area_px": int(len(rows)),
            "bbox": bbox,
        }
        if with_mask:
            record["mask_png_b64"] = base64.b64encode(mask_png(self.mask)).decode()
        return record


def mask_png(mask: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8) * 255, mode="L").save(out, format="PNG", compress_level=1)
    return out.getvalue()


def check_answerable(accept: str, count: int) -> None:
    """Refuse before the forward pass what the response type cannot carry."""
    if accept == PNG and count != 1:
        raise RequestError(
            HTTPStatus.BAD_REQUEST, f"Accept image/png answers a single image; this request has {count}"
        )


def encode_response(predictions: list[Prediction], accept: str, with_mask: bool) -> bytes:
    if accept == PNG:
        return mask_png(predictions[0].mask)
    if accept == content_types.NPY:
        out = io.BytesIO()
        np.save(out, np.stack([p.probability_map for p in predictions]).astype(np.float32), allow_pickle=False)
        return out.getvalue()
    records = [p.to_dict(with_mask) for p in predictions]
    if accept == JSONLINES:
        return "".join(json.dumps(r) + "\n" for r in records).encode()
    return json.dumps({"predictions": records}).encode()
