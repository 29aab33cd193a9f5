"""Per-request options from `X-Amzn-SageMaker-Custom-Attributes`.

SageMaker passes the header through untouched (at most 1024 characters) and the
inference toolkit never shows it to handlers; we read it from MMS's request headers.
Format: `key=value` pairs separated by `,` or `;`, e.g. `threshold=0.3,mask=true`.
Keys this server does not know are left alone (the header is shared with other
middleware, e.g. tracing), but a known key with a bad value is a 400.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from http import HTTPStatus

from dagm_serve.codec import RequestError

HEADER = "X-Amzn-SageMaker-Custom-Attributes"
MAX_LENGTH = 1024


@dataclass(frozen=True)
class RequestOptions:
    threshold: float | None = None  # None: the artefact's calibrated threshold
    mask: bool = False  # add a base64 PNG mask to each JSON prediction


def _bad(token: str, rule: str) -> RequestError:
    return RequestError(HTTPStatus.BAD_REQUEST, f"{HEADER}: {token!r} is invalid: {rule}")


def parse_options(header: str | None) -> RequestOptions:
    if not header:
        return RequestOptions()
    if len(header) > MAX_LENGTH:
        raise RequestError(HTTPStatus.BAD_REQUEST, f"{HEADER} is longer than {MAX_LENGTH} characters")
    values: dict = {}
    for token in filter(None, (t.strip() for t in re.split(r"[,;]", header))):
        key, sep, raw = token.partition("=")
        key, raw = key.strip().lower(), raw.strip()
        if key == "threshold":
            try:
                threshold = float(raw) if sep else math.nan
            except ValueError:
                threshold = math.nan
            if not 0.0 <= threshold <= 1.0:
                raise _bad(token, "threshold must be a number from 0 to 1")
            values["threshold"] = threshold
        elif key == "mask":
            if raw.lower() not in ("true", "false"):
                raise _bad(token, "mask must be true or false")
            values["mask"] = raw.lower() == "true"
    return RequestOptions(**values)
