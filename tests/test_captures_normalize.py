"""Normalization: the world <-> model similarity and the three rules that place it."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from captures import Cameras, CaptureError, Normalization, project_points
from captures.normalize import (
    FOV_MARGIN,
    POINTS_QUANTILE,
    lookat_point,
    normalization_from_cameras,
    normalization_from_points,
    normalization_from_scale_mat,
)


def _ring(target: np.ndarray, dist: float, n: int = 8, elev_deg: float = 15.0, w: int = 40, h: int = 30,
          fx: float = 50.0) -> Cameras:
    """n cameras on a ring at distance ``dist`` around ``target``, looking at it (OpenCV axes, world up +Y)."""
    c2w = np.zeros((n, 4, 4))
    for i in range(n):
        az = 2 * math.pi * i / n
        el = math.radians(elev_deg)
        pos = target + dist * np.array([math.cos(el) * math.cos(az), math.sin(el), math.cos(el) * math.sin(az)])
        z = (target - pos) / np.linalg.norm(target - pos)
        x = np.cross([0.0, -1.0, 0.0], z)  # x = y × z with y ≈ world down
        x /= np.linalg.norm(x)
        y = np.cross(z, x)
        c2w[i, :3, :3] = np.column_stack([x, y, z])
        c2w[i, :3, 3] = pos
        c2w[i, 3, 3] = 1.0
    return Cameras(c2w=c2w, fx=fx, fy=fx, cx=w / 2, cy=h / 2, width=w, height=h)


def test_to_model_and_back_by_hand() -> None:
    norm = Normalization(center=np.array([1.0, 2.0, 3.0]), radius=2.0)
    np.testing.assert_allclose(norm.to_model(np.array([[3.0, 2.0, 3.0], [1.0, 2.0, 3.0]])), [[1, 0, 0], [0, 0, 0]])
    pts = np.random.default_rng(0).normal(size=(5, 3))
    np.testing.assert_allclose(norm.to_world(norm.to_model(pts)), pts, atol=1e-12)


def test_cameras_to_model_keeps_rotations_and_projections() -> None:
    cams = _ring(np.array([1.0, -2.0, 5.0]), 4.0)
    norm = Normalization(center=np.array([1.0, -2.0, 5.0]), radius=0.5)
    model = norm.cameras_to_model(cams)
    np.testing.assert_allclose(model.c2w[:, :3, :3], cams.c2w[:, :3, :3])
    np.testing.assert_allclose(np.linalg.norm(model.c2w[:, :3, 3], axis=1), 8.0)
    pts = np.array([[1.2, -1.9, 5.1], [0.8, -2.2, 4.9]])
    for i in range(len(cams)):
        np.testing.assert_allclose(project_points(model, i, norm.to_model(pts))[0], project_points(cams, i, pts)[0],
                                   atol=1e-9)
    np.testing.assert_allclose(norm.cameras_to_world(model).c2w, cams.c2w, atol=1e-12)


def test_dict_round_trip_through_json() -> None:
    norm = Normalization(center=np.array([0.1, -0.2, 0.3]), radius=1.5, method="colmap_points")
    back = Normalization.from_dict(json.loads(json.dumps(norm.to_dict())))
    np.testing.assert_array_equal(back.center, norm.center)
    assert back.radius == norm.radius and back.method == "colmap_points"
    assert Normalization.from_dict({"center": [0, 0, 0], "radius": 1}).method == "manual"


@pytest.mark.parametrize(
    "bad",
    [{"center": [0, 0], "radius": 1}, {"center": [0, 0, 0]}, {"center": [0, 0, "x"], "radius": 1},
     {"center": [0, 0, 0], "radius": -1.0}, {"center": [0, 0, 0], "radius": True}, [1, 2, 3]],
)
def test_from_dict_rejects_malformed(bad: object) -> None:
    with pytest.raises(ValueError):
        Normalization.from_dict(bad)  # type: ignore[arg-type]


def test_lookat_point_and_parallel_axes() -> None:
    target = np.array([0.5, 1.0, -2.0])
    point, eig = lookat_point(_ring(target, 3.0))
    np.testing.assert_allclose(point, target, atol=1e-9)
    assert eig > 0.1
    c2w = np.tile(np.eye(4), (4, 1, 1))
    c2w[:, 0, 3] = [0, 1, 2, 3]  # a row of cameras all looking along +Z
    parallel = Cameras(c2w=c2w, fx=50, fy=50, cx=20, cy=15, width=40, height=30)
    assert lookat_point(parallel)[1] < 1e-12
    with pytest.raises(CaptureError, match="optical axes do not converge"):
        normalization_from_cameras(parallel, source="poses.json")
    # With depth bounds (LLFF) the centre goes along the mean axis at the median mid-depth.
    norm = normalization_from_cameras(parallel, near_far=np.array([[2.0, 6.0]] * 4))
    np.testing.assert_allclose(norm.center, [1.5, 0.0, 4.0], atol=1e-12)


def test_cameras_rule_by_hand() -> None:
    target = np.array([0.0, 1.0, 0.0])
    cams = _ring(target, 4.0, w=40, h=30, fx=80.0)
    norm = normalization_from_cameras(cams)
    np.testing.assert_allclose(norm.center, target, atol=1e-9)
    assert norm.method == "cameras"
    assert norm.radius == pytest.approx(4.0 * math.sin(math.atan(20 / 80)) * FOV_MARGIN)
    # An off-centre principal point widens the larger side.
    cams.cx[:] = 10.0
    assert normalization_from_cameras(cams).radius == pytest.approx(4.0 * math.sin(math.atan(30 / 80)) * FOV_MARGIN)


def test_points_rule_ignores_background_beyond_the_cameras() -> None:
    target = np.array([2.0, 0.0, -1.0])
    cams = _ring(target, 5.0, n=12)
    rng = np.random.default_rng(1)
    head = target + rng.normal(size=(2000, 3)) * 0.6
    background = target + rng.normal(size=(400, 3)) * 1.0 + np.array([0.0, 0.0, 40.0])
    norm = normalization_from_points(cams, np.concatenate([head, background]))
    assert norm.method == "colmap_points"
    np.testing.assert_allclose(norm.center, target, atol=1e-9)
    expected = np.quantile(np.linalg.norm(head - target, axis=1), POINTS_QUANTILE)
    assert norm.radius == pytest.approx(expected, rel=0.02)
    with pytest.raises(CaptureError, match="too few to place"):
        normalization_from_points(cams, head[:5])


def test_points_rule_forward_facing_uses_the_median() -> None:
    c2w = np.tile(np.eye(4), (4, 1, 1))
    c2w[:, 0, 3] = [0, 0.1, 0.2, 0.3]
    cams = Cameras(c2w=c2w, fx=50, fy=50, cx=20, cy=15, width=40, height=30)
    pts = np.random.default_rng(2).normal(size=(500, 3)) * 0.5 + [0.0, 0.0, 3.0]
    norm = normalization_from_points(cams, pts)
    np.testing.assert_allclose(norm.center, np.median(pts, axis=0))


def test_scale_mat_rule() -> None:
    s = np.diag([8.7, 8.7, 8.7, 1.0])
    s[:3, 3] = [0.9, -1.4, 21.7]
    norm = normalization_from_scale_mat(s)
    np.testing.assert_allclose(norm.center, [0.9, -1.4, 21.7])
    assert norm.radius == pytest.approx(8.7) and norm.method == "idr_scale_mat"
    s[1, 1] = 5.0
    with pytest.raises(CaptureError, match=r"cameras\.npz: scale_mat is not a uniform scale"):
        normalization_from_scale_mat(s)


def test_constructor_validates() -> None:
    with pytest.raises(ValueError, match="radius"):
        Normalization(center=np.zeros(3), radius=0.0)
    with pytest.raises(ValueError, match="center"):
        Normalization(center=np.array([0.0, np.nan, 0.0]), radius=1.0)


def test_cameras_rule_keeps_cameras_outside_the_cube() -> None:
    # A very wide lens: the field-filling sphere would swallow the cameras; it is capped at distance / 2.
    cams = _ring(np.zeros(3), 3.0, w=40, h=30, fx=10.0)
    norm = normalization_from_cameras(cams)
    assert 3.0 * math.sin(math.atan(20 / 10)) * FOV_MARGIN > 1.5
    assert norm.radius == pytest.approx(1.5)
