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

from dagm_defects.data.labels import parse_labels
from dagm_synth import generate_dataset
from dagm_synth.classes import ALL_CLASSES, CLASS_SPECS, class_texture
from dagm_synth.defects import apply_defect, draw_ellipse
from dagm_synth.geometry import Ellipse
from dagm_synth.layout import defective_count, defective_numbers
from dagm_synth.render import image_rng, render_image
from dagm_synth.spec import HAIRLINE

CLASSES = (1, 9)
N = 12
SIZE = 128
HARD = 8  # calibrated on genuine DAGM Class 8


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, str]:
    root = tmp_path_factory.mktemp("synth")
    stream = io.StringIO()
    summary = generate_dataset(
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
    again = generate_dataset(
        tmp_path, classes=CLASSES, images_per_split=N, size=SIZE, seed=3, workers=2,
        stream=io.StringIO(),
    )
    assert again["workers"] == 2
    assert _files(tmp_path) == _files(root)


def test_other_seed_other_images(generated, tmp_path):
    root, _, _ = generated
    generate_dataset(
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
    assert defective_count(n) == expected
    chosen = defective_numbers(0, 1, 0, n)
    assert len(chosen) == expected and all(1 <= i <= n for i in chosen)


def test_defective_positions_vary_by_split_and_seed():
    a = defective_numbers(0, 1, 0, 575)
    assert a != defective_numbers(0, 1, 1, 575)
    assert a != defective_numbers(1, 1, 0, 575)
    assert a == defective_numbers(0, 1, 0, 575)


def _mask_areas(cls: int, size: int = 512, n: int = 400) -> np.ndarray:
    """Ellipse areas drawn for the class's own mix of defect kinds."""
    rng = np.random.default_rng(0)
    spec = CLASS_SPECS[cls]
    kinds = [k for k, _ in spec.defects]
    probs = np.array([p for _, p in spec.defects])
    return np.array([
        draw_ellipse(rng, spec, kinds[rng.choice(len(kinds), p=probs)], size).area
        for _ in range(n)
    ])


def test_mask_areas_follow_the_class():
    """Mean ellipse areas at 512 match the real classes' (class 1 large, class 9 small)."""
    assert 8500 < _mask_areas(1).mean() < 11000
    assert 700 < _mask_areas(9).mean() < 1300
    assert _mask_areas(9, 256).mean() == pytest.approx(_mask_areas(9).mean() / 4, rel=0.05)


def test_hard_class_mask_areas_follow_real_class_8():
    """Genuine Class 8 Train masks: median 940 px at 512, quartiles 490 and 1720, max ~19,000."""
    areas = _mask_areas(HARD, n=2000)
    q25, median, q75 = np.percentile(areas, [25, 50, 75])
    assert 850 < median < 1050
    assert 420 < q25 < 580
    assert 1500 < q75 < 2000
    assert areas.min() >= 150 and areas.max() <= 11000
    assert _mask_areas(HARD, 256, 2000).mean() == pytest.approx(areas.mean() / 4, rel=0.05)


def test_rendered_mask_is_the_ellipse():
    rng = image_rng(0, 1, 0, 1)
    image, mask = render_image(1, rng, 256, defective=True)
    assert image.dtype == np.uint8 and image.shape == (256, 256)
    area = int((mask == 255).sum())
    assert 9600 / 4 * 0.6 < area < 11000 / 4 * 1.05
    _, none = render_image(1, image_rng(0, 1, 0, 2), 256)
    assert none is None


def test_defect_changes_the_masked_region():
    """A defect shows: inside the mask the image departs from the texture's statistics."""
    size = 256
    tails = [0.5, 99.5]
    for cls in ALL_CLASSES:
        shifts = []
        for number in range(1, 9):
            image, mask = render_image(
                cls, image_rng(0, cls, 0, number), size, defective=True
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


def _hairline(seed: int, size: int = 512) -> tuple[np.ndarray, np.ndarray, Ellipse]:
    """A class-8 defect drawn on a zero image: exactly the grey levels it changes, its mask."""
    rng = np.random.default_rng(seed)
    spec = CLASS_SPECS[HARD]
    ellipse = draw_ellipse(rng, spec, HAIRLINE, size)
    change = np.zeros((size, size), np.float32)
    inside = apply_defect(change, ellipse, HAIRLINE, spec, rng)
    mask = np.zeros((size, size), bool)
    y0, y1, x0, x1 = ellipse.box(size)
    mask[y0:y1, x0:x1] = inside
    return change, mask, ellipse


def test_hard_class_has_only_hairline_scratches():
    assert CLASS_SPECS[HARD].defects == ((HAIRLINE, 1.0),)


def test_hard_class_scratches_are_thin_and_short():
    """1-2 px wide (a dark wall beside a bright one), 20-60 px long, half the mask's length."""
    stands_out = 0.3 * CLASS_SPECS[HARD].contrast  # about the texture's fine noise
    lengths = []
    for seed in range(30):
        change, mask, ellipse = _hairline(seed)
        line = np.abs(change) > stands_out
        ys, xs = np.nonzero(line)
        _, axes = np.linalg.eigh(np.cov(np.vstack([xs, ys])))
        length = np.ptp(xs * axes[0, 1] + ys * axes[1, 1]) + 1
        assert line.sum() / length < 3.0, seed
        assert 0.45 < length / (2 * ellipse.a) < 0.6, seed
        assert not (line & ~mask).any(), seed
        lengths.append(length)
    assert 20 < np.median(lengths) < 60
    assert 8 < min(lengths) and max(lengths) < 140


def test_hard_class_scratch_contrast_is_calibrated():
    """Each wall peaks at 2-3 texture stds (2.4 on genuine Class 8); over the mask they cancel."""
    contrast = CLASS_SPECS[HARD].contrast
    walls = []
    for seed in range(30):
        change, mask, _ = _hairline(seed)
        walls += [change.max() / contrast, -change.min() / contrast]
        assert abs(change[mask].mean()) < 0.02 * contrast, seed
    assert 1.9 < min(walls) and max(walls) < 3.0
    assert 2.2 < np.median(walls) < 2.7


def test_hard_class_scratch_fades_at_half_size():
    """At 256 the two walls share pixels: the scratch loses about half its peak."""
    for seed in range(10):
        full, _, _ = _hairline(seed, 512)
        half, _, _ = _hairline(seed, 256)
        assert np.abs(half).max() < 0.6 * np.abs(full).max(), seed


def _lag_correlation(a: np.ndarray, lag: int, axis: int) -> float:
    a = a - a.mean()
    x, y = (a[:-lag], a[lag:]) if axis == 0 else (a[:, :-lag], a[:, lag:])
    return float(np.corrcoef(x.ravel(), y.ravel())[0, 1])


def test_hard_class_texture_runs_vertically():
    """Figures of genuine Class 8 good Train images at 512 (medians) in the comments."""
    for number in range(1, 5):
        image, _ = render_image(HARD, image_rng(0, HARD, 0, number), 512)
        a = image.astype(np.float64)
        assert 25 < a.std() < 47  # 36.4
        # vertical bands: column means vary, row means hardly (24.5 against 7.1)
        assert a.mean(axis=0).std() > 2 * a.mean(axis=1).std()
        # still correlated 32 px down, not 32 px across (0.61 against 0.13)
        assert _lag_correlation(a, 32, axis=0) > 0.45 > 0.3 > _lag_correlation(a, 32, axis=1)
        # the fine mottle is smeared along x: neighbours differ more vertically (10.6 / 9.7)
        ratio = np.diff(a, axis=0).std() / np.diff(a, axis=1).std()
        assert 1.04 < ratio < 1.18


def test_hard_class_is_deterministic():
    def render(number: int) -> tuple[bytes, bytes]:
        rng = image_rng(5, HARD, 1, number)
        image, mask = render_image(HARD, rng, 128, defective=True, seed=5)
        return image.tobytes(), mask.tobytes()

    first = render(7)
    class_texture.cache_clear()  # the texture too comes from the seed alone
    assert render(7) == first
    assert render(8)[0] != first[0]


def test_stale_files_of_a_larger_run_go(tmp_path):
    quiet = io.StringIO()
    small = {"classes": (2,), "size": 64, "workers": 1, "stream": quiet}
    generate_dataset(tmp_path, images_per_split=30, **small)
    (tmp_path / "Class2" / "Train" / "notes.txt").write_text("kept")
    generate_dataset(tmp_path, images_per_split=8, **small)
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
            generate_dataset(tmp_path, **{"images_per_split": 2, **kwargs})


MODULE = [sys.executable, "-m", "dagm_synth"]
# the console script the synth distribution installs next to the interpreter
SCRIPT = [str(Path(sys.executable).with_name("dagm-synth"))]


def _cli(*args: str, cwd: Path, command: list[str] = MODULE) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=60, cwd=cwd)


@pytest.mark.parametrize("command", [MODULE, SCRIPT], ids=["module", "script"])
def test_cli_writes_and_summarises(tmp_path, command):
    result = _cli(str(tmp_path / "out"), "--classes", "1,7", "--images-per-split", "3",
                  "--size", "64", "--workers", "1", "--seed", "5", cwd=tmp_path, command=command)
    assert result.returncode == 0, result.stderr
    last = result.stdout.strip().splitlines()[-1]
    assert "wrote 12 images" in last and "classes 1,7" in last
    assert (tmp_path / "out" / "Class7" / "Test" / "Label" / "Labels.txt").exists()
    # The command writes what the library writes for the same seed.
    generate_dataset(tmp_path / "api", classes=[1, 7], images_per_split=3, size=64, seed=5, workers=1)
    written = sorted(p.relative_to(tmp_path / "out") for p in (tmp_path / "out").rglob("*.PNG"))
    assert written == sorted(p.relative_to(tmp_path / "api") for p in (tmp_path / "api").rglob("*.PNG"))
    assert all((tmp_path / "out" / p).read_bytes() == (tmp_path / "api" / p).read_bytes() for p in written)


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
