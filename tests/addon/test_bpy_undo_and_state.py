"""Results survive undo, and nothing fails or goes stale without a word (issue 19 items 5 and 7), pressed
through the operators against the scripted backend under real bpy.

Undo runs for real: ``bpy.ops.ed.undo`` in the bpy module (background mode) works on the memfile undo stack
once a first ``ed.undo_push`` has initialised it, as the GUI does at startup.
"""

from __future__ import annotations

import pytest

bpy = pytest.importorskip("bpy", reason="the bpy module (Blender as a Python module) is not installed")
pytest.importorskip("zmq")

from conftest import pump  # noqa: E402
from test_bpy_artist_workflow import add_camera, joined_labels, reconstruct_and_stylize  # noqa: E402

MOD = "nerfart_blender"


def mesh_names() -> set[str]:
    return {o.name for o in bpy.data.objects if o.type == "MESH" and o.name.startswith("NeRF-Art")}


def job_states() -> dict[str, str]:
    return {r.job_id: r.state for r in bpy.context.scene.nerfart.backend.jobs}


@pytest.mark.parametrize("mesh_format", ["GLB", "PLY"])  # glTF importer / the add-on's own mesh builder
def test_one_undo_after_extract_mesh_keeps_older_results_and_true_job_states(connected, stub, tmp_path,
                                                                              mesh_format):
    addon = connected
    scene = bpy.context.scene
    reconstruct_and_stylize(scene, tmp_path)
    scene.nerfart.outputs.mesh_format = mesh_format
    # A job saved in the file as running, which the backend interrupted meanwhile.
    old = stub.add_finished_job("stylize")
    stub.jobs[old]["state"] = "interrupted"
    ref = scene.nerfart.backend.jobs.add()
    ref.job_id, ref.kind, ref.name, ref.state = old, "STYLIZE", "stylize 'old'", "running"
    assert bpy.ops.ed.undo_push(message="artist's last edit") == {"FINISHED"}  # undo is on, as in the GUI

    assert bpy.ops.nerfart.extract_mesh() == {"FINISHED"}
    first = mesh_names()
    assert len(first) == 1
    addon.tick.reattach_saved_jobs()  # the backend says: interrupted
    pump(addon, lambda: job_states()[old] == "interrupted")
    assert bpy.ops.nerfart.extract_mesh() == {"FINISHED"}
    both = mesh_names()
    assert len(both) == 2
    before = job_states()
    assert len(before) == 5 and before[old] == "interrupted"  # reconstruct, stylize, old, two meshes

    assert bpy.ops.ed.undo() == {"FINISHED"}

    # At most the newest import is undone, never an older result...
    assert first <= mesh_names() <= both
    # ...and the job list is the backend's, not the undo step's: every job with its true state.
    assert job_states() == before
    scene = bpy.context.scene  # the undo replaced the scene's data: fetch it again
    assert scene.nerfart.backend.reconstruct_job
    assert bpy.ops.ed.redo() == {"FINISHED"}
    assert mesh_names() == both and job_states() == before


def test_a_removed_job_stays_removed_after_undo_of_something_else(connected, stub, tmp_path):
    scene = bpy.context.scene
    reconstruct_and_stylize(scene, tmp_path)
    assert bpy.ops.ed.undo_push(message="start") == {"FINISHED"}
    be = scene.nerfart.backend
    be.jobs_index = len(be.jobs) - 1
    gone = be.jobs[be.jobs_index].job_id
    assert bpy.ops.nerfart.job_remove() == {"FINISHED"}
    bpy.ops.ed.undo_push(message="Remove Job")
    scene.nerfart.outputs.mesh_resolution = 64
    bpy.ops.ed.undo_push(message="an edit")
    assert bpy.ops.ed.undo() == {"FINISHED"}  # undoes the edit, not the removal
    assert gone not in job_states()


@pytest.mark.parametrize(("mesh_format", "vertices"), [("PLY", 3), ("GLB", 4)])  # the stub's meshes
def test_a_tiny_mesh_says_why_and_what_to_do(connected, stub, tmp_path, mesh_format, vertices):
    scene = bpy.context.scene
    reconstruct_and_stylize(scene, tmp_path)
    scene.nerfart.outputs.mesh_format = mesh_format
    scene.nerfart.outputs.mesh_decimate = 0.3
    assert bpy.ops.nerfart.extract_mesh() == {"FINISHED"}
    ref = scene.nerfart.backend.jobs[-1]
    assert ref.warning.startswith(f"Tiny mesh, only {vertices} vertices") and "reconstruct longer" in ref.warning
    # Decimate is the vertex-coloured mesh's slider only: the textured one is decimated to Faces.
    assert ("raise Decimate" in ref.warning) is (mesh_format == "PLY")
    scene.nerfart.backend.jobs_index = len(scene.nerfart.backend.jobs) - 1
    assert f"Tiny mesh, only {vertices} vertices" in joined_labels(connected, "NERFART_PT_jobs")


