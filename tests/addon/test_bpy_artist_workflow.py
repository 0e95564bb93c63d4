"""An artist's session pressed through the operators, against the scripted backend: rendering from a chosen job
again and again, full error texts, results in the panels, and Esc over the viewport."""

from __future__ import annotations

import pytest

bpy = pytest.importorskip("bpy", reason="the bpy module (Blender as a Python module) is not installed")
pytest.importorskip("zmq")

from conftest import pump  # noqa: E402

MOD = "nerfart_blender"


def add_camera(scene, name: str = "Shot Cam"):
    cam = bpy.data.objects.new(name, bpy.data.cameras.new(name))
    scene.collection.objects.link(cam)
    cam.location = (0.0, -4.0, 0.0)
    cam.rotation_euler = (1.5708, 0.0, 0.0)
    scene.render.resolution_x, scene.render.resolution_y, scene.render.resolution_percentage = 32, 24, 100
    return cam


def reconstruct_and_stylize(scene, tmp_path, prompt: str = "a marble statue") -> str:
    """Reconstruct (the stub does not read the capture) and stylize through the operators; the stylize job id."""
    capture = tmp_path / "capture"
    capture.mkdir(exist_ok=True)
    scene.nerfart.capture.folder = str(capture)
    assert bpy.ops.nerfart.reconstruct() == {"FINISHED"}
    scene.nerfart.stylize.prompt = prompt
    assert bpy.ops.nerfart.stylize() == {"FINISHED"}
    ref = scene.nerfart.backend.jobs[-1]
    assert ref.kind == "STYLIZE" and ref.state == "done"
    return ref.job_id


def test_render_from_selected_job_works_on_every_click(connected, stub, tmp_path):
    """Issue 14 item 5: the new render job used to take the list selection, so the second click failed."""
    scene = bpy.context.scene
    be = scene.nerfart.backend
    scene.camera = add_camera(scene)
    stylized = reconstruct_and_stylize(scene, tmp_path)
    reconstruction = be.reconstruct_job
    scene.nerfart.outputs.output_dir = str(tmp_path / "renders")
    scene.nerfart.outputs.use_scene_range = False
    be.render_source = "SELECTED"
    be.jobs_index = next(i for i, ref in enumerate(be.jobs) if ref.job_id == reconstruction)
    be.jobs_index = next(i for i, ref in enumerate(be.jobs) if ref.job_id == stylized)
    for first in (1, 3, 5):
        scene.nerfart.outputs.frame_start, scene.nerfart.outputs.frame_end = first, first + 1
        assert bpy.ops.nerfart.render() == {"FINISHED"}
        assert stub.of_type("submit")[-1].content["params"]["source_job"] == stylized
    assert [ref.kind for ref in be.jobs].count("RENDER") == 3
    # Selecting a render job does not change what Render From ▸ Selected Job means; selecting another
    # finished stylization or reconstruction does.
    be.jobs_index = len(be.jobs) - 1
    assert be.selected_source_job == stylized
    be.jobs_index = next(i for i, ref in enumerate(be.jobs) if ref.job_id == reconstruction)
    assert be.selected_source_job == reconstruction
    scene.nerfart.outputs.frame_start, scene.nerfart.outputs.frame_end = 7, 8
    assert bpy.ops.nerfart.render() == {"FINISHED"}
    assert stub.of_type("submit")[-1].content["params"]["source_job"] == reconstruction
    # A new stylization takes the list selection (its progress shows) but not the chosen source.
    scene.nerfart.stylize.prompt = "Fauvism"
    assert bpy.ops.nerfart.stylize() == {"FINISHED"}
    assert be.jobs[be.jobs_index].kind == "STYLIZE" and be.selected_source_job == reconstruction


def test_render_from_selected_job_without_a_choice_says_what_to_do(connected, stub, tmp_path):
    scene = bpy.context.scene
    scene.camera = add_camera(scene)
    scene.nerfart.backend.render_source = "SELECTED"
    with pytest.raises(RuntimeError, match="select a finished reconstruction or stylization in the Jobs list"):
        bpy.ops.nerfart.render()


# ---------------------------------------------------------------------------------------------------------
# Item 6: the whole error text
# ---------------------------------------------------------------------------------------------------------

LONG_ERROR = "\n".join(f"step {i}: the CLIP weights ViT-B-32/openai could not be found in the cache"
                       for i in range(1, 16)) + "\nFIX: run python -m backend.stylize.weights --fetch once online"


def panel_labels(addon, panel_name: str) -> list[str]:
    """The label texts a panel draws now (through the checking RecordingLayout)."""
    from types import SimpleNamespace

    from recording_layout import RecordingLayout

    cls = getattr(addon.panels, panel_name)
    calls: list = []
    cls.draw(SimpleNamespace(layout=RecordingLayout(calls, panel_name), bl_idname=cls.bl_idname), bpy.context)
    return [c[1].get("text", "") for c in calls if c[0] == "label"]


