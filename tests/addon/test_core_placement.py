"""Where an imported capture lands (subject upright at the cursor, head scale) and how its photos frame (no bpy)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from blender_addon.core.capture_frame import (
    background_frame_method,
    capture_sensor_fit,
    frame_mismatch,
    orientation,
)
from blender_addon.core.intrinsics import (
    Intrinsics,
    blender_from_intrinsics,
    intrinsics_from_blender,
    with_resolution,
)
from blender_addon.core.placement import SUBJECT_FILL, subject_diameter, subject_frame, upright_placement
from blender_addon.core.poses import (
    OPENGL_TO_OPENCV,
    capture_from_world,
    is_rotation,
    look_at,
    placement_scale,
)


def _rotation(axis, angle: float) -> np.ndarray:
    a = np.asarray(axis, dtype=np.float64) / np.linalg.norm(axis)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + math.sin(angle) * k + (1 - math.cos(angle)) * k @ k


def _frontal_capture(world: np.ndarray, n: int = 9) -> np.ndarray:
    """``(n, 4, 4)`` OpenCV c2w of a selfie-like arc (azimuths -40..40 deg, in front of -Y, at 2 units, looking at
    the origin, upright along +Z), all then moved into a capture world by the similarity ``world``."""
    scale = np.linalg.norm(world[:3, 0])
    out = []
    for az in np.radians(np.linspace(-40, 40, n)):
        eye = 2.0 * np.array([math.sin(az), -math.cos(az), 0.15])
        m = look_at(eye, (0, 0, 0)) @ OPENGL_TO_OPENCV
        m[:3, :3] = world[:3, :3] @ m[:3, :3] / scale  # cameras stay rigid: turned, not scaled
        m[:3, 3] = world[:3, :3] @ m[:3, 3] + world[:3, 3]
        out.append(m)
    return np.stack(out)


# A COLMAP-like capture world: turned upside down and about a tilted axis, 11x larger, far from the origin.
WORLD = np.eye(4)
WORLD[:3, :3] = 11.0 * _rotation((0.3, 1.0, -0.4), 2.6)
WORLD[:3, 3] = (3.0, -1.0, 21.7)


def test_the_subject_stands_upright_at_the_cursor_facing_the_front_view():
    c2w = _frontal_capture(WORLD)
    n = len(c2w)
    fx = np.full(n, 500.0)
    size = np.full(n, 400)
    centre = WORLD[:3, 3]  # the cameras look at the origin of the frontal frame
    subject = subject_frame(c2w, centre, fx, fx, size, size)
    cursor = np.array([1.0, -2.0, 0.5])
    p = upright_placement(subject, cursor, 0.25)
    assert placement_scale(p) == pytest.approx(0.25 / subject.diameter)
    assert is_rotation(p / placement_scale(p) + np.diag([0, 0, 0, 1 - 1 / placement_scale(p)]))
    np.testing.assert_allclose(p @ np.append(centre, 1.0), np.append(cursor, 1.0), atol=1e-12)
    placed = np.stack([p @ m for m in c2w])
    # The cameras' image-up (OpenCV -Y) averages to world +Z; they stand in front, at -Y, looking along +Y.
    up = -placed[:, :3, 1].mean(axis=0)
    assert np.degrees(np.arccos(up[2] / np.linalg.norm(up))) < 1e-6
    look = placed[:, :3, 2].mean(axis=0)
    assert look[1] > 0.95 * np.linalg.norm(look) and np.all(placed[:, 1, 3] < cursor[1])
    # The arc is symmetric about its middle camera, which lands straight in front: on the -Y axis through the
    # cursor, at its distance from the subject times the placement's scale.
    middle = placed[n // 2, :3, 3] - cursor
    assert abs(middle[0]) < 1e-9 and middle[1] < 0
    assert np.linalg.norm(middle) == pytest.approx(11.0 * np.linalg.norm(_frontal_capture(np.eye(4))[n // 2, :3, 3])
                                                   * placement_scale(p))


def test_subject_size_is_what_the_cameras_frame_at_its_depth():
    """The photos' narrower side spans 2·depth·tan(half view) at the subject; the subject fills SUBJECT_FILL."""
    c2w = _frontal_capture(np.eye(4), n=5)
    fx = np.full(5, 300.0)
    w, h = np.full(5, 540), np.full(5, 960)  # portrait: the width is the narrower side
    depth = np.linalg.norm(c2w[0, :3, 3])
    d = subject_diameter(c2w, np.zeros(3), fx, fx, w, h)
    assert d == pytest.approx(SUBJECT_FILL * 2 * depth * 270 / 300)
    # Scaling the capture world scales the estimate; the placement scale undoes it exactly.
    big = _frontal_capture(np.diag([7.0, 7.0, 7.0, 1.0]), n=5)
    assert subject_diameter(big, np.zeros(3), fx, fx, w, h) == pytest.approx(7 * d)
    # Cameras with the centre behind them do not count; with none left, the distance decides.
    behind = c2w.copy()
    behind[:, :3, 2] *= -1
    assert subject_diameter(behind, np.zeros(3), fx, fx, w, h) == pytest.approx(
        SUBJECT_FILL * depth * 2 * math.tan(math.radians(25)))


