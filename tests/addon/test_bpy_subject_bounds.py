"""Subject bounds in Blender (issue 20): the empty a reconstruction's bounds appear as, edited by the artist and
sent with every job, pressed through the operators against the scripted backend under real bpy.

The stub "finds" :data:`stub_backend.DETECTED_BOUNDS` (capture world) and echoes bounds it is sent, as the
backend's reconstruct outputs do; :meth:`stub_backend.StubBackend.params_of` shows what each job was sent.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

bpy = pytest.importorskip("bpy", reason="the bpy module (Blender as a Python module) is not installed")
pytest.importorskip("zmq")

from conftest import pump  # noqa: E402
from stub_backend import DETECTED_BOUNDS  # noqa: E402
from test_bpy_artist_workflow import add_camera, joined_labels  # noqa: E402

from protocol import validate_params  # noqa: E402

CAPTURE = "NeRF-Art head"  # a capture collection's name, as Import Capture names it
# A second detection, for results that move an unedited empty: an ellipsoid elsewhere.
OTHER_BOUNDS = {"shape": "ellipsoid", "matrix": [[0.5, 0.0, 0.0, -0.3], [0.0, 0.3, 0.0, 0.1],
                                                 [0.0, 0.0, 0.6, 0.2], [0.0, 0.0, 0.0, 1.0]]}


def np_matrix(m) -> np.ndarray:
    return np.array([[m[r][c] for c in range(4)] for r in range(4)], dtype=np.float64)


def placed_capture(scene, tmp_path):
    """A capture as Import Capture leaves it: a collection with a placement empty (turned, moved, scaled down
    uniformly, as a COLMAP capture's is) and the capture folder (the stub never reads it)."""
    coll = bpy.data.collections.new(CAPTURE)
    scene.collection.children.link(coll)
    placement = bpy.data.objects.new(f"{CAPTURE} Placement", None)
    coll.objects.link(placement)
    placement.location, placement.rotation_euler, placement.scale = (1.0, -2.0, 0.5), (0.3, -0.2, 1.1), (0.25,) * 3
    cap = scene.nerfart.capture
    cap.cameras, cap.placement = coll, placement
    (tmp_path / "capture").mkdir(exist_ok=True)
    cap.folder = str(tmp_path / "capture")
    bpy.context.view_layer.update()
    return placement


def subject(addon, scene=None):
    return addon.subject_bpy.find_subject(scene or bpy.context.scene)


def sent_matrix(params: dict) -> np.ndarray:
    return np.array(params["subject_bounds"]["matrix"], dtype=np.float64)


def expected_matrix(placement, empty) -> np.ndarray:
    """inverse(placement.matrix_world) @ empty.matrix_world, with Blender's own matrices."""
    bpy.context.view_layer.update()
    return np_matrix(placement.matrix_world.inverted() @ empty.matrix_world)


def state(addon) -> str:
    return addon.subject_bpy.subject_state(bpy.context.scene, evaluate=True).state


def reconstruct(scene) -> None:
    assert bpy.ops.nerfart.reconstruct() == {"FINISHED"}
    scene.nerfart.backend.render_source = "RECONSTRUCTION"


# ---------------------------------------------------------------------------------------------------------
# A reconstruction's bounds appear in the scene
# ---------------------------------------------------------------------------------------------------------


def test_a_reconstruction_shows_its_subject_bounds_under_the_placement(connected, stub, tmp_path):
    addon, scene = connected, bpy.context.scene
    placement = placed_capture(scene, tmp_path)
    assert subject(addon) is None
    assert "None: the backend finds the subject" in joined_labels(addon, "NERFART_PT_capture")
    reconstruct(scene)
    assert "subject_bounds" not in stub.params_of("reconstruct")[0]  # no empty yet: the backend finds them
    empty = subject(addon)
    assert empty is not None and empty.name == f"{CAPTURE} Subject"
    assert empty.parent == placement and empty.users_collection[0].name == CAPTURE
    assert (empty.empty_display_type, empty.empty_display_size) == ("CUBE", 1.0)
    bpy.context.view_layer.update()
    np.testing.assert_allclose(np_matrix(empty.matrix_world),
                               np_matrix(placement.matrix_world) @ np.array(DETECTED_BOUNDS["matrix"]), atol=1e-6)
    assert state(addon) == "DETECTED" and scene.nerfart.capture.subject_shape == "BOX"
    assert "Detected by the reconstruction" in joined_labels(addon, "NERFART_PT_capture")
    # The capture moves, the bounds move with it: what is sent stays the same in capture world.
    placement.location.x += 3.0
    placement.rotation_euler.z += 0.5
    bpy.context.view_layer.update()
    np.testing.assert_allclose(np_matrix(empty.matrix_world),
                               np_matrix(placement.matrix_world) @ np.array(DETECTED_BOUNDS["matrix"]), atol=1e-6)
    scene.nerfart.stylize.prompt = "a marble statue"
    assert bpy.ops.nerfart.stylize() == {"FINISHED"}
    np.testing.assert_allclose(sent_matrix(stub.params_of("stylize")[-1]), DETECTED_BOUNDS["matrix"], atol=1e-6)
    assert state(addon) == "DETECTED"


def test_without_a_placement_the_scene_is_capture_world(connected, stub, tmp_path):
    addon, scene = connected, bpy.context.scene
    (tmp_path / "capture").mkdir()
    scene.nerfart.capture.folder = str(tmp_path / "capture")
    reconstruct(scene)
    empty = subject(addon)
    assert empty.parent is None and empty.name == "NeRF-Art Subject" and empty.name in scene.collection.objects
    bpy.context.view_layer.update()
    np.testing.assert_allclose(np_matrix(empty.matrix_world), DETECTED_BOUNDS["matrix"], atol=1e-6)


def test_a_backend_without_subject_bounds_adds_nothing(connected, stub, tmp_path):
    addon, scene = connected, bpy.context.scene
    placed_capture(scene, tmp_path)
    stub.detected_bounds = None  # outputs as a backend from before issue 20 sends them
    reconstruct(scene)
    assert subject(addon) is None and bpy.context.window_manager.nerfart_runtime.error == ""


def test_bounds_that_cannot_be_shown_say_why_in_the_panel(connected, stub, tmp_path):
    addon, scene = connected, bpy.context.scene
    placed_capture(scene, tmp_path)
    stub.detected_bounds = {"shape": "box", "matrix": np.diag([1.0, 0.0, 1.0, 1.0]).tolist()}
    reconstruct(scene)
    assert subject(addon) is None
    addon.tick.tick()  # the timer shows it in the panel
    error = bpy.context.window_manager.nerfart_runtime.error
    assert "subject bounds cannot be shown" in error and "local Y axis (scale 0)" in error


# ---------------------------------------------------------------------------------------------------------
# The empty, as the artist edits it, goes with every job
# ---------------------------------------------------------------------------------------------------------


def test_every_job_sends_the_edited_bounds_in_capture_world(connected, stub, tmp_path):
    addon, scene = connected, bpy.context.scene
    placement = placed_capture(scene, tmp_path)
    scene.camera = add_camera(scene)
    scene.frame_start = scene.frame_end = 1
    out = scene.nerfart.outputs
    out.output_dir = str(tmp_path / "renders")
    reconstruct(scene)
    empty = subject(addon)
    # The artist moves, turns and stretches the box in the viewport (set from Python: nothing is evaluated yet,
    # which the jobs must do themselves).
    empty.location = (0.2, -0.4, 0.3)
    empty.rotation_euler = (0.1, 0.2, -0.7)
    empty.scale = (0.9, 0.4, 1.3)
    scene.nerfart.stylize.prompt = "a marble statue"
    assert bpy.ops.nerfart.stylize() == {"FINISHED"}
    assert bpy.ops.nerfart.render() == {"FINISHED"}
    assert bpy.ops.nerfart.extract_mesh() == {"FINISHED"}
    scene.nerfart.stylize.queue.add().name = "Fauvism"
    assert bpy.ops.nerfart.queue_run() == {"FINISHED"}
    assert bpy.ops.nerfart.reconstruct() == {"FINISHED"}
    want = expected_matrix(placement, empty)
    assert not np.allclose(want, DETECTED_BOUNDS["matrix"], atol=1e-3)  # the edit changed them
    sent = {"stylize": stub.params_of("stylize")[0], "render": stub.params_of("render")[-1],
            "extract_mesh": stub.params_of("extract_mesh")[-1], "queued stylize": stub.params_of("stylize")[-1],
            "reconstruct": stub.params_of("reconstruct")[-1]}
    for kind, params in sent.items():
        assert params["subject_bounds"]["shape"] == "box", kind
        np.testing.assert_allclose(sent_matrix(params), want, atol=1e-6, err_msg=kind)
        validate_params(kind.removeprefix("queued "), params)
    assert state(addon) == "EDITED"
    assert "Edited: every job uses yours" in joined_labels(addon, "NERFART_PT_capture")


def test_the_batch_sends_the_bounds_with_its_stylizations_and_renders(connected, stub, tmp_path):
    from test_bpy_batch import make_rigs

    addon, scene = connected, bpy.context.scene
    placement = placed_capture(scene, tmp_path)
    reconstruct(scene)
    empty = subject(addon)
    empty.scale = (2.0, 1.0, 0.5)
    scene.nerfart.outputs.batch_rigs = make_rigs(scene)
    scene.nerfart.outputs.output_dir = str(tmp_path / "renders")
    assert bpy.ops.nerfart.batch_render(prompts="a marble statue") == {"FINISHED"}
    want = expected_matrix(placement, empty)
    batch = [*stub.params_of("stylize"), *stub.params_of("render")]
    assert len(batch) == 3  # one stylization, a render per rig
    for params in batch:
        np.testing.assert_allclose(sent_matrix(params), want, atol=1e-6)


def test_shape_switch_display_size_and_deleting_the_empty(connected, stub, tmp_path):
    addon, scene = connected, bpy.context.scene
    placement = placed_capture(scene, tmp_path)
    reconstruct(scene)
    empty = subject(addon)
    scene.nerfart.capture.subject_shape = "ELLIPSOID"  # the panel's Box | Ellipsoid switch
    assert empty.empty_display_type == "SPHERE"
    assert bpy.ops.nerfart.extract_mesh() == {"FINISHED"}
    bounds = stub.params_of("extract_mesh")[-1]["subject_bounds"]
    assert bounds["shape"] == "ellipsoid"
    np.testing.assert_allclose(bounds["matrix"], DETECTED_BOUNDS["matrix"], atol=1e-6)
    assert state(addon) == "EDITED"  # another shape than the reconstruction's
    # What is drawn is what is sent: a bigger display size is a bigger ellipsoid.
    empty.empty_display_size = 2.0
    assert bpy.ops.nerfart.extract_mesh() == {"FINISHED"}
    np.testing.assert_allclose(sent_matrix(stub.params_of("extract_mesh")[-1]),
                               expected_matrix(placement, empty) @ np.diag([2.0, 2.0, 2.0, 1.0]), atol=1e-6)
    # Deleted in the viewport (the object is gone from the scene): no parameter, the backend uses its own.
    for obj in bpy.context.view_layer.objects:
        obj.select_set(obj == empty)
    with bpy.context.temp_override(selected_objects=[empty], active_object=empty):
        assert bpy.ops.object.delete() == {"FINISHED"}
    assert subject(addon) is None and scene.nerfart.capture.subject_shape == "BOX"
    assert bpy.ops.nerfart.extract_mesh() == {"FINISHED"}
    assert "subject_bounds" not in stub.params_of("extract_mesh")[-1]
    assert "None: the backend finds the subject" in joined_labels(addon, "NERFART_PT_capture")


def test_flat_or_misdrawn_bounds_are_refused_with_what_to_do(connected, stub, tmp_path):
    from test_bpy_batch import make_rigs

    addon, scene = connected, bpy.context.scene
    placed_capture(scene, tmp_path)
    scene.camera = add_camera(scene)
    scene.frame_start = scene.frame_end = 1
    scene.nerfart.outputs.output_dir = str(tmp_path / "renders")
    reconstruct(scene)
    empty = subject(addon)
    submits = len(stub.of_type("submit"))
    empty.scale.z = 0.0
    for op, what in ((bpy.ops.nerfart.render, "cannot render"), (bpy.ops.nerfart.extract_mesh, "cannot extract"),
                     (bpy.ops.nerfart.stylize, "have no size"), (bpy.ops.nerfart.reconstruct, "have no size")):
        with pytest.raises(RuntimeError, match=f"{what}.*local Z axis \\(scale 0\\).*delete them"):
            op()
    scene.nerfart.outputs.batch_rigs = make_rigs(scene)
    with pytest.raises(RuntimeError, match=r"cannot render the batch.*have no size"):
        bpy.ops.nerfart.batch_render(prompts="a marble statue")
    assert len(stub.of_type("submit")) == submits  # nothing reached the backend
    rt = bpy.context.window_manager.nerfart_runtime
    assert "local Z axis (scale 0)" in rt.error
    assert state(addon) == "ERROR" and "local Z axis" in joined_labels(addon, "NERFART_PT_capture")
    # Reset to Detected mends it.
    assert bpy.ops.nerfart.reset_subject_bounds() == {"FINISHED"}
    assert state(addon) == "DETECTED"
    # Drawn as something that is neither a box nor an ellipsoid.
    empty.empty_display_type = "ARROWS"
    with pytest.raises(RuntimeError, match="drawn as Arrows: set their Shape to Box or Ellipsoid"):
        bpy.ops.nerfart.extract_mesh()
    empty.empty_display_type = "CUBE"
    # Duplicated (Shift+D copies the mark): which one? The artist says, by deleting one.
    twin = empty.copy()
    empty.users_collection[0].objects.link(twin)
    with pytest.raises(RuntimeError, match=r"the capture has 2 subject bounds .* delete all but one"):
        bpy.ops.nerfart.extract_mesh()
    assert "delete all but one" in joined_labels(addon, "NERFART_PT_capture")


def test_include_background_is_off_unless_ticked(connected, stub, tmp_path):
    addon, scene = connected, bpy.context.scene
    out = scene.nerfart.outputs
    prop = out.bl_rna.properties["include_background"]
    assert prop.name == "Background" and prop.description.startswith("Off: the subject alone on transparent")
    scene.camera = add_camera(scene)
    scene.frame_start = scene.frame_end = 1
    out.output_dir = str(tmp_path / "renders")
    placed_capture(scene, tmp_path)
    reconstruct(scene)
    assert not out.include_background
    assert bpy.ops.nerfart.render() == {"FINISHED"}
    params = stub.params_of("render")[-1]
    assert params.get("include_background", False) is False  # absent: the protocol's default, the subject alone
    out.include_background = True
    assert bpy.ops.nerfart.render(overwrite=True) == {"FINISHED"}
    assert stub.params_of("render")[-1]["include_background"] is True
    validate_params("render", stub.params_of("render")[-1])
    assert any(c[0] == "prop" and c[1]["property"] == "include_background" for c in _draw(addon, "NERFART_PT_outputs"))


def _draw(addon, panel: str) -> list:
    from types import SimpleNamespace

    from recording_layout import RecordingLayout

    cls = getattr(addon.panels, panel)
    calls: list = []
    cls.draw(SimpleNamespace(layout=RecordingLayout(calls, panel), bl_idname=cls.bl_idname), bpy.context)
    return calls


# ---------------------------------------------------------------------------------------------------------
# Later reconstructions: an unedited empty follows them, the artist's is kept
# ---------------------------------------------------------------------------------------------------------


def _two_reconstructions_in_flight(addon, scene, stub) -> tuple:
    """Two reconstructions sent before any bounds exist (the first finds DETECTED_BOUNDS, the second
    OTHER_BOUNDS), built as the Reconstruct operator builds them; both held by the stub."""
    from nerfart_blender.jobs_bpy import reconstruct_job

    stub.hold.set()
    jobs = []
    for bounds in (DETECTED_BOUNDS, OTHER_BOUNDS):
        stub.detected_bounds = bounds
        job, inputs = reconstruct_job(scene, addon.connection.session.endpoint)
        addon.connection.submit(job, inputs)
        pump(addon, lambda job=job: job.state == "running")
        jobs.append(job)
    return tuple(jobs)


def test_a_later_reconstruction_moves_unedited_bounds(connected, stub, tmp_path):
    addon, scene = connected, bpy.context.scene
    placement = placed_capture(scene, tmp_path)
    first, second = _two_reconstructions_in_flight(addon, scene, stub)
    stub.finish(first.job_id)
    pump(addon, lambda: first.state == "done")
    empty = subject(addon)
    np.testing.assert_allclose(expected_matrix(placement, empty), DETECTED_BOUNDS["matrix"], atol=1e-6)
    stub.finish(second.job_id)
    pump(addon, lambda: second.state == "done")
    assert subject(addon) == empty and empty.empty_display_type == "SPHERE"
    np.testing.assert_allclose(expected_matrix(placement, empty), OTHER_BOUNDS["matrix"], atol=1e-6)
    assert state(addon) == "DETECTED" and scene.nerfart.backend.reconstruct_job == second.job_id
    stub.hold.clear()


def test_a_later_reconstruction_keeps_the_artists_bounds(connected, stub, tmp_path):
    addon, scene = connected, bpy.context.scene
    placement = placed_capture(scene, tmp_path)
    first, second = _two_reconstructions_in_flight(addon, scene, stub)
    stub.finish(first.job_id)
    pump(addon, lambda: first.state == "done")
    empty = subject(addon)
    empty.location.z += 0.5
    empty.scale = (1.2, 1.2, 1.5)
    edited = expected_matrix(placement, empty)
    stub.finish(second.job_id)
    pump(addon, lambda: second.state == "done")
    np.testing.assert_allclose(expected_matrix(placement, empty), edited, atol=1e-6)
    assert empty.empty_display_type == "CUBE" and state(addon) == "EDITED"
    text = joined_labels(addon, "NERFART_PT_capture")
    assert "Edited: every job uses yours, and a finished reconstruction keeps them" in text
    # Reset to Detected takes the newest reconstruction's.
    assert bpy.ops.nerfart.reset_subject_bounds() == {"FINISHED"}
    np.testing.assert_allclose(expected_matrix(placement, empty), OTHER_BOUNDS["matrix"], atol=1e-6)
    assert empty.empty_display_type == "SPHERE" and state(addon) == "DETECTED"
    assert not bpy.ops.nerfart.reset_subject_bounds.poll()
    stub.hold.clear()


# ---------------------------------------------------------------------------------------------------------
# Added by hand, before any reconstruction
# ---------------------------------------------------------------------------------------------------------


def test_add_subject_bounds_puts_a_head_and_shoulders_box_where_the_cameras_look(connected, stub, fangzhou_dir):
    addon, scene = connected, bpy.context.scene
    cap = scene.nerfart.capture
    assert not bpy.ops.nerfart.add_subject_bounds.poll()  # no capture yet: nowhere to put it
    scene.cursor.location = (1.0, -2.0, 0.5)
    cap.folder, cap.show_photos = str(fangzhou_dir), False
    assert bpy.ops.nerfart.import_capture() == {"FINISHED"}
    assert bpy.ops.nerfart.add_subject_bounds() == {"FINISHED"}
    empty = subject(addon)
    assert empty.parent == cap.placement and bpy.context.view_layer.objects.active == empty
    assert empty.select_get() and empty.name == f"{cap.cameras.name} Subject"
    bpy.context.view_layer.update()
    world = np_matrix(empty.matrix_world)
    # Upright at the cursor (where the cameras look), about a head and shoulders of a 0.25 m head: 0.5 m wide,
    # 0.3 m deep, 0.5 m high, its centre a tenth of a metre below the head's.
    np.testing.assert_allclose(world[:3, :3], np.diag([0.25, 0.15, 0.25]), atol=1e-6)
    np.testing.assert_allclose(world[:3, 3], [1.0, -2.0, 0.5 - 0.1], atol=1e-6)
    assert state(addon) == "EDITED" and not bpy.ops.nerfart.add_subject_bounds.poll()
    assert "Added by hand" in joined_labels(addon, "NERFART_PT_capture")
    assert not bpy.ops.nerfart.reset_subject_bounds.poll()  # nothing detected to go back to
    # The reconstruction is sent the box; its outputs repeat it, and the box stays the artist's.
    assert bpy.ops.nerfart.reconstruct() == {"FINISHED"}
    sent = stub.params_of("reconstruct")[-1]["subject_bounds"]
    # COLMAP's capture world is ~22 units from the origin, and Blender's matrices are single precision.
    np.testing.assert_allclose(sent["matrix"], expected_matrix(cap.placement, empty), atol=2e-5)
    np.testing.assert_allclose(np_matrix(empty.matrix_world), world, atol=1e-6)
    assert state(addon) == "EDITED" and not bpy.ops.nerfart.reset_subject_bounds.poll()
    # A capture imported before the box was stored with it: the same box, from its cameras read again.
    bpy.data.objects.remove(empty)
    del cap.cameras[addon.capture_bpy.CAPTURE_SUBJECT_KEY]
    assert bpy.ops.nerfart.add_subject_bounds() == {"FINISHED"}
    bpy.context.view_layer.update()
    np.testing.assert_allclose(np_matrix(subject(addon).matrix_world), world, atol=1e-6)


def test_a_scene_capture_box_surrounds_the_selection(addon, fresh_file):
    scene = fresh_file
    bpy.ops.mesh.primitive_uv_sphere_add(radius=0.3, location=(0.5, 0.2, 1.0))
    head = bpy.context.active_object
    coll, _ring = addon.capture_bpy.create_ring(scene, [head], 8, [0.0], 50.0, 64, 64, 1.2)
    cap = scene.nerfart.capture
    cap.cameras, cap.placement = coll, next(o for o in coll.objects if o.type == "EMPTY")
    assert bpy.ops.nerfart.add_subject_bounds() == {"FINISHED"}
    bpy.context.view_layer.update()
    world = np_matrix(subject(addon).matrix_world)
    centre, radius = addon.capture_bpy.selection_bounds([head])
    np.testing.assert_allclose(world[:3, 3], centre, atol=1e-6)
    assert np.all(np.diag(world)[:3] > radius) and np.all(np.diag(world)[:3] < 1.2 * radius)


# ---------------------------------------------------------------------------------------------------------
# Undo
# ---------------------------------------------------------------------------------------------------------


def test_undo_keeps_the_reconstructions_bounds_and_undoes_the_artists_edits(connected, stub, tmp_path):
    addon, scene = connected, bpy.context.scene
    placement = placed_capture(scene, tmp_path)
    scene.nerfart.backend.render_source = "RECONSTRUCTION"
    assert bpy.ops.ed.undo_push(message="start") == {"FINISHED"}  # undo is on, as in the GUI
    scene.frame_current = 7
    assert bpy.ops.ed.undo_push(message="the artist's last edit") == {"FINISHED"}
    assert bpy.ops.nerfart.reconstruct() == {"FINISHED"}
    assert subject(addon) is not None

    # Ctrl+Z undoes the artist's edit, not the bounds the backend sent.
    assert bpy.ops.ed.undo() == {"FINISHED"}
    scene = bpy.context.scene  # the undo replaced the scene's data: fetch everything again
    placement = scene.nerfart.capture.placement
    assert scene.frame_current == 1
    empty = subject(addon, scene)
    assert empty is not None and empty.parent == placement
    np.testing.assert_allclose(expected_matrix(placement, empty), DETECTED_BOUNDS["matrix"], atol=1e-6)
    assert state(addon) == "DETECTED" and scene.nerfart.backend.reconstruct_job
    assert len([o for o in scene.objects if addon.subject_bpy.SUBJECT_KEY in o]) == 1
    assert bpy.ops.ed.redo() == {"FINISHED"}
    scene = bpy.context.scene
    assert scene.frame_current == 7 and state(addon) == "DETECTED"

    # The artist's own edits of the bounds undo like any edit.
    empty = subject(addon, scene)
    empty.location.x += 1.0
    assert bpy.ops.ed.undo_push(message="Move") == {"FINISHED"}
    assert state(addon) == "EDITED"
    assert bpy.ops.ed.undo() == {"FINISHED"}
    assert state(addon) == "DETECTED"
    assert bpy.ops.ed.redo() == {"FINISHED"}
    assert state(addon) == "EDITED"

    # Deleted by the artist: undo brings them back, redo deletes them again (undo never re-adds them then).
    bpy.data.objects.remove(subject(addon))
    assert bpy.ops.ed.undo_push(message="Delete") == {"FINISHED"}
    assert bpy.ops.ed.undo() == {"FINISHED"}
    assert state(addon) == "EDITED"
    assert bpy.ops.ed.redo() == {"FINISHED"}
    assert subject(addon) is None and state(addon) == "NONE"
    assert bpy.ops.nerfart.extract_mesh() == {"FINISHED"}
    assert "subject_bounds" not in stub.params_of("extract_mesh")[-1]


# ---------------------------------------------------------------------------------------------------------
# The Subject box fits the sidebar in every state
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["none", "detected", "edited", "flat", "twins"])
def test_the_subject_box_fits_the_sidebar(connected, stub, tmp_path, case):
    from nerfart_blender.ui_text import content_width
    from sidebar_fit import overflows
    from test_bpy_sidebar import draw_panels

    addon, scene = connected, bpy.context.scene
    placed_capture(scene, tmp_path)
    if case != "none":
        reconstruct(scene)
    empty = subject(addon)
    if case == "edited":
        empty.scale.x = 1.5
    elif case == "flat":
        empty.scale.z = 0.0
    elif case == "twins":
        empty.users_collection[0].objects.link(empty.copy())
    bpy.context.view_layer.update()
    layouts = draw_panels(addon, bpy.context)
    problems = [p for layout in layouts for p in overflows(layout, content_width(bpy.context))]
    assert not problems, "\n".join(problems)
    text = joined_labels(addon, "NERFART_PT_capture")
    assert {"none": "None: the backend finds the subject", "detected": "Detected", "edited": "Edited",
            "flat": "have no size", "twins": "delete all but one"}[case] in text
    calls = _draw(addon, "NERFART_PT_capture")
    ops = {c[1].get("operator") for c in calls if c[0] == "operator"}
    shown = {"nerfart.add_subject_bounds", "nerfart.select_subject_bounds", "nerfart.reset_subject_bounds"} & ops
    assert shown == ({"nerfart.add_subject_bounds"} if case == "none" else set() if case == "twins" else
                     {"nerfart.select_subject_bounds", "nerfart.reset_subject_bounds"})
    if case not in ("none", "twins"):
        assert bpy.ops.nerfart.select_subject_bounds() == {"FINISHED"}
        assert bpy.context.view_layer.objects.active == subject(addon)
    assert math.isfinite(content_width(bpy.context))
