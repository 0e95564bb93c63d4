"""Blender camera settings → pinhole intrinsics and back (no bpy)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from blender_addon.core.intrinsics import (
    BlenderCamera,
    Intrinsics,
    blender_from_intrinsics,
    effective_sensor_fit,
    intrinsics_from_blender,
    intrinsics_from_projection,
    projection_matrix,
    render_size,
)


def cam(**kw) -> BlenderCamera:
    return BlenderCamera(**{"lens": 50.0, "sensor_width": 36.0, "sensor_height": 24.0, **kw})


# The table of blender-conventions.md section 2 (true values; BlenderNeRF gets rows 2-5 wrong).
@pytest.mark.parametrize(("res", "fit", "shift", "fx", "cx", "cy"), [
    ((1920, 1080), "AUTO", (0, 0), 2666.6667, 960, 540),
    ((1080, 1920), "AUTO", (0, 0), 2666.6667, 540, 960),
    ((1080, 1920), "VERTICAL", (0, 0), 4000.0, 540, 960),
    ((1920, 1080), "VERTICAL", (0, 0), 2250.0, 960, 540),
    ((800, 1000), "AUTO", (0.1, 0.2), 1388.8889, 300, 700),
])
def test_documented_cases(res, fit, shift, fx, cx, cy):
    k = intrinsics_from_blender(cam(resolution_x=res[0], resolution_y=res[1], sensor_fit=fit,
                                    shift_x=shift[0], shift_y=shift[1]))
    assert k.fx == pytest.approx(fx, rel=1e-6)
    assert k.fy == pytest.approx(fx, rel=1e-6)
    assert (k.cx, k.cy) == pytest.approx((cx, cy))
    assert (k.width, k.height) == res


def test_horizontal_fit_on_portrait_uses_width():
    k = intrinsics_from_blender(cam(resolution_x=1080, resolution_y=1920, sensor_fit="HORIZONTAL"))
    assert k.fx == pytest.approx(50 * 1080 / 36)


def test_pixel_aspect_makes_fy_differ():
    # 2:1 pixels (pixel_aspect_x = 2): ycor = 0.5, pixels are twice as wide as tall.
    k = intrinsics_from_blender(cam(resolution_x=1000, resolution_y=1000, pixel_aspect_x=2.0, pixel_aspect_y=1.0))
    # AUTO: pax*W = 2000 >= pay*H = 1000 -> horizontal; viewfac = W.
    assert k.fx == pytest.approx(50 * 1000 / 36)
    assert k.fy == pytest.approx(2 * k.fx)
    assert effective_sensor_fit("AUTO", 1000, 1000, 2.0, 1.0) == "HORIZONTAL"
    assert effective_sensor_fit("AUTO", 1000, 1000, 1.0, 2.0) == "VERTICAL"
    assert effective_sensor_fit("AUTO", 1000, 1100, 1.0, 1.0) == "VERTICAL"


def test_shift_with_pixel_aspect_and_vertical_fit():
    c = cam(resolution_x=640, resolution_y=480, sensor_fit="VERTICAL", shift_x=0.1, shift_y=-0.05,
            pixel_aspect_x=1.0, pixel_aspect_y=1.5)
    k = intrinsics_from_blender(c)
    ycor = 1.5
    viewfac = ycor * 480
    assert k.fx == pytest.approx(50 * viewfac / 24)
    assert k.fy == pytest.approx(k.fx / ycor)
    assert k.cx == pytest.approx(320 - 0.1 * viewfac)
    assert k.cy == pytest.approx(240 - 0.05 * viewfac / ycor)


def test_resolution_percentage_uses_integer_division():
    assert render_size(1081, 721, 50) == (540, 360)
    assert render_size(1920, 1080, 100) == (1920, 1080)
    k = intrinsics_from_blender(cam(resolution_x=1081, resolution_y=721, resolution_percentage=50))
    assert (k.width, k.height) == (540, 360)
    assert k.fx == pytest.approx(50 * 540 / 36)
    assert (k.cx, k.cy) == (270.0, 180.0)


@pytest.mark.parametrize("fit", ["AUTO", "HORIZONTAL", "VERTICAL"])
def test_inverse_round_trip(fit):
    rng = np.random.default_rng(7)
    for _ in range(200):
        w, h = (int(x) for x in rng.integers(16, 4000, size=2))
        fx = float(rng.uniform(0.3, 3.0) * max(w, h))
        fy = fx * float(rng.choice([1.0, rng.uniform(0.5, 2.0)]))
        intr = Intrinsics(fx, fy, w / 2 + float(rng.uniform(-0.2, 0.2)) * w,
                          h / 2 + float(rng.uniform(-0.2, 0.2)) * h, w, h)
        bc = blender_from_intrinsics(intr, sensor_fit=fit)
        assert bc.pixel_aspect_x >= 1.0 and bc.pixel_aspect_y >= 1.0
        back = intrinsics_from_blender(bc)
        assert (back.width, back.height) == (w, h)
        np.testing.assert_allclose([back.fx, back.fy, back.cx, back.cy], [intr.fx, intr.fy, intr.cx, intr.cy],
                                   rtol=1e-12, atol=1e-9)


def test_forward_then_inverse_keeps_lens():
    c = cam(resolution_x=1080, resolution_y=1920, shift_x=0.05, shift_y=-0.1)
    bc = blender_from_intrinsics(intrinsics_from_blender(c), sensor_fit="AUTO", sensor_width=36.0)
    assert bc.lens == pytest.approx(50.0)
    assert (bc.shift_x, bc.shift_y) == pytest.approx((0.05, -0.1))


def test_inverse_limits_are_readable():
    with pytest.raises(ValueError, match="lens shift"):
        blender_from_intrinsics(Intrinsics(100.0, 100.0, -5000.0, 50.0, 100, 100))
    with pytest.raises(ValueError, match="minimum"):
        blender_from_intrinsics(Intrinsics(1.0, 1.0, 500.0, 500.0, 1000, 1000))


def test_projection_round_trip():
    k = intrinsics_from_blender(cam(resolution_x=800, resolution_y=1000, shift_x=0.1, shift_y=0.2,
                                    pixel_aspect_x=1.0, pixel_aspect_y=2.0))
    p = projection_matrix(k, 0.1, 100.0)
    back = intrinsics_from_projection(p, k.width, k.height)
    np.testing.assert_allclose([back.fx, back.fy, back.cx, back.cy], [k.fx, k.fy, k.cx, k.cy], rtol=1e-12)


def test_projection_maps_pixel_centres():
    # A ray through pixel centre (u, v) must land at the matching NDC coordinate.
    k = Intrinsics(500.0, 400.0, 310.0, 250.0, 640, 480)
    p = np.array(projection_matrix(k, 0.1, 10.0))
    u, v = 100.5, 37.5
    x, y = (u - k.cx) / k.fx, (v - k.cy) / k.fy  # OpenCV normalised coordinates
    point = np.array([x * 2.0, -y * 2.0, -2.0, 1.0])  # Blender camera space (+Y up, looks down -Z), depth 2
    clip = p @ point
    ndc = clip[:2] / clip[3]
    assert ndc[0] == pytest.approx(2 * u / k.width - 1)
    assert ndc[1] == pytest.approx(1 - 2 * v / k.height)


def test_fov_helpers():
    f = 200 / math.tan(0.6911112070083618 / 2)  # NeRF-synthetic's camera_angle_x at 400 px
    k = Intrinsics(f, f, 200.0, 200.0, 400, 400)
    fovx, _ = k.fov()
    assert fovx == pytest.approx(0.6911112070083618)
    assert k.resized(200, 100).fy == pytest.approx(k.fy / 4)
    assert k.to_opencv_integer_centres()[2:] == (199.5, 199.5)


@pytest.mark.parametrize(("kw", "match"), [
    ({"type": "ORTHO"}, "perspective"),
    ({"sensor_fit": "DIAGONAL"}, "sensor_fit"),
    ({"lens": 0.0}, "lens"),
    ({"lens": float("nan")}, "lens"),
    ({"resolution_x": 0}, "resolution"),
    ({"resolution_x": 1, "resolution_percentage": 50}, "percentage"),
    ({"shift_x": float("inf")}, "shift_x"),
])
def test_invalid_cameras_raise_readable_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        intrinsics_from_blender(cam(**kw))
