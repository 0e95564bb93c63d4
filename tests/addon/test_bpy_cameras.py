"""Camera export under real Blender (the bpy module): golden intrinsics against ``calc_matrix_camera``,
a pixel-exact Cycles render, and frame sampling of animated and marker-switched cameras."""

from __future__ import annotations

import math

import numpy as np
import pytest

bpy = pytest.importorskip("bpy", reason="the bpy module (Blender as a Python module) is not installed")

from blender_addon import cameras_bpy as cb  # noqa: E402
from blender_addon.core.intrinsics import intrinsics_from_blender, render_size  # noqa: E402
from blender_addon.core.poses import OPENGL_TO_OPENCV, look_at  # noqa: E402
from blender_addon.core.sampling import Marker, frame_range, marker_camera_at, plan_active_camera, plan_rig  # noqa: E402


@pytest.fixture()
def scene():
    bpy.ops.wm.read_homefile(use_empty=True, use_factory_startup=True)  # keeps preferences and add-ons
    return bpy.context.scene


def add_camera(scene, name="Cam", matrix=None, **data):
    cam = bpy.data.cameras.new(name)
    for k, v in data.items():
        setattr(cam, k, v)
    obj = bpy.data.objects.new(name, cam)
    scene.collection.objects.link(obj)
    if matrix is not None:
        obj.matrix_world = cb.numpy_to_matrix(matrix)
    return obj


