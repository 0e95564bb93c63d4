"""Frame files, read back by Pillow and by Blender itself (bpy): what users open is what we wrote."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from backend.outputs.images import encode_exr, encode_png, srgb_to_linear


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


def test_png16_and_exr_read_back_in_blender(tmp_path: Path) -> None:
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

    depth = np.arange(35, dtype=np.float32).reshape(7, 5)
    (tmp_path / "f.exr").write_bytes(encode_exr(img, depth))
    px, image = _blender_pixels(tmp_path / "f.exr")
    assert image.file_format == "OPEN_EXR" and tuple(image.size) == (5, 7)
    np.testing.assert_allclose(px[..., 3], img[..., 3], atol=1e-6)
    # EXR holds linear, premultiplied colour; Blender keeps it premultiplied in its float buffer.
    np.testing.assert_allclose(px[..., :3], srgb_to_linear(img[..., :3]) * img[..., 3:], atol=1e-5)
    bpy.data.images.remove(image)


@pytest.mark.parametrize("shape", [(0, 4, 4), (4, 4, 3), (4, 4)])
def test_bad_images_are_refused(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="expected an"):
        encode_png(np.zeros(shape, np.float32))
    with pytest.raises(ValueError, match="expected an"):
        encode_exr(np.zeros(shape, np.float32))
