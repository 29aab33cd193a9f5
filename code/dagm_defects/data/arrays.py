"""Decode a list of samples into in-memory arrays at the model's input size.

Decoding once, in parallel, keeps the training loop fed from memory: the data pipeline
must never be what the GPU or CPU waits on. Every decode problem of the whole set is
collected and raised together.
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from dagm_defects.data.reader import DatasetError, Sample
from dagm_defects.imaging import ImageDecodeError, decode_gray, decode_mask
from dagm_defects.placement import Canvas, place, place_mask
from dagm_defects.progress import Progress


@dataclass
class ArraySet:
    """Images (N x H x W uint8), masks (N x H x W, 0/1) and labels of a set of samples."""

    samples: list[Sample]
    images: np.ndarray
    masks: np.ndarray
    labels: np.ndarray
    class_ids: np.ndarray
    notes: list[str] = field(default_factory=list)
    # Whether each image's pixel truth is known: a good image (all clean) or a defective one
    # with a non-empty mask. A defective image without one is an image-level label.
    has_mask: np.ndarray | None = None
    # Defective rows whose mask file was all zero, counted as image-level labels.
    empty_masks: int = 0

    def __post_init__(self) -> None:
        if self.has_mask is None:
            self.has_mask = np.ones(len(self.samples), dtype=bool)

    def __len__(self) -> int:
        return len(self.samples)

    def subset(self, indices: np.ndarray) -> "ArraySet":
        indices = np.asarray(indices, dtype=np.int64)
        return ArraySet(
            [self.samples[i] for i in indices],
            self.images[indices],
            self.masks[indices],
            self.labels[indices],
            self.class_ids[indices],
            list(self.notes),
            self.has_mask[indices],
            int(np.count_nonzero(self.empty_mask_rows()[indices])),
        )

    def empty_mask_rows(self) -> np.ndarray:
        """Defective images with a mask file that held no defect pixel."""
        named = np.array([s.mask_path is not None for s in self.samples], dtype=bool)
        return named & (self.labels == 1) & ~self.has_mask


def _decode_one(sample: Sample, canvas: Canvas):
    problems, notes = [], []
    try:
        image, note = decode_gray(sample.image_path, sample.key)
        if note:
            notes.append(f"{sample.key}: {note}")
    except ImageDecodeError as exc:
        return None, None, [str(exc)], notes
    mask = np.zeros(canvas.shape, dtype=np.uint8)
    if sample.mask_path is not None:
        try:
            full_mask = decode_mask(sample.mask_path, f"{sample.key} mask {sample.mask_path.name}")
        except ImageDecodeError as exc:
            problems.append(str(exc))
        else:
            if full_mask.shape != image.shape:
                problems.append(
                    f"{sample.key}: mask {sample.mask_path.name} is "
                    f"{full_mask.shape[1]}x{full_mask.shape[0]} but the image is "
                    f"{image.shape[1]}x{image.shape[0]}"
                )
            else:
                mask = place_mask(full_mask, canvas)
    return place(image, canvas), mask, problems, notes


def _decode_chunk(args):
    samples, canvas = args
    return [_decode_one(s, canvas) for s in samples]


def load_arrays(
    samples: list[Sample],
    canvas: Canvas | tuple[int, int] | int,
    root: str = "dataset",
    label: str = "decode",
    workers: int | None = None,
    chunk: int = 64,
) -> ArraySet:
    """Decode every sample onto `canvas` (a (height, width), or an int for a square, is a
    plain resize), in `workers` processes, or raise DatasetError with all problems."""
    if isinstance(canvas, int):
        canvas = (canvas, canvas)
    canvas = canvas if isinstance(canvas, Canvas) else Canvas(*canvas)
    workers = workers or min(4, os.cpu_count() or 1)
    chunks = [samples[i : i + chunk] for i in range(0, len(samples), chunk)]
    images = np.zeros((len(samples), *canvas.shape), dtype=np.uint8)
    masks = np.zeros((len(samples), *canvas.shape), dtype=np.uint8)
    problems: list[str] = []
    notes: list[str] = []
    progress = Progress(label, len(samples))

    def collect(results) -> None:
        index = 0
        for chunk_result in results:
            for image, mask, item_problems, item_notes in chunk_result:
                problems.extend(item_problems)
                notes.extend(item_notes)
                if image is not None:
                    images[index] = image
                    masks[index] = mask
                index += 1
            progress.advance(len(chunk_result))

    work = ((c, canvas) for c in chunks)
    if workers == 1 or len(chunks) <= 1:
        collect(map(_decode_chunk, work))
    else:
        with ProcessPoolExecutor(workers) as pool:
            collect(pool.map(_decode_chunk, work))
    progress.done()
    if problems:
        raise DatasetError(root, problems)
    labels = np.array([s.defective for s in samples], dtype=np.int64)
    marked = masks.reshape(len(samples), -1).any(axis=1)
    named = np.array([s.mask_path is not None for s in samples], dtype=bool)
    has_mask = (labels == 0) | marked
    empty = (labels == 1) & named & ~marked
    if empty.any():
        notes.append(f"{int(empty.sum())} defective image(s) have an empty mask: counted as image-level labels")
    return ArraySet(
        samples=samples,
        images=images,
        masks=masks,
        labels=labels,
        class_ids=np.array([s.class_id for s in samples], dtype=np.int64),
        notes=notes,
        has_mask=has_mask,
        empty_masks=int(np.count_nonzero(empty)),
    )
