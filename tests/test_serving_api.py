"""The endpoint API over HTTP, against `serve` started as the image starts it, serving the
model a real training run wrote."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from dagm_defects.artifact import load_artifact
from dagm_defects.model import predict
from dagm_defects.placement import place

from conftest import Server, jpeg, npy, png

pytestmark = pytest.mark.slow






def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def served(trained_job, tmp_path_factory):
    server = Server(trained_job.model_dir, tmp=tmp_path_factory.mktemp("serve"))
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def samples(tiny_dataset) -> list[np.ndarray]:
    """Real test images of the dataset the model was trained on (128x128, 8-bit)."""
    paths = sorted((tiny_dataset / "Class1" / "Test").glob("*.PNG"))[:4]
    return [np.asarray(Image.open(p)) for p in paths]


def test_png_prediction_matches_the_model_called_in_process(served, trained_job, samples):
    artifact = load_artifact(trained_job.model_dir)
    batch = torch.from_numpy(np.stack([place(s, artifact.config.canvas) for s in samples])).unsqueeze(1)
    expected, _ = predict(artifact.model, batch)
    for sample, want in zip(samples, expected.tolist()):
        reply = served.post("/invocations", png(sample), "image/png")
        assert reply.status == 200, reply.body
        assert reply.headers["Content-Type"] == "application/json"
        (prediction,) = reply.json()["predictions"]
        assert prediction["score"] == pytest.approx(want, abs=1e-4)
        assert prediction["threshold"] == pytest.approx(artifact.threshold)
        assert prediction["defective"] == (prediction["score"] >= prediction["threshold"])
        assert set(prediction) == {"score", "defective", "threshold", "defect_area_px", "bbox"}


def test_every_request_content_type_gives_the_same_scores(served, samples):
    single = [served.post("/invocations", png(s), "image/png").json()["predictions"][0]["score"] for s in samples]
    replies = {
        "npy NxHxW": served.post("/invocations", npy(np.stack(samples)), "application/x-npy"),
        "json": served.post("/invocations", json.dumps({"instances": [{"b64": b64(png(s))} for s in samples]}).encode(),
                            "application/json"),
        "jsonlines": served.post("/invocations", "".join(json.dumps({"b64": b64(png(s))}) + "\n" for s in samples).encode(),
                                 "application/jsonlines", Accept="application/json"),
    }
    for name, reply in replies.items():
        assert reply.status == 200, (name, reply.body)
        scores = [p["score"] for p in reply.json()["predictions"]]
        assert scores == pytest.approx(single, abs=1e-5), name
        assert reply.headers["X-Dagm-Batch-Images"] == str(len(samples)), name  # one forward pass
    one_npy = served.post("/invocations", npy(samples[0]), "application/x-npy").json()["predictions"]
    assert [p["score"] for p in one_npy] == pytest.approx(single[:1], abs=1e-5)
    # JPEG is lossy, so only close.
    jpeg_score = served.post("/invocations", jpeg(samples[0]), "image/jpeg").json()["predictions"][0]["score"]
    assert jpeg_score == pytest.approx(single[0], abs=0.1)


def test_colour_and_other_sizes_are_converted_and_answered_in_the_callers_pixels(served, samples):
    gray = samples[0]
    rgb = np.repeat(gray[:, :, None], 3, axis=2)
    reply = served.post("/invocations", png(rgb), "image/png")
    gray_reply = served.post("/invocations", png(gray), "image/png")
    assert reply.json()["predictions"][0]["score"] == pytest.approx(gray_reply.json()["predictions"][0]["score"], abs=1e-5)

    wide = np.asarray(Image.fromarray(gray).resize((300, 200)))
    reply = served.post("/invocations", png(wide), "image/png", Accept="image/png",
                        X_Amzn_SageMaker_Custom_Attributes="threshold=0")
    assert reply.status == 200 and reply.headers["Content-Type"] == "image/png"
    mask = Image.open(io.BytesIO(reply.body))
    assert mask.size == (300, 200) and mask.mode == "L"


def test_accept_types(served, samples):
    body = npy(np.stack(samples[:2]))
    lines = served.post("/invocations", body, "application/x-npy", Accept="application/jsonlines")
    assert lines.status == 200 and lines.headers["Content-Type"] == "application/jsonlines"
    assert [json.loads(line)["score"] for line in lines.body.decode().splitlines()] == \
        [p["score"] for p in served.post("/invocations", body, "application/x-npy").json()["predictions"]]

    maps = served.post("/invocations", body, "application/x-npy", Accept="application/x-npy")
    assert maps.status == 200 and maps.headers["Content-Type"] == "application/x-npy"
    array = np.load(io.BytesIO(maps.body), allow_pickle=False)
    assert array.dtype == np.float32 and array.shape == (2, 8, 8)  # image_size 64 / 8
    assert 0.0 <= array.min() and array.max() <= 1.0

    for accept in ("*/*", "application/*", "text/html, application/json;q=0.9"):
        reply = served.post("/invocations", png(samples[0]), "image/png", Accept=accept)
        assert reply.status == 200 and reply.headers["Content-Type"] == "application/json", accept


def test_custom_attributes_threshold_and_mask(served, samples):
    image = png(samples[0])
    always = served.post("/invocations", image, "image/png",
                         X_Amzn_SageMaker_Custom_Attributes="trace=abc; threshold=0, mask=true")
    (prediction,) = always.json()["predictions"]
    assert prediction["defective"] is True and prediction["threshold"] == 0.0
    mask = np.asarray(Image.open(io.BytesIO(base64.b64decode(prediction["mask_png_b64"]))))
    assert mask.shape == samples[0].shape
    assert int((mask > 0).sum()) == prediction["defect_area_px"]
    rows, cols = np.nonzero(mask)
    expected = [int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1] if len(rows) else None
    assert prediction["bbox"] == expected  # the non-empty case is pinned in test_prediction_bbox_and_area

    never = served.post("/invocations", image, "image/png", X_Amzn_SageMaker_Custom_Attributes="threshold=1,mask=false")
    (prediction,) = never.json()["predictions"]
    assert prediction["threshold"] == 1.0 and "mask_png_b64" not in prediction
    assert prediction["defective"] is (prediction["score"] >= 1.0)
    assert prediction["defective"] or (prediction["bbox"] is None and prediction["defect_area_px"] == 0)


def _bad_requests(sample: np.ndarray) -> dict[str, tuple[bytes, dict, int, str]]:
    """name -> (body, headers, expected status, a word the error must contain)."""
    good = png(sample)
    sixteen_bit = png(sample.astype(np.uint16) * 257)
    huge = png(np.zeros((4200, 4200), np.uint8))
    ct = "Content-Type"
    return {
        "garbage png": (b"\x89PNG garbage", {ct: "image/png"}, 400, "not a PNG image"),
        "truncated png": (good[: len(good) // 2], {ct: "image/png"}, 400, "image"),
        "garbage jpeg": (b"\xff\xd8\xff not really", {ct: "image/jpeg"}, 400, "image"),
        "empty body": (b"", {ct: "image/png"}, 400, "empty"),
        "unsupported content type": (b"1,2,3", {ct: "text/csv"}, 415, "text/csv"),
        "missing content type": (good, {}, 415, "Content-Type"),
        "unsupported accept": (good, {ct: "image/png", "Accept": "text/html"}, 406, "text/html"),
        "png accept for two images": (npy(np.stack([sample, sample])), {ct: "application/x-npy", "Accept": "image/png"},
                                      400, "single image"),
        "json not json": (b"{nope", {ct: "application/json"}, 400, "JSON"),
        "json wrong shape": (b'{"images": []}', {ct: "application/json"}, 400, "instances"),
        "json instance not object": (b'{"instances": ["abc"]}', {ct: "application/json"}, 400, "instances[0]"),
        "json bad base64": (b'{"instances": [{"b64": "***"}]}', {ct: "application/json"}, 400, "base64"),
        "json b64 of garbage": (json.dumps({"instances": [{"b64": b64(b"nope")}]}).encode(), {ct: "application/json"},
                                400, "instances[0]"),
        "jsonlines bad line": (b'{"b64": "' + b64(good).encode() + b'"}\nnot json\n', {ct: "application/jsonlines"},
                               400, "line 2"),
        "npy float": (npy(sample.astype(np.float32)), {ct: "application/x-npy"}, 400, "uint8"),
        "npy 4-d": (npy(sample[None, None]), {ct: "application/x-npy"}, 400, "NxHxW"),
        "npy pickle": (npy(np.array([{"a": 1}], dtype=object)), {ct: "application/x-npy"}, 400, "npy"),
        "npy garbage": (b"\x93NUMPY garbage", {ct: "application/x-npy"}, 400, "npy"),
        "16-bit png": (sixteen_bit, {ct: "image/png"}, 400, "16-bit"),
        "huge dimensions": (huge, {ct: "image/png"}, 400, "4200x4200"),
        "too many images": (npy(np.zeros((65, 8, 8), np.uint8)), {ct: "application/x-npy"}, 413, "at most 64"),
        "over the payload limit": (b"\0" * (6 * 1024 * 1024 + 1), {ct: "image/png"}, 413, "6 MB"),
        "threshold not a number": (good, {ct: "image/png", "X-Amzn-SageMaker-Custom-Attributes": "threshold=high"},
                                   400, "threshold"),
        "threshold out of range": (good, {ct: "image/png", "X-Amzn-SageMaker-Custom-Attributes": "threshold=1.5"},
                                   400, "threshold"),
        "mask not a bool": (good, {ct: "image/png", "X-Amzn-SageMaker-Custom-Attributes": "mask=maybe"}, 400, "mask"),
    }


def test_bad_input_gets_a_named_4xx_and_the_worker_keeps_serving(served, samples):
    good = png(samples[0])
    first = served.post("/invocations", good, "image/png")
    worker = first.headers["X-Dagm-Forward-Id"].split("-")[0]
    failures = []
    for name, (body, headers, status, word) in _bad_requests(samples[0]).items():
        reply = served.request("POST", "/invocations", body, headers)
        error = reply.json().get("error", "") if reply.headers.get("Content-Type") == "application/json" else ""
        if reply.status != status or word.lower() not in error.lower():
            failures.append(f"{name}: {reply.status} {reply.body[:200]!r}")
        after = served.post("/invocations", good, "image/png")
        if after.status != 200 or after.headers["X-Dagm-Forward-Id"].split("-")[0] != worker:
            failures.append(f"after {name}: {after.status}, worker {after.headers.get('X-Dagm-Forward-Id')}")
    assert not failures, "\n".join(failures)


def test_http_level_errors(served):
    assert served.request("GET", "/nope").status == 404
    assert served.request("GET", "/invocations").status == 405
    assert served.request("PUT", "/ping").status == 405
    reply = served.request("GET", "/models")
    assert reply.status == 404 and "SAGEMAKER_MULTI_MODEL" in reply.json()["error"]
    ping = served.request("GET", "/ping")
    assert ping.status == 200 and ping.body == b""
    assert served.request("GET", "/execution-parameters").json() == {
        "MaxConcurrentTransforms": 1, "BatchStrategy": "MULTI_RECORD", "MaxPayloadInMB": 6}
