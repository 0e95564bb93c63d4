"""Frame files, read back by Pillow and by Blender itself (bpy): what users open is what we wrote."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from backend.outputs.images import encode_exr_passes, encode_png, srgb_to_linear


def _image(h: int = 7, w: int = 5) -> np.ndarray:
    rng = np.random.default_rng(0)
    img = rng.random((h, w, 4)).astype(np.float32)
    img[0, 0] = [1.0, 0.0, 0.0, 1.0]
    img[-1, -1, 3] = 0.0
    return img


def test_png8_matches_pillow() -> None:
    img = _image()
    decoded = np.asarray(Image.open(io.BytesIO(encode_png(img))))
    assert decoded.shape == (7, 5, 4) and decoded.dtype == np.uint8
    np.testing.assert_array_equal(decoded, np.round(img * 255).astype(np.uint8))


def _blender_pixels(path: Path) -> tuple[np.ndarray, object]:
    bpy = pytest.importorskip("bpy")
    image = bpy.data.images.load(str(path))
    w, h = image.size
    px = np.empty(w * h * 4, dtype=np.float32)
    image.pixels.foreach_get(px)
    # Blender stores rows bottom-up.
    return px.reshape(h, w, 4)[::-1], image


def test_png16_reads_back_in_blender(tmp_path: Path) -> None:
    bpy = pytest.importorskip("bpy")
    img = _image()
    (tmp_path / "f16.png").write_bytes(encode_png(img, bit_depth=16))
    px, image = _blender_pixels(tmp_path / "f16.png")
    assert image.is_float  # Blender keeps 16-bit PNGs in a float buffer, not 8-bit
    # Blender reads the PNG as straight alpha, linearises its sRGB colours and premultiplies them into its
    # float buffer: the expected values follow from the stored straight-alpha pixels.
    np.testing.assert_allclose(px[..., 3], img[..., 3], atol=1e-4)
    np.testing.assert_allclose(px[..., :3], srgb_to_linear(img[..., :3]) * img[..., 3:], atol=2e-3)
    bpy.data.images.remove(image)
    # EXR frames (multilayer, with Blender's passes): tests/test_exr_passes.py.


@pytest.mark.parametrize("shape", [(0, 4, 4), (4, 4, 3), (4, 4)])
def test_bad_images_are_refused(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="expected an"):
        encode_png(np.zeros(shape, np.float32))
    with pytest.raises(ValueError, match="expected an"):
        encode_exr_passes(np.zeros(shape, np.float32), np.zeros(shape[:2], np.float32),
                          np.zeros((*shape[:2], 3), np.float32))


def test_png_from_quantized_pixels_equals_float_path() -> None:
    import torch

    from backend.jobs.render import quantized_straight_alpha, straight_alpha

    img = _image(9, 6)
    premultiplied = img.copy()
    premultiplied[..., :3] *= premultiplied[..., 3:]
    for bits in (8, 16):
        pixels = quantized_straight_alpha(torch.from_numpy(premultiplied), bits)
        assert pixels.dtype == (np.uint8 if bits == 8 else np.uint16) and pixels.shape == (9, 6, 4)
        reference = straight_alpha(premultiplied.astype(np.float64))
        scale = 255 if bits == 8 else 65535
        # float32 division on the device vs float64 in NumPy: at most one level apart.
        assert np.abs(pixels.astype(np.int64) - np.round(reference * scale).astype(np.int64)).max() <= 1
        data = encode_png(pixels, bits)
        if bits == 8:
            decoded = np.asarray(Image.open(io.BytesIO(data)))
        else:  # Pillow reads 16-bit RGBA as 8-bit: inflate the (single, unfiltered) IDAT chunk instead
            import zlib

            start = data.index(b"IDAT") + 4
            length = int.from_bytes(data[start - 8:start - 4], "big")
            rows = np.frombuffer(zlib.decompress(data[start:start + length]), np.uint8).reshape(9, -1)
            assert (rows[:, 0] == 0).all()
            decoded = rows[:, 1:].copy().view(">u2").reshape(9, 6, 4)
        np.testing.assert_array_equal(decoded.astype(np.int64), pixels.astype(np.int64))
    with pytest.raises(ValueError, match="do not match"):
        encode_png(np.zeros((2, 2, 4), np.uint8), 16)


def test_ordered_encode_pool_keeps_order_and_bounds_pending() -> None:
    import random
    import threading
    import time

    from backend.outputs.encode_pool import OrderedEncodePool

    running = {"now": 0, "max": 0}
    lock = threading.Lock()

    def work(i: int) -> int:
        with lock:
            running["now"] += 1
            running["max"] = max(running["max"], running["now"])
        time.sleep(random.Random(i).random() * 0.01)  # finish out of order
        with lock:
            running["now"] -= 1
        return i * i

    got = []
    with OrderedEncodePool[int](workers=3, max_pending=4) as pool:
        for i in range(30):
            got += pool.submit(i, work, i)
            assert len(pool._pending) <= 4
        got += list(pool.drain())
    assert got == [(i, i * i) for i in range(30)]
    assert 1 < running["max"] <= 3

    def boom(_: int) -> int:
        raise OSError("disk full")

    with OrderedEncodePool[int](workers=1, max_pending=1) as pool, pytest.raises(OSError, match="disk full"):
        pool.submit(0, boom, 0)
        pool.submit(1, boom, 1)
