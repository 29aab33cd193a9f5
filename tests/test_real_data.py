"""Genuine DAGM images: the reader on the real release's files, and the real-data
benchmark's behaviour without them. The genuine files live in ../shared/data/dagm-real,
which a user's clone does not have: tests that read them skip, saying so."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from dagm_defects.data.arrays import load_arrays
from dagm_defects.data.reader import has_split, read_index

from conftest import REPO

GENUINE = REPO.parent / "shared" / "data" / "dagm-real"
needs_genuine = pytest.mark.skipif(
    not (GENUINE / "Class8" / "Train" / "Label" / "Labels.txt").exists(),
    reason=f"genuine DAGM images not found at {GENUINE} (only the project's own machines have them)",
)


@needs_genuine
def test_reader_takes_the_genuine_release_as_it_is():
    """CRLF Labels.txt, upper-case .PNG names, 2007 tIME chunks: read as released."""
    samples = read_index(GENUINE, None, splits=("Train",))
    assert len(samples) == 800 and sum(s.defective for s in samples) == 150
    assert {s.class_id for s in samples} == {8} and not has_split(GENUINE, "Test")
    assert all(s.mask_path is not None for s in samples if s.defective)


@needs_genuine
def test_defect_masks_of_genuine_defects_equal_the_whole_image_scaling():
    """The served mask on genuine defect shapes: each of the 150 genuine label masks at the
    model's map resolution (64 x 64) taken as the probability map, 0.95 on the defect."""
    from dagm_serve.prediction import Prediction
    from test_serving_settings import whole_image_mask

    defective = [s for s in read_index(GENUINE, None, splits=("Train",)) if s.defective]
    masks = load_arrays(defective, 64, str(GENUINE), "decode", workers=1).masks
    assert len(masks) == 150
    for label in masks:
        probability_map = label.astype(np.float32) * 0.95
        prediction = Prediction.from_outputs(0.9, probability_map, (512, 512), threshold=0.5)
        expected = whole_image_mask(probability_map, (512, 512))
        assert expected.any() and np.array_equal(prediction.mask, expected)


@needs_genuine
def test_genuine_masks_decode_to_their_defects():
    defective = [s for s in read_index(GENUINE, None, splits=("Train",)) if s.defective][:8]
    arrays = load_arrays(defective, 512, str(GENUINE), "decode", workers=1)
    assert arrays.images.shape == (8, 512, 512) and arrays.images.dtype == np.uint8
    areas = arrays.masks.reshape(8, -1).sum(axis=1)
    assert np.all(areas > 0) and np.all(areas < 512 * 512 // 10)


def test_real_data_benchmark_without_the_data_says_so_and_exits_0(tmp_path):
    result = subprocess.run(
        [sys.executable, str(REPO / "bench" / "real_dagm.py"), "--data", str(tmp_path / "absent")],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "bench-real: skipped, no genuine DAGM data at" in result.stdout
    assert str(tmp_path / "absent") in result.stdout
