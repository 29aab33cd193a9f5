"""The synthetic DAGM generator: layout, label bytes, masks, determinism and CLI."""

from __future__ import annotations

import io
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dagm_defects.data import synthetic
from dagm_defects.data.labels import parse_labels

CLASSES = (1, 9)
N = 12
SIZE = 128


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, str]:
    root = tmp_path_factory.mktemp("synth")
    stream = io.StringIO()
    summary = synthetic.generate_dataset(
        root, classes=CLASSES, images_per_split=N, size=SIZE, seed=3, workers=1, stream=stream
    )
    return root, summary, stream.getvalue()


def _split_dirs(root: Path):
    for cls in CLASSES:
        for split in ("Train", "Test"):
            yield cls, split, root / f"Class{cls}" / split


def test_layout_and_summary(generated):
    root, summary, progress = generated
    assert sorted(p.name for p in root.iterdir()) == [f"Class{c}" for c in CLASSES]
    for cls, split, d in _split_dirs(root):
        rows, problems = parse_labels((d / "Label" / "Labels.txt").read_text())
        assert problems == []
        bad = {r.number for r in rows if r.defective}
        images = sorted(p.name for p in d.iterdir() if p.is_file())
        assert images == [f"{i:04d}.PNG" for i in range(1, N + 1)]
        assert sorted(p.name for p in (d / "Label").iterdir()) == sorted(
            ["Labels.txt", *(f"{n}_label.PNG" for n in bad)]
        )
        assert summary["classes"][cls][split] == {"images": N, "defective": len(bad)}
    assert summary["images"] == len(CLASSES) * 2 * N
    assert summary["seconds"] > 0
    assert f"{summary['images']}/{summary['images']} images (100%)" in progress.splitlines()[-1]


def test_labels_bytes(generated):
    root, _, _ = generated
    text = (root / "Class1" / "Train" / "Label" / "Labels.txt").read_bytes().decode("ascii")
    assert "\r" not in text and text.endswith("\n")
    lines = text.split("\n")[:-1]
    assert lines[0] == "1"
    assert len(lines) == N + 1
    for i, line in enumerate(lines[1:], start=1):
        n = f"{i:04d}"
        good = f"{n}\t0\t{n}.PNG\t0\t0\t"
        bad = f"{n}\t1\t{n}.PNG\t0\t{n}_label.PNG"
        assert line in (good, bad)
    assert any(line.split("\t")[1] == "1" for line in lines[1:])
    assert any(line.split("\t")[1] == "0" for line in lines[1:])


def test_images_and_masks(generated):
    root, _, _ = generated
    for _, _, d in _split_dirs(root):
        rows, _ = parse_labels((d / "Label" / "Labels.txt").read_text())
        for row in rows:
            with Image.open(d / row.image) as im:
                assert im.format == "PNG" and im.mode == "L" and im.size == (SIZE, SIZE)
                pixels = np.asarray(im)
            assert pixels.std() > 2  # a texture, not a flat fill
            if row.defective:
                with Image.open(d / "Label" / row.mask) as m:
                    assert m.mode == "L" and m.size == (SIZE, SIZE)
                    mask = np.asarray(m)
                assert set(np.unique(mask)) == {0, 255}
                # the ellipse is whole: it never touches the border
                border = (mask[0], mask[-1], mask[:, 0], mask[:, -1])
                assert not any(edge.any() for edge in border)
            else:
                assert row.mask is None and not (d / "Label" / f"{row.number}_label.PNG").exists()


def test_same_seed_same_bytes_whatever_the_workers(generated, tmp_path):
    root, _, _ = generated
    again = synthetic.generate_dataset(
        tmp_path, classes=CLASSES, images_per_split=N, size=SIZE, seed=3, workers=2,
        stream=io.StringIO(),
    )
    assert again["workers"] == 2
    assert _files(tmp_path) == _files(root)


def test_other_seed_other_images(generated, tmp_path):
    root, _, _ = generated
    synthetic.generate_dataset(
        tmp_path, classes=(1,), images_per_split=N, size=SIZE, seed=4, workers=1,
        stream=io.StringIO(),
    )
    a = (root / "Class1" / "Train" / "0001.PNG").read_bytes()
    b = (tmp_path / "Class1" / "Train" / "0001.PNG").read_bytes()
    assert a != b


def test_images_differ_within_a_split(generated):
    root, _, _ = generated
    d = root / "Class9" / "Test"
    images = [np.asarray(Image.open(d / f"{i:04d}.PNG"), dtype=np.int16) for i in range(1, 5)]
    for i in range(len(images)):
        for j in range(i + 1, len(images)):
            assert np.abs(images[i] - images[j]).mean() > 1


@pytest.mark.parametrize(
    ("n", "expected"), [(1, 0), (2, 1), (12, 2), (100, 13), (575, 75), (1150, 150)]
)
def test_defective_count(n, expected):
    assert synthetic.defective_count(n) == expected
    chosen = synthetic.defective_numbers(0, 1, 0, n)
    assert len(chosen) == expected and all(1 <= i <= n for i in chosen)


