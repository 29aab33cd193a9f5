"""The model's cost budget and the artefact's safe loading."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from dagm_defects.artifact import ArtifactError, load_artifact, save_artifact
from dagm_defects.model import REFERENCE, build_model, inference_copy, predict
from dagm_defects.model_config import ModelConfig


def _gflops(config: ModelConfig, size: int) -> float:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        build_model(config).eval()(torch.zeros(1, 1, size, size, dtype=torch.uint8))
    return counter.get_total_flops() / 1e9


# The previous default: 256x256 input, no stem, dense 15x15 context, head scaled by width.
PLAIN_256 = ModelConfig(image_size=256, space_to_depth=1, decision_width=0.125, dilated_context=False)


def test_default_model_at_512_costs_about_what_a_256_input_does():
    """The default folds 512x512 into 256x256x4: about the cost of the old 256x256
    default, far below the same network on the unfolded 512x512 image."""
    folded = _gflops(ModelConfig(dilated_context=False), 512)
    plain_256 = _gflops(PLAIN_256, 256)
    assert folded <= 1.1 * plain_256
    assert _gflops(ModelConfig(space_to_depth=1, dilated_context=False), 512) >= 3.5 * plain_256


def test_dilated_context_spans_13_pixels_at_a_ninth_of_the_cost():
    dense, dilated = build_model(ModelConfig(dilated_context=False)), build_model(ModelConfig())
    conv = dilated.segmentation[-1][0]
    assert conv.kernel_size == (5, 5) and conv.dilation == (3, 3)
    assert (conv.kernel_size[0] - 1) * conv.dilation[0] + 1 == 13
    assert dense.segmentation[-1][0].weight.numel() == 9 * conv.weight.numel()
    assert _gflops(ModelConfig(), 512) <= 0.5 * _gflops(ModelConfig(dilated_context=False), 512)


def test_space_to_depth_sees_every_pixel():
    """A one-pixel line, in either phase of the 2x2 blocks, reaches the network unaveraged:
    the folded input holds it exactly, where a resize to half size would blur it."""
    model = build_model(ModelConfig(image_size=128, space_to_depth=2)).eval()
    stem = model.segmentation[0]
    for column in (40, 41):
        image = torch.zeros(1, 1, 128, 128)
        image[..., column] = 1.0
        folded = stem(image)
        assert folded.shape == (1, 4, 64, 64)
        assert float(folded.sum()) == 128.0 and float(folded.max()) == 1.0


def test_space_to_depth_outputs_and_map_stride():
    config = ModelConfig(image_size=128, space_to_depth=2)
    assert config.downsample == 16
    probabilities, maps = predict(build_model(config).eval(), torch.randint(0, 256, (2, 128, 128), dtype=torch.uint8))
    assert probabilities.shape == (2,) and maps.shape == (2, 8, 8)


def test_inference_copy_answers_as_the_model_does():
    model = build_model(ModelConfig(image_size=128, space_to_depth=2))
    model.train()
    images = torch.randint(0, 256, (4, 1, 128, 128), dtype=torch.uint8)
    model(images)  # moves the BatchNorm running statistics off their initial values
    model.eval()
    fused = inference_copy(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    (p1, m1), (p2, m2) = predict(model, images), predict(fused, images)
    assert torch.allclose(p1, p2, atol=1e-5) and torch.allclose(m1, m2, atol=1e-5)


def test_reference_width_is_the_published_segdecnet():
    model = build_model(REFERENCE)
    assert 15.5e6 < sum(p.numel() for p in model.parameters()) < 15.8e6
    big = model.segmentation[-1][0]
    assert big.kernel_size == (15, 15) and big.out_channels == 1024


def test_outputs_have_mask_and_decision_shapes():
    model = build_model(ModelConfig(image_size=64, space_to_depth=1)).eval()
    probabilities, maps = predict(model, torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8))
    assert probabilities.shape == (3,) and maps.shape == (3, 8, 8)
    assert float(probabilities.min()) >= 0 and float(probabilities.max()) <= 1


def test_decision_loss_does_not_reach_the_segmentation_network():
    model = build_model(ModelConfig(image_size=128))
    _, decision = model(torch.randint(0, 256, (2, 1, 128, 128), dtype=torch.uint8))
    decision.sum().backward()
    assert all(p.grad is None for p in model.segmentation.parameters())
    assert any(p.grad is not None for p in model.classifier.parameters())


def test_invalid_configuration_is_rejected():
    with pytest.raises(ValueError, match="image_size must be a multiple of 32"):
        ModelConfig(image_size=100, space_to_depth=1)
    with pytest.raises(ValueError, match="image_size must be a multiple of 64 and >= 128 with space_to_depth 2, got 96"):
        ModelConfig(image_size=96, space_to_depth=2)
    with pytest.raises(ValueError, match="space_to_depth must be 1, 2 or 4"):
        ModelConfig(image_size=512, space_to_depth=3)


def test_metadata_from_before_the_stem_loads_as_the_model_it_was(tmp_path):
    """Artefacts written before space_to_depth, decision_width, dilated_context and
    non-square inputs existed keep working: no stem, a dense 15x15 context and a decision
    head scaled by width (their weights only fit that shape), a square resized input."""
    config = ModelConfig.from_dict({"width": 0.125, "depth": 1.0, "image_size": 256})
    assert config == PLAIN_256
    model_dir = save_artifact(tmp_path / "old", build_model(PLAIN_256), 0.5, [1], {})
    meta = json.loads((model_dir / "model.json").read_text())
    for key in ("space_to_depth", "decision_width", "dilated_context", "placement", "placement_scale"):
        del meta["model_config"][key]
    meta["model_config"]["image_size"] = 256
    (model_dir / "model.json").write_text(json.dumps(meta))
    artifact = load_artifact(model_dir)
    assert artifact.config == PLAIN_256 and artifact.model.classifier.in_features == 2 * 4 + 2


def test_decision_head_keeps_its_reference_width():
    """Scaling the decision head with width left it 1, 2 and 4 channels wide."""
    model = build_model(ModelConfig())
    assert [block[0].out_channels for block in model.decision if isinstance(block, torch.nn.Sequential)] == [8, 16, 32]
    assert model.classifier.in_features == 2 * 32 + 2


def _saved(tmp_path):
    model = build_model(ModelConfig(image_size=128))
    return save_artifact(tmp_path / "model", model, threshold=0.4, classes=[1, 2],
                         training_statistics={"overall": {}})


def test_artifact_round_trip(tmp_path):
    model_dir = _saved(tmp_path)
    artifact = load_artifact(model_dir)
    assert artifact.threshold == 0.4 and artifact.image_size == (128, 128)
    assert artifact.metadata["classes"] == [1, 2]


def test_missing_artifact_files_are_named(tmp_path):
    model_dir = _saved(tmp_path)
    (model_dir / "model.pt").unlink()
    with pytest.raises(ArtifactError, match="lacks model.pt"):
        load_artifact(model_dir)


class _Payload:
    """Unpickling this runs os.makedirs(marker): whether the marker exists says whether
    the payload ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (str(self.marker),))


def test_weights_that_carry_code_are_refused_without_running_it(tmp_path):
    model_dir = _saved(tmp_path)
    marker = tmp_path / "payload-ran"
    torch.save({"evil": _Payload(marker)}, model_dir / "model.pt")
    with pytest.raises(ArtifactError, match="cannot be loaded"):
        load_artifact(model_dir)
    assert not marker.exists()
    # The payload is live: a plain unpickling does run it.
    torch.load(model_dir / "model.pt", weights_only=False)
    assert marker.is_dir()


def test_corrupt_metadata_is_refused(tmp_path):
    model_dir = _saved(tmp_path)
    (model_dir / "model.json").write_text(json.dumps({"format_version": 1}))
    with pytest.raises(ArtifactError, match="not valid model metadata"):
        load_artifact(model_dir)
    (model_dir / "model.pt").write_bytes(pickle.dumps("junk"))
    with pytest.raises(ArtifactError):
        load_artifact(model_dir)
