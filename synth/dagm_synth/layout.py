"""A whole synthetic set on disk in the DAGM 2007 competition layout, rendered in parallel."""

from __future__ import annotations

import multiprocessing
import os
import re
import time
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import numpy as np

from dagm_defects.data.labels import LabelRow, write_labels
from dagm_defects.progress import Progress
from dagm_synth.classes import ALL_CLASSES, CLASS_SPECS, REAL_IMAGES_PER_SPLIT
from dagm_synth.png import encode_png
from dagm_synth.render import image_rng, render_image
from dagm_synth.spec import REFERENCE_SIZE

SPLITS: tuple[str, ...] = ("Train", "Test")
DEFECTIVE_SHARE = 0.13
MIN_SIZE = 64
MAX_IMAGES_PER_SPLIT = 9999  # four-digit file numbers

# Image numbers start at 1, so number 0 is free for the split's choice of defective images.
_SPLIT_STREAM_NUMBER = 0

# Enough images per task to amortise the inter-process round trip, few enough that the
# last tasks do not leave one worker busy while the others idle.
_CHUNK = 24


def defective_count(n: int) -> int:
    if n < 2:
        return 0
    return max(1, round(DEFECTIVE_SHARE * n))


def defective_numbers(seed: int, cls: int, split_index: int, n: int) -> frozenset[int]:
    """The 1-based numbers of a split's defective images: exactly defective_count(n)."""
    rng = np.random.default_rng([seed, cls, split_index, _SPLIT_STREAM_NUMBER])
    chosen = rng.choice(n, size=defective_count(n), replace=False)
    return frozenset(int(i) + 1 for i in chosen)


@dataclass(frozen=True)
class _Chunk:
    root: str
    cls: int
    split_index: int
    start: int
    stop: int  # exclusive
    defective: frozenset[int]
    size: int
    seed: int


def _render_chunk(chunk: _Chunk) -> int:
    split_dir = Path(chunk.root) / f"Class{chunk.cls}" / SPLITS[chunk.split_index]
    for number in range(chunk.start, chunk.stop):
        rng = image_rng(chunk.seed, chunk.cls, chunk.split_index, number)
        image, mask = render_image(
            chunk.cls, rng, chunk.size, defective=number in chunk.defective, seed=chunk.seed
        )
        (split_dir / f"{number:04d}.PNG").write_bytes(encode_png(image, zlib.Z_HUFFMAN_ONLY))
        if mask is not None:
            (split_dir / "Label" / f"{number:04d}_label.PNG").write_bytes(encode_png(mask))
    return chunk.stop - chunk.start


_GENERATED_NAME = re.compile(r"^(\d{4})(_label)?\.PNG$")


def _prepare_split_dir(split_dir: Path, n: int, defective: frozenset[int]) -> None:
    """Create the directories and drop files an earlier, larger run left behind.

    A stale mask next to a now-good image would contradict Labels.txt for any reader that
    globs masks. Only names this generator writes are touched.
    """
    label_dir = split_dir / "Label"
    label_dir.mkdir(parents=True, exist_ok=True)
    for directory, want_label in ((split_dir, False), (label_dir, True)):
        for entry in os.scandir(directory):
            m = _GENERATED_NAME.match(entry.name)
            if not m or bool(m.group(2)) != want_label or not entry.is_file():
                continue
            number = int(m.group(1))
            keep = number in defective if want_label else 1 <= number <= n
            if not keep:
                os.unlink(entry.path)


def _label_rows(n: int, defective: frozenset[int]) -> list[LabelRow]:
    rows = []
    for number in range(1, n + 1):
        stem = f"{number:04d}"
        bad = number in defective
        rows.append(LabelRow(stem, bad, f"{stem}.PNG", f"{stem}_label.PNG" if bad else None))
    return rows


def _default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))  # the CPUs this container may actually use
    except AttributeError:
        return os.cpu_count() or 1


def _check_args(classes: Sequence[int], images_per_split: int | None, size: int, seed: int) -> None:
    bad = [c for c in classes if c not in CLASS_SPECS]
    if bad or not classes:
        raise ValueError(f"classes must be a non-empty subset of 1-10, got {list(classes)}")
    if images_per_split is not None and not 1 <= images_per_split <= MAX_IMAGES_PER_SPLIT:
        raise ValueError(
            f"images_per_split must be 1-{MAX_IMAGES_PER_SPLIT}, got {images_per_split}"
        )
    if size < MIN_SIZE or size % 8:
        raise ValueError(f"size must be a multiple of 8 and at least {MIN_SIZE}, got {size}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")


def generate_dataset(
    root: str | os.PathLike[str],
    classes: Iterable[int] = ALL_CLASSES,
    images_per_split: int | None = None,
    size: int = REFERENCE_SIZE,
    seed: int = 0,
    workers: int | None = None,
    stream: TextIO | None = None,
) -> dict:
    """Write a synthetic DAGM 2007 set under `root`; return what was written.

    images_per_split=None uses the real counts (575 for classes 1-6, 1150 for 7-10).
    `workers` is the number of processes (default: the CPUs available). Progress lines go
    to `stream` (stdout when None). The files depend only on the other arguments.

    The summary: ``{"root", "size", "seed", "workers", "classes": {cls: {"Train":
    {"images", "defective"}, "Test": {...}}}, "images", "defective", "seconds"}``.
    """
    started = time.monotonic()
    classes = list(dict.fromkeys(int(c) for c in classes))
    _check_args(classes, images_per_split, size, seed)
    workers = _default_workers() if workers is None else workers
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    root = Path(root)

    chunks: list[_Chunk] = []
    labels: list[tuple[Path, list[LabelRow]]] = []
    summary_classes: dict[int, dict[str, dict[str, int]]] = {}
    for cls in classes:
        n = images_per_split or REAL_IMAGES_PER_SPLIT[cls]
        summary_classes[cls] = {}
        for split_index, split in enumerate(SPLITS):
            defective = defective_numbers(seed, cls, split_index, n)
            split_dir = root / f"Class{cls}" / split
            _prepare_split_dir(split_dir, n, defective)
            labels.append((split_dir / "Label" / "Labels.txt", _label_rows(n, defective)))
            summary_classes[cls][split] = {"images": n, "defective": len(defective)}
            for start in range(1, n + 1, _CHUNK):
                stop = min(start + _CHUNK, n + 1)
                mine = frozenset(d for d in defective if start <= d < stop)
                chunks.append(_Chunk(str(root), cls, split_index, start, stop, mine, size, seed))

    total = sum(c.stop - c.start for c in chunks)
    progress = Progress("dagm-synth", total, stream=stream)
    workers = min(workers, len(chunks))
    if workers == 1:
        for chunk in chunks:
            progress.advance(_render_chunk(chunk))
    else:
        with multiprocessing.get_context().Pool(workers) as pool:
            for done in pool.imap_unordered(_render_chunk, chunks):
                progress.advance(done)
    # Labels last: a Labels.txt on disk means every file it names is there.
    for path, rows in labels:
        write_labels(path, rows)
    progress.done()

    return {
        "root": str(root),
        "size": size,
        "seed": seed,
        "workers": workers,
        "classes": summary_classes,
        "images": total,
        "defective": sum(s["defective"] for c in summary_classes.values() for s in c.values()),
        "seconds": time.monotonic() - started,
    }
