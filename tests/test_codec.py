"""Unit tests of dagm_serve.codec (request bodies in) and dagm_serve.connections.ConnectionGuard.

The refusal tests measure that a refused request cost what reading its headers costs:
time, memory traced by tracemalloc, and whether any image was decoded at all.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import struct
import sys
import threading
import time
import tracemalloc
import zlib
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from dagm_serve import codec
from dagm_serve.codec import Limits, RequestError, decode_request
from dagm_serve.connections import ConnectionGuard

from conftest import jpeg, npy, png

MB = 2**20
LIMITS = Limits(max_images=64, max_pixels=64 * MB)
BIG = 4096  # DAGM's per-image limit is 4096 x 4096 pixels


def npy_header(shape: tuple, descr: str = "|u1", fortran: bool = False) -> bytes:
    out = io.BytesIO()
    np.lib.format.write_array_header_1_0(out, {"descr": descr, "fortran_order": fortran, "shape": shape})
    return out.getvalue()


def npy_raw_header(text: str) -> bytes:
    """An .npy version 1.0 header holding `text` as is."""
    data = (text + "\n").encode("latin1")
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(data)) + data


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR declares width x height, followed by a few bytes of pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def json_body(images: list[bytes]) -> bytes:
    return json.dumps({"instances": [{"b64": base64.b64encode(i).decode()} for i in images]}).encode()


def jsonlines_body(images: list[bytes]) -> bytes:
    return b"".join(json.dumps({"b64": base64.b64encode(i).decode()}).encode() + b"\n" for i in images)


def noise(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width), dtype=np.uint8)


@pytest.fixture
def decodes(monkeypatch) -> list[str]:
    """The names of the images `decode_request` decoded (pixels, not headers)."""
    seen: list[str] = []
    real = codec.decode_opened

    def spy(image, name):
        seen.append(name)
        return real(image, name)

    monkeypatch.setattr(codec, "decode_opened", spy)
    return seen


def refused(body: bytes, content_type: str, limits: Limits = LIMITS) -> tuple[RequestError, float, int]:
    """The RequestError for `body`, the seconds it took and the peak bytes traced meanwhile."""
    tracemalloc.start()
    try:
        start = time.perf_counter()
        with pytest.raises(RequestError) as info:
            decode_request(body, content_type, limits)
        elapsed = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return info.value, elapsed, peak


@pytest.fixture(scope="module")
def big_png() -> bytes:
    """One 4096 x 4096 PNG of zeros (16 MiB of pixels in ~16 KB)."""
    return png(np.zeros((BIG, BIG), dtype=np.uint8))


# --- bodies that decode ------------------------------------------------------------------


def test_png_decodes_to_its_pixels():
    array = noise(37, 53)
    (out,) = decode_request(png(array), "image/png", LIMITS)
    np.testing.assert_array_equal(out, array)
    assert out.dtype == np.uint8


def test_colour_png_decodes_to_gray():
    rgb = np.random.default_rng(1).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    (out,) = decode_request(png(rgb), "image/png", LIMITS)
    np.testing.assert_array_equal(out, np.asarray(Image.fromarray(rgb).convert("L")))


def test_jpeg_decodes_to_about_its_pixels():
    array = np.full((32, 48), 128, dtype=np.uint8)
    array[:, 24:] = 40
    (out,) = decode_request(jpeg(array), "image/jpeg", LIMITS)
    assert out.shape == (32, 48) and out.dtype == np.uint8
    assert np.abs(out.astype(int) - array).mean() < 3


@pytest.mark.parametrize("content_type", ["Image/PNG; charset=binary", " image/png "])
def test_content_type_parameters_and_case_are_ignored(content_type):
    array = noise(8, 9)
    (out,) = decode_request(png(array), content_type, LIMITS)
    np.testing.assert_array_equal(out, array)


def test_npy_2d_3d_and_fortran_order_decode_to_their_values():
    two = noise(11, 13, seed=2)
    (out,) = decode_request(npy(two), "application/x-npy", LIMITS)
    np.testing.assert_array_equal(out, two)
    three = np.stack([noise(7, 5, seed=s) for s in range(3)])
    outs = decode_request(npy(three), "application/x-npy", LIMITS)
    assert len(outs) == 3
    for got, want in zip(outs, three):
        np.testing.assert_array_equal(got, want)
    fortran = np.asfortranarray(noise(6, 10, seed=4))
    assert npy(fortran)[:128].find(b"'fortran_order': True") > 0
    (out,) = decode_request(npy(fortran), "application/x-npy", LIMITS)
    np.testing.assert_array_equal(out, fortran)


class _Finalized:
    """Garbage whose collection runs Python code, letting another thread take the GIL
    while the collecting thread is inside the AST constructor."""

    def __del__(self):
        pass


def test_npy_bodies_decoded_by_concurrent_threads_all_decode():
    """CPython 3.11's AST constructor state is shared by threads, and numpy parses .npy
    headers with it: without the codec's lock this load fails about 1 in 100 valid
    bodies with "SystemError: AST constructor recursion depth mismatch"."""
    arrays = [np.stack([noise(16, 16, seed=10 * t + i) for i in range(2)]) for t in range(4)]
    failures, wrong = [], []

    def decode_many(array: np.ndarray) -> None:
        body = npy(array)
        for _ in range(1000):
            garbage = [_Finalized() for _ in range(20)]
            garbage.append(garbage)  # a cycle: freed by the collector, not at once
            try:
                got = decode_request(body, "application/x-npy", LIMITS)
            except RequestError as exc:
                failures.append(exc.message)
                continue
            if not all(np.array_equal(g, w) for g, w in zip(got, array)):
                wrong.append(got)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads take turns as often as they can
    try:
        threads = [threading.Thread(target=decode_many, args=(a,)) for a in arrays]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)
    assert failures == [] and wrong == []


def test_json_and_jsonlines_decode_every_instance_in_order():
    arrays = [noise(10, 12, seed=5), noise(30, 7, seed=6)]
    grey = np.full((16, 16), 200, dtype=np.uint8)
    images = [png(arrays[0]), png(arrays[1]), jpeg(grey)]
    for body, kind in [(json_body(images), "application/json"),
                       (jsonlines_body(images), "application/jsonlines"),
                       (b"\r\n\n".join(jsonlines_body(images).splitlines()) + b"\n\n", "application/x-jsonlines")]:
        outs = decode_request(body, kind, LIMITS)
        assert len(outs) == 3, kind
        np.testing.assert_array_equal(outs[0], arrays[0])
        np.testing.assert_array_equal(outs[1], arrays[1])
        assert outs[2].shape == (16, 16) and np.abs(outs[2].astype(int) - 200).max() <= 2


# --- refused before anything is decoded or allocated ---------------------------------------


def test_npy_header_declaring_1e13_elements_is_refused_at_once():
    body = npy_header((10**13,)) + b"\0" * 16
    assert len(body) < 200
    error, elapsed, peak = refused(body, "application/x-npy")
    assert error.status == 400
    assert "HxW or NxHxW uint8" in error.message
    assert elapsed < 0.5
    assert peak < 10 * MB


def test_npy_header_declaring_a_million_4096_images_is_refused_at_once():
    body = npy_header((10**6, BIG, BIG)) + b"\0" * 16
    assert len(body) < 200
    error, elapsed, peak = refused(body, "application/x-npy")
    assert error.status == 413
    assert "1000000 images" in error.message and "DAGM_MAX_IMAGES_PER_REQUEST" in error.message
    assert elapsed < 0.5
    assert peak < 10 * MB


def test_npy_header_over_the_pixel_limit_is_refused_before_its_body_is_read():
    body = npy_header((8, BIG, BIG)) + b"\0" * 16  # 8 x 16 MiB pixels > 64 MiB
    error, elapsed, peak = refused(body, "application/x-npy")
    assert error.status == 413
    assert "DAGM_MAX_PIXELS_PER_REQUEST" in error.message
    assert elapsed < 0.5
    assert peak < 10 * MB


@pytest.mark.parametrize("shape", [(1, BIG + 1, BIG), (0, 8, 8), (3, 0, 8), (8, 0)])
def test_npy_images_outside_the_per_image_limit_are_400(shape):
    error, elapsed, peak = refused(npy_header(shape) + b"\0" * 16, "application/x-npy")
    assert error.status == 400
    assert "each must have 1 to" in error.message
    assert peak < 10 * MB


@pytest.mark.parametrize("shape", [(-1, 4, 4), (2, -3, -4), (-2, -3, 4), (1, -1, -1)])
@pytest.mark.parametrize("extra", [0, 1, 16, 24])
def test_npy_negative_dimensions_are_400(shape, extra):
    error, _, _ = refused(npy_header(shape) + b"\0" * extra, "application/x-npy")
    assert error.status == 400


@pytest.mark.parametrize("carried", [0, 100, 127, 129, 1000])
def test_npy_header_that_disagrees_with_the_body_length_is_400(carried):
    body = npy_header((2, 8, 8)) + b"\0" * carried  # 128 bytes declared
    error, _, _ = refused(body, "application/x-npy")
    assert error.status == 400
    assert "(128 bytes)" in error.message and f"carries {carried}" in error.message


@pytest.mark.parametrize("header", [
    npy_header((4, 4), descr="<f4"),
    npy_header((4, 4), descr="|O"),
    npy_header((2, 4, 4, 3)),
    b"\x93NUMPY\x03\x00" + b"\0" * 64,
    b"\x93NUMPY\x01\x00\xff\xff" + b"x" * 100,
    b"not an npy at all",
    npy_raw_header("{'descr': '|u1', 'fortran_order': False, 'shape': " + "(" * 1900 + ")" * 1900 + "}"),
    npy_raw_header("{'descr': '|u1', 'fortran_order': False, 'shape': (" + "9" * 4000 + ", 8)}"),
    npy_raw_header("{'descr': '|u1', 'fortran_order': False, 'shape': (2, 2), 'x': " + "[" * 3000 + "}"),
    npy_raw_header("{'descr': '|u1', 'fortran_order': False, 'shape': (2, 2)}" + " " * 20_000),
])
def test_npy_bodies_that_are_no_uint8_image_array_are_400(header):
    error, _, peak = refused(header + b"\0" * 64, "application/x-npy")
    assert error.status == 400
    assert peak < 10 * MB


def test_forty_4096_pngs_are_refused_on_their_headers(big_png, decodes):
    body = json_body([big_png] * 40)
    assert len(body) < 2 * MB
    error, elapsed, peak = refused(body, "application/json")
    assert error.status == 413
    assert "DAGM_MAX_PIXELS_PER_REQUEST" in error.message
    assert str(40 * BIG * BIG) in error.message
    assert decodes == []  # not one image was decoded
    assert peak < 16 * MB  # less than ONE decoded image; all forty would be 640 MiB
    assert elapsed < 2.0


def test_one_4096_png_does_decode_and_tracemalloc_sees_it(big_png, decodes):
    """The control for the test above: decoding shows up in the measurements."""
    tracemalloc.start()
    try:
        (out,) = decode_request(json_body([big_png]), "application/json", LIMITS)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert out.shape == (BIG, BIG) and not out.any()
    assert decodes == ["instances[0]"]
    assert peak >= 16 * MB


def test_png_header_over_the_per_image_limit_is_refused_without_decoding(decodes):
    for width, height in [(BIG + 1, BIG), (100_000, 100_000), (2**31 - 1, 2**31 - 1)]:
        body = png_header_only(width, height)
        error, elapsed, peak = refused(body, "image/png")
        assert error.status == 400, (width, height)
        assert elapsed < 0.5 and peak < 10 * MB
    assert decodes == []


def test_more_instances_than_max_images_is_413_before_any_base64():
    body = json.dumps({"instances": [{"b64": "@@not base64@@"}] * 10_000}).encode()
    error, elapsed, _ = refused(body, "application/json")
    assert error.status == 413
    assert "10000 images" in error.message and "DAGM_MAX_IMAGES_PER_REQUEST" in error.message
    assert elapsed < 2.0
    # the same instances, few enough: now the base64 is read, and refused
    few = json.dumps({"instances": [{"b64": "@@not base64@@"}] * 3}).encode()
    error, _, _ = refused(few, "application/json")
    assert error.status == 400 and "base64" in error.message


def test_more_jsonlines_than_max_images_is_413_before_any_line_is_parsed():
    body = b'{"b64": "@@not base64@@"\n' * 10_000  # not even valid JSON
    error, _, _ = refused(body, "application/jsonlines")
    assert error.status == 413
    assert "10000 images" in error.message
    error, _, _ = refused(b'{"b64": "@@not base64@@"\n' * 3, "application/jsonlines")
    assert error.status == 400 and "line 1" in error.message


@pytest.mark.parametrize("body,kind", [
    (b"[" * 100_000, "application/json"),
    (b'{"instances": ' + b"[" * 100_000, "application/json"),
    (b'{"instances": [' + b'{"a":' * 100_000 + b"1" + b"}" * 100_000 + b"]}", "application/json"),
    (b"[" * 100_000 + b"\n", "application/jsonlines"),
    (jsonlines_body([png(noise(4, 4))]) + b"[" * 100_000 + b"\n", "application/jsonlines"),
])
def test_deeply_nested_json_is_400_not_a_recursion_error(body, kind):
    error, _, _ = refused(body, kind)
    assert error.status == 400
    assert "nested too deeply" in error.message


def test_deeply_nested_jsonline_is_named_by_its_line_number():
    body = jsonlines_body([png(noise(4, 4))]) + b"[" * 100_000 + b"\n"
    error, _, _ = refused(body, "application/jsonlines")
    assert error.status == 400
    assert error.message == "line 2 is nested too deeply"


def test_body_is_parsed_only_as_its_declared_format(decodes):
    array = noise(16, 16)
    error, _, _ = refused(jpeg(array), "image/png")
    assert error.status == 400 and "PNG" in error.message
    error, _, _ = refused(png(array), "image/jpeg")
    assert error.status == 400 and "JPEG" in error.message
    for body in (png(array), jpeg(array)):
        error, _, _ = refused(body, "application/x-npy")
        assert error.status == 400
    assert decodes == []


@pytest.mark.parametrize("body,kind,status", [
    (b"\x00\x01", "image/gif", 415),
    (b"\x00\x01", None, 415),
    (b"", "image/png", 400),
    (b'{"instances": []}', "application/json", 400),
    (b'{"instances": [{"b64": 5}]}', "application/json", 400),
    (b'{"instances": ["abc"]}', "application/json", 400),
    (b'{"nope": 1}', "application/json", 400),
    (b"\xff\xfe garbage", "application/json", 400),
    (b"\n\n  \n", "application/jsonlines", 400),
])
def test_malformed_requests_get_their_status(body, kind, status):
    error, _, _ = refused(body, kind)
    assert error.status == status


def test_sixteen_bit_png_is_refused():
    wide = np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000
    error, _, _ = refused(png(wide), "image/png")
    assert error.status == 400 and "16" in error.message


@pytest.mark.parametrize("where", ["decode_opened", "open_image"])
@pytest.mark.parametrize("exc,status", [
    (MemoryError(), 413),
    (RecursionError("maximum recursion depth exceeded"), 400),
    (RuntimeError("Pillow broke"), 400),
    (ZeroDivisionError("division by zero"), 400),
    (struct.error("unpack requires a buffer"), 400),
    (KeyError("tEXt"), 400),
])
def test_unexpected_exceptions_of_the_image_parser_end_as_request_errors(monkeypatch, where, exc, status):
    def broken(*args, **kwargs):
        raise exc

    monkeypatch.setattr(codec, where, broken)
    for body, kind in [(png(noise(8, 8)), "image/png"), (json_body([png(noise(8, 8))]), "application/json")]:
        error, _, _ = refused(body, kind)
        assert error.status == status, (where, type(exc), kind)
        assert error.message


# --- ConnectionGuard.sweep -----------------------------------------------------------------


class FakeConnection:
    def __init__(self, name: str):
        self.name = name
        self.force_closed = 0

    def force_close(self) -> None:
        self.force_closed += 1

    def __repr__(self) -> str:
        return self.name


def closed(connections) -> list[str]:
    return [c.name for c in connections if c.force_closed]


def test_sweep_closes_idle_connections_once_past_the_idle_timeout():
    guard = ConnectionGuard(max_connections=100, idle_timeout_s=5)
    a, b = FakeConnection("a"), FakeConnection("b")
    guard.sweep([a], now=100.0)  # first seen: quiet since 100
    guard.sweep([a, b], now=102.0)  # b first seen at 102
    guard.sweep([a, b], now=104.9)
    assert closed([a, b]) == []
    guard.sweep([a, b], now=105.0)
    assert closed([a, b]) == ["a"]
    guard.sweep([b], now=106.9)  # a is gone
    assert closed([a, b]) == ["a"]
    guard.sweep([b], now=107.0)
    assert closed([a, b]) == ["a", "b"]
    assert (a.force_closed, b.force_closed) == (1, 1)
    assert guard.closed == 2


def test_sweep_never_closes_a_busy_connection_and_counts_quiet_from_its_last_answer():
    async def main():
        guard = ConnectionGuard(max_connections=100, idle_timeout_s=5)
        busy, idle = FakeConnection("busy"), FakeConnection("idle")
        guard.sweep([busy, idle], now=time.monotonic())
        assert closed([busy, idle]) == []
        guard.max_connections = 1
        started, finish = asyncio.Event(), asyncio.Event()

        async def handler(request):
            started.set()
            await finish.wait()
            return "answer"

        request = SimpleNamespace(protocol=busy)
        serving = asyncio.get_running_loop().create_task(guard.middleware(request, handler))
        await started.wait()
        assert guard.in_flight == 1
        # long past the idle timeout and over max_connections: only the idle one closes
        guard.sweep([busy, idle], now=time.monotonic() + 1000)
        assert closed([busy, idle]) == ["idle"]
        guard.sweep([busy], now=time.monotonic() + 2000)
        assert busy.force_closed == 0
        finish.set()
        assert await serving == "answer"
        answered = time.monotonic()
        assert guard.in_flight == 0
        guard.sweep([busy], now=answered + 4.5)  # quiet for less than the timeout since its answer
        assert busy.force_closed == 0
        guard.sweep([busy], now=answered + 6)
        assert busy.force_closed == 1

    asyncio.run(main())


def test_sweep_over_max_connections_closes_the_quietest_idle_ones_first():
    async def main():
        guard = ConnectionGuard(max_connections=100, idle_timeout_s=1000)
        conns = [FakeConnection(f"c{i}") for i in range(5)]
        base = time.monotonic()
        for i in range(5):  # c0 quiet since base, c1 since base + 1, ...
            guard.sweep(conns[: i + 1], now=base + i)
        finish = asyncio.Event()

        async def handler(request):
            await finish.wait()

        # c0, the quietest, is busy with a request
        serving = asyncio.get_running_loop().create_task(
            guard.middleware(SimpleNamespace(protocol=conns[0]), handler))
        await asyncio.sleep(0)
        assert guard.in_flight == 1
        guard.max_connections = 2
        guard.sweep(conns, now=base + 10)
        assert closed(conns) == ["c1", "c2", "c3"]  # 5 open, 2 allowed: 3 idle ones, quietest first
        assert guard.closed == 3
        left = [conns[0], conns[4]]
        guard.sweep(left, now=base + 11)
        assert closed(conns) == ["c1", "c2", "c3"]
        assert all(c.force_closed <= 1 for c in conns)
        finish.set()
        await serving

    asyncio.run(main())


def test_guard_middleware_counts_requests_per_connection_and_survives_handler_errors():
    async def main():
        guard = ConnectionGuard(max_connections=10, idle_timeout_s=5)
        conn = FakeConnection("c")

        async def failing(request):
            raise ValueError("handler failed")

        with pytest.raises(ValueError):
            await guard.middleware(SimpleNamespace(protocol=conn), failing)
        assert guard.in_flight == 0
        guard.sweep([conn], now=time.monotonic() + 6)
        assert conn.force_closed == 1

    asyncio.run(main())