def test_queue_counts_this_blenders_jobs_while_they_wait(connected, stub):
    from nerfart_blender.core.jobs import JobState

    addon = connected
    rt = bpy.context.window_manager.nerfart_runtime
    stub.hold.set()
    jobs = [JobState("stylize", f"stylize '{p}'", params={"source_job": "r", "prompt": p},
                     meta={"scene": bpy.context.scene.name}) for p in ("a", "b")]
    for job in jobs:
        addon.connection.submit(job)
    pump(addon, lambda: all(j.state == "running" for j in jobs))
    assert rt.queue_length == 2  # the backend's hello said 0
    assert "Queue: 2 job(s)" in joined_labels(addon, "NERFART_PT_backend")
    stub.hold.clear()
    pump(addon, lambda: not any(j.active for j in jobs))
    assert rt.queue_length == 0


def test_render_and_batch_buttons_grey_out_while_their_job_runs(connected, stub, tmp_path):
    from nerfart_blender import batch_bpy, jobs_bpy

    addon = connected
    scene = bpy.context.scene
    reconstruct_and_stylize(scene, tmp_path)
    scene.camera = add_camera(scene)
    scene.frame_start = scene.frame_end = 1
    scene.nerfart.outputs.output_dir = str(tmp_path / "renders")
    assert bpy.ops.nerfart.render.poll()
    stub.hold.set()
    job = jobs_bpy.render_job(scene, jobs_bpy.render_target(scene))
    addon.connection.submit(job)
    pump(addon, lambda: job.state == "running")
    assert not bpy.ops.nerfart.render.poll()
    stub.hold.clear()
    pump(addon, lambda: not job.active)
    assert bpy.ops.nerfart.render.poll()

    # A batch: the button waits until its last render ends, then the panel and status say how it went.
    scene.nerfart.stylize.queue.add().name = "a marble statue"
    # The prompt runs with its own settings, which the panel spells out under the queue.
    assert "Runs with its own settings: strength 0.50, CLIP ViT-B-32" in joined_labels(addon, "NERFART_PT_stylize")
    rig = bpy.data.collections.new("Rig")
    scene.collection.children.link(rig)
    rig.objects.link(bpy.data.objects["Shot Cam"])
    stub.hold.set()
    batch = batch_bpy.plan(scene, ["a marble statue"], [rig])
    batch_bpy.start(scene, batch)
    assert bpy.ops.nerfart.batch_render.poll() is False
    stub.hold.clear()
    pump(addon, lambda: batch.finished, 10)
    assert bpy.ops.nerfart.batch_render.poll()
    rt = bpy.context.window_manager.nerfart_runtime
    assert rt.batch_text.startswith("Batch finished: 1 render(s) done; outputs in ")
    assert batch_bpy.done_reports[-1] == ("INFO", rt.batch_text)


def test_disable_says_what_happens_to_running_jobs_and_enable_shows_no_stale_error(addon, fresh_file, stub,
                                                                                     tmp_path, capsys):
    import sys

    import addon_utils
    from nerfart_blender.core.jobs import JobState

    # Connected as in the `connected` fixture, whose teardown would touch the preferences freed by the disable.
    bpy.context.preferences.addons[MOD].preferences.endpoint = stub.endpoint
    assert bpy.ops.nerfart.connect() == {"FINISHED"}
    scene = bpy.context.scene
    stub.hold.set()
    job = JobState("stylize", "stylize 'x'", params={"source_job": "r", "prompt": "x"}, meta={"scene": scene.name})
    addon.connection.submit(job)
    pump(addon, lambda: job.state == "running")
    # A "local backend" this Blender started (a sleeping process stands in for it).
    addon.connection.local_backend.start([sys.executable, "-c", "import time; time.sleep(60)"], None,
                                         tmp_path / "local.log")
    addon.connection.session.set_error("an old error")
    addon.tick.sync_runtime(bpy.context.window_manager)

    try:
        addon_utils.disable(MOD, default_set=True)
        said = capsys.readouterr().out
    finally:
        addon_utils.enable(MOD, default_set=True)
    assert "NeRF-Art disabled: stopping the local backend interrupts 1 running job(s)" in said and "Resume" in said
    ref = next(r for r in bpy.context.scene.nerfart.backend.jobs if r.job_id == job.job_id)
    assert ref.state == "lost" and "Resume" in ref.error  # connecting reattaches it: interrupted, with Resume
    rt = bpy.context.window_manager.nerfart_runtime
    assert rt.error == "" and rt.connection == "DISCONNECTED"
    addon.tick.tick()  # the stopped process must not be reported as a crash
    assert rt.error == "" and rt.reattach_pending == 1
    bpy.context.preferences.addons[MOD].preferences.endpoint = "tcp://127.0.0.1:5555"


def test_lost_backend_is_not_said_to_run_jobs_unless_it_answered(connected, stub):
    addon = connected
    stub.silence()
    pump(addon, lambda: addon.connection.session.state == "LOST", 10)
    assert "stopped answering" in addon.connection.lost_explanation()
    stub.speak()
    addon.connection.disconnect()
    addon.connection.connect("tcp://127.0.0.1:9", timeout_s=1.0)  # nothing listens there
    addon.connection.session.check_liveness(False, 999.0, 5.0)  # the hello timed out
    assert addon.connection.session.state == "LOST"
    text = addon.connection.lost_explanation()
    assert text.startswith("No backend answered") and "keep running" not in text
    addon.tick.sync_runtime(bpy.context.window_manager)
    assert "No backend answered" in joined_labels(addon, "NERFART_PT_backend")
