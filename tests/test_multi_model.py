"""Multi-model mode (SAGEMAKER_MULTI_MODEL=true): the /models API over HTTP."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest

from conftest import nan_model, npy

pytestmark = pytest.mark.slow




def load(server, name: str, url) -> tuple[int, dict]:
    reply = server.post("/models", json.dumps({"model_name": name, "url": str(url)}).encode(), "application/json")
    return reply.status, reply.json()


def test_load_list_invoke_unload(start_server, untrained_model, trained_job, tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    server = start_server(store, SAGEMAKER_MULTI_MODEL="true")
    assert server.request("GET", "/models").json() == {"models": []}
    image = npy(np.zeros((64, 64), np.uint8))

    assert load(server, "plain", untrained_model) == (200, {"status": "model 'plain' loaded"})
    packed = tmp_path / "packed"
    packed.mkdir()
    with tarfile.open(packed / "model.tar.gz", "w:gz") as tar:
        for path in trained_job.model_dir.iterdir():
            tar.add(path, arcname=path.name)
    assert load(server, "trained", packed)[0] == 200

    status, body = load(server, "plain", untrained_model)
    assert status == 409 and "already loaded" in body["error"]
    listed = server.request("GET", "/models").json()["models"]
    assert listed == [{"modelName": "plain", "modelUrl": str(untrained_model)},
                      {"modelName": "trained", "modelUrl": str(packed)}]
    assert server.request("GET", "/models/trained").json() == {"modelName": "trained", "modelUrl": str(packed)}

    plain = server.post("/models/plain/invoke", image, "application/x-npy")
    trained = server.post("/models/trained/invoke", image, "application/x-npy")
    assert plain.status == trained.status == 200
    assert plain.json()["predictions"][0]["score"] != trained.json()["predictions"][0]["score"]
    targeted = server.post("/invocations", image, "application/x-npy", X_Amzn_SageMaker_Target_Model="trained")
    assert targeted.json() == trained.json()
    untargeted = server.post("/invocations", image, "application/x-npy")
    assert untargeted.status == 400 and "X-Amzn-SageMaker-Target-Model" in untargeted.json()["error"]

    assert server.request("DELETE", "/models/plain").status == 200
    assert server.request("DELETE", "/models/plain").status == 404
    assert server.request("GET", "/models/plain").status == 404
    gone = server.post("/models/plain/invoke", image, "application/x-npy")
    assert gone.status == 404 and "not loaded" in gone.json()["error"]
    assert [m["modelName"] for m in server.request("GET", "/models").json()["models"]] == ["trained"]
    # Unloading one model leaves the other serving.
    assert server.post("/models/trained/invoke", image, "application/x-npy").json() == trained.json()


def test_bad_load_requests(start_server, untrained_model, tmp_path):
    server = start_server(tmp_path, SAGEMAKER_MULTI_MODEL="true")
    unsafe = tmp_path / "unsafe"
    unsafe.mkdir()
    with tarfile.open(unsafe / "model.tar.gz", "w:gz") as tar:
        info = tarfile.TarInfo("../escape")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    cases = {
        "not json": (b"{", 400, "JSON"),
        "wrong shape": (b'{"name": "x"}', 400, "model_name"),
        "bad name": (json.dumps({"model_name": "../x", "url": str(untrained_model)}).encode(), 400, "model name"),
        "missing url": (json.dumps({"model_name": "x", "url": str(tmp_path / "nope")}).encode(), 400, "does not exist"),
        "unsafe archive": (json.dumps({"model_name": "x", "url": str(unsafe)}).encode(), 400, "points outside"),
    }
    for name, (body, status, word) in cases.items():
        reply = server.post("/models", body, "application/json")
        assert reply.status == status and word in reply.json()["error"], (name, reply.body)
    assert server.request("GET", "/models").json() == {"models": []}
    # Weights that load but answer NaN: the workers refuse them and their reason comes
    # back; the name stays free, and the server loads a good model under it.
    status, body = load(server, "x", nan_model(untrained_model, tmp_path / "nan"))
    assert status == 400 and "non-finite scores" in body["error"], body
    assert server.request("GET", "/models").json() == {"models": []}
    assert load(server, "x", untrained_model)[0] == 200
    assert server.post("/models/x/invoke", npy(np.zeros((64, 64), np.uint8)), "application/x-npy").status == 200


def test_out_of_memory_is_507(start_server, untrained_model, tmp_path):
    server = start_server(tmp_path, SAGEMAKER_MULTI_MODEL="true", DAGM_MEMORY_RESERVE_MB="9000000")
    status, body = load(server, "big", untrained_model)
    assert status == 507 and "not enough memory" in body["error"]
    assert server.request("GET", "/models").json() == {"models": []}
