"""The sidebar at Blender's default width: every label, button and field of every panel, in every state, fits
without being cut (measured in Blender's UI font by :mod:`sidebar_fit`); and Import Capture leaves the scene's
resolution and camera alone unless asked."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

bpy = pytest.importorskip("bpy", reason="the bpy module (Blender as a Python module) is not installed")

from recording_layout import RecordingLayout  # noqa: E402
from sidebar_fit import overflows  # noqa: E402
from test_bpy_addon import _set_state, _set_variant  # noqa: E402


def draw_panels(addon, context) -> list[RecordingLayout]:
    layouts = []
    for cls in (c for c in addon.panels.CLASSES if issubclass(c, bpy.types.Panel)):
        layout = RecordingLayout([], cls.__name__)
        cls.draw(SimpleNamespace(layout=layout, bl_idname=cls.bl_idname), context)
        layouts.append(layout)
    return layouts


def fill_results(scene) -> None:
    """Finished jobs with results and warnings, a chosen source, long names: the longest texts panels show."""
    be = scene.nerfart.backend
    for kind, name, result, warning in (
            ("RECONSTRUCT", "reconstruct fangzhou_nature", "PSNR 31.24 dB, held-out 29.87 dB", ""),
            ("STYLIZE", "stylize 'painting, oil on canvas, Vincent van gogh self-portrait style'",
             "style loss 0.512 (directional 0.121, image 0.401, perceptual 0.09)",
             "Not prompt-driven: random CLIP and perceptual weights were requested (clip_pretrained='random')"),
            ("RENDER", "render Turntable Rig 1-250", "250 frame(s), 36.6 frames/s", "")):
        ref = be.jobs.add()
        ref.name, ref.kind, ref.state, ref.job_id, ref.result, ref.warning = name, kind, "done", name[:6], \
            result, warning
        ref.output_dir = "/studio/projects/heads/nerfart/renders/painting-oil-on-canvas_Turntable-Rig_f0001-0250"
    be.reconstruct_job = be.jobs[0].job_id
    be.jobs_index = 1
    be.render_source = "SELECTED"
    scene.nerfart.outputs.batch_summary = "/studio/projects/heads/nerfart/renders/batch_20261204-005509.txt"
    # An imported portrait capture with warnings, in a landscape scene: the warnings box and its fix button.
    cap = scene.nerfart.capture
    coll = bpy.data.collections.new("NeRF-Art fangzhou_nature_selfie_capture")
    coll["nerfart_photo_size"], coll["nerfart_pixel_aspect"] = (540, 960), (1.0, 1.0)
    cap.cameras = coll
    for text in ("the capture's lens distortion (k1 k2 p1 p2) cannot be shown by Blender cameras; the backend "
                 "uses it, the viewport shows the pinhole part only",
                 "2 image(s) have no matte (matte/000017.png, matte/000042.png)"):
        cap.warnings.add().text = text


@pytest.mark.parametrize("state", ["idle", "busy", "error", "disconnected", "lost"])
@pytest.mark.parametrize("variant", ["folder_active", "scene_rig"])
def test_every_panel_fits_the_default_sidebar(addon, fresh_file, state, variant):
    """Issue 14 item 9: labels were cut at the default sidebar width."""
    from nerfart_blender.ui_text import content_width

    scene = fresh_file
    _set_variant(scene, variant)
    fill_results(scene)
    _set_state(addon, scene, state)
    rt = bpy.context.window_manager.nerfart_runtime
    rt.show_error_detail = rt.show_job_error = True
    scene.nerfart.outputs.file_format = "EXR"  # the longer of the two formats' names
    if state == "busy":
        rt.job_result, rt.job_warning = "style loss 0.512 (directional 0.121, image 0.401)", "Not prompt-driven"
        rt.batch_text = "batch: 2 of 6 render(s) done, 1 failed"
    width = content_width(bpy.context)
    assert width == pytest.approx(168.0)  # 220 wide, less the tabs and the panel margins
    problems = [p for layout in draw_panels(addon, bpy.context) for p in overflows(layout, width)]
    assert not problems, "\n".join(problems)


def test_the_instrument_catches_a_cut_label(addon, fresh_file):
    """The check is not vacuous: the old two-checkboxes row and a long label are reported."""
    from nerfart_blender.ui_text import content_width

    cap = fresh_file.nerfart.capture
    layout = RecordingLayout([], "test")
    row = layout.row(align=True)
    row.prop(cap, "show_photos")
    row.prop(cap, "set_resolution")
    layout.label(text="2 job(s) of this file may still be on the backend", icon="INFO")
    layout.prop(cap, "ring_count")
    problems = overflows(layout, content_width(bpy.context))
    assert len(problems) == 3, problems
    assert "Photos as Backgrounds" in problems[0] and "may still be on the backend" in problems[2]


def test_import_capture_leaves_resolution_and_camera_unless_asked(addon, fresh_file, lego_dir):
    """Issue 14 item 9: Import Capture changed the scene's resolution and active camera without asking."""
    scene = fresh_file
    shot = bpy.data.objects.new("Shot", bpy.data.cameras.new("Shot"))
    scene.collection.objects.link(shot)
    scene.camera = shot
    scene.render.resolution_x, scene.render.resolution_y = 1920, 1080
    cap = scene.nerfart.capture
    cap.folder = str(lego_dir)
    assert not cap.set_resolution and not cap.set_active_camera  # the defaults ask for nothing
    assert bpy.ops.nerfart.import_capture() == {"FINISHED"}
    assert (scene.render.resolution_x, scene.render.resolution_y) == (1920, 1080) and scene.camera == shot
    assert len([o for o in cap.cameras.objects if o.type == "CAMERA"]) == 50
    warning = addon.capture_bpy.frame_warning(scene, cap.cameras)
    assert "the capture's photos are square (400x400) but the scene renders landscape (1920x1080)" in warning
    # Asked for, both change.
    cap.set_resolution = cap.set_active_camera = True
    assert bpy.ops.nerfart.import_capture() == {"FINISHED"}
    assert (scene.render.resolution_x, scene.render.resolution_y) == (400, 400)
    assert scene.camera in set(cap.cameras.objects) and scene.camera != shot
