"""The HTTP server SageMaker talks to, on SAGEMAKER_BIND_TO_PORT (default 8080).

MMS answers its own `/ping` with 200 while workers are still loading (measured: 2.5 s
after start, with `initialize` still running), so MMS listens on private ports and this
front owns the contract:
  GET  /ping                    200, empty body, only once the model is loaded and warm
  GET  /execution-parameters    batch transform's settings
  POST /invocations             batched (batcher.py) and sent to MMS (X-Amzn-SageMaker-Target-Model
                                names the model in MME mode)
  /models...                    the multi-model API (models.py), when SAGEMAKER_MULTI_MODEL
The front never runs the model itself, so /ping stays fast under full load.
"""

from __future__ import annotations

import http.client
import json
import logging
import re
import socket
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from dagm_serve import envelope
from dagm_serve.batcher import Batcher
from dagm_serve.codec import count_images
from dagm_serve.envelope import Part
from dagm_serve.environment import ServingSettings
from dagm_serve.model_server import ModelServerError, error_message
from dagm_serve.models import ModelRegistry, RegistryError
from dagm_serve.options import HEADER as ATTRIBUTES_HEADER

log = logging.getLogger(__name__)

SINGLE_MODEL = "model"
TARGET_MODEL_HEADER = "X-Amzn-SageMaker-Target-Model"
# Which forward pass answered, and how many images it had: equal ids, one pass.
FORWARD_HEADER = "X-Dagm-Forward-Id"
BATCH_HEADER = "X-Dagm-Batch-Images"
# A body this much over the limit is not drained: the connection is closed instead.
DRAIN_LIMIT = 128 * 1024 * 1024
MODEL_PATH = re.compile(r"^/models/([^/]+)(/invoke)?$")


class FrontServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, settings: ServingSettings, registry: ModelRegistry, inference_port: int):
        self.settings = settings
        self.registry = registry
        self.inference_port = inference_port
        self.ready = threading.Event()
        self.local = threading.local()
        self._batchers: dict[str, Batcher] = {}
        self._batchers_lock = threading.Lock()
        super().__init__(("0.0.0.0", settings.port), FrontHandler)

    def batcher(self, name: str) -> Batcher:
        with self._batchers_lock:
            if name not in self._batchers:
                self._batchers[name] = Batcher(
                    lambda parts: self._predict(name, parts), self.settings.server_batch_size,
                    self.settings.server_batch_delay_ms / 1000, self.settings.workers, _failure,
                )
            return self._batchers[name]

    def unload(self, name: str) -> dict:
        answer = self.registry.unload(name)
        with self._batchers_lock:
            batcher = self._batchers.pop(name, None)
        if batcher is not None:
            batcher.close()
        return answer

    def _predict(self, name: str, parts: list[Part]) -> list[Part]:
        """One MMS call for a batch of client requests."""
        body, headers = envelope.pack(parts), {"Content-Type": envelope.CONTENT_TYPE}
        try:
            response = self._exchange(self.mms_connection(), name, body, headers)
        except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
            # MMS closed this thread's idle keep-alive connection: one retry on a fresh one.
            response = self._exchange(self.mms_connection(fresh=True), name, body, headers)
        reply = response.read()
        if response.status != HTTPStatus.OK:
            raise ModelServerError(response.status, error_message(reply))
        return envelope.unpack(reply)

    @staticmethod
    def _exchange(connection, name: str, body: bytes, headers: dict) -> http.client.HTTPResponse:
        connection.request("POST", f"/predictions/{name}", body=body, headers=headers)
        return connection.getresponse()

    def mms_connection(self, fresh: bool = False) -> http.client.HTTPConnection:
        """This thread's keep-alive connection to MMS's inference port."""
        connection = getattr(self.local, "connection", None)
        if connection is None or fresh:
            if connection is not None:
                connection.close()
            connection = http.client.HTTPConnection(
                "127.0.0.1", self.inference_port, timeout=self.settings.response_timeout_s + 5
            )
            connection.connect()
            connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.local.connection = connection
        return connection


class FrontHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: FrontServer
    server_version = "dagm-serve"

    def setup(self) -> None:
        super().setup()
        # Headers and body leave in separate writes: without TCP_NODELAY, Nagle's algorithm
        # holds the body until the client's delayed ACK, about 40 ms per answer (measured).
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format, *args):  # noqa: A002 - the stdlib's signature
        log.debug("%s " + format, self.address_string(), *args)

    def _send(self, status: int, body: bytes = b"", content_type: str = "application/json",
              headers: dict | None = None) -> None:
        self.send_response(status)
        if body:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if body:
            self.wfile.write(body)

    def _json(self, status: int, document) -> None:
        self._send(status, json.dumps(document).encode())

    def _error(self, status: HTTPStatus | int, message: str) -> None:
        self._json(int(status), {"error": message})

    def _read_body(self, limit: int) -> bytes | None:
        """The request body, or None after answering 411/413 (the body is drained, or
        the connection closed, so the next request on it is not misparsed)."""
        length_header = self.headers.get("Content-Length")
        if length_header is None:
            self.close_connection = True
            self._error(HTTPStatus.LENGTH_REQUIRED, "Content-Length is required")
            return None
        try:
            length = int(length_header)
            if length < 0:
                raise ValueError(length_header)
        except ValueError:
            self.close_connection = True
            self._error(HTTPStatus.BAD_REQUEST, f"Content-Length {length_header!r} is not a byte count")
            return None
        if length > limit:
            if length <= DRAIN_LIMIT:
                remaining = length
                while remaining > 0:
                    chunk = self.rfile.read(min(remaining, 1 << 20))
                    if not chunk:
                        break
                    remaining -= len(chunk)
            else:
                self.close_connection = True
            self._error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                        f"payload of {length} bytes is over the {self.server.settings.max_payload_mb} MB limit "
                        f"(SAGEMAKER_MAX_PAYLOAD_IN_MB)")
            return None
        return self.rfile.read(length) if length else b""

    # GET ---------------------------------------------------------------------------
    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/ping":
            if self.server.ready.is_set():
                self._send(HTTPStatus.OK)
            else:
                self._error(HTTPStatus.SERVICE_UNAVAILABLE, "the model is still loading")
        elif path == "/execution-parameters":
            self._json(HTTPStatus.OK, self.server.settings.execution_parameters())
        elif path == "/models" and self._multi_model():
            self._json(HTTPStatus.OK, {"models": self.server.registry.list()})
        elif (match := MODEL_PATH.match(path)) and not match.group(2) and self._multi_model():
            self._registry_call(lambda: self.server.registry.describe(match.group(1)))
        else:
            self._not_found(path)

    # POST --------------------------------------------------------------------------
    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/invocations":
            self._invocations()
        elif path == "/models" and self._multi_model():
            body = self._read_body(1024 * 1024)
            if body is not None:
                self._registry_call(lambda: self.server.registry.load_request(body), HTTPStatus.OK)
        elif (match := MODEL_PATH.match(path)) and match.group(2) and self._multi_model():
            self._invoke(match.group(1))
        else:
            self._not_found(path)

    def do_DELETE(self) -> None:
        path = self.path.split("?", 1)[0]
        match = MODEL_PATH.match(path)
        if match and not match.group(2) and self._multi_model():
            self._registry_call(lambda: self.server.unload(match.group(1)))
        else:
            self._not_found(path)

    def do_PUT(self) -> None:
        self._error(HTTPStatus.METHOD_NOT_ALLOWED, f"PUT {self.path} is not supported")

    # -------------------------------------------------------------------------------
    def _not_found(self, path: str) -> None:
        if path in ("/ping", "/execution-parameters", "/invocations", "/models") or MODEL_PATH.match(path):
            self._error(HTTPStatus.METHOD_NOT_ALLOWED, f"{self.command} {path} is not supported")
        else:
            self._error(HTTPStatus.NOT_FOUND, f"no such resource: {path}")

    def _multi_model(self) -> bool:
        if self.server.settings.multi_model:
            return True
        self._error(HTTPStatus.NOT_FOUND, "the /models API needs SAGEMAKER_MULTI_MODEL=true")
        return False

    def _registry_call(self, call, status: HTTPStatus = HTTPStatus.OK) -> None:
        try:
            self._json(status, call())
        except RegistryError as error:
            self._error(error.status, str(error))

    def _invocations(self) -> None:
        if self.server.settings.multi_model:
            target = self.headers.get(TARGET_MODEL_HEADER)
            if not target:
                self._read_body(DRAIN_LIMIT)
                self._error(HTTPStatus.BAD_REQUEST, f"multi-model mode needs the {TARGET_MODEL_HEADER} header")
                return
            self._invoke(target)
        else:
            self._invoke(SINGLE_MODEL)

    def _invoke(self, name: str) -> None:
        body = self._read_body(self.server.settings.max_payload_bytes)
        if body is None:
            return
        if not self.server.ready.is_set():
            self._error(HTTPStatus.SERVICE_UNAVAILABLE, "the model is still loading")
            return
        if self.server.settings.multi_model and not self.server.registry.is_loaded(name):
            self._error(HTTPStatus.NOT_FOUND, f"model {name!r} is not loaded")
            return
        request = Part(body=body, content_type=self.headers.get("Content-Type"),
                       accept=self.headers.get("Accept"), attributes=self.headers.get(ATTRIBUTES_HEADER))
        answer = self.server.batcher(name).submit(
            request, count_images(body, request.content_type), self.server.settings.response_timeout_s + 5
        )
        headers = {}
        if answer.forward_id:
            headers = {FORWARD_HEADER: answer.forward_id, BATCH_HEADER: str(answer.batch_images)}
        self._send(answer.status, answer.body, answer.content_type or "application/json", headers)


def _failure(exc: Exception) -> Part:
    """The answer every request of a batch gets when the model server call failed."""
    status = HTTPStatus.SERVICE_UNAVAILABLE
    if isinstance(exc, ModelServerError) and 400 <= exc.status < 600:
        status = exc.status
    log.error("model server call failed: %s", exc)
    return Part(body=json.dumps({"error": f"model server: {exc}"}).encode(),
                content_type="application/json", status=status)
