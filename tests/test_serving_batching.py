"""Batching across requests (one forward pass per MMS batch) and batch transform."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest

from conftest import concurrently, npy, png

pytestmark = pytest.mark.slow






def test_concurrent_requests_share_one_forward_pass_and_keep_their_own_answers(start_server, untrained_model):
    # A long delay makes MMS wait for the whole batch, so the grouping is deterministic.
    server = start_server(untrained_model, DAGM_SERVER_BATCH_SIZE="5", DAGM_SERVER_BATCH_DELAY_MS="3000")
    rng = np.random.default_rng(1)
    images = rng.integers(0, 255, (4, 64, 64), dtype=np.uint8)
    solo = [server.post("/invocations", png(i), "image/png").json()["predictions"][0]["score"] for i in images[:1]]

    replies = concurrently(server, [
        (png(images[0]), {"Content-Type": "image/png", "X-Amzn-SageMaker-Custom-Attributes": "threshold=0"}),
        (npy(images[1:3]), {"Content-Type": "application/x-npy", "X-Amzn-SageMaker-Custom-Attributes": "threshold=1"}),
        (b"garbage", {"Content-Type": "image/png"}),
        (json.dumps({"instances": [{"b64": base64.b64encode(png(images[3])).decode()}]}).encode(),
         {"Content-Type": "application/json", "Accept": "application/jsonlines"}),
    ])
    good = [replies[0], replies[1], replies[3]]
    assert [r.status for r in replies] == [200, 200, 400, 200], [r.body[:200] for r in replies]
    assert "not a PNG image" in replies[2].json()["error"]
    assert len({r.headers["X-Dagm-Forward-Id"] for r in good}) == 1  # one forward pass for the batch
    assert {r.headers["X-Dagm-Batch-Images"] for r in good} == {"4"}
    first = replies[0].json()["predictions"]
    assert first[0]["threshold"] == 0.0 and first[0]["defective"] is True
    assert first[0]["score"] == pytest.approx(solo[0], abs=1e-5)
    assert [p["threshold"] for p in replies[1].json()["predictions"]] == [1.0, 1.0]
    assert replies[3].headers["Content-Type"] == "application/jsonlines"
    assert len(replies[3].body.decode().splitlines()) == 1


def test_batch_transform_settings_and_large_payloads(start_server, untrained_model):
    server = start_server(untrained_model, SAGEMAKER_BATCH="true", SAGEMAKER_MAX_PAYLOAD_IN_MB="20",
                          SAGEMAKER_BATCH_STRATEGY="single_record", SAGEMAKER_MAX_CONCURRENT_TRANSFORMS="3")
    assert server.request("GET", "/execution-parameters").json() == {
        "MaxConcurrentTransforms": 3, "BatchStrategy": "SINGLE_RECORD", "MaxPayloadInMB": 20}
    ten_mb = npy(np.zeros((40, 512, 512), np.uint8))
    reply = server.post("/invocations", ten_mb, "application/x-npy", Accept="application/jsonlines")
    assert reply.status == 200, reply.body[:300]
    assert len(reply.body.decode().splitlines()) == 40
    too_big = server.post("/invocations", b"\0" * (20 * 1024 * 1024 + 1), "application/x-npy")
    assert too_big.status == 413 and "20 MB" in too_big.json()["error"]


def test_large_answers_in_full_batches_keep_the_worker_alive(start_server, untrained_model):
    # Many multi-kilobyte answers per batch: what kills MMS 1.1.11 workers under its own
    # batching (see dagm_serve/envelope.py).
    server = start_server(untrained_model, DAGM_SERVER_BATCH_SIZE="8", DAGM_SERVER_BATCH_DELAY_MS="50")
    rng = np.random.default_rng(2)
    request = (png(rng.integers(0, 255, (512, 512), dtype=np.uint8)),
               {"Content-Type": "image/png", "X-Amzn-SageMaker-Custom-Attributes": "threshold=0,mask=true"})
    workers, sizes = set(), []
    for _ in range(4):
        replies = concurrently(server, [request] * 8)
        assert {r.status for r in replies} == {200}, [r.body[:200] for r in replies]
        workers |= {r.headers["X-Dagm-Forward-Id"].split("-")[0] for r in replies}
        sizes += [int(r.headers["X-Dagm-Batch-Images"]) for r in replies]
        assert sum(len(r.body) for r in replies) > 4 * 2048
    assert len(workers) == 1  # never restarted
    assert max(sizes) > 1  # requests really were batched


def test_a_batch_never_holds_more_images_than_the_batch_size(start_server, untrained_model):
    server = start_server(untrained_model, DAGM_SERVER_BATCH_SIZE="3", DAGM_SERVER_BATCH_DELAY_MS="1000")
    one = (npy(np.zeros((64, 64), np.uint8)), {"Content-Type": "application/x-npy"})
    two = (npy(np.zeros((2, 64, 64), np.uint8)), {"Content-Type": "application/x-npy"})
    replies = concurrently(server, [one, two, one, two, one])
    assert {r.status for r in replies} == {200}
    sizes = {r.headers["X-Dagm-Forward-Id"]: int(r.headers["X-Dagm-Batch-Images"]) for r in replies}
    assert max(sizes.values()) <= 3 and sum(sizes.values()) == 7
