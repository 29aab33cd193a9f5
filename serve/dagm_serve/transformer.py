"""sagemaker-inference's Transformer with true batching and per-request answers.

The toolkit's `Transformer.transform` calls `predict_fn` once per request, reads every
request's headers from request 0, and fails the whole batch when one request is bad.
Here each MMS request is a batch envelope from the front (envelope.py says why MMS's
own batching is not used): each client request in it is decoded and checked on its own
(its own status and content type), and all valid images of all of them go through the
model in a single forward pass.
"""

from __future__ import annotations

import logging
import os
import time
import traceback
from dataclasses import dataclass
from http import HTTPStatus

import numpy as np
import torch
from sagemaker_inference.transformer import Transformer

from dagm_defects.device import Device
from dagm_serve import environment, envelope
from dagm_serve.drift import InputWatch
from dagm_serve.codec import RequestError, check_answerable, decode_request, encode_response, negotiate
from dagm_serve.envelope import Part
from dagm_serve.options import RequestOptions, parse_options
from dagm_serve.predictor import Predictor

log = logging.getLogger(__name__)


@dataclass
class _Request:
    images: list[np.ndarray]
    accept: str
    options: RequestOptions


def _body(item: dict) -> bytes:
    body = item.get("body", item.get("data")) if isinstance(item, dict) else None
    if isinstance(body, str):
        return body.encode()
    return bytes(body or b"")


def _select_device(settings: environment.ServingSettings, gpu_id) -> Device:
    if settings.device == "cpu" or not torch.cuda.is_available():
        torch.set_num_threads(settings.threads_per_worker)
        return Device(torch.device("cpu"), settings.amp == "true")
    return Device.select(settings.amp, int(gpu_id or 0))


def _input_watch(settings: environment.ServingSettings, predictor: Predictor) -> InputWatch | None:
    """Input statistics for drift detection, where deploy.py named the endpoint and variant;
    a multi-model endpoint's models have no common training data to compare with."""
    if not (settings.endpoint_name and settings.variant_name) or settings.multi_model:
        return None
    import boto3  # only a worker that publishes pays for importing it

    try:
        cloudwatch = boto3.client("cloudwatch")
    except Exception as exc:  # e.g. no region: serve anyway, without drift metrics
        log.warning("input statistics will not be published: %s", exc)
        return None
    watch = InputWatch(predictor.artifact.metadata.get("training_statistics") or {}, settings.endpoint_name,
                       settings.variant_name, settings.drift_publish_s, cloudwatch)
    watch.start()
    return watch


def error_part(error: RequestError) -> Part:
    return Part(body=error.body(), content_type="application/json", status=error.status_code)


class BatchTransformer(Transformer):
    def __init__(self):
        super().__init__()
        self._predictor: Predictor | None = None
        self._settings: environment.ServingSettings | None = None
        self._watch: InputWatch | None = None

    @property
    def predictor(self) -> Predictor | None:
        return self._predictor

    def validate_and_initialize(self, model_dir=None, context=None):
        if self._initialized:
            return
        self._settings = environment.from_env()
        gpu_id = context.system_properties.get("gpu_id") if context else None
        started = time.monotonic()
        self._predictor = Predictor.load(model_dir, _select_device(self._settings, gpu_id))
        self._predictor.warm_up(self._settings.server_batch_size)
        self._watch = _input_watch(self._settings, self._predictor)
        self._initialized = True
        # MMS copies worker output into its log: this line is the worker's readiness.
        print(f"worker {os.getpid()}: model {model_dir} loaded and warmed up "
              f"(batch {self._settings.server_batch_size}) in {time.monotonic() - started:.2f} s", flush=True)

    def transform(self, data, context):
        # No MMS-level content type or headers: see envelope.py. Errors travel in the envelope.
        answers = []
        for item in data:
            try:
                answers.append(envelope.pack(self.answer(envelope.unpack(_body(item)))))
            except envelope.EnvelopeError as exc:
                answers.append(envelope.pack([error_part(RequestError(HTTPStatus.BAD_REQUEST, str(exc)))]))
        return answers

    def _parse(self, part: Part) -> _Request:
        accept = negotiate(part.accept)
        options = parse_options(part.attributes)
        images = decode_request(part.body, part.content_type, self._settings.max_images_per_request)
        check_answerable(accept, len(images))
        return _Request(images, accept, options)

    def answer(self, parts: list[Part]) -> list[Part]:
        answers: list[Part | None] = [None] * len(parts)
        requests: dict[int, _Request] = {}
        for i, part in enumerate(parts):
            try:
                requests[i] = self._parse(part)
            except RequestError as error:
                answers[i] = error_part(error)
        try:
            if requests:
                self._predict(requests, answers)
        except Exception as exc:  # a bug or a device failure: answer 500, keep the worker
            log.error("inference failed: %s\n%s", exc, traceback.format_exc())
            failure = error_part(RequestError(HTTPStatus.INTERNAL_SERVER_ERROR, f"inference failed: {exc}"))
            for i in requests:
                answers[i] = failure
        return answers

    def _predict(self, requests: dict[int, _Request], answers: list) -> None:
        images, thresholds = [], []
        for request in requests.values():
            images.extend(request.images)
            thresholds.extend([request.options.threshold] * len(request.images))
        predictions = iter(self._predictor.predict(images, thresholds, self._watch and self._watch.observe))
        forward_id = self._predictor.forward_id
        for i, request in requests.items():
            mine = [next(predictions) for _ in request.images]
            answers[i] = Part(body=encode_response(mine, request.accept, request.options.mask),
                              content_type=request.accept, status=HTTPStatus.OK,
                              forward_id=forward_id, batch_images=len(images))
