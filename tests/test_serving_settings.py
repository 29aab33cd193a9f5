"""Serving configuration, custom attributes and the front-to-worker wire format, through their parsers."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest

from dagm_defects.artifact import ArtifactError
from dagm_serve import environment, wire
from dagm_serve.batch_files import SPARE_BYTES, SPARE_PREFIX, BatchFiles
from dagm_defects.archive import unpack
from dagm_serve.codec import RequestError
from dagm_serve.options import RequestOptions, parse_options
from dagm_serve.prediction import Prediction, _bilinear


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


def test_async_inference_takes_large_long_requests_and_stays_bounded():
    settings = environment.from_env({"DAGM_ASYNC_INFERENCE": "true"}, gpus=0)
    assert (settings.max_payload_mb, settings.max_images_per_request, settings.response_timeout_s) == (100, 1024, 900)
    assert environment.from_env({"DAGM_ASYNC_INFERENCE": "true", "SAGEMAKER_MAX_PAYLOAD_IN_MB": "1024"},
                                gpus=0).max_payload_mb == 1024
    with pytest.raises(environment.SettingsError, match="an integer from 1 to 1024"):
        environment.from_env({"DAGM_ASYNC_INFERENCE": "true", "SAGEMAKER_MAX_PAYLOAD_IN_MB": "1025"}, gpus=0)
    realtime = environment.from_env({}, gpus=0)
    assert (realtime.async_inference, realtime.max_images_per_request, realtime.response_timeout_s) == (False, 64, 60)


def test_each_worker_gets_its_share_of_the_cores_unless_omp_num_threads_says_otherwise():
    cores = os.cpu_count() or 1
    assert environment.from_env({}, gpus=0).threads_per_worker == cores
    assert environment.from_env({"SAGEMAKER_MODEL_SERVER_WORKERS": str(2 * cores)}, gpus=0).threads_per_worker == 1
    assert environment.from_env({"OMP_NUM_THREADS": "3", "SAGEMAKER_MODEL_SERVER_WORKERS": "2"},
                                gpus=0).threads_per_worker == 3


@pytest.mark.parametrize("name, value", [
    ("SAGEMAKER_BIND_TO_PORT", "http"), ("OMP_NUM_THREADS", "0"), ("OMP_NUM_THREADS", "4,2"), ("SAGEMAKER_BIND_TO_PORT", "70000"),
    ("SAGEMAKER_SAFE_PORT_RANGE", "20999-20000"), ("SAGEMAKER_SAFE_PORT_RANGE", "20000"),
    ("SAGEMAKER_MULTI_MODEL", "maybe"), ("SAGEMAKER_MAX_PAYLOAD_IN_MB", "7"),
    ("DAGM_SERVER_BATCH_DELAY_MS", "-1"), ("DAGM_DEVICE", "tpu"),
    ("DAGM_ENDPOINT_NAME", "no_underscores"), ("DAGM_VARIANT_NAME", "-dash-first"),
    ("DAGM_DRIFT_PUBLISH_SECONDS", "0"), ("DAGM_BATCH_FILES_DIR", "relative/dir"),
    ("DAGM_KEEP_FREED_MEMORY", "sometimes"), ("DAGM_ASYNC_INFERENCE", "later"),
])
def test_malformed_values_name_the_variable(name, value):
    with pytest.raises(environment.SettingsError, match=f"{name}={value!r} is invalid"):
        environment.from_env({name: value}, gpus=0)


def test_batch_files_go_to_dev_shm_unless_told_otherwise(tmp_path):
    default = environment.from_env({}, gpus=0).batch_files_dir
    assert default == (Path("/dev/shm") if Path("/dev/shm").is_dir() else None)
    assert environment.from_env({"DAGM_BATCH_FILES_DIR": "None"}, gpus=0).batch_files_dir is None
    assert environment.from_env({"DAGM_BATCH_FILES_DIR": str(tmp_path)}, gpus=0).batch_files_dir == tmp_path


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


def test_wire_arrays_in_a_batch_file_round_trip_and_are_read_only_from_their_directory(tmp_path):
    directory, elsewhere = tmp_path / "batches", tmp_path / "other"
    directory.mkdir(), elsewhere.mkdir()
    images = np.random.default_rng(1).integers(0, 256, (2, 64, 64), dtype=np.uint8)
    images[0, 0, :3] = np.frombuffer(b"\n{\n", np.uint8)
    batch = directory / "0.batch"
    batch.write_bytes(b"stale bytes from an earlier, longer batch" * 10_000)
    body = wire.pack({"answer": "x"}, [images], batch)
    assert len(body) < 200 and body.endswith(b"\n") and body.count(b"\n") == 1  # the pixels stay out of MMS
    assert batch.stat().st_size == images.nbytes  # truncated, then written
    meta, (got,) = wire.unpack(body, directory)
    assert meta == {"answer": "x"} and np.array_equal(got, images) and got.flags.writeable

    with pytest.raises(wire.WireError, match="not a batch file this side may read"):
        wire.unpack(body)  # a side that was given no directory
    with pytest.raises(wire.WireError, match="not a batch file this side may read"):
        wire.unpack(body, elsewhere)
    outside = elsewhere / "0.batch"
    outside.write_bytes(images.tobytes())
    for name in (str(outside), str(directory / ".." / "other" / "0.batch"), str(directory)):
        forged = body.replace(str(batch).encode(), name.encode())
        with pytest.raises(wire.WireError):
            wire.unpack(forged, directory)
    with pytest.raises(wire.WireError, match="not a batch file"):
        wire.unpack(body + b"trailing pixels", directory)
    batch.write_bytes(images.tobytes()[:-1])
    with pytest.raises(wire.WireError, match="smaller than"):
        wire.unpack(body, directory)
    batch.unlink()
    with pytest.raises(wire.WireError, match="cannot be read"):
        wire.unpack(body, directory)
    # A file its reader already removed is not made again: the writer hears OSError.
    with pytest.raises(FileNotFoundError):
        wire.pack({}, [images], batch)
    assert not batch.exists()


def test_batch_files_have_new_names_and_an_answered_batch_file_is_reused(tmp_path, caplog):
    files = BatchFiles.create(tmp_path)
    directory = files.directory
    assert directory.parent == tmp_path and directory.name.startswith("dagm-batches-")
    images = np.ones((3, 64, 64), np.uint8)
    with files.exchange() as first, files.exchange() as second:
        assert first.batch != second.batch and first.answer.parent == directory
        assert first.batch.stat().st_size == 0 and first.answer.exists()
        wire.pack({}, [images], first.batch)
        answered_inode = first.batch.stat().st_ino
    # Both were answered: their batch files are kept (answer files are not), and the next
    # exchange gets one of them, its pages, under a name never used before.
    assert sorted(p.name for p in directory.iterdir()) == [f"{SPARE_PREFIX}0", f"{SPARE_PREFIX}1"]
    with files.exchange() as third, files.exchange() as fourth:
        assert {third.batch.stat().st_ino, fourth.batch.stat().st_ino} >= {answered_inode}
        assert third.batch.name == "2.batch" and list(directory.glob(f"{SPARE_PREFIX}*")) == []
        smaller = np.full((1, 64, 64), 7, np.uint8)
        body = wire.pack({}, [smaller], third.batch if third.batch.stat().st_ino == answered_inode else fourth.batch)
        assert np.array_equal(wire.unpack(body, directory)[1][0], smaller)  # cut to its new length
    # A batch whose worker died is removed, never reused: a late reader finds nothing.
    with pytest.raises(RuntimeError):
        with files.exchange() as failed:
            failed.answer.write_bytes(b"an answer nobody will read")
            raise RuntimeError("the worker died")
    assert not failed.batch.exists() and not failed.answer.exists()
    assert len(list(directory.iterdir())) == 1  # one of the two kept files went to `failed`
    # Kept files stay within SPARE_BYTES.
    with files.exchange() as large:
        large.batch.write_bytes(b"x" * (SPARE_BYTES + 1))
    assert not large.batch.exists() and list(directory.iterdir()) == []
    files.close()
    assert not directory.exists()
    with files.exchange() as gone:  # the directory vanished (deleted by hand): inline
        assert gone is None
    assert "goes inline" in caplog.text

    missing = BatchFiles.create(tmp_path / "no-such-dir")
    assert missing.directory is None
    with missing.exchange() as nothing:
        assert nothing is None
    missing.close()


def test_the_worker_answers_into_the_answer_file_and_inline_when_it_cannot(untrained_model, tmp_path):
    import torch

    from dagm_defects.device import Device
    from dagm_serve.predictor import Predictor
    from dagm_serve.service import Service

    files = BatchFiles.create(tmp_path)
    service = Service(Predictor.load(untrained_model, Device(torch.device("cpu"), False)), None, files.directory)
    images = np.random.default_rng(2).integers(0, 256, (3, 128, 128), dtype=np.uint8)
    _, (scores, maps) = wire.unpack(service.answer(wire.pack({}, [images])))
    assert scores.shape == (3,) and maps.shape[0] == 3

    with files.exchange() as exchange:
        reply = service.answer(wire.pack({"answer": str(exchange.answer)}, [images], exchange.batch))
        assert len(reply) < 300 and exchange.answer.stat().st_size == scores.nbytes + maps.nbytes
        meta, (got_scores, got_maps) = wire.unpack(reply, files.directory)
    assert np.array_equal(got_scores, scores) and np.array_equal(got_maps, maps) and "forward_id" in meta

    elsewhere = tmp_path / "elsewhere.answer"
    elsewhere.touch()
    with files.exchange() as exchange:
        body = wire.pack({"answer": str(exchange.answer)}, [images], exchange.batch)
        exchange.answer.unlink()  # the front gave up on this batch
        for answer_to in (body, body.replace(str(exchange.answer).encode(), str(elsewhere).encode())):
            reply = service.answer(answer_to)
            assert len(reply) > maps.nbytes  # inline
            assert np.array_equal(wire.unpack(reply)[1][1], maps)
    assert elsewhere.stat().st_size == 0 and list(files.directory.glob("*.answer")) == []  # not made again
    files.close()


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


def whole_image_mask(probability_map: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The mask as it was made before the defect window: the whole map scaled to the image."""
    rows, cols = probability_map.shape
    return _bilinear(shape[0], rows) @ probability_map.astype(np.float32) @ _bilinear(shape[1], cols).T > 0.5


