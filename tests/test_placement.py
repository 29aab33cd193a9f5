"""Real photographs as they come (issue 38, part 5): every format, bit depth and mode
decodes; masks of every encoding read as 0/1; images of any shape are placed on the
network's canvas one way for training and serving; image_size takes a square, HxW or
"native"; a padded canvas's map is read back over the image alone."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from dagm_defects.imaging import decode_gray, decode_mask
from dagm_defects.model_config import ModelConfig, training_canvas
from dagm_defects.placement import NATIVE_MAX_PIXELS, Canvas, map_extent, native_canvas, place, place_mask
from dagm_defects.training.hyperparameters import HyperparameterError, parse_hyperparameters
from dagm_serve.prediction import Prediction

GRAY = (np.arange(30 * 40).reshape(30, 40) % 251).astype(np.uint8)
WIDE = GRAY.astype(np.uint16) * 257  # the same levels over the full 16-bit range


def saved(image: Image.Image, fmt: str, **options) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **options)
    return out.getvalue()


def png16(array: np.ndarray, colour_type: int) -> bytes:
    """A 16-bit PNG (grey 0, RGB 2) written by hand: Pillow cannot write 16-bit colour."""
    height, width = array.shape[:2]
    rows = b"".join(b"\0" + row.astype(">u2").tobytes() for row in array)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def tiff16(array: np.ndarray) -> bytes:
    """An uncompressed 16-bit TIFF (grey or RGB) written by hand, as scanners write them."""
    height, width = array.shape[:2]
    channels = 1 if array.ndim == 2 else array.shape[2]
    pixels = array.astype("<u2").tobytes()
    tags = [(256, 3, 1, width), (257, 3, 1, height), (258, 3, channels, 16), (259, 3, 1, 1),
            (262, 3, 1, 2 if channels == 3 else 1), (273, 4, 1, 0), (277, 3, 1, channels),
            (278, 3, 1, height), (279, 4, 1, len(pixels))]
    bits_at = 8 + 2 + 12 * len(tags) + 4
    data_at = bits_at + 2 * channels
    out = b"II*\0" + struct.pack("<IH", 8, len(tags))
    for tag, kind, count, value in tags:
        if tag == 258 and channels > 1:
            value = bits_at
        if tag == 273:
            value = data_at
        out += struct.pack("<HHI", tag, kind, count) + struct.pack("<HH" if kind == 3 else "<I",
                                                                   *((value, 0) if kind == 3 else (value,)))
    return out + b"\0\0\0\0" + struct.pack(f"<{channels}H", *[16] * channels) + pixels


RGB = np.stack([GRAY] * 3, axis=-1)
EXACT = {
    "png-8-grey": saved(Image.fromarray(GRAY), "PNG"),
    "png-8-rgb": saved(Image.fromarray(RGB), "PNG"),
    "png-16-grey": png16(WIDE, 0),
    "png-16-rgb": png16(np.stack([WIDE] * 3, axis=-1), 2),
    "bmp-8-grey": saved(Image.fromarray(GRAY), "BMP"),
    "bmp-8-rgb": saved(Image.fromarray(RGB), "BMP"),
    "tiff-8-grey": saved(Image.fromarray(GRAY), "TIFF"),
    "tiff-8-rgb-lzw": saved(Image.fromarray(RGB), "TIFF", compression="tiff_lzw"),
    "tiff-16-grey": tiff16(WIDE),
    "tiff-16-grey-deflate": saved(Image.fromarray(WIDE), "TIFF", compression="tiff_deflate"),
    "tiff-16-rgb": tiff16(np.stack([WIDE] * 3, axis=-1)),
}


@pytest.mark.parametrize("name", EXACT)
def test_every_format_bit_depth_and_mode_decodes_to_its_grey_levels(tmp_path, name):
    path = tmp_path / f"{name}.img"
    path.write_bytes(EXACT[name])
    gray, _ = decode_gray(path)
    assert gray.dtype == np.uint8 and gray.shape == (30, 40)
    assert np.abs(gray.astype(int) - GRAY).max() <= 1


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_jpeg_decodes_to_about_its_grey_levels(tmp_path, mode):
    smooth = np.tile(np.linspace(0, 250, 40, dtype=np.uint8), (30, 1))
    path = tmp_path / "image.jpg"
    path.write_bytes(saved(Image.fromarray(smooth if mode == "L" else np.stack([smooth] * 3, -1)), "JPEG", quality=95))
    gray, _ = decode_gray(path)
    assert gray.shape == (30, 40) and np.abs(gray.astype(int) - smooth).mean() < 2


DEFECT = np.zeros((30, 40), dtype=np.uint8)
DEFECT[10:14, 5:25] = 1


def palette_mask() -> Image.Image:
    """Index 1 is a very dark red: luma would read it as 0, the index says defect."""
    image = Image.fromarray(DEFECT, mode="L").convert("P")
    image.putdata(DEFECT.ravel().tolist())
    image.putpalette([0, 0, 0, 2, 0, 0] + [0] * (254 * 3))
    return image


MASKS = {
    "0/255 png": saved(Image.fromarray(DEFECT * 255), "PNG"),
    "0/1 png": saved(Image.fromarray(DEFECT), "PNG"),
    "0/1 bmp": saved(Image.fromarray(DEFECT), "BMP"),
    "palette png": saved(palette_mask(), "PNG"),
    "palette tiff": saved(palette_mask(), "TIFF"),
    "1-bit png": saved(Image.fromarray(DEFECT.astype(bool)), "PNG"),
    "16-bit 0/1 png": png16(DEFECT.astype(np.uint16), 0),
    "16-bit 0/65535 tiff": tiff16(DEFECT.astype(np.uint16) * 65535),
    "dark red rgb png": saved(Image.fromarray(np.stack([DEFECT, 0 * DEFECT, 0 * DEFECT], -1)), "PNG"),
}


@pytest.mark.parametrize("name", MASKS)
def test_masks_of_every_encoding_read_as_zero_one(tmp_path, name):
    path = tmp_path / "mask.img"
    path.write_bytes(MASKS[name])
    mask = decode_mask(path)
    assert mask.dtype == np.uint8 and np.array_equal(mask, DEFECT)


def test_a_resize_canvas_stretches_and_a_thin_defect_survives():
    image, mask = np.full((500, 1250), 7, np.uint8), np.zeros((500, 1250), np.uint8)
    mask[100:101, 300:600] = 1  # 1 px tall: a box filter on 0/1 values would round it away
    canvas = Canvas(128, 256)
    assert place(image, canvas).shape == (128, 256)
    placed = place_mask(mask, canvas)
    assert placed.shape == (128, 256) and set(np.unique(placed)) == {0, 1} and placed[25:27].any()


def test_a_pad_canvas_keeps_the_scale_and_reflects_image_and_mask_into_the_padding():
    image = np.tile(np.arange(100, 160, dtype=np.uint8), (40, 1))
    mask = np.zeros((40, 60), np.uint8)
    mask[:, 56:] = 1  # a defect at the right edge
    canvas = Canvas(128, 128, pad=True)
    placed, placed_mask = place(image, canvas), place_mask(mask, canvas)
    assert np.array_equal(placed[:40, :60], image)
    assert placed[:40, 60] == pytest.approx(image[:, 58])  # reflected, not a flat or repeated edge
    assert 100 <= placed.min() and placed.max() <= 159  # the padding holds the image's own levels
    assert placed_mask[:, 56:63].all() and not placed_mask[:, 63:].any() and not placed_mask[:, :56].any()


def test_a_pad_canvas_shrinks_what_does_not_fit_keeping_the_aspect():
    canvas = Canvas(128, 256, pad=True)
    assert canvas.region((500, 1250)) == (102, 256)
    assert canvas.region((50, 60)) == (50, 60)
    assert Canvas(128, 256, pad=True, scale=0.5).region((100, 200)) == (50, 100)
    assert Canvas(128, 256).region((50, 60)) == (128, 256)


def test_the_native_canvas_covers_the_largest_image_on_the_network_multiple():
    assert native_canvas([(100, 600), (500, 1250), (300, 300)], 64, 128) == Canvas(512, 1280, pad=True)
    assert native_canvas([(100, 100)], 64, 128) == Canvas(128, 128, pad=True)


@pytest.mark.parametrize("shapes", [[(2000, 3000)], [(4000, 4000), (100, 100)], [(64, 20000)], [(20000, 64)]])
def test_the_native_canvas_is_capped_by_one_scale_for_the_whole_set(shapes):
    canvas = native_canvas(shapes, 64, 128)
    assert canvas.pad and canvas.height * canvas.width <= NATIVE_MAX_PIXELS
    assert canvas.height % 64 == 0 and canvas.width % 64 == 0 and min(canvas.shape) >= 128
    for height, width in shapes:  # each image fits at the set's scale: nothing is cropped
        assert height * canvas.scale <= canvas.height and width * canvas.scale <= canvas.width


def test_native_needs_a_training_image():
    with pytest.raises(ValueError, match="at least one training image"):
        native_canvas([], 64, 128)


def test_the_training_canvas_reads_image_headers(tmp_path):
    paths = []
    for i, (height, width) in enumerate([(100, 600), (250, 120)]):
        paths.append(tmp_path / f"{i}.png")
        Image.new("L", (width, height)).save(paths[-1])
    assert training_canvas("native", 2, paths) == Canvas(256, 640, pad=True)
    assert training_canvas((384, 1024), 2, paths) == Canvas(384, 1024)


@pytest.mark.parametrize("raw, size", [("512", (512, 512)), (512, (512, 512)), ('"384x1024"', (384, 1024)),
                                       ("384X1024", (384, 1024)), ("native", "native"), ("NATIVE", "native")])
def test_image_size_is_a_square_height_x_width_or_native(raw, size):
    assert parse_hyperparameters({"image_size": raw}).image_size == size


@pytest.mark.parametrize("raw, message", [
    ("384x", "'image_size' must be a whole number 64..4096 (a square"),
    ("x384", "'image_size' must be a whole number 64..4096"),
    ("512x512x3", "'image_size' must be a whole number 64..4096"),
    ("auto", 'or "native"'),
    ("32x512", "'image_size' must be a whole number 64..4096"),
    ("384x1000", "'image_size' width must be a multiple of 64 and >= 128 with space_to_depth 2, got 1000"),
    ("100x512", "'image_size' height must be a multiple of 64"),
    ("100", "'image_size' must be a multiple of 64 and >= 128 with space_to_depth 2, got 100"),
])
def test_bad_image_sizes_say_what_is_expected(raw, message):
    with pytest.raises(HyperparameterError) as info:
        parse_hyperparameters({"image_size": raw})
    assert message in str(info.value)


def test_the_model_config_carries_the_canvas_and_native_needs_one_resolved():
    hp = parse_hyperparameters({"image_size": "native"})
    with pytest.raises(ValueError, match="native"):
        hp.model_config()
    config = hp.model_config(Canvas(256, 640, pad=True, scale=0.75))
    assert config.image_size == (256, 640) and config.canvas == Canvas(256, 640, pad=True, scale=0.75)
    assert ModelConfig.from_dict(config.to_dict()) == config
    assert parse_hyperparameters({"image_size": "384x1024"}).model_config().canvas == Canvas(384, 1024)


def test_a_served_mask_is_read_over_the_image_alone_and_comes_back_at_its_size():
    """A 40x90 image on a 128x256 padded canvas covers the map's top-left 5 x 11.25 cells
    (8 px each): a hot cell there lands on the image where the defect was; a hot cell in
    the padding does not reach the image."""
    canvas, shape = Canvas(128, 256, pad=True), (40, 90)
    probabilities = np.zeros((16, 32), np.float32)
    probabilities[2, 4] = 1.0
    probabilities[10, 30] = 1.0  # padding only
    extent = map_extent(shape, canvas, probabilities.shape)
    assert extent == (5.0, 11.25)
    prediction = Prediction.from_outputs(0.9, probabilities, shape, 0.5, extent)
    mask = prediction.mask
    assert mask.shape == shape
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    assert 16 <= rows[0] and rows[-1] < 24 and 32 <= cols[0] and cols[-1] < 40  # map cell (2, 4) in pixels
    padding_only = np.zeros((16, 32), np.float32)
    padding_only[10, 30] = 1.0
    assert not Prediction.from_outputs(0.9, padding_only, shape, 0.5, extent).mask.any()
