"""From channels to the three in-memory sets the loop uses: train, validation, test.

Without a ``validation`` channel, the train channel's ``Train`` split is divided
deterministically (stratified by class and label, from the seed); without a ``test``
channel, evaluation uses the train channel's ``Test`` split, and without that (the usual
case for a user's own data) the validation set, saying so in the report.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dagm_defects.data.arrays import ArraySet, load_arrays
from dagm_defects.data.reader import Sample, has_split, read_index
from dagm_defects.model_config import training_canvas
from dagm_defects.placement import Canvas
from dagm_defects.training.settings import TrainingSettings


@dataclass
class DataSplits:
    train: ArraySet
    validation: ArraySet
    test: ArraySet
    test_source: str
    # Where every set was decoded: image_size, or for "native" sized from the train images.
    canvas: Canvas

    @property
    def classes(self) -> list[int]:
        return sorted({int(c) for c in self.train.class_ids})


def stratified_split(samples: list[Sample], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices (train, validation): `fraction` of each (class, label) group, at least one
    of any group with two or more members, the same for the same seed."""
    rng = np.random.default_rng(seed)
    groups: dict[tuple[int, bool], list[int]] = {}
    for i, sample in enumerate(samples):
        groups.setdefault((sample.class_id, sample.defective), []).append(i)
    train, validation = [], []
    for key in sorted(groups):
        members = np.array(groups[key])
        rng.shuffle(members)
        count = int(round(len(members) * fraction))
        if len(members) >= 2:
            count = min(max(count, 1), len(members) - 1)
        validation.extend(members[:count].tolist())
        train.extend(members[count:].tolist())
    return sorted(train), sorted(validation)


def prepare_data(settings: TrainingSettings, workers: int) -> DataSplits:
    hp = settings.hyperparameters
    channels = settings.channels
    train_root = channels["train"]
    train_samples = read_index(train_root, hp.classes, splits=("Train",))
    canvas = training_canvas(hp.image_size, hp.space_to_depth, [s.image_path for s in train_samples])
    classes = sorted({s.class_id for s in train_samples})

    if "validation" in channels:
        train = load_arrays(train_samples, canvas, train_root, "decode train", workers)
        val_root = channels["validation"]
        validation = load_arrays(read_index(val_root, classes), canvas, val_root, "decode validation", workers)
    else:
        everything = load_arrays(train_samples, canvas, train_root, "decode train", workers)
        train_idx, val_idx = stratified_split(train_samples, hp.validation_fraction, hp.seed)
        train, validation = everything.subset(train_idx), everything.subset(val_idx)

    if "test" in channels:
        test_root, test_source = channels["test"], "test channel"
        test_samples = read_index(test_root, classes)
    elif has_split(train_root, "Test"):
        test_root, test_source = train_root, "train channel, Test split"
        test_samples = read_index(train_root, classes, splits=("Test",))
    else:
        held_out = ("the validation channel" if "validation" in channels else
                    f"the validation set ({hp.validation_fraction:.0%} of the train channel's Train split, held out)")
        return DataSplits(train, validation, validation, f"{held_out}: no test channel and no Test split", canvas)
    test = load_arrays(test_samples, canvas, test_root, "decode test", workers)
    return DataSplits(train, validation, test, test_source, canvas)
