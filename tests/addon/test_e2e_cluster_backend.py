"""The add-on against ``serve --workers 2`` (issues 15 and 21): the same one endpoint and protocol as a plain
backend, with the jobs run as Ray tasks on a local Ray cluster, two at a time. A batch of two prompts through
one rig, as an artist runs it, stylizes both prompts at the same time, one on each Ray worker.

The backend, its capture and the add-on's settings are those of ``test_e2e_real_backend.py`` (tiny sizes, the
CPU, random CLIP asked for explicitly).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

bpy = pytest.importorskip("bpy", reason="the bpy module (Blender as a Python module) is not installed")
pytest.importorskip("zmq")

from test_e2e_real_backend import MOD, _status, running_backend  # noqa: E402

PROMPTS = ("a marble statue", "Fauvism")


def two_workers(info: dict) -> bool:
    return info["gpu"]["name"].startswith("2 workers")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with running_backend(tmp_path_factory.mktemp("e2e-cluster"), ("--workers", "2"), ready=two_workers) as real:
        yield real


def test_a_batch_through_a_two_worker_backend(addon, cluster, tmp_path):
    bpy.ops.wm.read_homefile(use_empty=True, use_factory_startup=True)
    addon.connection.disconnect()
    addon.connection.session.__init__()
    prefs = bpy.context.preferences.addons[MOD].preferences
    prefs.endpoint, prefs.timeout_s = cluster.endpoint, 10.0
    try:
        assert bpy.ops.nerfart.connect() == {"FINISHED"}
        assert bpy.context.window_manager.nerfart_runtime.gpu_name.startswith("2 workers")
        scene = bpy.context.scene
        nerf = scene.nerfart
        nerf.capture.folder = str(cluster.capture)
        nerf.capture.placement_mode = "AS_CAPTURED"  # the rig below is placed in the capture's own units
        assert bpy.ops.nerfart.import_capture() == {"FINISHED"}
        nerf.capture.preset, nerf.capture.steps, nerf.capture.holdout_every = "TINY", 40, 0
        assert bpy.ops.nerfart.reconstruct() == {"FINISHED"}
        assert nerf.backend.jobs[0].state == "done"
        # One rig of one camera, looking at the capture's origin from 4 units away.
        rigs = bpy.data.collections.new("Rigs")
        scene.collection.children.link(rigs)
        rig = bpy.data.collections.new("Front")
        rigs.children.link(rig)
        cam = bpy.data.objects.new("Front", bpy.data.cameras.new("Front"))
        cam.location, cam.rotation_euler = (0.0, -4.0, 0.0), (1.5708, 0.0, 0.0)
        rig.objects.link(cam)
        scene.render.resolution_x, scene.render.resolution_y, scene.render.resolution_percentage = 16, 12, 100
        nerf.outputs.batch_rigs = rigs
        nerf.outputs.output_dir = str(tmp_path / "renders")
        st = nerf.stylize
        st.clip_pretrained, st.preset, st.iterations = "random", "TINY", 2
        assert bpy.ops.nerfart.batch_render(prompts=" | ".join(PROMPTS), rigs="Front") == {"FINISHED"}

        summary = json.loads(Path(nerf.outputs.batch_summary).with_suffix(".json").read_text())
        assert summary["counts"] == {"done": 2}, summary
        stylized = [_status(cluster.endpoint, r["stylize_job"]) for r in summary["renders"]]
        assert sorted(s["params"]["prompt"] for s in stylized) == sorted(PROMPTS)
        a, b = stylized
        assert a["started"] < b["finished"] and b["started"] < a["finished"], "both prompts ran at once"
        for r in summary["renders"]:
            assert (tmp_path / "renders" / r["folder"] / "frame_0001.png").is_file()
        assert "(stylize) to Ray" in cluster.log(), "the jobs ran as Ray tasks"
        assert bpy.context.window_manager.nerfart_runtime.error == ""
    finally:
        addon.connection.disconnect()
        prefs.endpoint, prefs.timeout_s = "tcp://127.0.0.1:5555", 4.0