def random_maps(seed: int = 0, count: int = 200):
    """Maps of every kind the window must get right: clean ones, blobs near edges, several
    defects, pixels at exactly 0.5, and maps above 0.5 almost everywhere."""
    rng = np.random.default_rng(seed)
    for i in range(count):
        size = int(rng.choice([16, 32, 64, 128]))
        probability_map = (rng.random((size, size)) * 0.45).astype(np.float32)
        for _ in range(int(rng.integers(0, 4))):
            r, c = rng.integers(0, size, 2)
            h, w = rng.integers(1, 12, 2)
            probability_map[r:r + h, c:c + w] = rng.random() * 0.6 + 0.4
        if i % 7 == 0:
            probability_map[rng.random((size, size)) < 0.1] = 0.5
        if i % 10 == 0:
            probability_map = rng.random((size, size)).astype(np.float32)
        yield probability_map, (int(rng.choice([512, 500, 301, 64])), int(rng.choice([512, 640, 257, 64])))


def test_the_mask_scales_only_the_defects_window_and_equals_the_whole_image_scaling():
    for probability_map, shape in random_maps():
        prediction = Prediction.from_outputs(0.9, probability_map, shape, threshold=0.5)
        expected = whole_image_mask(probability_map, shape)
        assert np.array_equal(prediction.mask, expected), (probability_map.shape, shape)
        rows, cols = np.nonzero(expected)
        record = prediction.to_dict()
        assert record["defect_area_px"] == len(rows)
        assert record["bbox"] == ([int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1]
                                  if len(rows) else None)
