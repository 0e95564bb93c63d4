"""IDR / NeuS cameras.npz reader: RQ decomposition, pixel-centre convention, scale_mat, errors."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from captures import CaptureError, load_capture, project_points
from captures.idr import decompose_projection, read_idr_cameras

W, H = 20, 14
K = np.array([[30.0, 0.0, 9.25], [0.0, 33.0, 6.75], [0.0, 0.0, 1.0]])


def _rot_y(deg: float) -> np.ndarray:
    a = math.radians(deg)
    return np.array([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])


def _w2c(i: int) -> tuple[np.ndarray, np.ndarray]:
    """World-to-camera (R, t) of view i: cameras on a circle of radius 4 around (1, 2, 3), looking at it."""
    rot = _rot_y(-40.0 * (i - 1))  # camera i sits at angle 40(i-1)° about +Y
    centre = np.array([1.0, 2.0, 3.0]) - 4.0 * rot.T[:, 2]
    return rot, -rot @ centre


def _write(root: Path, n: int = 3, n_images: int | None = None, scale_mat: bool = True,
           factor: float = -2.5) -> Path:
    (root / "image").mkdir(parents=True, exist_ok=True)
    for i in range(n if n_images is None else n_images):
        Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(root / "image" / f"{i:03d}.png")
    arrays = {}
    for i in range(n):
        rot, t = _w2c(i)
        p = np.eye(4)
        p[:3] = factor * (K @ np.hstack([rot, t[:, None]]))  # P is only defined up to scale and sign
        arrays[f"world_mat_{i}"] = p
        arrays[f"camera_mat_{i}"] = np.eye(4)  # NeuS extras are ignored
        if scale_mat:
            s = np.diag([0.5, 0.5, 0.5, 1.0])
            s[:3, 3] = [1.0, 2.0, 3.0]
            arrays[f"scale_mat_{i}"] = s
    path = root / "cameras.npz"
    np.savez(path, **arrays)
    return path


def test_decompose_projection_recovers_k_r_t() -> None:
    rng = np.random.default_rng(3)
    for factor in (1.0, -3.7, 0.01):
        q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
        rot = q * np.sign(np.linalg.det(q))
        t = rng.normal(size=3)
        k = np.array([[500.0, 0.0, 320.0], [0.0, 480.0, 240.0], [0.0, 0.0, 1.0]])
        k2, r2, t2 = decompose_projection(factor * k @ np.hstack([rot, t[:, None]]))
        np.testing.assert_allclose(k2, k, atol=1e-8)
        np.testing.assert_allclose(r2, rot, atol=1e-10)
        np.testing.assert_allclose(t2, t, atol=1e-10)
        assert np.linalg.det(r2) == pytest.approx(1.0)


def test_integer_pixel_centres_shift_by_half(tmp_path: Path) -> None:
    path = _write(tmp_path)
    idr = read_idr_cameras(path)  # "auto" without a COLMAP model beside: IDR's integer convention
    assert idr.pixel_centers == "integer"
    cams = idr.cameras
    np.testing.assert_allclose(cams.fx, 30.0)
    np.testing.assert_allclose(cams.fy, 33.0)
    np.testing.assert_allclose(cams.cx, 9.25 + 0.5)
    np.testing.assert_allclose(cams.cy, 6.75 + 0.5)
    assert (cams.width[0], cams.height[0]) == (W, H) and cams.names == ["000", "001", "002"]
    # IDR projects X to P X (integer-centred); we land half a pixel further right and down.
    x = np.array([[1.3, 2.2, 3.1], [0.5, 1.5, 3.5]])
    for i in range(3):
        rot, t = _w2c(i)
        ph = (K @ (x @ rot.T + t).T).T
        uv_idr = ph[:, :2] / ph[:, 2:]
        uv, depth = project_points(cams, i, x)
        assert np.all(depth > 0)
        np.testing.assert_allclose(uv, uv_idr + 0.5, atol=1e-9)
    # Camera 1 (angle 0) sits at (1, 2, 3) - 4 * (its forward axis +Z), looking at (1, 2, 3).
    np.testing.assert_allclose(cams.c2w[1, :3, 3], [1.0, 2.0, -1.0], atol=1e-9)


def test_half_convention_copies_k(tmp_path: Path) -> None:
    cams = read_idr_cameras(_write(tmp_path), pixel_centers="half").cameras
    np.testing.assert_allclose(cams.cx, 9.25)
    auto = read_idr_cameras(tmp_path / "cameras.npz", colmap_intrinsics=(30.0, 33.0, 9.25, 6.75))
    assert auto.pixel_centers == "half"
    np.testing.assert_allclose(auto.cameras.cy, 6.75)
    other = read_idr_cameras(tmp_path / "cameras.npz", colmap_intrinsics=(30.0, 33.0, 9.0, 6.75))
    assert other.pixel_centers == "integer"


def test_scale_mat_becomes_the_normalization(tmp_path: Path) -> None:
    _write(tmp_path)
    cap = load_capture(tmp_path)
    assert cap.source_format == "idr"
    assert cap.normalization.method == "idr_scale_mat"
    np.testing.assert_allclose(cap.normalization.center, [1.0, 2.0, 3.0])
    assert cap.normalization.radius == 0.5
    # Cameras 4 world units from the centre are 8 model units away.
    model = cap.normalization.cameras_to_model(cap.cameras)
    np.testing.assert_allclose(np.linalg.norm(model.c2w[:, :3, 3], axis=1), 8.0)


def test_without_scale_mat_the_cameras_decide(tmp_path: Path) -> None:
    _write(tmp_path, scale_mat=False)
    cap = load_capture(tmp_path / "cameras.npz")
    assert cap.normalization.method == "cameras"
    np.testing.assert_allclose(cap.normalization.center, [1.0, 2.0, 3.0], atol=1e-9)


def test_count_mismatch(tmp_path: Path) -> None:
    _write(tmp_path, n=3, n_images=4)
    with pytest.raises(CaptureError, match=r"cameras\.npz: 3 cameras .* but 4 images in .*image"):
        load_capture(tmp_path)


def test_bad_files(tmp_path: Path) -> None:
    path = _write(tmp_path)
    data = dict(np.load(path))
    del data["world_mat_1"]
    np.savez(path, **data)
    with pytest.raises(CaptureError, match=r"cameras\.npz: world_mat indices are not 0\.\.1 \(missing world_mat_1\)"):
        read_idr_cameras(path)

    data["world_mat_1"] = data["world_mat_0"].copy()
    data["world_mat_1"][0, 1] += 50.0  # a skewed K
    np.savez(path, **data)
    with pytest.raises(CaptureError, match=r"world_mat_1 has skewed intrinsics"):
        read_idr_cameras(path)

    data["world_mat_1"] = data["world_mat_0"].copy()
    data["scale_mat_2"] = data["scale_mat_2"] * 2
    np.savez(path, **data)
    with pytest.raises(CaptureError, match=r"scale_mat_2 is missing or differs from scale_mat_0"):
        read_idr_cameras(path)

    np.savez(path, foo=np.zeros(3))
    with pytest.raises(CaptureError, match=r"cameras\.npz: no world_mat_<i> arrays \(keys: foo\)"):
        read_idr_cameras(path)
    path.write_bytes(b"not a zip file")
    with pytest.raises(CaptureError, match=r"cameras\.npz: cannot read as an \.npz archive"):
        load_capture(path)