def test_defective_positions_vary_by_split_and_seed():
    a = synthetic.defective_numbers(0, 1, 0, 575)
    assert a != synthetic.defective_numbers(0, 1, 1, 575)
    assert a != synthetic.defective_numbers(1, 1, 0, 575)
    assert a == synthetic.defective_numbers(0, 1, 0, 575)


def test_mask_areas_follow_the_class():
    """Mean ellipse areas at 512 match the real classes' (class 1 large, class 9 small)."""

    def mean_area(cls: int, size: int = 512) -> float:
        rng = np.random.default_rng(0)
        spec = synthetic.CLASS_SPECS[cls]
        areas = []
        for _ in range(400):
            kind = synthetic.DEFECT_KINDS[int(rng.integers(3))]
            areas.append(synthetic._draw_ellipse(rng, spec, kind, size).area)
        return float(np.mean(areas))

    assert 8500 < mean_area(1) < 11000
    assert 700 < mean_area(9) < 1300
    assert mean_area(9, 256) == pytest.approx(mean_area(9) / 4, rel=0.05)


def test_rendered_mask_is_the_ellipse():
    rng = synthetic.image_rng(0, 1, 0, 1)
    image, mask = synthetic.render_image(1, rng, 256, defective=True)
    assert image.dtype == np.uint8 and image.shape == (256, 256)
    area = int((mask == 255).sum())
    assert 9600 / 4 * 0.6 < area < 11000 / 4 * 1.05
    _, none = synthetic.render_image(1, synthetic.image_rng(0, 1, 0, 2), 256)
    assert none is None


def test_defect_changes_the_masked_region():
    """A defect shows: inside the mask the image departs from the texture's statistics."""
    size = 256
    tails = [0.5, 99.5]
    for cls in synthetic.ALL_CLASSES:
        shifts = []
        for number in range(1, 9):
            image, mask = synthetic.render_image(
                cls, synthetic.image_rng(0, cls, 0, number), size, defective=True
            )
            inside = image[mask > 0].astype(np.float64)
            outside = image[mask == 0].astype(np.float64)
            # darker, flatter or carrying a line: one of mean, std or extremes moves
            shifts.append(
                max(
                    abs(inside.mean() - outside.mean()) / outside.std(),
                    abs(math.log(inside.std() / outside.std())),
                    np.abs(np.percentile(inside, tails) - np.percentile(outside, tails)).max()
                    / outside.std(),
                )
            )
        assert np.median(shifts) > 0.5, (cls, shifts)


def test_stale_files_of_a_larger_run_go(tmp_path):
    quiet = io.StringIO()
    small = {"classes": (2,), "size": 64, "workers": 1, "stream": quiet}
    synthetic.generate_dataset(tmp_path, images_per_split=30, **small)
    (tmp_path / "Class2" / "Train" / "notes.txt").write_text("kept")
    synthetic.generate_dataset(tmp_path, images_per_split=8, **small)
    d = tmp_path / "Class2" / "Train"
    rows, _ = parse_labels((d / "Label" / "Labels.txt").read_text())
    assert sorted(p.name for p in d.glob("*.PNG")) == [r.image for r in rows]
    masks = sorted(p.name for p in (d / "Label").glob("*.PNG"))
    assert masks == sorted(r.mask for r in rows if r.defective)
    assert (d / "notes.txt").read_text() == "kept"


def test_api_rejects_bad_arguments(tmp_path):
    bad = ({"classes": [0]}, {"images_per_split": 0}, {"size": 100}, {"size": 56}, {"seed": -1})
    for kwargs in bad:
        with pytest.raises(ValueError):
            synthetic.generate_dataset(tmp_path, **{"images_per_split": 2, **kwargs})


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dagm_defects.data.synthetic", *args],
        capture_output=True, text=True, timeout=60, cwd=cwd,
    )


def test_cli_writes_and_summarises(tmp_path):
    result = _cli(str(tmp_path / "out"), "--classes", "1,7", "--images-per-split", "3",
                  "--size", "64", "--workers", "1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    last = result.stdout.strip().splitlines()[-1]
    assert "wrote 12 images" in last and "classes 1,7" in last
    assert (tmp_path / "out" / "Class7" / "Test" / "Label" / "Labels.txt").exists()


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--classes", "11"], "--classes"),
        (["--classes", "1,x"], "--classes"),
        (["--size", "100"], "--size"),
        (["--size", "32"], "--size"),
        (["--images-per-split", "0"], "--images-per-split"),
        (["--workers", "0"], "--workers"),
        (["--seed", "-2"], "--seed"),
        ([], "out"),
    ],
)
def test_cli_bad_arguments_exit_2(tmp_path, args, named):
    out = [] if named == "out" else [str(tmp_path / "out")]
    result = _cli(*out, *args, cwd=tmp_path)
    assert result.returncode == 2
    assert named in result.stderr
    assert not (tmp_path / "out").exists()
