"""LLFF poses_bounds.npy reader: [down, right, backwards] axes, focal scaling, bounds, errors."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from captures import CaptureError, load_capture, project_points
from captures.llff import read_llff

HWF = (24.0, 32.0, 40.0)  # height, width, focal of the images COLMAP saw


def _rot_y(deg: float) -> np.ndarray:
    a = math.radians(deg)
    return np.array([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])


def _c2w_cv(i: int) -> np.ndarray:
    """OpenCV camera-to-world of view i: 5 units from the origin, turned 30(i-1)° about +Y, looking at it."""
    c2w = np.eye(4)
    c2w[:3, :3] = _rot_y(30.0 * (i - 1))
    c2w[:3, 3] = -5.0 * c2w[:3, 2]
    return c2w


def _write(root: Path, n: int = 3, size: tuple[int, int] = (16, 12), n_images: int | None = None) -> Path:
    (root / "images").mkdir(parents=True, exist_ok=True)
    for i in range(n if n_images is None else n_images):
        Image.fromarray(np.zeros((size[1], size[0], 3), np.uint8)).save(root / "images" / f"IMG_{i:04d}.JPG")
    rows = []
    for i in range(n):
        c2w = _c2w_cv(i)
        r = c2w[:3, :3]
        # What LLFF's imgs2poses writes: columns [down, right, backwards] = [y, x, -z] of the OpenCV c2w.
        pose = np.column_stack([r[:, 1], r[:, 0], -r[:, 2], c2w[:3, 3], HWF])
        rows.append(np.concatenate([pose.ravel(), [2.0 + i, 9.0 + i]]))
    path = root / "poses_bounds.npy"
    np.save(path, np.array(rows))
    return path


def test_projection_by_hand_with_resized_images(tmp_path: Path) -> None:
    llff = read_llff(_write(tmp_path))
    cams = llff.cameras
    np.testing.assert_allclose(cams.c2w, np.stack([_c2w_cv(i) for i in range(3)]), atol=1e-12)
    # The images are half the size in hwf: focal 40 -> 20, principal point at the image centre (8, 6).
    np.testing.assert_allclose(cams.fx, 20.0)
    np.testing.assert_allclose(cams.fy, 20.0)
    np.testing.assert_allclose(cams.cx, 8.0)
    np.testing.assert_allclose(cams.cy, 6.0)
    np.testing.assert_allclose(llff.near_far, [[2, 9], [3, 10], [4, 11]])
    # View 1 has identity rotation at (0, 0, -5): the point (0.5, 0.25, 0) is at camera (0.5, 0.25, 5).
    uv, depth = project_points(cams, 1, np.array([[0.5, 0.25, 0.0]]))
    assert depth[0] == pytest.approx(5.0)
    assert uv[0] == pytest.approx([20 * 0.1 + 8, 20 * 0.05 + 6])
    # Every camera looks at the origin: it projects to the image centre.
    for i in range(3):
        uv, _ = project_points(cams, i, np.zeros((1, 3)))
        np.testing.assert_allclose(uv[0], [8.0, 6.0], atol=1e-9)


def test_load_capture_keeps_bounds_and_normalizes_from_cameras(tmp_path: Path) -> None:
    _write(tmp_path)
    cap = load_capture(tmp_path)
    assert cap.source_format == "llff" and len(cap) == 3
    assert cap.near_far is not None and cap.near_far.shape == (3, 2)
    assert cap.normalization.method == "cameras"
    np.testing.assert_allclose(cap.normalization.center, 0.0, atol=1e-9)
    # radius = mean distance 5 * sin(half-FOV) * 1.2, half-FOV = atan(8 / 20) (the wider, x axis).
    assert cap.normalization.radius == pytest.approx(5 * math.sin(math.atan(8 / 20)) * 1.2)


def test_count_mismatch(tmp_path: Path) -> None:
    _write(tmp_path, n=3, n_images=5)
    with pytest.raises(CaptureError, match=r"poses_bounds\.npy: 3 poses but 5 images in"):
        load_capture(tmp_path)


def test_aspect_mismatch(tmp_path: Path) -> None:
    _write(tmp_path, size=(16, 16))
    with pytest.raises(CaptureError, match=r"IMG_0000\.JPG: image is 16x16 but poses_bounds\.npy says 32x24"):
        load_capture(tmp_path)


def test_wrong_shape_and_too_few_views(tmp_path: Path) -> None:
    path = _write(tmp_path)
    np.save(path, np.zeros((3, 15)))
    with pytest.raises(CaptureError, match=r"poses_bounds\.npy: expected shape \(N, 17\)"):
        read_llff(path)
    _write(tmp_path, n=2)
    for extra in sorted((tmp_path / "images").iterdir())[2:]:
        extra.unlink()
    with pytest.raises(CaptureError, match=r"poses_bounds\.npy: only 2 view\(s\); at least 3 are needed"):
        load_capture(tmp_path)
