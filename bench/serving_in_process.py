"""The in-process side of bench/serving.py: what the server does for a request, without
the server."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from threadpoolctl import ThreadpoolController

from dagm_defects.placement import map_extent, place
from dagm_serve import environment
from dagm_serve.codec import JSON, decode_request, encode_response
from dagm_serve.prediction import Prediction
from dagm_serve.predictor import Predictor
from dagm_serve.service import select_device


class InProcess:
    """What the server does for a batch of requests, minus HTTP, MMS and the wire: the
    front's decode and placement (front.Front._decode), the worker's forward pass, the
    front's answer (front._answer) with no custom attributes and Accept JSON, with one
    BLAS thread as the front has (lifecycle.serve)."""

    def __init__(self, model_dir: Path, settings: environment.ServingSettings):
        self.limits = settings.limits()
        self.blas = ThreadpoolController()
        self.predictor = Predictor.load(model_dir, select_device(settings, None))
        self.predictor.warm_up(settings.server_batch_size)

    def decode(self, body: bytes, content_type: str) -> tuple[list[np.ndarray], np.ndarray]:
        images = decode_request(body, content_type, self.limits)
        canvas = self.predictor.canvas
        return images, np.stack([place(image, canvas) for image in images])

    def answer(self, requests: list[tuple[bytes, str]]) -> list[bytes]:
        """The answers to `requests` (body, content type), batched into one forward pass."""
        decoded = [self.decode(body, content_type) for body, content_type in requests]
        batch = np.concatenate([resized for _, resized in decoded]) if len(decoded) > 1 else decoded[0][1]
        scores, maps = self.predictor.forward(batch)
        answers, start, canvas = [], 0, self.predictor.canvas
        with self.blas.limit(limits=1, user_api="blas"):
            for images, _ in decoded:
                end = start + len(images)
                predictions = [Prediction.from_outputs(score, prob_map, image.shape, self.predictor.threshold,
                                                       map_extent(image.shape, canvas, prob_map.shape))
                               for image, score, prob_map in zip(images, scores[start:end], maps[start:end])]
                answers.append(encode_response(predictions, JSON, False))
                start = end
        return answers


def npy(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.save(out, array)
    return out.getvalue()


def max_score_difference(served: bytes, in_process: bytes) -> float:
    """How far the served scores are from the in-process ones for the same body."""
    pairs = zip(json.loads(served)["predictions"], json.loads(in_process)["predictions"], strict=True)
    return max(abs(a["score"] - b["score"]) for a, b in pairs)
