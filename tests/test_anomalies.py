"""The synthetic defects drawn on good images (dagm_defects.training.anomalies): the contract
paste_anomalies keeps, and that each family draws a visible defect of its own kind."""

from __future__ import annotations

import numpy as np
import pytest
from dagm_synth.render import render_image

from dagm_defects.training import anomalies
from dagm_defects.training.anomalies import _FAMILIES, _paste, paste_anomalies

# smooth, granular, blotchy, the hard case's fibres, woven
CLASSES = (1, 3, 5, 8, 10)
SHAPES = [(64, 64), (64, 200), (150, 70), (256, 256)]


def good_images(shape: tuple[int, int], n: int, seed: int = 0) -> np.ndarray:
    """`n` good images of our synthetic classes, cropped to `shape` at random places."""
    rng = np.random.default_rng(seed)
    images = []
    for i in range(n):
        full, _ = render_image(CLASSES[i % len(CLASSES)], np.random.default_rng([seed, i]), 256)
        y, x = rng.integers(0, 257 - shape[0]), rng.integers(0, 257 - shape[1])
        images.append(full[y : y + shape[0], x : x + shape[1]])
    return np.stack(images) if images else np.zeros((0, *shape), np.uint8)


def one_family(images: np.ndarray, family: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    out, masks = images.copy(), np.zeros_like(images)
    rng = np.random.default_rng(seed)
    for image, mask in zip(out, masks):
        _paste(image, mask, family, rng)
    return out, masks


def assert_contract(images: np.ndarray, out: np.ndarray, masks: np.ndarray) -> None:
    assert out.shape == masks.shape == images.shape
    assert out.dtype == masks.dtype == np.uint8
    assert set(np.unique(masks)) <= {0, 1}
    assert masks.reshape(len(masks), -1).any(axis=1).all(), "an empty mask"
    outside = masks == 0
    assert np.array_equal(out[outside], images[outside]), "a pixel outside the mask changed"


def mean_change_inside(images: np.ndarray, out: np.ndarray, masks: np.ndarray) -> float:
    return float(np.abs(out.astype(np.int16) - images)[masks == 1].mean())


@pytest.mark.parametrize("shape", SHAPES)
def test_every_image_gets_one_defect_and_nothing_else_changes(shape):
    images = good_images(shape, 30)
    before = images.copy()
    out, masks = paste_anomalies(images, np.random.default_rng(1))
    assert_contract(images, out, masks)
    assert np.array_equal(images, before), "the input was changed in place"


@pytest.mark.parametrize("family", _FAMILIES)
@pytest.mark.parametrize("shape", SHAPES)
def test_each_family_keeps_the_contract_at_any_size(family, shape):
    images = good_images(shape, 25)
    assert_contract(images, *one_family(images, family))


@pytest.mark.parametrize("family", _FAMILIES)
def test_each_family_draws_a_visible_defect(family):
    images = good_images((256, 256), 40)
    out, masks = one_family(images, family)
    assert mean_change_inside(images, out, masks) > 4.0
    # the mask is the footprint: a pixel in it may keep its grey level only where the
    # change rounds to nothing, which is the rim's business, not most of the mask's
    changed = out != images
    assert changed[masks == 1].mean() > 0.6
    areas = masks.sum(axis=(1, 2))
    assert areas.min() >= 20 and areas.max() <= 0.05 * 256 * 256 * 1.05


def test_scratches_are_thin_lines_and_patches_are_broad():
    images = good_images((256, 256), 30)
    thinness = {}
    for family in _FAMILIES:
        _, masks = one_family(images, family)
        # a line's pixels per unit of its extent are its width; a blob's grow with its size
        extent = [np.hypot(*np.ptp(np.nonzero(m), axis=1)) + 1.0 for m in masks]
        thinness[family] = np.median(masks.sum(axis=(1, 2)) / np.array(extent))
    assert thinness["scratch"] <= 4.0
    assert thinness["cutpaste"] > 2 * thinness["scratch"]
    assert thinness["draem"] > 2 * thinness["scratch"]


def core(mask: np.ndarray, rim: int = 7) -> np.ndarray:
    """The mask less a `rim` px border (wider than the soft rim), where the blend is full."""
    inner = mask.astype(bool)
    for _ in range(rim):
        inner = inner & np.roll(inner, 1, 0) & np.roll(inner, -1, 0) & np.roll(inner, 1, 1) & np.roll(inner, -1, 1)
    return inner


def test_cutpaste_fills_with_texture_not_an_offset():
    """The patch comes from elsewhere in the image, so inside the rim the change varies from
    pixel to pixel as much as the texture does; a darker or brighter offset would be flat."""
    images = good_images((256, 256), 60, seed=3)
    out, masks = one_family(images, "cutpaste", seed=3)
    spreads = [np.std((o.astype(np.int16) - i)[core(m)]) for i, o, m in zip(images, out, masks) if core(m).sum() >= 50]
    assert len(spreads) >= 5
    assert np.median(spreads) > 8.0


def test_the_batch_draws_every_family_at_about_its_odds(monkeypatch):
    drawn = []

    def counted(family, draw):
        def wrapper(image, rng):
            drawn.append(family)
            return draw(image, rng)
        return wrapper

    for family, draw in anomalies._DRAW.items():
        monkeypatch.setitem(anomalies._DRAW, family, counted(family, draw))
    paste_anomalies(good_images((64, 64), 300), np.random.default_rng(2))
    shares = {family: drawn.count(family) / len(drawn) for family in _FAMILIES}
    assert len(drawn) == 300
    assert all(0.2 < share < 0.5 for share in shares.values()), shares


def test_the_same_seed_gives_the_same_defects_and_another_seed_others():
    images = good_images((128, 96), 12)
    first = paste_anomalies(images, np.random.default_rng(7))
    again = paste_anomalies(images, np.random.default_rng(7))
    other = paste_anomalies(images, np.random.default_rng(8))
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not np.array_equal(first[1], other[1])
    assert not np.array_equal(first[0], other[0])


def test_an_empty_batch_gives_empty_arrays():
    images = np.zeros((0, 64, 80), np.uint8)
    out, masks = paste_anomalies(images, np.random.default_rng(0))
    assert out.shape == masks.shape == (0, 64, 80)
    assert out.dtype == masks.dtype == np.uint8


@pytest.mark.parametrize("images", [np.zeros((64, 64), np.uint8), np.zeros((2, 64, 64), np.float32)])
def test_anything_but_a_uint8_batch_is_refused(images):
    with pytest.raises(ValueError, match="uint8"):
        paste_anomalies(images, np.random.default_rng(0))


def test_a_saturated_image_still_changes():
    """A darker or brighter offset turns towards the side with room."""
    for level in (0, 255):
        images = np.full((20, 64, 64), level, np.uint8)
        out, masks = one_family(images, "scratch")
        assert (out != images).reshape(20, -1).any(axis=1).all()
