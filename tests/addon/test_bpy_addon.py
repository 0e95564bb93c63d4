"""The add-on under real Blender (bpy module): registration hygiene, panels in every state, capture import,
scene capture, mesh import, and the built zip installing as an extension."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

bpy = pytest.importorskip("bpy", reason="the bpy module (Blender as a Python module) is not installed")

import addon_utils  # noqa: E402
from recording_layout import LayoutError, RecordingLayout  # noqa: E402

MOD = "nerfart_blender"


# ---------------------------------------------------------------------------------------------------------
# Registration
# ---------------------------------------------------------------------------------------------------------


def _snapshot(mod=None) -> dict:
    return {
        "types": {n for n in dir(bpy.types) if n.upper().startswith("NERFART")},
        "scene": set(bpy.types.Scene.bl_rna.properties.keys()),
        "wm": set(bpy.types.WindowManager.bl_rna.properties.keys()),
        "ops": set(dir(bpy.ops.nerfart)),
        "addons": {k for k in bpy.context.preferences.addons.keys() if MOD in k},  # noqa: SIM118 - bpy collection
        "load_post": len(bpy.app.handlers.load_post),
        "timer": bool(mod is not None and bpy.app.timers.is_registered(mod.tick.tick)),
    }


def test_register_unregister_twice_without_leaks(staged_addon):
    was_enabled = MOD in bpy.context.preferences.addons
    if was_enabled:
        addon_utils.disable(MOD, default_set=True)
    base = _snapshot()
    assert not base["types"] and not base["ops"] and "nerfart" not in base["scene"]
    enabled = []
    for _ in range(2):
        mod = addon_utils.enable(MOD, default_set=True, handle_error=_raise)
        snap = _snapshot(mod)
        assert snap["timer"], "the polling timer is not registered"
        assert "nerfart" in snap["scene"] and "nerfart_runtime" in snap["wm"]
        assert {"NERFART_PT_main", "NERFART_PT_backend", "NERFART_OT_connect"} <= snap["types"]
        assert "connect" in snap["ops"]
        enabled.append(snap)
        addon_utils.disable(MOD, default_set=True, handle_error=_raise)
        after = _snapshot(mod)
        assert after == {**base, "timer": False}, {k: (after[k], base[k]) for k in base if after[k] != base[k]}
        assert mod.connection._context is None and mod.connection.client() is None
    assert enabled[0] == enabled[1]
    if was_enabled:
        addon_utils.enable(MOD, default_set=True, handle_error=_raise)


def _raise(exc):
    raise exc


def test_no_bl_info_relative_imports_no_pip(staged_addon):
    """Extension rules: metadata only in the manifest, relative imports, nothing installed at run time."""
    assert not re.search(r"^bl_info\s*=", (staged_addon / "__init__.py").read_text(), re.MULTILINE)
    for path in staged_addon.rglob("*.py"):
        text = path.read_text()
        for line in text.splitlines():
            stripped = line.strip()
            assert not stripped.startswith(("import protocol", "from protocol", "from blender_addon",
                                            "import blender_addon", "import captures", "from captures ",
                                            "from captures.")), f"{path}: {line}"
        # Running pip (an argument list with "pip", or ensurepip); a message that tells the user to run it is fine.
        assert not re.search(r"ensurepip|[\"']pip[\"']", text), f"{path} runs pip"


# ---------------------------------------------------------------------------------------------------------
# Panels: every draw call checked against UILayout's RNA, in every state
# ---------------------------------------------------------------------------------------------------------


def _set_state(addon, scene, state: str) -> None:
    wm = bpy.context.window_manager
    rt = wm.nerfart_runtime
    prefs = bpy.context.preferences.addons[MOD].preferences
    for key in ("error", "error_detail", "job_text", "gpu_name", "gpu_memory", "local_backend", "clip_models",
                "job_result", "job_warning", "batch_text"):
        setattr(rt, key, "")
    rt.busy = False
    rt.preview = None
    rt.reattach_pending = 0
    rt.show_error_detail = False
    prefs.start_local = False
    be = scene.nerfart.backend
    if state == "idle":
        rt.connection, rt.status_text = "CONNECTED", "connected to tcp://127.0.0.1:5555 (NVIDIA H100)"
        rt.gpu_name, rt.gpu_memory, rt.queue_length = "NVIDIA H100", "70.1 GiB free of 79.6 GiB", 0
        rt.clip_models, rt.backend_version = "ViT-B-32, ViT-B-16", "0.1.0"
    elif state == "busy":
        rt.connection, rt.busy, rt.progress = "CONNECTED", True, 0.42
        rt.job_text = "stylize 'a marble statue': stylizing 168/400 (ETA 1:05)"
        img = bpy.data.images.get("preview-test") or bpy.data.images.new("preview-test", 8, 8)
        rt.preview = img
        ref = be.jobs.add()
        ref.name, ref.job_id, ref.state, ref.kind, ref.progress, ref.stage = ("stylize", "j1", "running",
                                                                             "STYLIZE", 0.42, "stylizing")
        be.jobs_index = len(be.jobs) - 1
    elif state == "error":
        rt.connection, rt.status_text = "ERROR", "version mismatch"
        rt.error = ("the backend speaks protocol v2, this add-on v1: update the add-on " * 3).strip()
        rt.error_detail = "version_mismatch\nTraceback (most recent call last):\n  File x\nValueError: boom"
        rt.show_error_detail = True
        ref = be.jobs.add()
        ref.name, ref.job_id, ref.state, ref.error, ref.kind = "render", "j2", "failed", "out of memory", "RENDER"
        be.jobs_index = len(be.jobs) - 1
    elif state == "disconnected":
        rt.connection, rt.status_text = "DISCONNECTED", "not connected"
        rt.reattach_pending = 2
        rt.local_backend = "the local backend exited with code 1; last output:\nImportError: torch"
        prefs.start_local = True
    elif state == "lost":
        rt.connection, rt.status_text = "LOST", "backend at tcp://127.0.0.1:5555 is not responding"
        rt.reattach_pending = 1


def _set_variant(scene, variant: str) -> None:
    """``folder_active``: the defaults; ``scene_rig``: scene capture, a rig over a frame range, a queue."""
    if variant != "scene_rig":
        return
    nerf = scene.nerfart
    nerf.capture.source = "SCENE"
    nerf.outputs.mode = "RIG"
    nerf.outputs.rig_frames = "RANGE"
    nerf.outputs.use_scene_range = False
    nerf.backend.reconstruct_job = "rec1"
    q = nerf.stylize.queue.add()
    q.name, q.state, q.job_id = "a marble statue", "running", "j9"
    nerf.stylize.queue.add().name = "Tolkien Elf"


def _draw_all(addon, context) -> list:
    calls: list = []
    panels = [c for c in addon.panels.CLASSES if issubclass(c, bpy.types.Panel)]
    for cls in panels:
        layout = RecordingLayout(calls, cls.__name__)
        fake = SimpleNamespace(layout=layout, bl_idname=cls.bl_idname)
        if hasattr(cls, "draw_header"):
            cls.draw_header(fake, context)
        cls.draw(fake, context)
    scene = context.scene
    for ul, data, prop in ((addon.panels.NERFART_UL_jobs, scene.nerfart.backend, "jobs"),
                           (addon.panels.NERFART_UL_queue, scene.nerfart.stylize, "queue")):
        for item in getattr(data, prop):
            ul.draw_item(SimpleNamespace(), context, RecordingLayout(calls, ul.__name__), data, item, 0, data,
                         prop + "_index")
    prefs = context.preferences.addons[MOD].preferences

    class PrefsProxy:
        layout = RecordingLayout(calls, "preferences")

        def __getattr__(self, name):
            return getattr(prefs, name)

    type(prefs).draw(PrefsProxy(), context)
    return calls


@pytest.mark.parametrize("state", ["idle", "busy", "error", "disconnected", "lost"])
@pytest.mark.parametrize("variant", ["folder_active", "scene_rig"])
def test_panels_draw_in_every_state(addon, fresh_file, state, variant):
    scene = fresh_file
    _set_variant(scene, variant)
    _set_state(addon, scene, state)
    calls = _draw_all(addon, bpy.context)
    names = [c[0] for c in calls]
    assert len(calls) > 60
    assert "template_list" in names and "operator_menu_enum" in names
    ops = {c[1].get("operator") for c in calls if c[0] == "operator"}
    # Long texts are wrapped over several labels: look for them in the labels' joined text.
    text = " ".join(" ".join(c[1].get("text", "") for c in calls if c[0] == "label").split())
    if state == "busy":
        assert "progress" in names and "nerfart.cancel_job" in ops and "template_icon" in names
    if state == "error":
        assert "protocol v2" in text
    if state in ("disconnected", "error"):
        assert "nerfart.connect" in ops
    if state == "disconnected":
        assert "nerfart.start_local_backend" in ops
        assert "may still be on the backend" in text
    if state == "lost":
        assert "not responding" in text


def test_shape_freedom_sits_under_colour_only_and_greys_out_with_it(addon, fresh_file):
    st = fresh_file.nerfart.stylize
    prop = st.bl_rna.properties["shape_freedom"]
    assert (prop.name, prop.type, prop.default, prop.hard_min) == ("Shape Freedom", "FLOAT", 0.0, 0.0)
    from protocol.schema import JOB_PARAMS

    protocol_max = next(f.max for f in JOB_PARAMS["stylize"] if f.name == "shape_freedom")
    assert protocol_max is not None and abs(prop.hard_max - protocol_max) < 1e-6, "the protocol's maximum"
    assert "0 keeps the reconstructed shape" in prop.description and "haze" in prop.description
    assert "hat or horns" in prop.description
    for colour_only in (False, True):
        st.colour_only = colour_only
        calls = _draw_all(addon, bpy.context)
        props = [(c[1]["property"], c[2]) for c in calls if c[0] == "prop" and c[1]["data"] == st]
        names = [name for name, _ in props]
        assert names[names.index("colour_only") + 1] == "shape_freedom"
        row = props[names.index("shape_freedom")][1]
        assert row.attrs.get("enabled", True) is (not colour_only)


def test_stylize_job_sends_shape_freedom_when_it_applies(addon, fresh_file):
    from nerfart_blender.jobs_bpy import stylize_job

    from protocol import validate_params

    scene = fresh_file
    scene.nerfart.backend.reconstruct_job = "rec123"
    st = scene.nerfart.stylize
    assert "shape_freedom" not in stylize_job(scene).params  # 0 is the backend's default
    st.shape_freedom = 0.25
    params = stylize_job(scene).params
    assert params["shape_freedom"] == 0.25 and params["colour_only"] is False
    validate_params("stylize", params)
    st.colour_only = True  # greyed out: colour_only freezes the geometry, so nothing is sent
    assert "shape_freedom" not in stylize_job(scene).params
    item = st.queue.add()
    item.name, item.shape_freedom = "Tolkien Elf", 0.5  # a queued prompt sends its own setting
    params = stylize_job(scene, item, 0).params
    assert params["shape_freedom"] == 0.5 and params["prompt"] == "Tolkien Elf"
    validate_params("stylize", params)


def test_render_job_sends_the_frame_format_and_the_placement(addon, fresh_file):
    from nerfart_blender.jobs_bpy import render_job, render_target

    from protocol import validate_params

    scene = fresh_file
    out = scene.nerfart.outputs
    items = {i.identifier: i.name for i in out.bl_rna.properties["file_format"].enum_items}
    assert items == {"PNG": "PNG", "EXR": "OpenEXR Multilayer"}
    assert out.bl_rna.properties["file_format"].enum_items["EXR"].description.startswith("Colour, depth and normals")
    assert out.file_format == "PNG"  # PNG stays the default
    cam = bpy.data.objects.new("Shot", bpy.data.cameras.new("Shot"))
    scene.collection.objects.link(cam)
    scene.camera = cam
    scene.frame_start = scene.frame_end = 1
    params = render_job(scene, render_target(scene, source="rec123")).params
    assert params["format"] == "png" and "placement" not in params  # no placement: the scene is capture world
    validate_params("render", params)
    placement = bpy.data.objects.new("Capture Placement", None)
    scene.collection.objects.link(placement)
    placement.location, placement.rotation_euler, placement.scale = (1.0, -2.0, 0.5), (0.3, 0.0, 1.1), (0.25,) * 3
    scene.nerfart.capture.placement = placement
    out.file_format = "EXR"
    bpy.context.view_layer.update()
    params = render_job(scene, render_target(scene, source="rec123")).params
    assert params["format"] == "exr"
    # The backend scales depth by the placement's scale and turns normals by its rotation: scene units and axes.
    np.testing.assert_allclose(np.array(params["placement"]), np.array(placement.matrix_world), atol=1e-6)
    validate_params("render", params)


def test_exr_frames_are_saved_and_load_as_multilayer_image_sequences(addon, fresh_file, tmp_path):
    from nerfart_blender.frames_bpy import frames_image, scan_frames
    from nerfart_blender.results_bpy import save_frame

    from protocol import Message

    # What the render job writes for format "exr" (test_exr_passes.py checks the file is encode_exr_passes's).
    exr = (Path(__file__).with_name("frame_passes_4x3.exr")).read_bytes()
    for frame in (1, 2):
        msg = Message("frame", {"index": frame - 1, "camera_name": "Shot", "frame": frame, "width": 4, "height": 3})
        msg.content["image"] = msg.add_blob(exr, "exr")
        assert save_frame(msg, tmp_path, multi_camera=False).name == f"frame_{frame:04d}.exr"
    (frames,) = scan_frames(tmp_path)
    image = frames_image(frames, "NeRF-Art Shot")
    assert image.source == "SEQUENCE" and image.filepath.endswith("frame_0001.exr")
    image.update_tag()
    tree = bpy.data.node_groups.new("Check", "CompositorNodeTree")
    node = tree.nodes.new("CompositorNodeImage")
    node.image = image
    assert image.type == "MULTILAYER"
    assert [o.name for o in node.outputs if o.enabled] == ["Combined", "Alpha", "Depth", "Normal"]


def test_recording_layout_rejects_mistakes(addon):
    layout = RecordingLayout()
    scene = bpy.context.scene
    with pytest.raises(LayoutError, match="no function"):
        layout.lable(text="x")
    with pytest.raises(LayoutError, match="unknown keyword"):
        layout.label(txt="x")
    with pytest.raises(LayoutError, match="enum"):
        layout.label(text="x", icon="NOT_AN_ICON")
    with pytest.raises(LayoutError, match="no property"):
        layout.prop(scene.nerfart.capture, "ring_cont")
    with pytest.raises(LayoutError, match="not registered"):
        layout.operator("nerfart.does_not_exist")
    with pytest.raises(LayoutError, match="no property"):
        layout.operator("nerfart.queue_move").diretion = "UP"
    with pytest.raises(LayoutError, match="enum"):
        layout.operator("nerfart.queue_move").direction = "SIDEWAYS"
    with pytest.raises(LayoutError, match=r"read-only|no attribute"):
        layout.no_such_attribute = 1
    with pytest.raises(LayoutError, match="bool"):
        layout.enabled = "yes"
    sub = layout.row(align=True)
    assert isinstance(sub, RecordingLayout)
    assert layout.icon(bpy.data.images.new("x", 2, 2)) == 0


# ---------------------------------------------------------------------------------------------------------
# Capture import
# ---------------------------------------------------------------------------------------------------------


def test_import_capture_cameras_match_file(addon, fresh_file, lego_dir):
    from nerfart_blender.cameras_bpy import (
        matrix_to_numpy,
        numpy_to_matrix,
        projection_intrinsics,
        read_camera,
    )
    from nerfart_blender.core.captures import read_capture

    scene = fresh_file
    scene.nerfart.capture.folder = str(lego_dir)
    scene.nerfart.capture.set_resolution = True  # asked for: the cameras then frame exactly like the photos
    scene.nerfart.capture.placement_mode = "AS_CAPTURED"  # the file's own world: cameras at the file's poses
    assert bpy.ops.nerfart.import_capture() == {"FINISHED"}
    coll, placement = scene.nerfart.capture.cameras, scene.nerfart.capture.placement
    data = json.loads((lego_dir / "transforms_train.json").read_text())
    cams = [o for o in coll.objects if o.type == "CAMERA"]
    assert len(cams) == len(data["frames"]) == 50
    assert all(c.parent == placement for c in cams) and placement.type == "EMPTY"
    assert (scene.render.resolution_x, scene.render.resolution_y) == (400, 400)
    capture = read_capture(lego_dir)
    worst = 0.0
    for cam, frame, cc in zip(sorted(cams, key=lambda o: int(o.name[2:])),
                              sorted(data["frames"], key=lambda f: int(f["file_path"].rsplit("_", 1)[1])),
                              sorted(capture.cameras, key=lambda c: int(c.name[2:])), strict=True):
        assert cam.name == cc.name
        m = matrix_to_numpy(cam.matrix_world)
        worst = max(worst, float(np.abs(m - np.array(frame["transform_matrix"])).max()))
        k = projection_intrinsics(cam, scene)
        np.testing.assert_allclose([k.fx, k.fy, k.cx, k.cy], [cc.intrinsics.fx, cc.intrinsics.fy, cc.intrinsics.cx,
                                                              cc.intrinsics.cy], rtol=1e-5)
        assert cam.data.background_images[0].image is not None
    # Blender stores object transforms in float32: equal to the file's float32-rounded matrices.
    assert worst < 1e-6, worst  # measured 6.3e-7: one float32 ulp at |x| ~ 4
    # Place the capture: move, rotate, scale uniformly. The exported pose in capture world is unchanged.
    placement.location = (1.0, -2.0, 0.5)
    placement.rotation_euler = (0.3, -0.2, 1.1)
    placement.scale = (2.5, 2.5, 2.5)
    bpy.context.view_layer.update()
    cam = cams[7]
    frame = next(f for f in data["frames"] if f["file_path"].endswith("/" + cam.name))
    rec = read_camera(cam, scene, placement=matrix_to_numpy(placement.matrix_world))
    np.testing.assert_allclose(rec.c2w_blender(), np.array(frame["transform_matrix"]), atol=2e-5)
    assert rec.fx == pytest.approx(capture.cameras[0].intrinsics.fx, rel=1e-5)
    # A non-uniform scale cannot be represented: readable error.
    placement.scale = (1.0, 2.0, 1.0)
    bpy.context.view_layer.update()
    with pytest.raises(ValueError, match="non-uniformly"):
        read_camera(cam, scene, placement=matrix_to_numpy(placement.matrix_world))
    _ = numpy_to_matrix


def test_import_capture_failure_reaches_the_panel(addon, fresh_file, tmp_path):
    scene = fresh_file
    (tmp_path / "empty").mkdir()
    scene.nerfart.capture.folder = str(tmp_path / "empty")
    with pytest.raises(RuntimeError, match="no recognised capture format"):
        bpy.ops.nerfart.import_capture()
    rt = bpy.context.window_manager.nerfart_runtime
    assert "no recognised capture format" in rt.error
    assert bpy.ops.nerfart.clear_error() == {"FINISHED"} and rt.error == ""


def test_poll_messages_gate_network_operators(addon, fresh_file):
    for op in (bpy.ops.nerfart.reconstruct, bpy.ops.nerfart.stylize, bpy.ops.nerfart.render,
               bpy.ops.nerfart.extract_mesh, bpy.ops.nerfart.cancel_job, bpy.ops.nerfart.queue_run,
               bpy.ops.nerfart.disconnect, bpy.ops.nerfart.stop_local_backend, bpy.ops.nerfart.import_capture):
        assert not op.poll(), op
    assert bpy.ops.nerfart.connect.poll()


def test_presets_and_queue(addon, fresh_file):
    scene = fresh_file
    st = scene.nerfart.stylize
    st.shape_freedom = 0.4
    assert bpy.ops.nerfart.apply_style_preset(preset="MARBLE") == {"FINISHED"}
    assert st.prompt == "a marble statue" and st.shape_freedom == 0  # the paper's styles keep the head's shape
    st.shape_freedom = 0.25
    bpy.ops.nerfart.queue_add()
    bpy.ops.nerfart.apply_style_preset(preset="SKETCH")
    assert st.colour_only
    bpy.ops.nerfart.queue_add()
    assert [q.name for q in st.queue] == ["a marble statue", "a pencil sketch"]
    assert st.queue[1].colour_only and not st.queue[0].colour_only
    assert [q.shape_freedom for q in st.queue] == [0.25, 0]
    bpy.ops.nerfart.queue_move(direction="UP")
    assert [q.name for q in st.queue] == ["a pencil sketch", "a marble statue"]
    bpy.ops.nerfart.queue_remove()
    assert len(st.queue) == 1


# ---------------------------------------------------------------------------------------------------------
# Scene capture and results
# ---------------------------------------------------------------------------------------------------------


def test_capture_from_scene_writes_a_readable_capture(addon, fresh_file, tmp_path):
    from nerfart_blender.cameras_bpy import matrix_to_numpy
    from nerfart_blender.core.captures import read_capture

    scene = fresh_file
    bpy.ops.mesh.primitive_uv_sphere_add(radius=0.5, location=(0.2, 0.1, 0.3))
    sphere = bpy.context.active_object
    sphere.select_set(True)
    cap = scene.nerfart.capture
    cap.source = "SCENE"
    cap.ring_count, cap.ring_elevations, cap.ring_width, cap.ring_height, cap.ring_samples = 3, "10", 40, 32, 1
    cap.ring_output = str(tmp_path / "cap")
    scene.render.resolution_x, scene.render.engine = 777, "BLENDER_WORKBENCH"
    assert bpy.ops.nerfart.capture_from_scene() == {"FINISHED"}
    assert (scene.render.resolution_x, scene.render.engine) == (777, "BLENDER_WORKBENCH")  # restored
    capture = read_capture(tmp_path / "cap")
    assert len(capture.cameras) == 3 and cap.folder == str(tmp_path / "cap")
    ring = sorted((o for o in cap.cameras.objects if o.type == "CAMERA"), key=lambda o: o.name)
    for obj, cc in zip(ring, capture.cameras, strict=True):
        assert cc.image is not None and cc.image.is_file()
        assert (cc.intrinsics.width, cc.intrinsics.height) == (40, 32)
        np.testing.assert_allclose(cc.c2w_blender, matrix_to_numpy(obj.matrix_world), atol=1e-6)
        # The sphere's centre is in view: the camera looks at the selection's centre.
        fwd = -matrix_to_numpy(obj.matrix_world)[:3, 2]
        to_centre = np.array([0.2, 0.1, 0.3]) - matrix_to_numpy(obj.matrix_world)[:3, 3]
        assert math.degrees(math.acos(np.dot(fwd, to_centre) / np.linalg.norm(to_centre))) < 1.0


def test_mesh_import_in_place_with_colours(addon, fresh_file):
    from nerfart_blender.cameras_bpy import matrix_to_numpy
    from nerfart_blender.results_bpy import mesh_object

    scene = fresh_file
    placement = bpy.data.objects.new("P", None)
    scene.collection.objects.link(placement)
    placement.location, placement.scale = (1.0, 2.0, 3.0), (2.0, 2.0, 2.0)
    v = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], np.float32)
    f = np.array([[0, 1, 2], [0, 1, 3], [0, 2, 3], [1, 2, 3]], np.int32)
    c = np.array([[255, 0, 0, 255], [0, 255, 0, 255], [0, 0, 255, 255], [128, 128, 128, 255]], np.uint8)
    obj = mesh_object("M", v, f, c, scene.collection, placement, decimate=0.5)
    bpy.context.view_layer.update()
    world = matrix_to_numpy(obj.matrix_world)
    np.testing.assert_allclose(world[:3, :3] @ v[1] + world[:3, 3], (3.0, 2.0, 3.0), atol=1e-6)
    attr = obj.data.color_attributes["Col"]
    srgb = np.zeros(16, np.float32)
    attr.data.foreach_get("color_srgb", srgb)
    np.testing.assert_allclose(srgb.reshape(4, 4), c / 255.0, atol=1 / 255)
    assert len(obj.data.polygons) == 4 and obj.modifiers["Decimate"].ratio == pytest.approx(0.5)
    nodes = obj.data.materials[0].node_tree.nodes
    assert any(n.bl_idname == "ShaderNodeVertexColor" and n.layer_name == "Col" for n in nodes)
    with pytest.raises(ValueError, match="outside"):
        mesh_object("bad", v, np.array([[0, 1, 9]]), None, scene.collection)


# ---------------------------------------------------------------------------------------------------------
# The built zip installs and enables
# ---------------------------------------------------------------------------------------------------------

INSTALL_SCRIPT = textwrap.dedent("""
    import json, os, sys
    import bpy, addon_utils
    zip_path = sys.argv[1]
    repo_dir = os.path.join(os.environ["BLENDER_USER_RESOURCES"], "repo")
    bpy.context.preferences.extensions.repos.new(name="NeRF-Art Test", module="nerfart_test",
                                                 custom_directory=repo_dir, source="USER")
    result = bpy.ops.extensions.package_install_files(filepath=zip_path, repo="nerfart_test",
                                                      enable_on_install=True)
    name = "bl_ext.nerfart_test.nerfart_blender"
    out = {"install": sorted(result), "enabled": name in bpy.context.preferences.addons,
           "panel": hasattr(bpy.types, "NERFART_PT_main"), "scene": hasattr(bpy.context.scene, "nerfart"),
           "prefs_endpoint": bpy.context.preferences.addons[name].preferences.endpoint,
           "protocol": hasattr(sys.modules.get(name + ".protocol"), "Client") or
                       __import__(name + ".protocol", fromlist=["Client"]).Client is not None,
           "captures": __import__(name + ".core.captures", fromlist=["read_capture"]).read_capture.__module__,
           "site": bpy.utils.user_resource(
               "EXTENSIONS", path=".local/lib/python{}.{}/site-packages".format(*sys.version_info[:2]))}
    mod = sys.modules[name]
    out["zmq_error"] = mod.connection.zmq_error()
    out["tick"] = mod.tick.tick()
    # The bundled wheel, extracted into this throwaway profile, imports on its own (-S: no venv packages).
    import subprocess
    code = f"import sys; sys.path.insert(0, {out['site']!r}); import zmq; print(zmq.__file__, zmq.zmq_version())"
    check = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True)
    out["bundled_zmq"] = check.stdout.strip() if check.returncode == 0 else "FAILED " + check.stderr[-500:]
    addon_utils.disable(name, default_set=True)
    out["disabled_clean"] = not hasattr(bpy.types, "NERFART_PT_main") and not hasattr(bpy.types.Scene, "nerfart")
    print("RESULT " + json.dumps(out))
