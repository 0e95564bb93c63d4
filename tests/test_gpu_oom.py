"""A real CUDA out-of-memory in a job (skipped without a GPU): the job fails with advice, the memory comes back,
and the next jobs on the same server run.

The job that exhausts memory is an ordinary reconstruct job whose training batch is made absurd (2^27 rays a
step: marching them needs far more memory than any GPU has), so the failure comes from the real training code
and the real allocator, not from a raised exception.
"""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from test_jobs_live import SIZE, write_sphere_capture
from waits import HANG_S

import backend.jobs.reconstruct as reconstruct_job
from backend.jobs import default_runners
from backend.server.server import Server
from captures import OPENGL_TO_OPENCV
from protocol import Client, Message

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

ABSURD_SEED = 424_242  # the job submitted with this seed trains with an absurd batch
ABSURD_RAYS = 2**27
GIB = 2**30


def test_a_real_gpu_out_of_memory_fails_one_job_and_the_next_jobs_run(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    original = reconstruct_job.config_from_params

    def config_from_params(params: dict[str, Any]) -> Any:
        config = original(params)
        if params.get("seed") == ABSURD_SEED:
            config = replace(config, batch_rays=ABSURD_RAYS, min_batch_rays=ABSURD_RAYS, max_batch_rays=ABSURD_RAYS,
                             target_samples=0)
        return config

    monkeypatch.setattr(reconstruct_job, "config_from_params", config_from_params)
    capture = write_sphere_capture(tmp_path / "capture")
    srv = Server("tcp://127.0.0.1:*", tmp_path / "work", runners=default_runners(), device="cuda")
    thread = threading.Thread(target=srv.serve, daemon=True)
    thread.start()
    assert srv.ready.wait(HANG_S)
    try:
        with Client(srv.bound_endpoint) as client:
            params = {"capture_path": str(capture), "preset": "tiny", "holdout_every": 4}
            torch.cuda.reset_peak_memory_stats()
            job = client.request(Message("submit", {"kind": "reconstruct", "params": {
                **params, "steps": 20, "seed": ABSURD_SEED}})).content["job_id"]
            result = client.wait_job(job, timeout_s=HANG_S).content
            assert result["state"] == "failed", result
            assert result["error"]["code"] == "out_of_memory", result["error"]
            assert result["error"]["message"].startswith("the GPU ran out of memory; try again with a lower 'scale'")
            deadline = time.monotonic() + HANG_S
            while srv._worker.queue_length():  # the worker frees memory after it has sent the result
                assert time.monotonic() < deadline
                time.sleep(0.05)
            peak = torch.cuda.max_memory_reserved()
            assert peak > 4 * GIB, f"the job did take memory before failing ({peak / GIB:.1f} GiB)"
            # Its tensors are gone and the cache was emptied: the next job starts on a clean GPU.
            assert torch.cuda.memory_allocated() < 256 * 2**20, torch.cuda.memory_allocated()
            assert torch.cuda.memory_reserved() < GIB, torch.cuda.memory_reserved()

            job = client.request(Message("submit", {"kind": "reconstruct", "params": {
                **params, "steps": 300}})).content["job_id"]
            result = client.wait_job(job, timeout_s=HANG_S).content
            assert result["state"] == "done", result
            assert result["outputs"]["heldout_psnr"] > 15.0
            cam = write_sphere_camera(capture)
            render = client.request(Message("submit", {"kind": "render", "params": {
                "source_job": job, "cameras": [cam]}})).content["job_id"]
            assert client.wait_job(render, timeout_s=HANG_S).content["state"] == "done"
    finally:
        srv.stop()
        thread.join(HANG_S)


def write_sphere_camera(capture: Path) -> dict[str, Any]:
    """Camera 0 of the sphere capture, in the protocol's camera format."""
    import json

    import numpy as np

    meta = json.loads((capture / "transforms.json").read_text())
    c2w = (np.array(meta["frames"][0]["transform_matrix"]) @ OPENGL_TO_OPENCV).tolist()
    return {"name": "view0", "frame": 0, "c2w": c2w, "fx": meta["fl_x"], "fy": meta["fl_y"], "cx": meta["cx"],
            "cy": meta["cy"], "width": SIZE, "height": SIZE}
