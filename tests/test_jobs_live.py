"""The real job runners through a live server on loopback: reconstruct, render, extract_mesh, cancel.

The capture is written to disk as a nerfstudio transforms.json with RGBA PNGs (analytic spheres), so the
whole path runs: reader, training, checkpoint, renderer, marching cubes, protocol messages and files.
"""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from waits import HANG_S

from backend.jobs import default_runners
from backend.nerf.synthetic import render_spheres, ring_cameras
from backend.outputs.images import encode_png
from backend.outputs.ply import read_ply
from backend.server.server import Server
from captures import OPENGL_TO_OPENCV
from protocol import Client, Message

SIZE = 24


def write_sphere_capture(root: Path, n_views: int = 12) -> Path:
    """A transforms.json capture of the analytic spheres, RGBA PNGs, OpenGL camera matrices."""
    cams = ring_cameras(n_views, SIZE)
    images = render_spheres(cams)
    (root / "images").mkdir(parents=True)
    frames = []
    for i in range(n_views):
        (root / "images" / f"{i:03d}.png").write_bytes(encode_png(images[i]))
        frames.append({"file_path": f"images/{i:03d}.png", "transform_matrix": (cams.c2w[i] @ OPENGL_TO_OPENCV).tolist()})
    meta = {"fl_x": float(cams.fx[0]), "fl_y": float(cams.fy[0]), "cx": SIZE / 2, "cy": SIZE / 2, "w": SIZE,
            "h": SIZE, "frames": frames}
    (root / "transforms.json").write_text(json.dumps(meta))
    return root


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Path]]:
    root = tmp_path_factory.mktemp("live")
    capture = write_sphere_capture(root / "capture")
    srv = Server("tcp://127.0.0.1:*", root / "work", runners=default_runners())
    thread = threading.Thread(target=srv.serve, daemon=True)
    thread.start()
    assert srv.ready.wait(HANG_S)
    yield srv, capture
    srv.stop()
    thread.join(HANG_S)


@pytest.mark.slow
def test_reconstruct_render_and_mesh_through_the_server(live: tuple[Server, Path]) -> None:
    srv, capture = live
    with Client(srv.bound_endpoint) as client:
        info = client.handshake()
        assert set(info["job_kinds"]) >= {"reconstruct", "render", "extract_mesh"}
        job = client.request(Message("submit", {"kind": "reconstruct", "params": {
            "capture_path": str(capture), "preset": "tiny", "steps": 150, "holdout_every": 4}})).content["job_id"]
        progress: list[Message] = []
        result = client.wait_job(job, on_message=progress.append, timeout_s=HANG_S)
        assert result.content["state"] == "done", result.content
        stages = {m.content["stage"] for m in progress}
        assert {"loading capture", "training", "done"} <= stages
        assert any(m.content.get("preview") for m in progress), "a preview image is streamed"
        assert result.content["outputs"]["heldout_psnr"] > 15.0

        # Render two cameras of the capture itself and compare with the capture's images.
        meta = json.loads((capture / "transforms.json").read_text())
        cams = []
        for i in (0, 5):
            c2w = (np.array(meta["frames"][i]["transform_matrix"]) @ OPENGL_TO_OPENCV).tolist()
            cams.append({"name": f"view{i}", "frame": i, "c2w": c2w, "fx": meta["fl_x"], "fy": meta["fl_y"],
                         "cx": meta["cx"], "cy": meta["cy"], "width": SIZE, "height": SIZE})
        rjob = client.request(Message("submit", {"kind": "render", "params": {
            "source_job": job, "cameras": cams, "depth": True}})).content["job_id"]
        frames: list[Message] = []
        result = client.wait_job(rjob, on_message=lambda m: m.type == "frame" and frames.append(m), timeout_s=HANG_S)
        assert result.content["state"] == "done" and len(frames) == 2
        for msg, i in zip(frames, (0, 5), strict=True):
            img = np.asarray(Image.open(io.BytesIO(bytes(msg.blob(msg.content["image"]))))) / 255.0
            truth = np.asarray(Image.open(capture / "images" / f"{i:03d}.png")) / 255.0
            assert img.shape == (SIZE, SIZE, 4) and msg.content["camera_name"] == f"view{i}"
            # Alpha (the silhouette) must match the capture's; colours on white must be close.
            assert np.abs(img[..., 3] - truth[..., 3]).mean() < 0.1
            on_white = img[..., :3] * img[..., 3:] + 1 - img[..., 3:]
            truth_white = truth[..., :3] * truth[..., 3:] + 1 - truth[..., 3:]
            psnr = -10 * np.log10(np.mean((on_white - truth_white) ** 2))
            assert psnr > 15.0, psnr
            depth = msg.array(msg.content["depth"])
            assert depth.shape == (SIZE, SIZE) and depth.dtype == np.float32
            assert (srv.store.job_dir(rjob) / "outputs" / msg.content["file"]).is_file()

        # A mesh of the spheres, in world coordinates, inside the capture's bounds.
        mjob = client.request(Message("submit", {"kind": "extract_mesh", "params": {
            "source_job": job, "resolution": 48}})).content["job_id"]
        meshes: list[Message] = []
        result = client.wait_job(mjob, on_message=lambda m: m.type == "mesh" and meshes.append(m), timeout_s=HANG_S)
        assert result.content["state"] == "done" and len(meshes) == 1
        v = meshes[0].array(meshes[0].content["vertices"])
        assert len(v) > 100 and np.abs(v).max() < 1.2, "the spheres lie within 1 unit of the origin"
        v2, _, _ = read_ply(srv.store.job_dir(mjob) / "outputs" / "mesh.ply")
        np.testing.assert_array_equal(v, v2)


def test_reconstruct_cancel_and_bad_capture(live: tuple[Server, Path], tmp_path: Path) -> None:
    srv, capture = live
    with Client(srv.bound_endpoint) as client:
        bad = client.request(Message("submit", {"kind": "reconstruct", "params": {
            "capture_path": str(tmp_path / "nowhere"), "preset": "tiny"}})).content["job_id"]
        result = client.wait_job(bad, timeout_s=HANG_S)
        assert result.content["state"] == "failed"
        assert "nowhere" in result.content["error"]["message"]

        job = client.request(Message("submit", {"kind": "reconstruct", "params": {
            "capture_path": str(capture), "preset": "tiny", "steps": 100000}})).content["job_id"]
        while not any(m.type == "progress" and m.job_id == job and m.content["stage"] == "training"
                      for m in client.poll(0.05)):
            pass
        client.request(Message("cancel", {"job_id": job}))
        result = client.wait_job(job, timeout_s=HANG_S)
        assert result.content["state"] == "cancelled"
        # The model so far is kept.
        assert (srv.store.job_dir(job) / "outputs" / "checkpoint.pt").is_file()
