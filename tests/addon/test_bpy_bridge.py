"""The bridge under real Blender against a stub ROUTER speaking the real protocol: connect, the polling tick
(non-blocking, 20 Hz while busy), the whole reconstruct → stylize → render → mesh flow in background mode,
errors reaching the panel, cancel, a vanishing backend, and reattaching after reopening a file."""

from __future__ import annotations

import time
import zipfile
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest

bpy = pytest.importorskip("bpy", reason="the bpy module (Blender as a Python module) is not installed")
pytest.importorskip("zmq")

from conftest import pump  # noqa: E402
from waits import HANG_S  # noqa: E402

MOD = "nerfart_blender"


def test_connect_shows_backend_status(connected, stub):
    rt = bpy.context.window_manager.nerfart_runtime
    assert rt.connection == "CONNECTED" and rt.gpu_name == "Stub GPU"
    assert rt.gpu_memory == "70.0 GiB free of 80.0 GiB" and rt.clip_models == "ViT-B-32, ViT-B-16"
    assert connected.tick.tick() == connected.tick.IDLE_INTERVAL_S
    hello = stub.of_type("hello")[0]
    assert hello.content["client"].startswith("blender ")


def test_connect_to_nothing_fails_readably(addon, fresh_file):
    prefs = bpy.context.preferences.addons[MOD].preferences
    prefs.endpoint, prefs.timeout_s = "tcp://127.0.0.1:9", 1.0
    with pytest.raises(RuntimeError, match="no answer from a backend"):
        bpy.ops.nerfart.connect()
    assert "no answer" in bpy.context.window_manager.nerfart_runtime.error
    addon.connection.disconnect()
    prefs.endpoint, prefs.timeout_s = "tcp://127.0.0.1:5555", 4.0
    with pytest.raises(RuntimeError, match="must look like"):
        prefs.endpoint = "localhost:5555"
        bpy.ops.nerfart.connect()
    prefs.endpoint = "tcp://127.0.0.1:5555"


def test_full_flow_in_background_mode(connected, stub, lego_dir, tmp_path):
    scene = bpy.context.scene
    nerf = scene.nerfart
    nerf.capture.folder = str(lego_dir)
    nerf.capture.set_resolution = True
    assert bpy.ops.nerfart.import_capture() == {"FINISHED"}
    # Reconstruct: a loopback backend gets the folder path, not an upload.
    assert bpy.ops.nerfart.reconstruct() == {"FINISHED"}
    sub = stub.of_type("submit")[-1]
    assert sub.content["kind"] == "reconstruct" and sub.content["params"]["capture_path"] == str(lego_dir)
    assert nerf.backend.reconstruct_job and nerf.backend.jobs[-1].state == "done"
    # Stylize from a preset, then a batch of two.
    bpy.ops.nerfart.apply_style_preset(preset="VAN_GOGH")
    assert bpy.ops.nerfart.stylize() == {"FINISHED"}
    params = stub.of_type("submit")[-1].content["params"]
    assert params["source_job"] == nerf.backend.reconstruct_job and params["prompt"].startswith("painting")
    # Unset optional settings are not sent: the backend's preset decides (scale) and its default weights load.
    assert "scale" not in params and "clip_pretrained" not in params and "iterations" not in params
    assert "shape_freedom" not in params and params["colour_only"] is False
    bpy.ops.nerfart.apply_style_preset(preset="MARBLE")
    nerf.stylize.shape_freedom = 0.5  # Shape Freedom travels with the queued prompt
    bpy.ops.nerfart.queue_add()
    bpy.ops.nerfart.apply_style_preset(preset="FAUVISM")
    bpy.ops.nerfart.queue_add()
    assert bpy.ops.nerfart.queue_run() == {"FINISHED"}
    assert [q.state for q in nerf.stylize.queue] == ["done", "done"]
    queued = [m.content["params"] for m in stub.of_type("submit")[-2:]]
    assert [p["prompt"] for p in queued] == ["a marble statue", "Fauvism"]
    assert [p.get("shape_freedom") for p in queued] == [0.5, None]
    # Render the active camera over frames 1..3 with a keyframed move; frames land next to the output folder.
    cam = nerf.capture.cameras.objects["r_0"]
    scene.camera = cam
    scene.frame_start, scene.frame_end = 1, 3
    nerf.outputs.output_dir = str(tmp_path / "renders")
    assert bpy.ops.nerfart.render() == {"FINISHED"}
    cams = stub.of_type("submit")[-1].content["params"]["cameras"]
    assert [c["frame"] for c in cams] == [1, 2, 3] and cams[0]["width"] == 400
    # The pose sent is the file's pose (capture world), in OpenCV axes.
    import json

    frame0 = next(f for f in json.loads((lego_dir / "transforms_train.json").read_text())["frames"]
                  if f["file_path"].endswith("/r_0"))
    np.testing.assert_allclose(np.array(cams[0]["c2w"]) @ np.diag([1, -1, -1, 1]),
                               np.array(frame0["transform_matrix"]), atol=1e-5)
    files = sorted((tmp_path / "renders").rglob("*.png"))
    assert [f.name for f in files] == ["frame_0001.png", "frame_0002.png", "frame_0003.png"]
    seq = next(i for i in bpy.data.images if i.name.startswith("NeRF-Art render"))
    assert seq.source == "SEQUENCE"
    # Extract a mesh: it lands under the placement empty.
    placement = nerf.capture.placement
    placement.location = (5.0, 0.0, 0.0)
    nerf.outputs.mesh_format = "PLY"
    assert bpy.ops.nerfart.extract_mesh() == {"FINISHED"}
    mesh = next(o for o in bpy.data.objects if o.name.startswith("NeRF-Art mesh"))
    assert mesh.parent == placement and "Col" in mesh.data.color_attributes
    bpy.context.view_layer.update()
    assert mesh.matrix_world.translation.x == pytest.approx(5.0)
    rt = bpy.context.window_manager.nerfart_runtime
    assert rt.preview is not None and rt.error == ""
    assert [j.state for j in nerf.backend.jobs] == ["done"] * 6


