"""load_images: RGBA assembly, matte matching, area resizing, and the errors it raises."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from backend.nerf.capture_images import load_images
from captures import Cameras, Capture, CaptureError, Normalization, load_capture

GL_POSES = [
    [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 4], [0, 0, 0, 1]],
    [[0, 0, 1, 4], [0, 1, 0, 0], [-1, 0, 0, 0], [0, 0, 0, 1]],
    [[1, 0, 0, 0], [0, 0, 1, 4], [0, -1, 0, 0], [0, 0, 0, 1]],
]


def _capture(paths: list[Path], w: int, h: int, mattes: list[Path] | None = None,
             has_alpha: bool = False) -> Capture:
    n = len(paths)
    cams = Cameras(c2w=np.tile(np.eye(4), (n, 1, 1)), fx=10.0, fy=10.0, cx=w / 2, cy=h / 2, width=w, height=h,
                   names=[p.stem for p in paths])
    return Capture(cameras=cams, image_paths=paths, matte_paths=mattes, has_alpha=has_alpha,
                   source_format="transforms_json", root=paths[0].parent,
                   normalization=Normalization(np.zeros(3), 1.0))


def _save(path: Path, arr: np.ndarray, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, mode=mode).save(path)
    return path


def _folder(root: Path, w: int = 8, h: int = 6, mode: str = "RGB", ext: str = ".png") -> list[np.ndarray]:
    """A nerfstudio-style capture of 3 views; returns the pixel arrays written."""
    rng = np.random.default_rng(0)
    arrays, frames = [], []
    for i, pose in enumerate(GL_POSES):
        arr = rng.integers(0, 256, size=(h, w, 4 if mode == "RGBA" else 3), dtype=np.uint8)
        _save(root / "images" / f"v{i}{ext}", arr)
        arrays.append(arr)
        frames.append({"file_path": f"images/v{i}{ext}", "transform_matrix": pose})
    (root / "transforms.json").write_text(json.dumps({"fl_x": 10.0, "frames": frames}))
    return arrays


def test_photo_without_matte_has_alpha_one(tmp_path: Path) -> None:
    arrays = _folder(tmp_path)
    cap = load_capture(tmp_path)
    assert not cap.has_alpha and cap.matte_paths is None and not cap.has_matte
    out = load_images(cap, [2, 0])
    assert out.shape == (2, 6, 8, 4) and out.dtype == np.float32
    np.testing.assert_array_equal(out[0, ..., :3], arrays[2] / np.float32(255))
    np.testing.assert_array_equal(out[..., 3], 1.0)


def test_rgba_images_carry_their_alpha(tmp_path: Path) -> None:
    arrays = _folder(tmp_path, mode="RGBA")
    cap = load_capture(tmp_path)
    assert cap.has_alpha and cap.has_matte
    out = load_images(cap, [1])
    np.testing.assert_allclose(out[0], arrays[1] / 255.0, atol=1e-7)  # straight alpha, RGB untouched


def test_mattes_matched_by_stem_any_extension(tmp_path: Path) -> None:
    _folder(tmp_path, ext=".jpg")
    mattes = []
    for i in range(3):
        m = np.zeros((6, 8), np.uint8)
        m[:, : 2 + i] = 255
        m[0, -1] = 128
        _save(tmp_path / "matte" / f"v{i}.png", m)
        mattes.append(m)
    _save(tmp_path / "matte" / "unused.png", np.zeros((6, 8), np.uint8))  # extra mattes are ignored
    cap = load_capture(tmp_path)
    assert cap.matte_paths == [tmp_path / "matte" / f"v{i}.png" for i in range(3)]
    assert cap.has_matte and not cap.has_alpha
    out = load_images(cap, [0, 1, 2])
    np.testing.assert_allclose(out[..., 3], np.stack(mattes) / 255.0, atol=1e-7)


def test_16_bit_matte(tmp_path: Path) -> None:
    img = _save(tmp_path / "a.png", np.zeros((4, 4, 3), np.uint8))
    m = np.full((4, 4), 65535, np.uint16)
    m[0, 0] = 32768
    matte = tmp_path / "m.png"
    Image.fromarray(m).save(matte)
    out = load_images(_capture([img], 4, 4, mattes=[matte]), [0])
    assert out[0, 0, 0, 3] == pytest.approx(32768 / 65535)
    assert out[0, 1, 1, 3] == 1.0


def test_missing_and_duplicate_mattes(tmp_path: Path) -> None:
    _folder(tmp_path)
    _save(tmp_path / "masks" / "v0.png", np.zeros((6, 8), np.uint8))
    _save(tmp_path / "masks" / "v2.png", np.zeros((6, 8), np.uint8))
    with pytest.raises(CaptureError, match=r"masks: no matte for 1 of 3 images, e\.g\. .*v1\.png"):
        load_capture(tmp_path)
    _save(tmp_path / "masks" / "v1.png", np.zeros((6, 8), np.uint8))
    _save(tmp_path / "masks" / "v1.jpg", np.zeros((6, 8), np.uint8))
    with pytest.raises(CaptureError, match=r"masks: two mattes for the stem 'v1'"):
        load_capture(tmp_path)


def test_box_resize_by_hand(tmp_path: Path) -> None:
    # A 3x1 row to 2x1 (scale 2/3): output pixel 0 covers input [0, 1.5), pixel 1 covers [1.5, 3).
    row = np.array([[[30, 0, 0], [90, 0, 0], [210, 0, 0]]], np.uint8)
    cap = _capture([_save(tmp_path / "row.png", row)], 3, 1)
    out = load_images(cap, [0], scale=2 / 3)
    assert out.shape == (1, 1, 2, 4)
    np.testing.assert_allclose(out[0, 0, :, 0] * 255, [(30 + 0.5 * 90) / 1.5, (0.5 * 90 + 210) / 1.5], atol=1e-3)


def test_premultiplied_resize_for_rgba_plain_for_photos(tmp_path: Path) -> None:
    block = np.zeros((2, 2, 4), np.uint8)
    block[..., 1] = 255  # green
    block[..., 3] = 255
    block[0, 0] = [255, 0, 0, 0]  # a transparent red pixel: its colour must not bleed
    rgba = np.concatenate([block, np.zeros((2, 2, 4), np.uint8)], axis=1)  # right block fully transparent
    rgba[:, 2:, 2] = 255  # ... and blue underneath
    cap = _capture([_save(tmp_path / "a.png", rgba)], 4, 2, has_alpha=True)
    out = load_images(cap, [0], scale=0.5)[0]
    np.testing.assert_allclose(out[0, 0], [0.0, 1.0, 0.0, 0.75], atol=1e-6)
    np.testing.assert_allclose(out[0, 1], [0.0, 0.0, 1.0, 0.0], atol=1e-6)  # undefined colour: plain average

    # A photo with a separate matte: the RGB is real everywhere and is averaged as is.
    photo = _save(tmp_path / "p.png", np.ascontiguousarray(rgba[..., :3]))
    matte = _save(tmp_path / "pm.png", np.ascontiguousarray(rgba[..., 3]))
    out = load_images(_capture([photo], 4, 2, mattes=[matte]), [0], scale=0.5)[0]
    np.testing.assert_allclose(out[0, 0], [0.25, 0.75, 0.0, 0.75], atol=1e-6)


def test_scaled_size_matches_cameras_scaled(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    arr = rng.integers(0, 256, size=(9, 15, 3), dtype=np.uint8)
    cap = _capture([_save(tmp_path / "odd.png", arr)], 15, 9)
    for scale in (0.5, 0.3, 0.25):
        out = load_images(cap, [0], scale=scale)
        cams = cap.cameras.scaled(scale)
        assert out.shape[1:3] == (cams.height[0], cams.width[0])
    # Area averaging over the whole image keeps its mean.
    out = load_images(cap, [0], scale=0.5)
    assert out[0, ..., :3].mean() == pytest.approx(arr.mean() / 255, abs=2e-3)


def test_errors_name_the_file(tmp_path: Path) -> None:
    good = _save(tmp_path / "good.png", np.zeros((6, 8, 3), np.uint8))
    small = _save(tmp_path / "small.png", np.zeros((5, 8, 3), np.uint8))
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    matte = _save(tmp_path / "matte.png", np.zeros((3, 4), np.uint8))
    with pytest.raises(CaptureError, match=r"small\.png: image is 8x5 but its camera expects 8x6"):
        load_images(_capture([good, small], 8, 6), [1])
    with pytest.raises(CaptureError, match=r"broken\.png: unreadable image"):
        load_images(_capture([bad], 8, 6), [0])
    with pytest.raises(CaptureError, match=r"matte\.png: matte is 4x3 but its image good\.png is 8x6"):
        load_images(_capture([good], 8, 6, mattes=[matte]), [0])
    with pytest.raises(CaptureError, match=r"missing\.png: image file not found"):
        load_images(_capture([tmp_path / "missing.png"], 8, 6), [0])
    with pytest.raises(ValueError, match=r"scale must be in \(0, 1\]"):
        load_images(_capture([good], 8, 6), [0], scale=2.0)
    with pytest.raises(IndexError, match="view index 3 out of range"):
        load_images(_capture([good], 8, 6), [3])
    mixed = _capture([good, small], 8, 6)
    mixed.cameras.height[1] = 5
    with pytest.raises(CaptureError, match="different image sizes"):
        load_images(mixed, [0, 1])


def test_unreadable_image_at_load_capture(tmp_path: Path) -> None:
    _folder(tmp_path)
    (tmp_path / "images" / "v1.png").write_bytes(b"garbage")
    with pytest.raises(CaptureError, match=r"v1\.png: unreadable image"):
        load_capture(tmp_path)


def test_mixed_alpha_is_refused(tmp_path: Path) -> None:
    _folder(tmp_path)
    _save(tmp_path / "images" / "v1.png", np.zeros((6, 8, 4), np.uint8))
    with pytest.raises(CaptureError, match=r"v1\.png: some images have an alpha channel and others do not"):
        load_capture(tmp_path)


def test_integer_factor_equals_pillow_reduce(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    arr = rng.integers(0, 256, size=(12, 16, 3), dtype=np.uint8)
    cap = _capture([_save(tmp_path / "a.png", arr)], 16, 12)
    out = load_images(cap, [0], scale=0.25)[0]
    ref = np.stack([np.asarray(Image.fromarray(arr[..., c].astype(np.float32)).reduce(4)) for c in range(3)], -1)
    np.testing.assert_allclose(out[..., :3] * 255, ref, atol=1e-3)


def test_matte_size_checked_at_load_capture(tmp_path: Path) -> None:
    _folder(tmp_path)
    for i in range(3):
        _save(tmp_path / "mask" / f"v{i}.png", np.zeros((6, 8 if i != 1 else 7), np.uint8))
    with pytest.raises(CaptureError, match=r"mask/v1\.png: matte is 7x6 but its image v1\.png is 8x6"):
        load_capture(tmp_path)


def test_no_indices_gives_an_empty_batch(tmp_path: Path) -> None:
    cap = _capture([_save(tmp_path / "a.png", np.zeros((6, 8, 3), np.uint8))], 8, 6)
    assert load_images(cap, [], scale=0.5).shape == (0, 3, 4, 4)
