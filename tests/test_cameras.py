"""The internal camera model: projections by hand, lens round trips, rays through pixel centres."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from backend.nerf.rays import distort, pixel_centers, rays_for_image, rays_from_pixels, undistort
from captures import OPENGL_TO_OPENCV, Cameras, project_points
from captures import distort as distort_numpy


def _rot(axis: str, deg: float) -> np.ndarray:
    a = math.radians(deg)
    c, s = math.cos(a), math.sin(a)
    if axis == "x":
        return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    if axis == "y":
        return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def _camera(rot: np.ndarray, pos: np.ndarray, dist: tuple[float, ...] = (0, 0, 0, 0), w: int = 64, h: int = 48,
            fx: float = 60.0, fy: float = 70.0, cx: float = 30.5, cy: float = 25.0) -> Cameras:
    c2w = np.eye(4)
    c2w[:3, :3], c2w[:3, 3] = rot, pos
    return Cameras(c2w=c2w[None], fx=fx, fy=fy, cx=cx, cy=cy, width=w, height=h, distortion=np.array(dist)[None])


def test_projection_by_hand_pinhole() -> None:
    # Camera at (0, 0, -5) with identity rotation looks along +Z (OpenCV); the point (1, 2, 3) is 8 in front.
    cam = _camera(np.eye(3), np.array([0.0, 0.0, -5.0]))
    uv, z = project_points(cam, 0, np.array([[1.0, 2.0, 3.0]]))
    assert z[0] == pytest.approx(8.0)
    assert uv[0] == pytest.approx([60.0 * 1 / 8 + 30.5, 70.0 * 2 / 8 + 25.0])


def test_projection_by_hand_rotated_with_distortion() -> None:
    # Camera at the origin turned 90° about +Y: its +Z (forward) is world +X, its +X is world -Z.
    cam = _camera(_rot("y", 90.0), np.zeros(3), dist=(0.1, -0.05, 0.01, 0.02))
    uv, z = project_points(cam, 0, np.array([[4.0, 1.0, -0.5]]))
    # Camera coordinates: x_c = -z_w = 0.5, y_c = y_w = 1, z_c = x_w = 4.
    x, y = 0.5 / 4, 1.0 / 4
    r2 = x * x + y * y
    radial = 1 + 0.1 * r2 - 0.05 * r2 * r2
    xd = x * radial + 2 * 0.01 * x * y + 0.02 * (r2 + 2 * x * x)
    yd = y * radial + 0.01 * (r2 + 2 * y * y) + 2 * 0.02 * x * y
    assert z[0] == pytest.approx(4.0)
    assert uv[0] == pytest.approx([60.0 * xd + 30.5, 70.0 * yd + 25.0], abs=1e-9)


@settings(max_examples=60, deadline=None)
@given(
    k1=st.floats(-0.3, 0.3), k2=st.floats(-0.15, 0.15), p1=st.floats(-0.06, 0.06), p2=st.floats(-0.06, 0.06),
    x=st.floats(-0.5, 0.5), y=st.floats(-0.5, 0.5),
)
def test_distort_undistort_round_trip(k1: float, k2: float, p1: float, p2: float, x: float, y: float) -> None:
    # Covers fangzhou's lens (k1 0.167, k2 -0.130, p1 0.061, p2 0.026) over a ~53° half field of view.
    dist = torch.tensor([k1, k2, p1, p2], dtype=torch.float64)
    xy = torch.tensor([[x, y]], dtype=torch.float64)
    back = undistort(distort(xy, dist), dist)
    torch.testing.assert_close(back, xy, atol=1e-9, rtol=0)


def test_numpy_and_torch_distortion_are_the_same_formula() -> None:
    """The capture readers (numpy, also in Blender) and the rays (torch) distort identically."""
    rng = np.random.default_rng(3)
    xy, dist = rng.uniform(-0.8, 0.8, size=(50, 2)), rng.uniform(-0.2, 0.2, size=(50, 4))
    ours = distort(torch.from_numpy(xy), torch.from_numpy(dist)).numpy()
    np.testing.assert_array_equal(ours, distort_numpy(xy, dist))
    assert not np.allclose(ours, xy)  # the lens did something


def test_undistort_fangzhou_lens_whole_image() -> None:
    dist = torch.tensor([0.1667209, -0.1296794, 0.0608600, 0.0262905], dtype=torch.float64)
    full = pixel_centers(540, 960, dtype=torch.float64)
    uv = torch.cat([full[::37], full[[0, 539, -540, -1]]])  # every 37th pixel plus the four corners
    xy_d = torch.stack([(uv[:, 0] - 343.484) / 909.721, (uv[:, 1] - 586.057) / 934.093], -1)
    xy = undistort(xy_d, dist)
    torch.testing.assert_close(distort(xy, dist), xy_d, atol=1e-10, rtol=0)


@pytest.mark.parametrize("dist", [(0, 0, 0, 0), (0.12, -0.08, 0.01, -0.02)])
def test_rays_through_projected_pixels_hit_the_points(dist: tuple[float, ...]) -> None:
    rng = np.random.default_rng(0)
    cams = Cameras(
        c2w=np.stack([np.block([[_rot("y", a) @ _rot("x", 10), rng.normal(size=(3, 1))], [np.zeros((1, 3)), 1]])
                      for a in (0, 35, -50)]),
        fx=[60, 80, 90], fy=[62, 75, 95], cx=[31, 33.2, 30], cy=[24, 20, 26.5], width=64, height=48,
        distortion=np.array([dist] * 3),
    )
    for i in range(3):
        pts_cam = np.column_stack([rng.uniform(-0.4, 0.4, 20), rng.uniform(-0.3, 0.3, 20), rng.uniform(1, 5, 20)])
        pts = pts_cam @ cams.c2w[i, :3, :3].T + cams.c2w[i, :3, 3]
        uv, depth = project_points(cams, i, pts)
        np.testing.assert_allclose(depth, pts_cam[:, 2], rtol=1e-12)
        o, d = rays_from_pixels(cams, torch.full((20,), i), torch.from_numpy(uv), dtype=torch.float64)
        o, d = o.numpy(), d.numpy()
        np.testing.assert_allclose(np.linalg.norm(d, axis=1), 1.0, atol=1e-12)
        along = np.einsum("ij,ij->i", pts - o, d)
        assert np.all(along > 0)
        miss = np.linalg.norm(pts - (o + along[:, None] * d), axis=1)
        assert miss.max() < 1e-8


def test_rays_for_image_go_through_pixel_centres_in_raster_order() -> None:
    cam = _camera(_rot("x", 20.0), np.array([0.3, -0.2, 1.0]), dist=(0.05, 0.0, 0.0, 0.01), w=7, h=5, fx=6,
                  fy=6, cx=3.5, cy=2.5)
    o, d = rays_for_image(cam, 0, dtype=torch.float64)
    assert o.shape == (35, 3) and d.shape == (35, 3)
    # The point 3 units along the ray of pixel (col 5, row 2) must project to that pixel's centre (5.5, 2.5).
    k = 2 * 7 + 5
    p = (o[k] + 3.0 * d[k]).numpy()[None]
    uv, _ = project_points(cam, 0, p)
    np.testing.assert_allclose(uv[0], [5.5, 2.5], atol=1e-9)
    # The centre pixel of an undistorted, centred camera looks straight down the optical axis.
    plain = _camera(np.eye(3), np.zeros(3), w=7, h=5, fx=6, fy=6, cx=3.5, cy=2.5)
    _, d0 = rays_for_image(plain, 0, dtype=torch.float64)
    np.testing.assert_allclose(d0[2 * 7 + 3].numpy(), [0, 0, 1], atol=1e-12)


def test_scaled_intrinsics_follow_the_pixel_grid() -> None:
    cam = _camera(np.eye(3), np.zeros(3), w=64, h=48)
    half = cam.scaled(0.5)
    assert (half.width[0], half.height[0]) == (32, 24)
    pts = np.array([[0.1, -0.2, 2.0], [0.3, 0.1, 3.0]])
    np.testing.assert_allclose(project_points(half, 0, pts)[0], project_points(cam, 0, pts)[0] * 0.5)
    # Odd sizes round like Python's round(): 15x9 at 0.5 -> 8x4.
    odd = _camera(np.eye(3), np.zeros(3), w=15, h=9).scaled(0.5)
    assert (odd.width[0], odd.height[0]) == (round(7.5), round(4.5)) == (8, 4)


def test_transformed_moves_cameras_and_points_together() -> None:
    cam = _camera(_rot("z", 30.0) @ _rot("x", 15.0), np.array([1.0, 2.0, -3.0]), dist=(0.05, 0, 0, 0))
    m = np.eye(4)
    m[:3, :3], m[:3, 3] = _rot("y", 40.0), [0.5, -1.0, 2.0]
    s = 2.5
    moved = cam.transformed(m, scale=s)
    pts = np.array([[1.2, 2.1, 1.0], [0.8, 2.5, 0.5]])
    pts_moved = s * pts @ m[:3, :3].T + m[:3, 3]
    np.testing.assert_allclose(project_points(moved, 0, pts_moved)[0], project_points(cam, 0, pts)[0], atol=1e-9)


def test_opengl_to_opencv_flips_view_direction() -> None:
    # An OpenGL camera at +Z looking at the origin has identity rotation; in OpenCV its +Z column points to -Z.
    gl = np.eye(4)
    gl[2, 3] = 5.0
    cv = gl @ OPENGL_TO_OPENCV
    np.testing.assert_allclose(cv[:3, 2], [0, 0, -1])
    np.testing.assert_allclose(cv[:3, 1], [0, -1, 0])  # image "down" is world -Y (world up is +Y)
    np.testing.assert_allclose(cv[:3, 3], [0, 0, 5])


def test_validate_names_the_bad_camera() -> None:
    c2w = np.tile(np.eye(4), (2, 1, 1))
    c2w[1, 0, 3] = np.nan
    cams = Cameras(c2w=c2w, fx=10, fy=10, cx=5, cy=5, width=10, height=10, names=["a", "b"])
    with pytest.raises(ValueError, match=r"'b'.*non-finite pose"):
        cams.validate()
    c2w[1] = np.diag([1.0, 1.0, -1.0, 1.0])  # a reflection is not a rotation
    with pytest.raises(ValueError, match=r"'b'.*not a rotation"):
        Cameras(c2w=c2w, fx=10, fy=10, cx=5, cy=5, width=10, height=10, names=["a", "b"]).validate()