def test_a_placed_camera_goes_back_to_its_capture_pose():
    """What Render sends: ``capture_from_world`` undoes the placement (scale included) exactly."""
    c2w = _frontal_capture(WORLD)
    fx = np.full(len(c2w), 500.0)
    size = np.full(len(c2w), 400)
    p = upright_placement(subject_frame(c2w, WORLD[:3, 3], fx, fx, size, size), (0.3, 0.2, 0.1), 0.25)
    for cv in c2w:
        world = p @ (cv @ OPENGL_TO_OPENCV)  # the imported Blender camera: placement · c2w (Blender axes)
        np.testing.assert_allclose(capture_from_world(world, p) @ OPENGL_TO_OPENCV, cv, atol=1e-9)


def test_degenerate_captures_still_get_a_frame():
    # Cameras all round, pointing every way: no mean up, no mean direction; the frame is still a rotation.
    dirs = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], dtype=float)
    c2w = np.stack([look_at(3 * d, (0, 0, 0), up=(0, 0, 1) if abs(d[2]) < 0.5 else (1, 0, 0)) @ OPENGL_TO_OPENCV
                    for d in dirs])
    c2w[1::2, :3, 0] *= -1  # half the cameras upside down: image-ups cancel
    c2w[1::2, :3, 1] *= -1
    k = np.full(6, 100.0)
    s = subject_frame(c2w, np.zeros(3), k, k, np.full(6, 64), np.full(6, 64))
    assert abs(s.up @ s.front) < 1e-9 and np.linalg.norm(s.up) == pytest.approx(1.0)
    p = upright_placement(s, (0, 0, 0), 0.25)
    assert is_rotation(p[:3, :3] / placement_scale(p))
    with pytest.raises(ValueError, match="positive length"):
        upright_placement(s, (0, 0, 0), 0.0)


@pytest.mark.parametrize("size, fit", [((540, 960), "VERTICAL"), ((960, 540), "HORIZONTAL"), ((64, 64), "HORIZONTAL")])
def test_a_capture_camera_keeps_its_long_side_in_any_scene(size, fit):
    """A portrait camera in a landscape scene keeps the photo's vertical view (AUTO would spread the sensor over
    the width and shrink the subject); imports stay exact at the photo's own size."""
    w, h = size
    intr = Intrinsics(0.9 * max(w, h), 0.9 * max(w, h), w / 2 + 3.0, h / 2 - 5.0, w, h)
    sensor_fit, sw, sh = capture_sensor_fit(w, h)
    assert sensor_fit == fit and max(sw, sh) == 36.0 and (sh > sw) == (h > w)
    bc = blender_from_intrinsics(intr, sensor_fit=sensor_fit, sensor_width=sw, sensor_height=sh)
    k = intrinsics_from_blender(bc)
    np.testing.assert_allclose([k.fx, k.fy, k.cx, k.cy], [intr.fx, intr.fy, intr.cx, intr.cy], rtol=1e-12)
    other = intrinsics_from_blender(with_resolution(bc, h * 2, w * 2))  # the other orientation, twice the size
    long_photo, long_scene = (h, w * 2) if fit == "VERTICAL" else (w, h * 2)
    # The view along the photo's long side is kept: focal length in units of that side is unchanged.
    assert other.fx / long_scene == pytest.approx(intr.fx / long_photo)


def test_background_photos_keep_their_shape():
    # Portrait photo (fit VERTICAL): in a landscape frame it fits inside (heights equal), in a taller one it crops.
    assert background_frame_method("VERTICAL", 540 / 960, 1920 / 1080) == "FIT"
    assert background_frame_method("VERTICAL", 540 / 960, 9 / 21) == "CROP"
    # Landscape photo (fit HORIZONTAL): in a portrait frame it fits inside, in a wider one it crops.
    assert background_frame_method("HORIZONTAL", 4 / 3, 1080 / 1920) == "FIT"
    assert background_frame_method("HORIZONTAL", 4 / 3, 16 / 9) == "CROP"
    assert orientation(540, 960) == "portrait" and orientation(3, 2) == "landscape" and orientation(5, 5) == "square"


def test_frame_mismatch_says_what_and_how_to_fix():
    assert frame_mismatch((540, 960), (1.0, 1.0), (540, 960), (1.0, 1.0)) is None
    assert frame_mismatch((1080, 1920), (1.0, 1.0), (540, 960), (1.0, 1.0)) is None  # same shape, other size
    w = frame_mismatch((1920, 1080), (1.0, 1.0), (540, 960), (1.0, 1.0))
    assert w.startswith("the capture's photos are portrait (540x960) but the scene renders landscape (1920x1080)")
    assert "full height" in w and w.endswith("Match Photo Size sets the scene to 540x960")
    w = frame_mismatch((1920, 1080), (1.0, 1.0), (1600, 1200), (1.0, 1.0))
    assert w.startswith("the scene renders 1920x1080 but the capture's photos are 1600x1200") and "full width" in w
    # Non-square pixels: both problems, and the fix sets the aspect too.
    w = frame_mismatch((1920, 1080), (1.0, 1.0), (540, 960), (1.02678, 1.0))
    assert "portrait (540x960)" in w and "pixel aspect is 1:1 but the capture's cameras need 1.02678:1" in w
    assert w.endswith("sets the scene to 540x960 with pixel aspect 1.02678:1")
    assert frame_mismatch((540, 960), (1.02678, 1.0), (540, 960), (1.0267800001, 1.0)) is None  # float32 aspects