def test_upload_to_a_remote_backend(connected, stub, lego_dir):
    nerf = bpy.context.scene.nerfart
    nerf.capture.folder = str(lego_dir)
    nerf.capture.transfer = "UPLOAD"
    assert bpy.ops.nerfart.reconstruct() == {"FINISHED"}
    sub = stub.of_type("submit")[-1]
    assert "capture_path" not in sub.content["params"]
    spec = sub.content["inputs"]["capture"]
    with zipfile.ZipFile(BytesIO(bytes(sub.buffers[spec["buffer"]]))) as zf:
        names = set(zf.namelist())
    assert "transforms_train.json" in names and "train/r_0.png" in names


def test_tick_never_blocks_and_polls_fast_while_busy(connected, stub, monkeypatch):
    from nerfart_blender.core.jobs import JobState

    addon = connected
    stub.hold.set()
    job = JobState("stylize", "held", params={"source_job": "x", "prompt": "a marble statue"},
                   meta={"scene": bpy.context.scene.name})
    addon.connection.submit(job)
    interval = pump(addon, lambda: job.state == "running")
    assert interval == addon.tick.BUSY_INTERVAL_S
    rt = bpy.context.window_manager.nerfart_runtime
    assert rt.busy and rt.progress == pytest.approx(0.25) and "training 1/4" in rt.job_text
    assert rt.preview is not None
    # Never blocks: while the backend sends nothing, every tick still returns, having asked the socket only
    # for what is there within the drain budget and no more than a tick's share of messages.
    asked: list[tuple] = []
    real_poll = addon.connection.poll
    monkeypatch.setattr(addon.connection, "poll", lambda *a: asked.append(a) or real_poll(*a))
    for _ in range(20):
        assert addon.tick.tick() == addon.tick.BUSY_INTERVAL_S
    assert asked == [(addon.tick.DRAIN_BUDGET_S, addon.tick.MAX_MESSAGES_PER_TICK)] * 20, asked[:3]
    monkeypatch.undo()
    # Cancel (the panel button's operator): the stub answers cancel_reply and a cancelled result.
    assert bpy.ops.nerfart.cancel_job() == {"FINISHED"}
    interval = pump(addon, lambda: not job.active)
    assert job.state == "cancelled" and interval == addon.tick.IDLE_INTERVAL_S
    assert not rt.busy
    stub.hold.clear()