def test_whole_backend_error_with_code_and_hint(connected, stub, tmp_path):
    """Issue 14 item 6: errors were cut after 8 lines (the fix was at the end) and Show Details said only
    'job_failed'."""
    from nerfart_blender.ui_text import content_width, text_width

    stub.fail_code, stub.fail_message = "out_of_memory", LONG_ERROR
    scene = bpy.context.scene
    scene.nerfart.backend.reconstruct_job = "rec"
    scene.nerfart.stylize.prompt = "please FAIL"
    with pytest.raises(RuntimeError, match="FIX: run python"):
        bpy.ops.nerfart.stylize()
    rt = bpy.context.window_manager.nerfart_runtime
    assert rt.error.endswith(LONG_ERROR) and "Code: out_of_memory" in rt.error_detail
    assert "What to do: Free GPU memory" in rt.error_detail
    # The panel: a wrapped summary first ...
    collapsed = panel_labels(connected, "NERFART_PT_main")
    assert "step 1:" in " ".join(collapsed) and "FIX" not in " ".join(collapsed)
    # ... and after Show Details the whole message, the code and what to do, in lines that fit the sidebar.
    rt.show_error_detail = True
    expanded = panel_labels(connected, "NERFART_PT_main")
    text = " ".join(" ".join(expanded).split())
    assert " ".join(LONG_ERROR.split()) in text and "Code: out_of_memory" in text and "What to do:" in text
    assert max(text_width(t) for t in expanded) <= content_width(in_box=True), [t for t in expanded if text_width(t) > content_width(in_box=True)]
    # The failed job keeps its whole text and code in the Jobs panel too.
    ref = scene.nerfart.backend.jobs[-1]
    assert ref.state == "failed" and ref.error == LONG_ERROR and ref.error_code == "out_of_memory"
    rt.show_job_error = True
    jobs_text = " ".join(" ".join(panel_labels(connected, "NERFART_PT_jobs")).split())
    assert "FIX: run python -m backend.stylize.weights --fetch" in jobs_text and "Code: out_of_memory" in jobs_text
    assert bpy.ops.nerfart.copy_error() == {"FINISHED"}
    assert bpy.ops.nerfart.copy_error(job_id=ref.job_id) == {"FINISHED"}


# ---------------------------------------------------------------------------------------------------------
# Item 8: Esc over the viewport
# ---------------------------------------------------------------------------------------------------------


def test_esc_over_the_viewport_never_cancels_training(connected, stub):
    """Issue 14 item 8: the job watcher took every Esc press in the viewport as 'cancel the training'."""
    from types import SimpleNamespace

    from nerfart_blender.core.jobs import JobState

    addon = connected
    stub.hold.set()
    job = JobState("reconstruct", "reconstruct head", params={"capture_path": "/nowhere"},
                   meta={"scene": bpy.context.scene.name})
    addon.connection.submit(job)
    pump(addon, lambda: job.state == "running")
    watcher = SimpleNamespace(_seen_final=set(), report=lambda *_: None)
    for value in ("PRESS", "RELEASE"):
        esc = SimpleNamespace(type="ESC", value=value)
        assert addon.operators.NERFART_OT_watch_jobs.modal(watcher, bpy.context, esc) == {"PASS_THROUGH"}
    for _ in range(10):
        addon.tick.tick()
    assert not stub.of_type("cancel") and job.state == "running"
    # The Cancel button asks first for a training job (its invoke shows this question), not for a render.
    question = addon.operators.cancel_question(job)
    assert question.startswith("Stop reconstruct head at training 1/4?") and "kept" in question
    assert addon.operators.cancel_question(JobState("render", "render")) is None
    # Confirmed (execute, as after the dialog or from a script), it cancels.
    assert bpy.ops.nerfart.cancel_job() == {"FINISHED"}
    pump(addon, lambda: job.state == "cancelled")
    assert stub.of_type("cancel")[-1].content["job_id"] == job.job_id
    stub.hold.clear()


# ---------------------------------------------------------------------------------------------------------
# Item 7: results in the panels, rig frames as sequences, mesh colours in Solid shading
# ---------------------------------------------------------------------------------------------------------


def joined_labels(addon, panel_name: str) -> str:
    return " ".join(" ".join(panel_labels(addon, panel_name)).split())


