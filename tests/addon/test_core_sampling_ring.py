"""Frame / marker / rig sampling plans and camera rings (no bpy)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from blender_addon.core.poses import is_rotation, opencv_from_blender
from blender_addon.core.ring import bounding_sphere, framing_distance, parse_elevations, ring_cameras
from blender_addon.core.sampling import (
    Marker,
    Sample,
    frame_file_name,
    frame_range,
    marker_camera_at,
    plan_active_camera,
    plan_rig,
    sequence_image_user,
)


def test_frame_range():
    assert frame_range(1, 5) == [1, 2, 3, 4, 5]
    assert frame_range(1, 10, 4) == [1, 5, 9]
    assert frame_range(-2, -2) == [-2]
    with pytest.raises(ValueError, match="step"):
        frame_range(1, 5, 0)
    with pytest.raises(ValueError, match="empty"):
        frame_range(5, 1)


def test_marker_camera_rules():
    # The case checked in Blender 4.2.0 (blender-conventions.md section 5).
    markers = [Marker(1, "Camera"), Marker(10, "Cam2")]
    assert [marker_camera_at(markers, f) for f in (1, 3, 5, 10, 20)] == ["Camera"] * 3 + ["Cam2"] * 2
    # Before the first bound marker the earliest one applies; unbound and hidden markers are ignored.
    markers = [Marker(5, "A"), Marker(8, None), Marker(12, "B"), Marker(15, "C", hidden=True)]
    assert marker_camera_at(markers, 1) == "A"
    assert marker_camera_at(markers, 9) == "A"
    assert marker_camera_at(markers, 16) == "B"
    assert marker_camera_at([Marker(3, None)], 4) is None
    assert marker_camera_at([], 4) is None


def test_plans():
    assert plan_active_camera([1, 2]) == [Sample(1, None), Sample(2, None)]
    assert plan_rig(["B", "A"], [1, 3]) == [Sample(1, "A"), Sample(1, "B"), Sample(3, "A"), Sample(3, "B")]
    with pytest.raises(ValueError, match="no camera"):
        plan_rig([], [1])
    with pytest.raises(ValueError, match="no frames"):
        plan_active_camera([])


def test_frame_file_names():
    assert frame_file_name(0, "Cam", 7) == "frame_0007.png"
    assert frame_file_name(0, "Cam/1 x", 7, "exr", multi_camera=True) == "Cam_1_x/frame_0007.exr"
    assert frame_file_name(0, "Cam", -3) == "frame_m0003.png"


def _blender_sequence_frame(scene_frame: int, start: int, duration: int, offset: int) -> int:
    """Blender's BKE_image_user_frame_get (not cyclic): the file number an ImageUser shows."""
    return min(max(scene_frame - start + 1, 0), duration) + offset


@pytest.mark.parametrize("first,last", [(1, 3), (10, 20), (0, 4), (250, 250)])
def test_sequence_image_user_shows_each_file_at_its_frame(first, last):
    start, duration, offset = sequence_image_user(first, last)
    assert duration == last - first + 1
    for f in range(first, last + 1):
        assert _blender_sequence_frame(f, start, duration, offset) == f
    with pytest.raises(ValueError, match="empty"):
        sequence_image_user(5, 4)


def test_ring_cameras_look_at_centre():
    centre = np.array([1.0, 2.0, 0.5])
    cams = ring_cameras(centre, 4.0, 8, elevations_deg=(0.0, 30.0))
    assert len(cams) == 16 and len({c.name for c in cams}) == 16
    for c in cams:
        m = c.matrix_world
        assert is_rotation(m)
        assert np.linalg.norm(m[:3, 3] - centre) == pytest.approx(4.0)
        fwd = opencv_from_blender(m)[:3, 2]
        np.testing.assert_allclose(fwd, (centre - m[:3, 3]) / 4.0, atol=1e-12)
        assert m[2, 1] > 0  # upright
    # First camera in front of the subject (at -Y); the second ring is offset by half a step.
    np.testing.assert_allclose(cams[0].matrix_world[:3, 3], centre + np.array([0, -4, 0]), atol=1e-12)
    assert cams[8].azimuth_deg == pytest.approx(22.5)
    assert cams[8].matrix_world[2, 3] == pytest.approx(0.5 + 4 * math.sin(math.radians(30)))
    with pytest.raises(ValueError):
        ring_cameras(centre, 4.0, 0)
    with pytest.raises(ValueError):
        ring_cameras(centre, 4.0, 3, elevations_deg=(90.0,))


def test_framing_and_bounds():
    c, r = bounding_sphere(np.array([[0, 0, 0], [2, 2, 2.0]]))
    np.testing.assert_allclose(c, (1, 1, 1))
    assert r == pytest.approx(math.sqrt(3))
    d = framing_distance(1.0, math.radians(60), math.radians(40), margin=1.0)
    assert d == pytest.approx(1.0 / math.sin(math.radians(20)))
    with pytest.raises(ValueError):
        bounding_sphere(np.zeros((0, 3)))


def test_parse_elevations():
    assert parse_elevations("0, 30; -10") == [0.0, 30.0, -10.0]
    with pytest.raises(ValueError, match="'abc'"):
        parse_elevations("0, abc")
    with pytest.raises(ValueError, match="outside"):
        parse_elevations("95")
    with pytest.raises(ValueError, match="at least one"):
        parse_elevations(" , ")