def test_frame_bursts_are_spread_over_ticks(connected, stub, tmp_path):
    """A burst of frames is written within the per-tick budget; every frame still lands."""
    from nerfart_blender.core.jobs import JobState

    addon = connected
    cams = [{"name": "Cam", "frame": i, "c2w": np.eye(4).tolist(), "fx": 50.0, "fy": 50.0, "cx": 32.0,
             "cy": 24.0, "width": 64, "height": 48} for i in range(1, 121)]
    job = JobState("render", "burst", params={"source_job": "x", "cameras": cams, "format": "png"},
                   frames_expected=len(cams), meta={"scene": bpy.context.scene.name, "multi_camera": False,
                                                    "output_dir": str(tmp_path / "burst"), "open_sequence": True})
    addon.connection.submit(job)
    ticks = 0
    deadline = time.monotonic() + HANG_S
    while job.active or addon.tick._backlog:
        assert time.monotonic() < deadline, f"the burst never finished: {job.state}, {len(addon.tick._backlog)} left"
        interval = addon.tick.tick()
        ticks += 1
        if job.active or addon.tick._backlog:
            assert interval == addon.tick.BUSY_INTERVAL_S
    assert job.state == "done" and len(list((tmp_path / "burst").glob("*.png"))) == 120
    # A tick drains at most MAX_MESSAGES_PER_TICK (64) messages, so the 121 messages take two ticks at least.
    # (How long a tick takes is a speed: its budgets are DRAIN_BUDGET_S and HANDLE_BUDGET_S.)
    assert ticks >= 2


def test_failures_reach_the_panel(connected, stub):
    nerf = bpy.context.scene.nerfart
    nerf.backend.reconstruct_job = "rec"
    rt = bpy.context.window_manager.nerfart_runtime
    nerf.stylize.prompt = "REJECT me"
    with pytest.raises(RuntimeError, match="rejected by the stub"):
        bpy.ops.nerfart.stylize()
    assert "rejected by the stub" in rt.error and "params.prompt" in rt.error_detail
    bpy.ops.nerfart.clear_error()
    nerf.stylize.prompt = "please FAIL"
    with pytest.raises(RuntimeError, match="asked to fail"):
        bpy.ops.nerfart.stylize()
    assert "asked to fail" in rt.error
    assert nerf.backend.jobs[-1].state == "failed" and "asked to fail" in nerf.backend.jobs[-1].error
    # Nothing to render from yet: a readable refusal before anything is sent.
    nerf.backend.render_source = "LATEST_STYLIZED"
    with pytest.raises(RuntimeError, match="no finished stylization"):
        bpy.ops.nerfart.render()


def test_vanished_backend_shows_as_lost_and_recovers(connected, stub, monkeypatch):
    addon = connected
    monkeypatch.setattr(addon.connection, "_timeout_s", 0.6)
    stub.silence()
    pump(addon, lambda: bpy.context.window_manager.nerfart_runtime.connection == "LOST")
    assert "not responding" in bpy.context.window_manager.nerfart_runtime.status_text
    stub.speak()  # it comes back: heartbeats resume and the state recovers on its own
    pump(addon, lambda: bpy.context.window_manager.nerfart_runtime.connection == "CONNECTED")


def test_reopened_file_reattaches(connected, stub, tmp_path):
    addon = connected
    scene = bpy.context.scene
    job_id = stub.add_finished_job("stylize")
    ref = scene.nerfart.backend.jobs.add()
    ref.name, ref.job_id, ref.kind, ref.state = "stylize old", job_id, "STYLIZE", "running"
    path = tmp_path / "saved.blend"
    bpy.ops.wm.save_as_mainfile(filepath=str(path))
    bpy.ops.wm.read_homefile(use_empty=True, use_factory_startup=True)
    bpy.ops.wm.open_mainfile(filepath=str(path))  # load_post: still connected, so it reattaches at once
    pump(addon, lambda: bpy.context.scene.nerfart.backend.jobs[0].state == "done")
    assert stub.of_type("attach")[-1].content["job_id"] == job_id
    assert bpy.context.window_manager.nerfart_runtime.reattach_pending == 0
    assert Path(bpy.data.filepath) == path
