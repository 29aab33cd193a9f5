"""Which test images have pixel truth, and the pixel-level metrics over those alone.

A good image's pixels are known (no defect anywhere); a defective image's only where it
has a mask with something drawn on it. A defective image labelled at image level (no mask,
or an all-zero one) says there is a defect but not where, so it takes no part in a pixel
metric: counting its pixels as clean would punish the model for finding the defect.
"""

from __future__ import annotations

import numpy as np

from dagm_defects.evaluation import metrics

# The cut on the segmentation probability for Dice: the map's own natural cut, as the
# served mask uses, not the image-level decision threshold.
DICE_CUT = 0.5


def known_pixels(labels: np.ndarray, masks: np.ndarray, has_mask: np.ndarray | None) -> np.ndarray:
    """True per image whose pixel truth is known. `has_mask` None: every good image and
    every defective one whose mask has a defect pixel."""
    labels = np.asarray(labels).astype(bool)
    drawn = np.asarray(masks).reshape(len(labels), -1).any(axis=1)
    known = np.ones(len(labels), bool) if has_mask is None else np.asarray(has_mask, bool)
    return known & (~labels | drawn)


def label_counts(labels: np.ndarray, known: np.ndarray, empty_masks: int) -> dict:
    """How the test images are labelled, and a sentence on what the pixel metrics cover."""
    defective = np.asarray(labels).astype(bool)
    masked = int((defective & known).sum())
    image_level = int((defective & ~known).sum())
    counts = {"images": int(len(defective)), "good": int((~defective).sum()), "defective_with_mask": masked,
              "defective_image_level": image_level, "empty_masks": int(empty_masks)}
    empty = f" ({empty_masks} of them with an all-zero mask)" if empty_masks else ""
    if not masked:
        note = "no pixel metrics: no defective test image has a mask"
        if image_level:
            note += f"; all {image_level} are labelled at image level only{empty}"
    elif not image_level:
        note = f"pixel metrics cover all {int(known.sum())} test images ({masked} defective with a mask)"
    else:
        note = (f"pixel metrics cover only the {int(known.sum())} test images whose pixels are known "
                f"({int((~defective & known).sum())} good, {masked} defective with a mask); the {image_level} "
                f"defective images labelled at image level only{empty} are left out")
    return {**counts, "pixel_metrics": note}


def pool_to(masks: np.ndarray, height: int, width: int) -> np.ndarray:
    """Masks (N x S x S) max-pooled to the segmentation map's grid, as training's target is."""
    n, rows, cols = masks.shape
    fy, fx = max(rows // height, 1), max(cols // width, 1)
    cropped = masks[:, : height * fy, : width * fx]
    return cropped.reshape(n, height, fy, width, fx).max(axis=(2, 4)) > 0


def pixel_metrics(labels: np.ndarray, masks: np.ndarray, seg_maps: np.ndarray, known: np.ndarray) -> dict | None:
    """Pixel AP of the probability maps and mean Dice at DICE_CUT over the defective images,
    both over the `known` images only; None when no defective image among them has a mask."""
    defective = np.asarray(labels).astype(bool) & known
    if not defective.any():
        return None
    maps = np.asarray(seg_maps, dtype=np.float32)[known]
    truth = pool_to(np.asarray(masks)[known], maps.shape[1], maps.shape[2])
    ap = metrics.average_precision(truth.ravel().astype(np.int64), maps.ravel())
    found, drawn = maps[defective[known]] >= DICE_CUT, truth[defective[known]]
    overlap = (found & drawn).sum(axis=(1, 2))
    dice = 2 * overlap / (found.sum(axis=(1, 2)) + drawn.sum(axis=(1, 2)))
    return {"images": int(known.sum()), "defective_images": int(defective.sum()),
            "map_size": [int(maps.shape[1]), int(maps.shape[2])], "ap": round(float(ap), 6),
            "dice": round(float(dice.mean()), 6), "dice_cut": DICE_CUT}
