"""The local AWS's own control APIs (/_local_aws/...), beside moto's routes.

Tests steer what AWS does not let a client steer (the images programs stand for, the
async queue's size, firing a schedule now) through small JSON APIs at their own paths;
`mount` routes a path to its WSGI handler, ahead of moto.
"""

from __future__ import annotations

import json
from typing import Callable

_ROUTES: dict[str, Callable] = {}


def mount(path: str, handler: Callable) -> None:
    """Serve `path` with `handler(environ, start_response)`; `path/...` is no such call (404)."""
    from moto.moto_server import werkzeug_app

    _ROUTES[path.rstrip("/")] = handler
    dispatcher = werkzeug_app.DomainDispatcherApplication
    if getattr(dispatcher, "_local_aws_control", False):
        return
    original = dispatcher.__call__

    def __call__(self, environ, start_response):
        path_info = environ.get("PATH_INFO", "").rstrip("/")
        for route, route_handler in _ROUTES.items():
            if path_info == route:
                return route_handler(environ, start_response)
            if path_info.startswith(route + "/"):
                return answer(start_response, 404, {"error": f"{environ.get('PATH_INFO')}: no such call"})
        return original(self, environ, start_response)

    dispatcher.__call__ = __call__
    dispatcher._local_aws_control = True


def respond(start_response, status: int, headers: dict[str, str], body: bytes) -> list[bytes]:
    """A WSGI answer with its status line and length."""
    from werkzeug.http import HTTP_STATUS_CODES

    start_response(f"{status} {HTTP_STATUS_CODES.get(status, 'Error')}",
                   [*headers.items(), ("Content-Length", str(len(body)))])
    return [body]


def answer(start_response, status: int, value) -> list[bytes]:
    """A control API's JSON answer."""
    return respond(start_response, status, {"Content-Type": "application/json"}, json.dumps(value).encode())


def read_json(environ: dict, empty=None):
    """The request's JSON body (`empty` when there is none); ValueError when it is not JSON."""
    length = int(environ.get("CONTENT_LENGTH") or 0)
    body = environ["wsgi.input"].read(length)
    return json.loads(body) if body else empty
