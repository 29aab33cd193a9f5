"""The DAGM reader: generator round trip, the real archive's quirks, complete bad-data reports."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from dagm_defects.data.arrays import load_arrays
from dagm_defects.data.labels import parse_labels
from dagm_defects.data.reader import DatasetError, find_class_dirs, read_index


def _labels(split_dir):
    rows, problems = parse_labels((split_dir / "Label" / "Labels.txt").read_text())
    assert problems == []
    return rows


def test_generator_round_trip_reads_every_labelled_image(make_dataset):
    root = make_dataset(classes=(1, 4), images_per_split=10)
    samples = read_index(root)
    assert len(samples) == 2 * 2 * 10
    for cls in (1, 4):
        for split in ("Train", "Test"):
            rows = _labels(root / f"Class{cls}" / split)
            mine = [s for s in samples if s.class_id == cls and s.split == split]
            assert [s.image_path.name for s in mine] == [r.image for r in rows]
            assert [s.defective for s in mine] == [r.defective for r in rows]
            assert all((s.mask_path is not None) == s.defective for s in mine)
    arrays = load_arrays(samples, 64, workers=1)
    assert arrays.images.shape == (40, 64, 64) and arrays.images.dtype == np.uint8
    # Masks are non-empty exactly for defective images.
    assert list(arrays.masks.reshape(40, -1).max(axis=1)) == list(arrays.labels)


def test_class_selection_and_split_selection(make_dataset):
    root = make_dataset(classes=(1, 2, 3), images_per_split=4)
    samples = read_index(root, classes=[2], splits=("Train",))
    assert {(s.class_id, s.split) for s in samples} == {(2, "Train")}


def test_one_class_directory_is_accepted(make_dataset):
    root = make_dataset(classes=(5,), images_per_split=4)
    samples = read_index(root / "Class5")
    assert len(samples) == 8 and {s.class_id for s in samples} == {5}


def test_real_archive_quirks_nesting_thumbs_db_case_and_wrapper(make_dataset, tmp_path):
    root = make_dataset(classes=(2,), images_per_split=4)
    archive = tmp_path / "DAGM_archive"
    # The published archive: a wrapping folder, ClassN/ClassN, Thumbs.db, lower-case names.
    shutil.copytree(root / "Class2", archive / "Class2" / "Class2")
    (archive / "Class2" / "Class2" / "Train" / "Thumbs.db").write_bytes(b"\x00junk")
    for png in (archive / "Class2" / "Class2" / "Test").glob("*.PNG"):
        png.rename(png.with_suffix(".png"))
    wrapper = tmp_path / "wrapped"
    wrapper.mkdir()
    shutil.move(str(archive), wrapper / "DAGM_archive")
    assert set(find_class_dirs(wrapper)) == {2}
    samples = read_index(wrapper)
    assert len(samples) == 8
    assert all(s.image_path.exists() for s in samples)


def _break(root):
    """One dataset with every kind of problem, each in its own place."""
    c1, c2, c3 = root / "Class1", root / "Class2", root / "Class3"
    (c1 / "Train" / "Label" / "Labels.txt").unlink()                      # missing Labels.txt
    (c2 / "Train" / "0002.PNG").unlink()                                   # row names a missing file
    for split in ("Train", "Test"):                                        # empty class
        (c3 / split / "Label" / "Labels.txt").write_text("1\n")
    return root


def test_index_problems_are_all_reported_together(make_dataset):
    root = _break(make_dataset(classes=(1, 2, 3), images_per_split=4))
    with pytest.raises(DatasetError) as info:
        read_index(root)
    text = str(info.value)
    assert "Class1/Train: missing Label/Labels.txt" in text
    assert "Labels.txt names 0002.PNG, which is missing" in text
    assert "Class3: no labelled images" in text
    assert len(info.value.problems) == 3


def _first_defective(split_dir):
    return next(r for r in _labels(split_dir) if r.defective)


def test_decode_problems_are_all_reported_together(make_dataset):
    root = make_dataset(classes=(1,), images_per_split=16)
    split = root / "Class1" / "Train"
    (split / "0001.PNG").write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")  # corrupt PNG
    defect = _first_defective(split)
    Image.new("L", (32, 32)).save(split / "Label" / defect.mask)            # mask size differs
    with pytest.raises(DatasetError) as info:
        load_arrays(read_index(root), 64, workers=1)
    text = str(info.value)
    assert "Class1/Train/0001.PNG: not a decodable image" in text
    assert f"mask {defect.mask} is 32x32 but the image is 64x64" in text
    assert len(info.value.problems) == 2


def test_colour_and_16_bit_images_are_converted_with_a_note(make_dataset):
    root = make_dataset(classes=(1,), images_per_split=4)
    split = root / "Class1" / "Train"
    gray = np.asarray(Image.open(split / "0001.PNG"))
    Image.fromarray(np.stack([gray] * 3, axis=-1)).save(split / "0001.PNG")
    Image.fromarray(gray.astype(np.uint16) * 257).save(split / "0002.PNG")
    arrays = load_arrays(read_index(root, splits=("Train",)), 64, workers=1)
    assert np.array_equal(arrays.images[0], gray)
    assert np.abs(arrays.images[1].astype(int) - gray.astype(int)).max() <= 1
    assert any("converted RGB to grayscale" in n for n in arrays.notes)
    assert any("to 8-bit grayscale" in n for n in arrays.notes)


def test_unknown_class_selection_is_named(make_dataset):
    root = make_dataset(classes=(1,), images_per_split=4)
    with pytest.raises(DatasetError, match=r"class 7 was asked for but .* has only classes \[1\]"):
        read_index(root, classes=[7])


def test_a_defective_row_without_a_mask_is_an_image_level_label(make_dataset):
    root = make_dataset(classes=(1,), images_per_split=24)
    split = root / "Class1" / "Train"
    labels_file = split / "Label" / "Labels.txt"
    rows = _labels(split)
    image_level, missing = [r for r in rows if r.defective][:2]
    # Both ways a labeller leaves a mask out: the good row's `0<TAB>0<TAB>` columns, or none.
    text = labels_file.read_text()
    text = text.replace(image_level.to_line(), f"{image_level.number}\t1\t{image_level.image}\t0\t0\t")
    labels_file.write_text(text)
    (split / "Label" / missing.mask).unlink()
    with pytest.raises(DatasetError) as info:
        read_index(root, splits=("Train",))
    # A row naming a mask that is not there is still a bad label, named with its file.
    assert info.value.problems == [f"Class1/Train: Labels.txt names mask Label/{missing.mask}, which is missing"]

    labels_file.write_text(text.replace(missing.to_line(), f"{missing.number}\t1\t{missing.image}"))
    samples = read_index(root, splits=("Train",))
    by_name = {s.image_path.name: s for s in samples}
    assert len(samples) == len(rows)
    for row in (image_level, missing):
        assert by_name[row.image].defective and by_name[row.image].mask_path is None
    assert sum(s.defective and s.mask_path is not None for s in samples) == sum(r.defective for r in rows) - 2
