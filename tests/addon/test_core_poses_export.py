"""Poses (Blender ↔ OpenCV axes, placements) and the camera list format (no bpy)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from blender_addon.core import camera_export as ce
from blender_addon.core.intrinsics import BlenderCamera, Intrinsics
from blender_addon.core.poses import (
    OPENGL_TO_OPENCV,
    blender_from_opencv,
    capture_from_world,
    is_rotation,
    look_at,
    normalized_c2w,
    opencv_from_blender,
    placement_scale,
    world_from_capture,
)


def trs(t=(0, 0, 0), axis=(0, 0, 1), angle=0.0, scale=1.0) -> np.ndarray:
    a = np.asarray(axis, float) / np.linalg.norm(axis)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    r = np.eye(3) + math.sin(angle) * k + (1 - math.cos(angle)) * k @ k
    m = np.eye(4)
    m[:3, :3] = r * scale
    m[:3, 3] = t
    return m


def project(rec: ce.CameraRecord, point_world: np.ndarray) -> np.ndarray:
    """Pixel coordinates of a capture-world point through a record (OpenCV pinhole)."""
    w2c = np.linalg.inv(rec.c2w_opencv())
    pc = w2c[:3, :3] @ point_world + w2c[:3, 3]
    assert pc[2] > 0, "point behind the camera"
    return np.array([rec.fx * pc[0] / pc[2] + rec.cx, rec.fy * pc[1] / pc[2] + rec.cy])


def test_axis_flip_is_an_involution():
    m = trs((1, 2, 3), (1, 1, 0), 0.7)
    np.testing.assert_allclose(blender_from_opencv(opencv_from_blender(m)), m, atol=1e-15)
    np.testing.assert_allclose(OPENGL_TO_OPENCV @ OPENGL_TO_OPENCV, np.eye(4))


def test_look_at_points_minus_z_at_target_and_opencv_plus_z():
    eye, target = np.array([3.0, -4.0, 2.0]), np.array([0.5, 0.0, 1.0])
    m = look_at(eye, target)
    assert is_rotation(m)
    fwd = (target - eye) / np.linalg.norm(target - eye)
    np.testing.assert_allclose(-m[:3, 2], fwd, atol=1e-12)
    assert m[2, 1] > 0  # camera +Y has a positive world-Z component (upright)
    cv = opencv_from_blender(m)
    np.testing.assert_allclose(cv[:3, 2], fwd, atol=1e-12)  # OpenCV +Z forward
    assert cv[2, 1] < 0  # OpenCV +Y points down in the world
    # Straight down: the up hint is parallel to the view, still a proper rotation.
    assert is_rotation(look_at((0, 0, 5), (0, 0, 0)))
    with pytest.raises(ValueError):
        look_at((1, 1, 1), (1, 1, 1))


def test_normalized_drops_object_scale():
    m = trs((1, 2, 3), (0, 1, 0), 0.3, scale=2.5)
    n = normalized_c2w(m)
    assert is_rotation(n)
    np.testing.assert_allclose(n[:3, 3], (1, 2, 3))
    with pytest.raises(ValueError, match="zero"):
        normalized_c2w(np.diag([0.0, 1.0, 1.0, 1.0]))


def test_placement_validation():
    assert placement_scale(trs((1, 0, 0), (1, 2, 3), 1.0, 3.0)) == pytest.approx(3.0)
    with pytest.raises(ValueError, match="non-uniformly"):
        placement_scale(np.diag([1.0, 2.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="mirrored"):
        placement_scale(np.diag([-1.0, 1.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="4x4"):
        placement_scale(np.eye(3))


def blender_cam(**kw) -> BlenderCamera:
    return BlenderCamera(**{"lens": 35.0, "resolution_x": 640, "resolution_y": 480, **kw})


def test_record_projects_like_blender_camera():
    # A camera at (0, -5, 0) looking at the origin: the origin lands on the principal point, and a point
    # 1 unit to world +X (camera right) lands to the right of it, world +Z (up) lands above it (smaller v).
    m = look_at((0, -5, 0), (0, 0, 0))
    rec = ce.record_from_blender("Cam", 1, m, blender_cam(shift_x=0.1, shift_y=0.05))
    uv0 = project(rec, np.zeros(3))
    np.testing.assert_allclose(uv0, (rec.cx, rec.cy))
    assert rec.cx == pytest.approx(320 - 0.1 * 640)
    assert project(rec, np.array([1.0, 0, 0]))[0] > uv0[0]
    assert project(rec, np.array([0, 0, 1.0]))[1] < uv0[1]
    # Exact focal: a point at x/z = (W/2) / fx lands on the right image border.
    x = 5.0 * (320.0 / rec.fx)
    assert project(rec, np.array([x, 0, 0]))[0] == pytest.approx(rec.cx + 320.0)


def test_placement_keeps_pixels():
    placement = trs((2.0, -1.0, 0.5), (0.3, 1.0, 0.2), 0.9, 2.0)
    m = trs((1.0, -6.0, 2.0), (1, 0, 0), math.radians(80))
    cam = blender_cam()
    world = ce.record_from_blender("C", 3, m, cam)
    local = ce.record_from_blender("C", 3, m, cam, placement=placement)
    p_world = np.array([0.8, 0.3, 1.9])
    p_capture = np.linalg.inv(placement) @ np.append(p_world, 1.0)
    np.testing.assert_allclose(project(world, p_world), project(local, p_capture[:3]), atol=1e-9)
    assert local.clip_start == pytest.approx(cam.clip_start / 2.0)
    np.testing.assert_allclose(world_from_capture(p_capture[None, :3], placement)[0], p_world, atol=1e-12)
    np.testing.assert_allclose(capture_from_world(m, None), normalized_c2w(m))


def test_record_json_round_trip_and_format():
    recs = [ce.record_from_blender(f"Cam{i}", i, look_at((i, -5, 1), (0, 0, 0)), blender_cam(), fps=24.0)
            for i in range(3)]
    text = ce.dumps(recs)
    data = json.loads(text)
    assert set(data[0]) == {"name", "frame", "c2w", "fx", "fy", "cx", "cy", "width", "height", "time",
                            "clip_start", "clip_end"}
    assert data[2]["time"] == pytest.approx(2 / 24)
    assert isinstance(data[0]["width"], int) and isinstance(data[0]["fx"], float)
    assert len(data[0]["c2w"]) == 4 and all(len(r) == 4 for r in data[0]["c2w"])
    back = ce.loads(text)
    assert back == recs
    # Extra keys are ignored (forward compatibility); optional keys may be absent.
    data[0]["future_field"] = 1
    del data[1]["time"]
    assert ce.camera_list_from_dicts(data)[0] == recs[0]


@pytest.mark.parametrize(("mutate", "match"), [
    (lambda d: d.pop("fx"), "missing 'fx'"),
    (lambda d: d.update(fx=float("nan")), "finite"),
    (lambda d: d.update(fx=-1.0), "positive"),
    (lambda d: d.update(width=0), "between"),
    (lambda d: d.update(width=1.5), "integer"),
    (lambda d: d.update(frame=True), "integer"),
    (lambda d: d.update(name=""), "name"),
    (lambda d: d.update(c2w=[[1, 0, 0, 0]] * 4), "row"),
    (lambda d: d.update(c2w=[[2, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]), "orthonormal"),
    (lambda d: d.update(c2w=[[1, 0, 0]] * 4), "4 rows"),
])
def test_record_validation(mutate, match):
    d = ce.record_from_blender("Cam", 1, np.eye(4), blender_cam()).to_dict()
    mutate(d)
    with pytest.raises(ValueError, match=match):
        ce.camera_list_from_dicts([d])


def test_empty_list_refused():
    with pytest.raises(ValueError, match="empty"):
        ce.camera_list_to_dicts([])
    with pytest.raises(ValueError, match="empty"):
        ce.camera_list_from_dicts([])


def test_record_from_opencv():
    rec = ce.record_from_opencv("x", 0, np.eye(4), Intrinsics(10.0, 10.0, 5.0, 5.0, 10, 10), time=None)
    assert rec.to_dict()["cx"] == 5.0 and "time" not in rec.to_dict()