def test_results_show_in_the_panels(connected, stub, tmp_path):
    """Issue 14 item 7: PSNR, losses and the 'not prompt-driven' warning stayed on the backend."""
    addon = connected
    scene = bpy.context.scene
    be = scene.nerfart.backend
    stylized = reconstruct_and_stylize(scene, tmp_path)
    rec_ref = next(r for r in be.jobs if r.job_id == be.reconstruct_job)
    assert rec_ref.result == "PSNR 27.50 dB, held-out 25.25 dB"
    assert "PSNR 27.50 dB, held-out 25.25 dB" in joined_labels(addon, "NERFART_PT_capture")
    sty_ref = next(r for r in be.jobs if r.job_id == stylized)
    assert sty_ref.result == "style loss 0.5 (directional 0.125, image 0.375)" and sty_ref.warning == ""
    assert "style loss 0.5" in joined_labels(addon, "NERFART_PT_stylize")
    # A random-CLIP stylization: the warning shows while it runs and stays on the finished job, in red.
    scene.nerfart.stylize.clip_pretrained = "random"
    assert bpy.ops.nerfart.stylize() == {"FINISHED"}
    ref = be.jobs[-1]
    assert ref.warning.startswith("Not prompt-driven: random CLIP weights were requested")
    text = joined_labels(addon, "NERFART_PT_stylize")
    assert "Not prompt-driven" in text
    be.jobs_index = len(be.jobs) - 1
    assert "Not prompt-driven" in joined_labels(addon, "NERFART_PT_jobs")


def test_running_job_shows_its_numbers_and_warning_live(connected, stub):
    from nerfart_blender.core.jobs import JobState

    addon = connected
    stub.hold.set()
    job = JobState("stylize", "stylize 'x'", params={"source_job": "r", "prompt": "x", "clip_pretrained": "random"},
                   meta={"scene": bpy.context.scene.name})
    addon.connection.submit(job)
    pump(addon, lambda: job.state == "running")
    rt = bpy.context.window_manager.nerfart_runtime
    assert rt.job_warning.startswith("NOT prompt-driven") and "NOT prompt-driven" in joined_labels(addon,
                                                                                                    "NERFART_PT_main")
    stub.hold.clear()
    pump(addon, lambda: not job.active)


def test_rig_frames_load_as_image_sequences(connected, stub, tmp_path):
    scene = bpy.context.scene
    rig = bpy.data.collections.new("Turntable")
    scene.collection.children.link(rig)
    for name in ("Front", "Side"):
        cam = add_camera(scene, name)
        scene.collection.objects.unlink(cam)
        rig.objects.link(cam)
    reconstruct_and_stylize(scene, tmp_path)
    out = scene.nerfart.outputs
    out.mode, out.rig, out.rig_frames = "RIG", rig, "RANGE"
    out.use_scene_range, out.frame_start, out.frame_end = False, 1, 3
    out.output_dir = str(tmp_path / "renders")
    assert out.open_sequence
    assert bpy.ops.nerfart.render() == {"FINISHED"}
    ref = scene.nerfart.backend.jobs[-1]
    images = {i.name: i for i in bpy.data.images if i.name.startswith(f"NeRF-Art {ref.name}")}
    assert sorted(images) == [f"NeRF-Art {ref.name} Front", f"NeRF-Art {ref.name} Side"]
    assert all(i.source == "SEQUENCE" and i.filepath.endswith("frame_0001.png") for i in images.values())
    assert ref.result == "6 frame(s)"
    # Asked for later (Jobs panel ▸ Load Frames): the same images, reloaded from the output folder.
    for img in images.values():
        bpy.data.images.remove(img)
    assert bpy.ops.nerfart.load_frames(job_id=ref.job_id) == {"FINISHED"}
    assert sum(1 for i in bpy.data.images if i.name.startswith(f"NeRF-Art {ref.name}")) == 2
    with pytest.raises(RuntimeError, match="select a render job"):
        bpy.ops.nerfart.load_frames(job_id=scene.nerfart.backend.reconstruct_job)


def test_mesh_colours_show_in_solid_shading(connected, stub, tmp_path):
    scene = bpy.context.scene
    views = [s for screen in bpy.data.screens for a in screen.areas for s in a.spaces if s.type == "VIEW_3D"]
    before = [v.shading.color_type for v in views]
    assert views and "VERTEX" not in before
    reconstruct_and_stylize(scene, tmp_path)
    scene.nerfart.outputs.mesh_format = "PLY"  # vertex colours (a GLB's texture: test_bpy_mesh_glb)
    scene.nerfart.outputs.mesh_show_colours = False
    assert bpy.ops.nerfart.extract_mesh() == {"FINISHED"}
    assert [v.shading.color_type for v in views] == before  # not asked: the views stay as they were
    scene.nerfart.outputs.mesh_show_colours = True  # the default
    assert bpy.ops.nerfart.extract_mesh() == {"FINISHED"}
    mesh = next(o for o in reversed(bpy.data.objects) if o.type == "MESH").data
    assert mesh.color_attributes.active_color.name == "Col"
    assert all(v.shading.color_type == "VERTEX" for v in views)  # Solid ▸ Color ▸ Attribute
    assert scene.nerfart.backend.jobs[-1].result == "3 vertices, 1 faces"
