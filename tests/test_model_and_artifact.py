"""The model's cost budget and the artefact's safe loading."""

from __future__ import annotations

import json
import pickle

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from dagm_defects.artifact import ArtifactError, load_artifact, save_artifact
from dagm_defects.model import REFERENCE, ModelConfig, build_model, predict


def _gflops(config: ModelConfig, size: int) -> float:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        build_model(config).eval()(torch.zeros(1, 1, size, size, dtype=torch.uint8))
    return counter.get_total_flops() / 1e9


def test_default_model_costs_at_most_one_gflop_at_256():
    assert _gflops(ModelConfig(), 256) <= 1.0


def test_reference_width_is_the_published_segdecnet():
    model = build_model(REFERENCE)
    assert 15.5e6 < sum(p.numel() for p in model.parameters()) < 15.8e6
    big = model.segmentation[-1][0]
    assert big.kernel_size == (15, 15) and big.out_channels == 1024


def test_outputs_have_mask_and_decision_shapes():
    model = build_model(ModelConfig(image_size=64)).eval()
    probabilities, maps = predict(model, torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8))
    assert probabilities.shape == (3,) and maps.shape == (3, 8, 8)
    assert float(probabilities.min()) >= 0 and float(probabilities.max()) <= 1


def test_decision_loss_does_not_reach_the_segmentation_network():
    model = build_model(ModelConfig(image_size=64))
    _, decision = model(torch.randint(0, 256, (2, 1, 64, 64), dtype=torch.uint8))
    decision.sum().backward()
    assert all(p.grad is None for p in model.segmentation.parameters())
    assert any(p.grad is not None for p in model.classifier.parameters())


def test_invalid_configuration_is_rejected():
    with pytest.raises(ValueError, match="image_size must be a multiple of 32"):
        ModelConfig(image_size=100)


def _saved(tmp_path):
    model = build_model(ModelConfig(image_size=64))
    return save_artifact(tmp_path / "model", model, threshold=0.4, classes=[1, 2],
                         training_statistics={"overall": {}})


def test_artifact_round_trip(tmp_path):
    model_dir = _saved(tmp_path)
    artifact = load_artifact(model_dir)
    assert artifact.threshold == 0.4 and artifact.image_size == 64
    assert artifact.metadata["classes"] == [1, 2]


def test_missing_artifact_files_are_named(tmp_path):
    model_dir = _saved(tmp_path)
    (model_dir / "model.pt").unlink()
    with pytest.raises(ArtifactError, match="lacks model.pt"):
        load_artifact(model_dir)


class _Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_weights_that_carry_code_are_refused(tmp_path):
    model_dir = _saved(tmp_path)
    torch.save({"evil": _Payload()}, model_dir / "model.pt")
    with pytest.raises(ArtifactError, match="cannot be loaded"):
        load_artifact(model_dir)


def test_corrupt_metadata_is_refused(tmp_path):
    model_dir = _saved(tmp_path)
    (model_dir / "model.json").write_text(json.dumps({"format_version": 1}))
    with pytest.raises(ArtifactError, match="not valid model metadata"):
        load_artifact(model_dir)
    (model_dir / "model.pt").write_bytes(pickle.dumps("junk"))
    with pytest.raises(ArtifactError):
        load_artifact(model_dir)
