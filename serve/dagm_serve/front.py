"""The HTTP server SageMaker talks to, on SAGEMAKER_BIND_TO_PORT (default 8080).

  GET  /ping                    200, empty body, once the model is loaded and warm and
                                while a worker can answer (503 while MMS restarts)
  GET  /execution-parameters    batch transform's settings
  POST /invocations             decoded here, batched (batcher.py), one MMS call per batch
                                (X-Amzn-SageMaker-Target-Model names the model in MME mode)
  /models...                    the multi-model API (models.py), when SAGEMAKER_MULTI_MODEL

Built on aiohttp, a maintained asyncio server and client in one library: an idle or
half-sent connection costs a socket, not a thread, so /ping answers at once under
hundreds of them; the client side pools connections to MMS and closes any whose
exchange failed. What aiohttp leaves out is here: a deadline on reading a body, an
idle deadline and a cap on open connections (connections.py), a bounded queue
answered 503 with Retry-After, and draining in-flight requests on shutdown (serve.py).

Each request is decoded and checked here, in a small thread pool, before it can join a
batch (codec.py): a bad request gets its own 4xx and never reaches a worker, so its
neighbours cannot fail with it. The worker receives uint8 arrays already placed on the
model's canvas (placement.py, as in training; wire.py). A 5xx always means the server
is at fault.
"""

from __future__ import annotations

import asyncio
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus

import aiohttp
import numpy as np
from aiohttp import web

from dagm_defects.placement import Canvas, map_extent, place
from dagm_serve import wire
from dagm_serve.batch_files import BatchFiles, Exchange
from dagm_serve.batcher import Batcher, Closed, Outputs, QueueFull
from dagm_serve.codec import PNG, RequestError, check_answerable, decode_request, encode_response, negotiate
from dagm_serve.connections import ConnectionGuard
from dagm_serve.environment import ServingSettings
from dagm_serve.model_server import ModelServerError, error_message
from dagm_serve.models import LoadedModel, ModelRegistry, RegistryError
from dagm_serve.options import HEADER as ATTRIBUTES_HEADER
from dagm_serve.options import RequestOptions, parse_options
from dagm_serve.prediction import Prediction
from dagm_serve.supervisor import POLL_S, Supervisor

log = logging.getLogger(__name__)

SINGLE_MODEL = "model"
TARGET_MODEL_HEADER = "X-Amzn-SageMaker-Target-Model"
# Which forward pass answered, and how many images it had: equal ids, one pass.
FORWARD_HEADER = "X-Dagm-Forward-Id"
BATCH_HEADER = "X-Dagm-Batch-Images"
RETRY_AFTER_S = 1
# Answers of up to this many images without masks are encoded on the event loop (at
# most 0.3 ms an image: only defective ones need their map scaled up).
INLINE_ANSWER_IMAGES = 16
MANAGEMENT_BODY_LIMIT = 1024 * 1024


def _json(document, status: int = HTTPStatus.OK, headers: dict | None = None) -> web.Response:
    return web.Response(body=json.dumps(document).encode(), status=int(status), headers=headers,
                        content_type="application/json")


def _error(status: int, message: str, headers: dict | None = None) -> web.Response:
    return _json({"error": message}, status, headers)


