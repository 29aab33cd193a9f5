"""Find the images and masks of a DAGM 2007 dataset on disk.

Accepts a dataset root (``Class1`` .. ``Class10``), one class directory, and the real
archive's quirks: an extra ``ClassN/ClassN`` level, a single wrapping folder, stray
``Thumbs.db`` files, and file names whose case differs from ``Labels.txt``.
Every problem is collected first and reported together, so a user fixes a broken
dataset in one pass rather than one error per run.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from dagm_defects.data.labels import parse_labels

SPLITS = ("Train", "Test")
UNNAMED_CLASS = 0
_CLASS_DIR = re.compile(r"^class(\d+)$", re.IGNORECASE)


@dataclass(frozen=True)
class Sample:
    class_id: int
    split: str
    image_path: Path
    mask_path: Path | None
    defective: bool

    @property
    def key(self) -> str:
        return f"Class{self.class_id}/{self.split}/{self.image_path.name}"


class DatasetError(Exception):
    """A dataset that cannot be used, with every problem found (not only the first)."""

    def __init__(self, root: Path | str, problems: list[str]) -> None:
        self.root = str(root)
        self.problems = list(problems)
        shown = "\n".join(f"  - {p}" for p in self.problems[:50])
        more = f"\n  ... and {len(self.problems) - 50} more" if len(self.problems) > 50 else ""
        super().__init__(
            f"dataset at {self.root} has {len(self.problems)} problem(s): "
            f"{'; '.join(self.problems[:3])}\n{shown}{more}"
        )


def _child_ci(directory: Path, name: str) -> Path | None:
    """The entry of `directory` called `name`, ignoring case (archives mix .PNG/.png)."""
    exact = directory / name
    if exact.exists():
        return exact
    lowered = name.lower()
    for entry in directory.iterdir():
        if entry.name.lower() == lowered:
            return entry
    return None


def _has_splits(directory: Path) -> bool:
    return any(_child_ci(directory, split) is not None for split in SPLITS)


def _class_id(directory: Path) -> int | None:
    match = _CLASS_DIR.match(directory.name)
    return int(match.group(1)) if match else None


def _unwrap_class_dir(directory: Path) -> Path:
    # The published archive nests ClassN/ClassN/{Train,Test}.
    while not _has_splits(directory):
        nested = [d for d in directory.iterdir() if d.is_dir() and _class_id(d) is not None]
        if len(nested) != 1:
            break
        directory = nested[0]
    return directory


def find_class_dirs(root: Path) -> dict[int, Path]:
    """Map class id to the directory holding its ``Train``/``Test`` splits."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(root, [f"{root} is not a directory"])
    if _has_splits(root):
        class_id = _class_id(root)
        return {UNNAMED_CLASS if class_id is None else class_id: root}
    found: dict[int, Path] = {}
    for entry in sorted(root.iterdir()):
        class_id = _class_id(entry)
        if entry.is_dir() and class_id is not None:
            found[class_id] = _unwrap_class_dir(entry)
    if found:
        return found
    subdirs = [d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")]
    if len(subdirs) == 1:
        return find_class_dirs(subdirs[0])
    raise DatasetError(
        root, [f"no ClassN directories and no Train/Test splits found under {root}"]
    )


def _read_split(class_id: int, split: str, split_dir: Path, problems: list[str]) -> list[Sample]:
    label_dir = _child_ci(split_dir, "Label")
    labels_file = _child_ci(label_dir, "Labels.txt") if label_dir else None
    if labels_file is None:
        problems.append(f"Class{class_id}/{split}: missing Label/Labels.txt in {split_dir}")
        return []
    rows, row_problems = parse_labels(
        labels_file.read_text(encoding="ascii", errors="replace"),
        source=f"Class{class_id}/{split}/Label/Labels.txt",
    )
    problems.extend(row_problems)
    samples = []
    for row in rows:
        image = _child_ci(split_dir, row.image)
        mask = _child_ci(label_dir, row.mask) if row.mask else None
        if image is None:
            problems.append(f"Class{class_id}/{split}: Labels.txt names {row.image}, which is missing")
            continue
        if row.mask and mask is None:
            problems.append(
                f"Class{class_id}/{split}: Labels.txt names mask Label/{row.mask}, which is missing"
            )
            continue
        samples.append(Sample(class_id, split, image, mask, row.defective))
    return samples


def read_index(
    root: Path | str,
    classes: Iterable[int] | None = None,
    splits: Iterable[str] = SPLITS,
) -> list[Sample]:
    """List every labelled sample of the selected classes and splits, or raise DatasetError."""
    root = Path(root)
    class_dirs = find_class_dirs(root)
    wanted = sorted(class_dirs) if classes is None else sorted(set(classes))
    problems = [
        f"class {c} was asked for but {root} has only classes {sorted(class_dirs)}"
        for c in wanted
        if c not in class_dirs
    ]
    samples: list[Sample] = []
    for class_id in (c for c in wanted if c in class_dirs):
        found_any = False
        for split in splits:
            split_dir = _child_ci(class_dirs[class_id], split)
            if split_dir is None:
                continue
            split_samples = _read_split(class_id, split, split_dir, problems)
            found_any = found_any or bool(split_samples)
            samples.extend(split_samples)
        if not found_any:
            problems.append(f"Class{class_id}: no labelled images in {'/'.join(splits)}")
    if problems:
        raise DatasetError(root, problems)
    return samples


def has_split(root: Path | str, split: str) -> bool:
    """Whether any class under `root` has a `split` directory (e.g. ``Test``)."""
    return any(_child_ci(d, split) is not None for d in find_class_dirs(Path(root)).values())
