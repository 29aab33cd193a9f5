"""What a good-only job needs besides the synthetic defects of each batch: a fixed set to
watch its epochs on, and the segmentation loss's defect-pixel weight."""

from __future__ import annotations

import numpy as np

from dagm_defects.data.arrays import ArraySet
from dagm_defects.training.anomalies import paste_anomalies
from dagm_defects.training.loop import seg_pos_weight

# Enough synthetic masks to estimate how rare defect pixels are.
_WEIGHT_SAMPLE = 64


def monitoring_set(validation: ArraySet, seed: int) -> ArraySet:
    """The held-out images plus, for each good one, a copy with a synthetic defect drawn
    on it (the same for the same seed): what the epochs' validation AP is measured on."""
    good = np.flatnonzero(validation.labels == 0)
    if len(good) == 0:
        return validation
    copies = validation.subset(good)
    images, masks = paste_anomalies(copies.images, np.random.default_rng([seed, 7]))
    return ArraySet(
        samples=[*validation.samples, *copies.samples],
        images=np.concatenate([validation.images, images]),
        masks=np.concatenate([validation.masks, masks]),
        labels=np.concatenate([validation.labels, np.ones(len(good), dtype=validation.labels.dtype)]),
        class_ids=np.concatenate([validation.class_ids, copies.class_ids]),
        notes=list(validation.notes),
        has_mask=np.concatenate([validation.has_mask, np.ones(len(good), dtype=bool)]),
    )


def synthetic_pos_weight(train: ArraySet, downsample: int, seed: int) -> float:
    """`seg_pos_weight` as the synthetic defects make it, measured on a sample of them."""
    rng = np.random.default_rng([seed, 11])
    chosen = rng.choice(len(train), min(_WEIGHT_SAMPLE, len(train)), replace=False)
    sample = train.subset(chosen)
    sample.images, sample.masks = paste_anomalies(sample.images, rng)
    sample.labels = np.ones(len(sample), dtype=train.labels.dtype)
    sample.has_mask = np.ones(len(sample), dtype=bool)
    return seg_pos_weight(sample, downsample)
