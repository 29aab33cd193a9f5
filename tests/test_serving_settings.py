"""Serving configuration, custom attributes and the front-to-worker wire format, through their parsers."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest

from dagm_defects.artifact import ArtifactError
from dagm_serve import environment, wire
from dagm_defects.archive import unpack
from dagm_serve.codec import RequestError
from dagm_serve.options import RequestOptions, parse_options
from dagm_serve.prediction import Prediction


def test_defaults_follow_the_sagemaker_contract(tmp_path):
    settings = environment.from_env({"SAGEMAKER_BASE_DIR": str(tmp_path)}, gpus=0)
    assert settings.port == 8080 and settings.workers == 1 and not settings.multi_model
    assert settings.model_dir == tmp_path / "model"
    assert settings.max_payload_bytes == 6 * 1024 * 1024
    assert settings.execution_parameters() == {
        "MaxConcurrentTransforms": 1, "BatchStrategy": "MULTI_RECORD", "MaxPayloadInMB": 6}
    assert settings.server_batch_size == 16 and settings.server_batch_delay_ms == 0
    on_gpus = environment.from_env({}, gpus=4)
    assert on_gpus.workers == 8 and on_gpus.server_batch_size == 64  # two workers per GPU: one decodes, one computes


def test_sagemaker_variables_are_read(tmp_path):
    settings = environment.from_env({
        "SAGEMAKER_BIND_TO_PORT": "9000", "SAGEMAKER_SAFE_PORT_RANGE": "20000-20999",
        "SAGEMAKER_MODEL_SERVER_WORKERS": "3", "SAGEMAKER_MULTI_MODEL": "TRUE", "SAGEMAKER_BATCH": "true",
        "SAGEMAKER_MAX_PAYLOAD_IN_MB": "50", "SAGEMAKER_BATCH_STRATEGY": "single_record",
        "SAGEMAKER_MAX_CONCURRENT_TRANSFORMS": "4", "SAGEMAKER_MODEL_SERVER_TIMEOUT": "120",
    }, gpus=0)
    assert (settings.port, settings.safe_port_range, settings.workers) == (9000, (20000, 20999), 3)
    assert settings.multi_model and settings.batch_transform and settings.response_timeout_s == 120
    assert settings.execution_parameters() == {
        "MaxConcurrentTransforms": 4, "BatchStrategy": "SINGLE_RECORD", "MaxPayloadInMB": 50}


@pytest.mark.parametrize("name, value", [
    ("SAGEMAKER_BIND_TO_PORT", "http"), ("SAGEMAKER_BIND_TO_PORT", "70000"),
    ("SAGEMAKER_SAFE_PORT_RANGE", "20999-20000"), ("SAGEMAKER_SAFE_PORT_RANGE", "20000"),
    ("SAGEMAKER_MULTI_MODEL", "maybe"), ("SAGEMAKER_MAX_PAYLOAD_IN_MB", "7"),
    ("DAGM_SERVER_BATCH_DELAY_MS", "-1"), ("DAGM_DEVICE", "tpu"),
    ("DAGM_ENDPOINT_NAME", "no_underscores"), ("DAGM_VARIANT_NAME", "-dash-first"),
    ("DAGM_DRIFT_PUBLISH_SECONDS", "0"),
])
def test_malformed_values_name_the_variable(name, value):
    with pytest.raises(environment.SettingsError, match=f"{name}={value!r} is invalid"):
        environment.from_env({name: value}, gpus=0)


def test_custom_attributes():
    assert parse_options(None) == RequestOptions()
    assert parse_options("threshold=0.25; mask=TRUE, trace-id=abc,,") == RequestOptions(0.25, True)
    for bad in ("threshold=", "threshold", "threshold=nan", "threshold=-0.1", "mask=1", "x" * 1025):
        with pytest.raises(RequestError) as error:
            parse_options(bad)
        assert error.value.status == 400


def test_wire_round_trip_keeps_bytes_newlines_and_shapes_and_refuses_foreign_bodies():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 512, 512), dtype=np.uint8)
    images[0, 0, :8] = np.frombuffer(b"\n\n{}[]\n\x00", np.uint8)  # the separator inside the data
    scores = np.array([0.1, 0.5, 1.0], np.float32)
    body = wire.pack({"forward_id": "12-3"}, [images, scores, np.zeros((0, 4), np.float32)])
    meta, (got_images, got_scores, empty) = wire.unpack(body)
    assert meta == {"forward_id": "12-3"}
    assert np.array_equal(got_images, images) and got_images.dtype == np.uint8
    assert np.array_equal(got_scores, scores) and empty.shape == (0, 4)
    for bad in (b"", b"no newline", b"{}\n", b'{"meta": {}, "arrays": [{"dtype": "|u1", "shape": [5]}]}\nabc',
                body[:-1], body + b"x", b'{"meta": [], "arrays": []}\n'):
        with pytest.raises(wire.WireError):
            wire.unpack(bad)


def test_hard_links_and_devices_are_refused(tmp_path: Path):
    archive = tmp_path / "model.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        data = tarfile.TarInfo("model.pt")
        data.size = 1
        tar.addfile(data, io.BytesIO(b"x"))
        link = tarfile.TarInfo("copy")
        link.type, link.linkname = tarfile.LNKTYPE, "model.pt"
        tar.addfile(link)
    with pytest.raises(ArtifactError, match="'copy' is a link"):
        unpack(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_prediction_bbox_and_area_are_in_the_callers_pixels():
    probability_map = np.zeros((8, 8), np.float32)
    probability_map[2:4, 5:7] = 1.0  # a block at map scale; the image is 4x larger
    defective = Prediction.from_outputs(0.9, probability_map, (32, 32), threshold=0.5)
    record = defective.to_dict()
    rows, cols = np.nonzero(defective.mask)
    assert record["defective"] is True and record["defect_area_px"] == len(rows) > 0
    assert record["bbox"] == [int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1]
    x0, y0, x1, y1 = record["bbox"]
    assert 18 <= x0 < x1 <= 30 and 6 <= y0 < y1 <= 18
    clean = Prediction.from_outputs(0.1, probability_map, (32, 32), threshold=0.5).to_dict()
    assert clean == {"score": 0.1, "defective": False, "threshold": 0.5, "defect_area_px": 0, "bbox": None}
