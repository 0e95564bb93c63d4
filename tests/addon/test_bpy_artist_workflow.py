"""An artist's session pressed through the operators, against the scripted backend: rendering from a chosen job
again and again, full error texts, results in the panels, and Esc over the viewport."""

from __future__ import annotations

import pytest

bpy = pytest.importorskip("bpy", reason="the bpy module (Blender as a Python module) is not installed")
pytest.importorskip("zmq")

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


def test_render_from_selected_job_without_a_choice_says_what_to_do(connected, stub, tmp_path):
    scene = bpy.context.scene
    scene.camera = add_camera(scene)
    scene.nerfart.backend.render_source = "SELECTED"
    with pytest.raises(RuntimeError, match="select a finished reconstruction or stylization in the Jobs list"):
        bpy.ops.nerfart.render()