CASES = {
    "landscape_auto": dict(res=(1920, 1080), fit="AUTO"),
    "portrait_auto": dict(res=(1080, 1920), fit="AUTO"),
    "square_auto": dict(res=(1000, 1000), fit="AUTO"),
    "portrait_vertical": dict(res=(1080, 1920), fit="VERTICAL"),
    "landscape_vertical": dict(res=(1920, 1080), fit="VERTICAL"),
    "portrait_horizontal": dict(res=(1080, 1920), fit="HORIZONTAL"),
    "shifted_portrait": dict(res=(800, 1000), fit="AUTO", shift=(0.1, 0.2)),
    "shifted_landscape_vertical": dict(res=(1920, 1080), fit="VERTICAL", shift=(0.1, -0.05)),
    "pixel_aspect_2_1": dict(res=(1280, 720), fit="AUTO", aspect=(2.0, 1.0), shift=(0.05, 0.1)),
    "pixel_aspect_1_3_vertical": dict(res=(640, 480), fit="VERTICAL", aspect=(1.0, 3.0), shift=(-0.2, 0.1)),
    "percentage_50_odd": dict(res=(1081, 721), fit="AUTO", pct=50, shift=(0.02, 0.03)),
    "percentage_37_horizontal": dict(res=(999, 1333), fit="HORIZONTAL", pct=37, aspect=(1.0, 1.5)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_intrinsics_match_calc_matrix_camera(scene, case):
    c = CASES[case]
    r = scene.render
    r.resolution_x, r.resolution_y = c["res"]
    r.resolution_percentage = c.get("pct", 100)
    r.pixel_aspect_x, r.pixel_aspect_y = c.get("aspect", (1.0, 1.0))
    obj = add_camera(scene, lens=42.0, sensor_width=36.0, sensor_height=24.0, sensor_fit=c["fit"],
                     shift_x=c.get("shift", (0, 0))[0], shift_y=c.get("shift", (0, 0))[1])
    ours = intrinsics_from_blender(cb.blender_camera(obj.data, r))
    theirs = cb.projection_intrinsics(obj, scene)
    assert (ours.width, ours.height) == render_size(*c["res"], c.get("pct", 100))
    np.testing.assert_allclose([ours.fx, ours.fy, ours.cx, ours.cy],
                               [theirs.fx, theirs.fy, theirs.cx, theirs.cy], rtol=2e-6, atol=1e-3)


def test_matrix_world_to_opencv(scene):
    m = look_at((2.0, -3.0, 1.5), (0.0, 0.0, 0.5))
    obj = add_camera(scene, matrix=m)
    obj.scale = (2.0, 2.0, 2.0)  # object scale is ignored, as Blender's renderer ignores it
    scene.camera = obj
    bpy.context.view_layer.update()
    rec = cb.read_camera(obj, scene)
    np.testing.assert_allclose(rec.c2w_opencv(), m @ OPENGL_TO_OPENCV, atol=1e-6)
    assert rec.name == "Cam" and rec.frame == scene.frame_current


def test_orthographic_camera_is_refused_readably(scene):
    obj = add_camera(scene, type="ORTHO")
    with pytest.raises(ValueError, match=r"'Cam'.*perspective"):
        cb.read_camera(obj, scene)


def test_render_size_and_pixels_match_cycles(scene, tmp_path):
    """Render a small emissive sphere with Cycles and find it where our K projects its centre."""
    r = scene.render
    r.engine = "CYCLES"
    scene.cycles.samples = 16
    scene.cycles.device = "CPU"
    r.resolution_x, r.resolution_y, r.resolution_percentage = 121, 161, 50  # -> 60 x 80 pixels
    r.pixel_aspect_x, r.pixel_aspect_y = 1.0, 1.5
    r.image_settings.file_format = "PNG"
    r.film_transparent = True
    m = look_at((0.3, -6.0, 0.4), (0.0, 0.0, 0.0))
    cam = add_camera(scene, matrix=m, lens=45.0, sensor_fit="AUTO", shift_x=0.08, shift_y=-0.06)
    scene.camera = cam
    # On the optical axis (perspective does not skew the silhouette's centroid there): it must land on the
    # shifted principal point (cx, cy) = (20.4, 35.2), ten pixels away from the image centre (30, 40).
    point = m[:3, 3] - 5.0 * m[:3, 2]
    mesh = bpy.data.meshes.new("Ball")
    import bmesh

    bm = bmesh.new()
    bmesh.ops.create_uvsphere(bm, u_segments=24, v_segments=12, radius=0.06)
    bm.to_mesh(mesh)
    bm.free()
    ball = bpy.data.objects.new("Ball", mesh)
    ball.location = point
    scene.collection.objects.link(ball)
    mat = bpy.data.materials.new("Emit")
    if bpy.app.version < (5, 0, 0):
        mat.use_nodes = True
    nodes = mat.node_tree.nodes
    nodes.clear()
    emit = nodes.new("ShaderNodeEmission")
    emit.inputs["Strength"].default_value = 5.0
    out = nodes.new("ShaderNodeOutputMaterial")
    mat.node_tree.links.new(emit.outputs[0], out.inputs[0])
    mesh.materials.append(mat)
    r.filepath = str(tmp_path / "ball.png")
    bpy.ops.render.render(write_still=True)
    img = bpy.data.images.load(str(tmp_path / "ball.png"))
    assert tuple(img.size) == (60, 80)
    px = np.array(img.pixels[:], dtype=np.float64).reshape(80, 60, 4)[::-1]  # rows top-down
    alpha = px[..., 3]
    ys, xs = np.nonzero(alpha > 0.01)
    wsum = alpha[ys, xs].sum()
    centroid = np.array([(alpha[ys, xs] * (xs + 0.5)).sum() / wsum, (alpha[ys, xs] * (ys + 0.5)).sum() / wsum])
    rec = cb.read_camera(cam, scene)
    w2c = np.linalg.inv(rec.c2w_opencv())
    pc = w2c[:3, :3] @ point + w2c[:3, 3]
    uv = np.array([rec.fx * pc[0] / pc[2] + rec.cx, rec.fy * pc[1] / pc[2] + rec.cy])
    assert (rec.width, rec.height) == (60, 80)
    np.testing.assert_allclose(uv, (20.4, 35.2), atol=1e-4)
    np.testing.assert_allclose(centroid, uv, atol=0.05)


def test_sampling_animated_camera_restores_frame(scene):
    obj = add_camera(scene, lens=30.0)
    scene.camera = obj
    for frame, x, lens in ((1, 0.0, 30.0), (11, 10.0, 80.0)):
        obj.location = (x, -5.0, 1.0)
        obj.keyframe_insert("location", frame=frame)
        obj.data.lens = lens
        obj.data.keyframe_insert("lens", frame=frame)
    # A linear interpolation so mid frames are easy to predict.
    for action_fc in _fcurves(obj) + _fcurves(obj.data):
        for kp in action_fc.keyframe_points:
            kp.interpolation = "LINEAR"
    scene.frame_set(4)
    recs = cb.sample_cameras(scene, plan_active_camera(frame_range(1, 11, 5)))
    assert scene.frame_current == 4
    assert [r.frame for r in recs] == [1, 6, 11]
    np.testing.assert_allclose([r.c2w_opencv()[0, 3] for r in recs], [0.0, 5.0, 10.0], atol=1e-5)
    fx = [r.fx for r in recs]
    np.testing.assert_allclose(fx, [30 * 1920 / 36, 55 * 1920 / 36, 80 * 1920 / 36], rtol=1e-5)
    assert recs[1].time == pytest.approx(6 / 24)


def _fcurves(idblock):
    ad = idblock.animation_data
    if ad is None or ad.action is None:
        return []
    action = ad.action
    if hasattr(action, "fcurves"):  # Blender < 5.0
        return list(action.fcurves)
    out = []  # Blender 5.0: layered actions
    for layer in action.layers:
        for strip in layer.strips:
            bag = strip.channelbag(ad.action_slot)
            if bag is not None:
                out.extend(bag.fcurves)
    return out


def test_sampling_markers_switch_cameras(scene):
    a = add_camera(scene, "Camera", matrix=look_at((0, -5, 1), (0, 0, 0)))
    b = add_camera(scene, "Cam2", matrix=look_at((5, 0, 1), (0, 0, 0)), lens=85.0)
    scene.camera = a
    scene.timeline_markers.new("A", frame=1).camera = a
    scene.timeline_markers.new("B", frame=10).camera = b
    frames = [1, 3, 5, 10, 20]
    recs = cb.sample_cameras(scene, plan_active_camera(frames))
    names = [r.name for r in recs]
    assert names == ["Camera", "Camera", "Camera", "Cam2", "Cam2"]
    markers = cb.scene_markers(scene)
    assert names == [marker_camera_at(markers, f) for f in frames]
    # Before the first bound marker Blender uses the earliest marker's camera, as core predicts.
    scene.timeline_markers[0].frame = 3
    scene.camera = b
    rec = cb.sample_cameras(scene, plan_active_camera([1]))[0]
    assert rec.name == marker_camera_at(cb.scene_markers(scene), 1) == "Camera"
    assert marker_camera_at([Marker(3, "Camera"), Marker(10, "Cam2")], 1) == "Camera"


def test_sampling_rig_and_errors(scene):
    coll = bpy.data.collections.new("Rig")
    scene.collection.children.link(coll)
    for i in range(3):
        obj = add_camera(scene, f"Rig{i}", matrix=look_at((5 * math.cos(i), 5 * math.sin(i), 1), (0, 0, 0)))
        coll.objects.link(obj)
    empty = bpy.data.objects.new("NotACamera", None)
    coll.objects.link(empty)
    names = cb.rig_camera_names(coll)
    assert names == ["Rig0", "Rig1", "Rig2"]
    recs = cb.sample_cameras(scene, plan_rig(names, [1, 2]))
    assert [(r.frame, r.name) for r in recs] == [(1, "Rig0"), (1, "Rig1"), (1, "Rig2"),
                                                 (2, "Rig0"), (2, "Rig1"), (2, "Rig2")]
    scene.camera = None
    scene.frame_set(7)
    with pytest.raises(ValueError, match="no active camera at frame 1"):
        cb.sample_cameras(scene, plan_active_camera([1]))
    assert scene.frame_current == 7  # restored even on error


def test_apply_blender_camera_round_trip(scene):
    from blender_addon.core.intrinsics import Intrinsics, blender_from_intrinsics

    intr = Intrinsics(900.0, 930.0, 343.5, 586.0, 540, 960)
    bc = blender_from_intrinsics(intr)
    obj = add_camera(scene)
    cb.apply_blender_camera(obj.data, bc)
    cb.apply_render_settings(scene.render, bc)
    theirs = cb.projection_intrinsics(obj, scene)
    np.testing.assert_allclose([theirs.fx, theirs.fy, theirs.cx, theirs.cy], [900.0, 930.0, 343.5, 586.0],
                               rtol=1e-5)