class Front:
    def __init__(self, settings: ServingSettings, registry: ModelRegistry, supervisor: Supervisor,
                 batch_files: BatchFiles):
        self.settings = settings
        self.batch_files = batch_files
        self.registry = registry
        self.supervisor = supervisor
        self.ready = False  # the first load finished
        self.guard = ConnectionGuard(settings.max_connections, settings.idle_timeout_s)
        self._decoder = ThreadPoolExecutor(settings.decode_threads, thread_name_prefix="decode")
        self._batchers: dict[str, Batcher] = {}
        self._session: aiohttp.ClientSession | None = None
        self.app = web.Application(client_max_size=settings.max_payload_bytes,
                                   middlewares=[self.guard.middleware, self._json_errors])
        self.app.add_routes([
            web.get("/ping", self.ping),
            web.get("/execution-parameters", self.execution_parameters),
            web.post("/invocations", self.invocations),
            web.get("/models", self.list_models),
            web.post("/models", self.load_model),
            web.get("/models/{name}", self.describe_model),
            web.delete("/models/{name}", self.unload_model),
            web.post("/models/{name}/invoke", self.invoke_model),
        ])
        self.app.on_startup.append(self._start)
        self.app.on_cleanup.append(self._stop)

    async def _start(self, _app) -> None:
        timeout = aiohttp.ClientTimeout(total=self.settings.response_timeout_s)
        self._session = aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0))
        self.guard.start()

    async def _stop(self, _app) -> None:
        """After the in-flight requests were answered (aiohttp drains them first)."""
        for batcher in list(self._batchers.values()):
            await batcher.close()
        await self.guard.stop()
        if self._session is not None:
            await self._session.close()
        self._decoder.shutdown(wait=False, cancel_futures=True)

    @web.middleware
    async def _json_errors(self, request: web.Request, handler) -> web.StreamResponse:
        """Every refusal as a JSON {"error": ...} body with its own status."""
        try:
            return await handler(request)
        except RequestError as error:
            return _error(error.status, error.message)
        except web.HTTPRequestEntityTooLarge as exc:
            return _error(exc.status, f"payload is over the {self.settings.max_payload_mb} MB limit "
                                      "(SAGEMAKER_MAX_PAYLOAD_IN_MB)")
        except web.HTTPException as exc:
            if exc.status == HTTPStatus.METHOD_NOT_ALLOWED:
                return _error(exc.status, f"{request.method} {request.path} is not supported")
            if exc.status == HTTPStatus.NOT_FOUND:
                return _error(exc.status, f"no such resource: {request.path}")
            return _error(exc.status, exc.reason)

    # GET ---------------------------------------------------------------------------
    async def ping(self, _request: web.Request) -> web.Response:
        if not self.ready:
            return _error(HTTPStatus.SERVICE_UNAVAILABLE, "the model is still loading")
        if not self.supervisor.available.is_set():
            return _error(HTTPStatus.SERVICE_UNAVAILABLE, "the model workers are restarting")
        return web.Response(status=HTTPStatus.OK)

    async def execution_parameters(self, _request: web.Request) -> web.Response:
        return _json(self.settings.execution_parameters())

    # The multi-model API -----------------------------------------------------------
    def _multi_model(self) -> None:
        if not self.settings.multi_model:
            raise RequestError(HTTPStatus.NOT_FOUND, "the /models API needs SAGEMAKER_MULTI_MODEL=true")

    async def _registry_call(self, call, *args) -> web.Response:
        self._multi_model()
        try:
            return _json(await asyncio.get_running_loop().run_in_executor(None, call, *args))
        except RegistryError as error:
            return _error(error.status, str(error))

    async def list_models(self, _request: web.Request) -> web.Response:
        self._multi_model()
        return _json({"models": self.registry.list()})

    async def describe_model(self, request: web.Request) -> web.Response:
        return await self._registry_call(self.registry.describe, request.match_info["name"])

    async def load_model(self, request: web.Request) -> web.Response:
        self._multi_model()
        if request.content_length is not None and request.content_length > MANAGEMENT_BODY_LIMIT:
            return _error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"a load request is at most {MANAGEMENT_BODY_LIMIT} bytes")
        return await self._registry_call(self.registry.load_request, await self._read(request))

    async def unload_model(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        answer = await self._registry_call(self.registry.unload, name)
        batcher = self._batchers.pop(name, None) if answer.status == HTTPStatus.OK else None
        if batcher is not None:
            await batcher.close()
        return answer

    # Invocations -------------------------------------------------------------------
    async def invocations(self, request: web.Request) -> web.Response:
        if not self.settings.multi_model:
            return await self._invoke(request, SINGLE_MODEL)
        target = request.headers.get(TARGET_MODEL_HEADER)
        if not target:
            return _error(HTTPStatus.BAD_REQUEST, f"multi-model mode needs the {TARGET_MODEL_HEADER} header")
        return await self._invoke(request, target)

    async def invoke_model(self, request: web.Request) -> web.Response:
        self._multi_model()
        return await self._invoke(request, request.match_info["name"])

    async def _read(self, request: web.Request) -> bytes:
        """The body, within the idle deadline (a client that stops sending mid-body is
        answered 408 instead of holding its request open)."""
        try:
            return await asyncio.wait_for(request.read(), self.settings.idle_timeout_s)
        except asyncio.TimeoutError:
            raise RequestError(HTTPStatus.REQUEST_TIMEOUT,
                               f"the body did not arrive within {self.settings.idle_timeout_s} s "
                               "(DAGM_IDLE_TIMEOUT_SECONDS)") from None

    async def _invoke(self, request: web.Request, name: str) -> web.Response:
        body = await self._read(request)
        if not self.ready:
            return _error(HTTPStatus.SERVICE_UNAVAILABLE, "the model is still loading")
        model = self.registry.get(name)
        if model is None:
            return _error(HTTPStatus.NOT_FOUND, f"model {name!r} is not loaded")
        accept = negotiate(request.headers.get("Accept"))
        options = parse_options(request.headers.get(ATTRIBUTES_HEADER))
        loop = asyncio.get_running_loop()
        images, resized = await loop.run_in_executor(
            self._decoder, self._decode, body, request.headers.get("Content-Type"), model.canvas)
        check_answerable(accept, len(images))
        try:
            outputs = await self._batcher(name).submit(resized, self.settings.response_timeout_s)
        except QueueFull as exc:
            return _error(HTTPStatus.SERVICE_UNAVAILABLE, f"the server is at capacity ({exc}); retry shortly",
                          {"Retry-After": str(RETRY_AFTER_S)})
        except Closed:
            return _error(HTTPStatus.NOT_FOUND, f"model {name!r} was unloaded")
        except asyncio.TimeoutError:
            return _error(HTTPStatus.SERVICE_UNAVAILABLE,
                          f"no answer within {self.settings.response_timeout_s} s (SAGEMAKER_MODEL_SERVER_TIMEOUT)",
                          {"Retry-After": str(RETRY_AFTER_S)})
        except ModelServerError as exc:
            log.error("model server call failed: %s", exc)
            return _error(exc.status if 500 <= exc.status < 600 else HTTPStatus.INTERNAL_SERVER_ERROR,
                          f"model server: {exc}")
        if options.mask or accept == PNG or len(images) > INLINE_ANSWER_IMAGES:
            answer = await loop.run_in_executor(self._decoder, _answer, images, outputs, model, options, accept)
        else:  # a few JSON records cost less than the hand-off to a thread (~0.1 ms vs ~1 ms)
            answer = _answer(images, outputs, model, options, accept)
        return web.Response(body=answer, headers={
            "Content-Type": accept, FORWARD_HEADER: outputs.forward_id, BATCH_HEADER: str(outputs.batch_images)})

    def _decode(self, body: bytes, content_type: str | None, canvas: Canvas) -> tuple[list[np.ndarray], np.ndarray]:
        images = decode_request(body, content_type, self.settings.limits())
        return images, np.stack([place(image, canvas) for image in images])

    def _batcher(self, name: str) -> Batcher:
        if name not in self._batchers:
            s = self.settings
            self._batchers[name] = Batcher(lambda images: self._send(name, images), s.server_batch_size,
                                           s.server_batch_delay_ms / 1000, s.workers, s.max_queued_requests)
        return self._batchers[name]

    async def _send(self, name: str, images: np.ndarray) -> tuple[str, np.ndarray, np.ndarray]:
        """One MMS call for one batch. A batch that fails because a worker or MMS died is
        sent once more after the supervisor restarted them: inference has no side effects."""
        try:
            return await self._exchange(name, images)
        except ModelServerError:
            await asyncio.sleep(2 * POLL_S)
            if self.supervisor.available.is_set():
                raise
            return await self._exchange(name, images)

    async def _exchange(self, name: str, images: np.ndarray) -> tuple[str, np.ndarray, np.ndarray]:
        await self.supervisor.available.wait()
        url = f"http://127.0.0.1:{self.registry.server.ports.inference}/predictions/{name}"
        with self.batch_files.exchange() as files:
            response = None
            try:
                response = await self._session.post(url, data=_batch_body(images, files),
                                                    headers={"Content-Type": wire.CONTENT_TYPE})
                data = await response.read()
            except BaseException as exc:
                if response is not None:
                    response.close()  # a connection whose exchange failed is closed, never reused
                if isinstance(exc, asyncio.TimeoutError):
                    self.supervisor.report_hang(f"a batch got no answer within {self.settings.response_timeout_s} s")
                    raise ModelServerError(HTTPStatus.SERVICE_UNAVAILABLE,
                                           "the model worker did not answer in time") from None
                if isinstance(exc, aiohttp.ClientError):
                    raise ModelServerError(HTTPStatus.SERVICE_UNAVAILABLE, f"connection failed ({exc})") from None
                raise
            if response.status != HTTPStatus.OK:
                raise ModelServerError(response.status, error_message(data))
            meta, (scores, maps) = wire.unpack(data, self.batch_files.directory)
        return meta["forward_id"], scores, maps


def _batch_body(images: np.ndarray, files: Exchange | None) -> bytes:
    """The MMS body for one batch: the pixels in its batch file, else inline."""
    if files is None:
        return wire.pack({}, [images])
    return wire.pack_into({"answer": str(files.answer)}, [images], files.batch)


def _answer(images: list[np.ndarray], outputs: Outputs, model: LoadedModel, options: RequestOptions,
            accept: str) -> bytes:
    threshold = model.threshold if options.threshold is None else options.threshold
    predictions = [Prediction.from_outputs(score, prob_map, image.shape, threshold,
                                           map_extent(image.shape, model.canvas, prob_map.shape))
                   for image, score, prob_map in zip(images, outputs.scores, outputs.maps)]
    return encode_response(predictions, accept, options.mask)
