"""Serving configuration, custom attributes and the batch envelope, through their parsers."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from dagm_defects.artifact import ArtifactError
from dagm_serve import envelope, environment
from dagm_defects.archive import unpack
from dagm_serve.codec import RequestError
from dagm_serve.options import RequestOptions, parse_options


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
        assert error.value.status_code == 400


def test_envelope_round_trip_and_refusal():
    parts = [envelope.Part(b"\x89PNG", "image/png", "application/json", "threshold=0.1"),
             envelope.Part(b"", None), envelope.Part(b"{}", "application/json", status=400)]
    assert envelope.unpack(envelope.pack(parts)) == parts
    for bad in (b"", b"no newline", b"{}\n", b'[{"length": 5}]\nabc', b'[{"nope": 1, "length": 0}]\n'):
        with pytest.raises(envelope.EnvelopeError):
            envelope.unpack(bad)


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
