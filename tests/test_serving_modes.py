"""The serving image behind an asynchronous endpoint (DAGM_ASYNC_INFERENCE=true, which
dagm-deploy sets): the payloads async inference exists for, through the real `serve`."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest

from conftest import npy, png

pytestmark = pytest.mark.slow


def frames(count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, 512, 512), dtype=np.uint8)


def test_async_mode_answers_a_64_image_batch_and_a_50_mb_json_lines_file(start_server, untrained_model):
    batch_server = start_server(untrained_model, DAGM_ASYNC_INFERENCE="true")
    images = frames(64, seed=1)
    body = npy(images)
    assert len(body) > 16 * 2**20
    reply = batch_server.post("/invocations", body, "application/x-npy")
    assert reply.status == 200, reply.body
    predictions = reply.json()["predictions"]
    assert len(predictions) == 64
    # The same images one request at a time: a batch answers what single requests answer.
    for index in (0, 31, 63):
        single = batch_server.post("/invocations", png(images[index]), "image/png")
        assert single.json()["predictions"][0]["score"] == pytest.approx(predictions[index]["score"], abs=1e-5)

    lines = [json.dumps({"b64": base64.b64encode(png(image)).decode()}).encode() for image in frames(150, seed=2)]
    jsonlines = b"\n".join(lines)
    assert len(jsonlines) > 50 * 10**6
    reply = batch_server.post("/invocations", jsonlines, "application/jsonlines", Accept="application/jsonlines")
    assert reply.status == 200, reply.body
    answers = [json.loads(line) for line in reply.body.splitlines()]
    assert len(answers) == 150 and all(0.0 <= a["score"] <= 1.0 for a in answers)


def test_a_real_time_server_refuses_what_only_async_takes(start_server, untrained_model):
    server = start_server(untrained_model)
    reply = server.post("/invocations", npy(frames(64, seed=1)), "application/x-npy")
    assert reply.status == 413
    assert "6 MB" in reply.body.decode()
