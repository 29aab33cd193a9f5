"""Training jobs on non-square and mixed-size photographs, run as the image runs them, and
their models served as the image serves them: the mask of a request image comes back at
that image's own size."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import png, run_training
from dagm_synth import generate_dataset

pytestmark = pytest.mark.slow

# Tiny: one epoch of a thin network, no tracking.
HPS = {"epochs": "1", "batch_size": "8", "width": "0.0625", "data_workers": "1", "tracking": "false"}
MIXED_SHAPES = [(100, 250), (64, 150), (120, 90), (96, 96)]


def reshaped_dataset(root: Path, shape_of) -> Path:
    """A synthetic DAGM set whose every image (and its mask) is resized to `shape_of(stem)`;
    the mixed set also carries 16-bit and RGB images and 0/1 palette masks."""
    generate_dataset(root, classes=[1], images_per_split=16, size=128, seed=5, workers=1)
    for path in sorted(root.rglob("*.PNG")):
        stem = path.stem.removesuffix("_label")
        height, width = shape_of(stem)
        with Image.open(path) as image:
            if path.parent.name == "Label":
                mask = np.asarray(image.resize((width, height), Image.Resampling.NEAREST)) > 0
                palette = Image.fromarray(mask.astype(np.uint8), mode="L").convert("P")
                palette.putdata(mask.astype(np.uint8).ravel().tolist())
                palette.save(path)
            else:
                image.resize((width, height), Image.Resampling.BILINEAR).save(path)
    return root


def mixed(stem: str) -> tuple[int, int]:
    return MIXED_SHAPES[int(stem) % len(MIXED_SHAPES)]


def served_mask(server, image: np.ndarray) -> Image.Image:
    """The mask served for `image`, made at threshold 0 so there is one."""
    reply = server.post("/invocations", png(image), "image/png", Accept="image/png",
                        X_Amzn_SageMaker_Custom_Attributes="threshold=0")
    assert reply.status == 200, reply.body
    return Image.open(io.BytesIO(reply.body))


def request_image(height: int, width: int) -> np.ndarray:
    return np.random.default_rng(0).integers(90, 160, (height, width), dtype=np.uint8)


def test_a_height_x_width_job_trains_on_line_scan_strips_and_serves_masks_at_the_request_size(
        tmp_path, start_server):
    data = reshaped_dataset(tmp_path / "strips", lambda stem: (100, 250))
    job = run_training(data, tmp_path / "opt_ml", {**HPS, "image_size": "128x256"})
    assert job.returncode == 0, job.output[-3000:]
    meta = json.loads((job.model_dir / "model.json").read_text())
    assert meta["model_config"]["image_size"] == [128, 256] and meta["model_config"]["placement"] == "resize"
    assert (meta["input"]["height"], meta["input"]["width"]) == (128, 256)
    assert served_mask(start_server(job.model_dir), request_image(70, 310)).size == (310, 70)


def test_a_native_job_sizes_its_canvas_from_mixed_images_and_serves_masks_at_the_request_size(
        tmp_path, start_server):
    data = reshaped_dataset(tmp_path / "mixed", mixed)
    sixteen_bit = data / "Class1" / "Train" / "0002.PNG"
    with Image.open(sixteen_bit) as image:
        Image.fromarray(np.asarray(image).astype(np.uint16) * 257).save(sixteen_bit)
    rgb = data / "Class1" / "Train" / "0003.PNG"
    with Image.open(rgb) as image:
        image.convert("RGB").save(rgb)
    job = run_training(data, tmp_path / "opt_ml", {**HPS, "image_size": "native"})
    assert job.returncode == 0, job.output[-3000:]
    config = json.loads((job.model_dir / "model.json").read_text())["model_config"]
    # The largest height (120) and width (250) rounded up to the stem's multiple of 64.
    assert config["image_size"] == [128, 256] and config["placement"] == "pad"
    server = start_server(job.model_dir)
    for height, width in ((70, 310), (40, 90)):
        assert served_mask(server, request_image(height, width)).size == (width, height)