""")


@pytest.fixture(scope="module")
def built_zip(tmp_path_factory, repo_root):
    out = tmp_path_factory.mktemp("dist")
    import build_addon

    cache = repo_root / ".whl"
    has_wheel = all(build_addon.cached_wheel(cache, "linux-x64", v) for v in build_addon.PYTHON_VERSIONS)
    args = [sys.executable, str(repo_root / "build_addon.py"), "--platform", "linux-x64", "--output-dir", str(out)]
    args += ["--offline"] if has_wheel else ["--no-wheels"]
    res = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    (zip_path,) = out.glob("*.zip")
    return zip_path, has_wheel


def test_built_zip_installs_and_enables(built_zip, tmp_path):
    zip_path, has_wheel = built_zip
    env = {**os.environ, "BLENDER_USER_RESOURCES": str(tmp_path / "profile")}
    res = subprocess.run([sys.executable, "-c", INSTALL_SCRIPT, str(zip_path)], capture_output=True, text=True,
                         env=env, timeout=300)
    line = next((ln for ln in res.stdout.splitlines() if ln.startswith("RESULT ")), None)
    assert line is not None, res.stdout[-3000:] + res.stderr[-3000:]
    out = json.loads(line[len("RESULT "):])
    assert out["install"] == ["FINISHED"] and out["enabled"] and out["panel"] and out["scene"]
    assert out["prefs_endpoint"] == "tcp://127.0.0.1:5555" and out["protocol"]
    assert out["captures"] == "bl_ext.nerfart_test.nerfart_blender.core.captures"  # over the bundled readers
    assert out["zmq_error"] is None and out["tick"] == 0.5 and out["disabled_clean"]
    if has_wheel:
        assert out["site"].startswith(str(tmp_path))
        assert out["bundled_zmq"].startswith(out["site"]), out["bundled_zmq"]


def test_every_property_is_fully_defined(addon):
    """name, description, min/max on numbers, upper-case enum IDs: on every group, preference and operator."""
    import nerfart_blender as pkg

    checked = 0
    for cls in pkg.properties.CLASSES + pkg.preferences.CLASSES + pkg.operators.CLASSES:
        if issubclass(cls, bpy.types.Operator):
            mod, name = cls.bl_idname.split(".")
            rna = getattr(getattr(bpy.ops, mod), name).get_rna_type()
        else:
            rna = cls.bl_rna
        for ident in cls.__annotations__:
            p = rna.properties[ident]
            where = f"{cls.__name__}.{ident}"
            assert p.name and p.description, f"{where} lacks a name or description"
            if p.type in ("INT", "FLOAT") and not p.is_readonly:
                assert math.isfinite(p.hard_min) and math.isfinite(p.hard_max), where
                assert abs(p.hard_min) < 3e9 and abs(p.hard_max) < 3e9, f"{where} has no real min/max"
            if p.type == "ENUM":
                assert all(i.identifier == i.identifier.upper() for i in p.enum_items), where
            checked += 1
    assert checked > 80


# ---------------------------------------------------------------------------------------------------------
# Missing packages and network consent
# ---------------------------------------------------------------------------------------------------------


def test_missing_packages_are_named_with_how_to_install_them(addon, fresh_file, monkeypatch):
    """A distribution's Blender may lack numpy or pyzmq: the message names the package and this Python."""
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    monkeypatch.setitem(sys.modules, "zmq", None)  # `import zmq` now raises ImportError
    err = addon.connection.zmq_error()
    assert "'pyzmq'" in err and "-m pip install pyzmq" in err and f"Python {python}" in err
    assert "reinstall" not in err
    with pytest.raises(RuntimeError, match="pip install pyzmq"):
        bpy.ops.nerfart.connect()
    assert "pip install pyzmq" in bpy.context.window_manager.nerfart_runtime.error
    monkeypatch.setitem(sys.modules, "numpy", None)
    with pytest.raises(ImportError, match=r"'numpy'.*pip install numpy.*python3-numpy"):
        addon.register()  # refused before anything is registered twice


def test_remote_backend_needs_online_access(addon, fresh_file):
    """Blender's Online Access is off here (bpy as a module): a remote address is refused before any socket
    opens; loopback stays allowed (the bridge tests connect to 127.0.0.1)."""
    assert not bpy.app.online_access
    prefs = bpy.context.preferences.addons[MOD].preferences
    prefs.endpoint = "tcp://192.0.2.10:5555"  # TEST-NET-1: never routed
    try:
        with pytest.raises(RuntimeError, match="Online Access is off"):
            bpy.ops.nerfart.connect()
        assert addon.connection.client() is None and addon.connection.session.state == "DISCONNECTED"
    finally:
        prefs.endpoint = "tcp://127.0.0.1:5555"
