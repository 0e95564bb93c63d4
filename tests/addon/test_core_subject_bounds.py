"""Subject bounds without Blender (issue 20): the default head-and-shoulders box, capture world <-> scene through
the placement, and the checks that keep a flat or malformed box from reaching the backend."""

from __future__ import annotations

import math

import numpy as np
import pytest

from blender_addon.core.placement import SubjectFrame, upright_placement
from blender_addon.core.subject_bounds import (
    Bounds,
    bounds_from_param,
    bounds_in_capture,
    box_around_sphere,
    check_matrix,
    head_and_shoulders,
    same_bounds,
)
from protocol import validate_params


def _similarity(angle: float, scale: float, t) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    m = np.eye(4)
    m[:3, :3] = scale * np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    m[:3, 3] = t
    return m


def test_the_default_box_stands_upright_around_the_head_and_shoulders_once_placed():
    # A COLMAP-like subject: 20 units off the origin, up along -Y, seen from -Z, 3 units across.
    subject = SubjectFrame(centre=np.array([4.0, -20.0, 7.0]), up=np.array([0.0, -1.0, 0.0]),
                           front=np.array([0.0, 0.0, -1.0]), diameter=3.0)
    box = head_and_shoulders(subject)
    placement = upright_placement(subject, (1.0, 2.0, 0.5), size=0.25)
    scene = placement @ box
    # Upright and axis-aligned in the scene: two heads wide, 1.2 deep, two high, hanging below the head's centre.
    np.testing.assert_allclose(scene[:3, :3], np.diag([0.25, 0.15, 0.25]), atol=1e-12)
    np.testing.assert_allclose(scene[:3, 3], [1.0, 2.0, 0.5 - 0.4 * 0.25], atol=1e-12)
    # The head's centre (where the cameras look) is inside; so is the head's top; the shoulders too.
    inv = np.linalg.inv(box)
    for point in (subject.centre, subject.centre + 0.5 * 3.0 * subject.up,
                  subject.centre - 1.3 * 3.0 * subject.up + 0.9 * 3.0 * np.array([1.0, 0.0, 0.0])):
        local = inv @ np.append(point, 1.0)
        assert np.all(np.abs(local[:3]) <= 1.0), local
    assert np.linalg.det(box[:3, :3]) > 0  # a proper box: not mirrored


def test_a_scene_capture_box_holds_its_selection():
    box = box_around_sphere((0.0, 1.0, 2.0), 0.5)
    np.testing.assert_allclose(np.diag(box)[:3], [0.525] * 3)
    np.testing.assert_allclose(box[:3, 3], [0.0, 1.0, 2.0])


def test_bounds_in_capture_are_the_inverse_placement_of_the_drawn_box():
    placement = _similarity(0.7, 0.25, (1.0, -2.0, 0.5))
    capture = _similarity(-0.3, 1.0, (0.1, 0.2, 0.3)) @ np.diag([0.5, 0.2, 0.9, 1.0])
    world = placement @ capture
    b = bounds_in_capture(placement, world, 1.0, "box")
    np.testing.assert_allclose(b.matrix, capture, atol=1e-12)
    # The display size is part of what is drawn, so it is part of what is sent.
    np.testing.assert_allclose(bounds_in_capture(placement, world, 2.0, "box").matrix[:3, :3], 2 * capture[:3, :3])
    # No placement: the scene is capture world.
    np.testing.assert_allclose(bounds_in_capture(None, world, 1.0, "ellipsoid").matrix, world)
    param = b.to_param()
    assert param["shape"] == "box" and all(isinstance(x, float) for row in param["matrix"] for x in row)
    validate_params("render", {"source_job": "j", "cameras": [_camera()], "subject_bounds": param})
    assert same_bounds(bounds_from_param(param), b)


def _camera() -> dict:
    return {"name": "c", "c2w": np.eye(4).tolist(), "fx": 10.0, "fy": 10.0, "cx": 4.0, "cy": 3.0, "width": 8,
            "height": 6}


@pytest.mark.parametrize(("scale", "axis"), [((1.0, 1.0, 0.0), "Z"), ((0.0, 1.0, 1.0), "X"), ((0.0, 0.0, 1.0), "X, Y")])
def test_a_flat_box_is_refused_naming_its_axis(scale, axis):
    world = np.diag([*scale, 1.0])
    with pytest.raises(ValueError, match=f"have no size along their local {axis} axis"):
        bounds_in_capture(None, world, 1.0, "box", "the subject bounds 'S'")
    with pytest.raises(ValueError, match="no size"):
        bounds_in_capture(np.eye(4), np.eye(4), 0.0, "box")  # display size 0 draws nothing
    sheared_flat = np.eye(4)
    sheared_flat[:3, 2] = [1.0, 1.0, 0.0]
    sheared_flat[:3, 0] = [1.0, 0.0, 0.0]
    sheared_flat[:3, 1] = [0.0, 1.0, 0.0]
    with pytest.raises(ValueError, match="one plane"):
        check_matrix(sheared_flat, "the subject bounds")
    with pytest.raises(ValueError, match="zero scale"):
        bounds_in_capture(np.diag([0.0, 0.0, 0.0, 1.0]), np.eye(4), 1.0, "box")


@pytest.mark.parametrize(("value", "why"), [
    (None, "not an object"),
    ({"shape": "cylinder", "matrix": np.eye(4).tolist()}, "neither 'box' nor 'ellipsoid'"),
    ({"shape": "box", "matrix": [[1, 0, 0], [0, 1, 0]]}, "4x4"),
    ({"shape": "box", "matrix": "eye"}, "4 rows of 4 numbers"),
    ({"shape": "box", "matrix": [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 1, 1]]}, "last row"),
    ({"shape": "box", "matrix": np.diag([1.0, 1.0, 0.0, 1.0]).tolist()}, "no size"),
])
def test_backend_bounds_that_cannot_be_shown_say_why(value, why):
    with pytest.raises(ValueError, match=why):
        bounds_from_param(value)


def test_same_bounds_allows_single_precision_and_nothing_more():
    m = _similarity(0.4, 3.0, (20.0, -5.0, 1.0))
    a = Bounds("box", m)
    assert same_bounds(a, Bounds("box", (m.astype(np.float32)).astype(np.float64)))
    assert not same_bounds(a, Bounds("ellipsoid", m))
    moved = m.copy()
    moved[0, 3] += 0.01
    assert not same_bounds(a, Bounds("box", moved))
