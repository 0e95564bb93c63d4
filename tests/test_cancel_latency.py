"""A cancel lands within about a second, also in the middle of one long frame or one large mesh grid.

SPEC.md promises it. Frames and meshes used to check for a cancel only between frames and between mesh stages
(50 s for one 2048^2 frame, 285 s for a 384^3 mesh); they now check between chunks of samples. A tiny random
model on the CPU makes one 512x512 frame take seconds and a 128^3 density grid longer still, so a cancel that
waited for the frame or the grid would be seen here.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from test_nerf_render import _model  # a random structured field in an occupied ball

from backend.jobs import default_runners
from backend.jobs.render import CPU_MAX_RAYS, CPU_MAX_SAMPLES
from backend.jobstore.context import JobCancelled
from backend.nerf.checkpoint import NeRFCheckpoint, save_checkpoint
from backend.nerf.config import ReconstructConfig
from backend.nerf.frame_renderer import FrameRenderer
from backend.nerf.synthetic import ring_cameras
from backend.outputs.mesh import CPU_CHUNK, density_grid
from backend.server.server import Server
from protocol import Client, Message

CANCEL_WITHIN_S = 1.0  # SPEC.md: "within a second"
FRAME_SIZE = 512


class CancelAfter:
    """A ``check_cancel`` that raises :class:`JobCancelled` once ``delay_s`` has passed; records when it did."""

    def __init__(self, delay_s: float) -> None:
        self.deadline = time.monotonic() + delay_s
        self.calls = 0

    def __call__(self) -> None:
        self.calls += 1
        if time.monotonic() >= self.deadline:
            raise JobCancelled()


def latency_of(work: Callable[[Callable[[], None]], Any], delay_s: float) -> tuple[float, int]:
    """Seconds from the moment of cancelling to ``work`` stopping, and how often it checked."""
    check = CancelAfter(delay_s)
    with pytest.raises(JobCancelled):
        work(check)
    return time.monotonic() - check.deadline, check.calls


def test_a_frame_stops_between_batches_of_samples() -> None:
    renderer = FrameRenderer(_model(), max_rays=CPU_MAX_RAYS, max_samples=CPU_MAX_SAMPLES)
    cameras = ring_cameras(1, FRAME_SIZE)
    # The whole frame takes several seconds on one core; the cancel comes 1.5 s into it.
    late, calls = latency_of(lambda check: renderer.render(cameras, 0, check_cancel=check), delay_s=1.5)
    assert late < CANCEL_WITHIN_S / 2, f"the frame stopped {late:.2f} s after the cancel"
    assert calls > 2, "the frame had hardly started"


def test_a_density_grid_stops_between_chunks() -> None:
    model = _model()
    late, calls = latency_of(lambda check: density_grid(model.density, 128, (-1.0, 1.0), "cpu", chunk=CPU_CHUNK,
                                                        check_cancel=check), delay_s=1.0)
    assert late < CANCEL_WITHIN_S, f"the grid stopped {late:.2f} s after the cancel"
    assert calls > 1


# ---------------------------------------------------------------------------------------------------------
# Through the server: the jobs pass the cancel down
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture
def server_with_model(tmp_path: Path) -> Iterator[tuple[Server, str]]:
    """A server with the render and mesh runners, and a finished source job holding a tiny random model."""
    srv = Server("tcp://127.0.0.1:*", tmp_path / "work", runners=default_runners())
    source = srv.store.create("reconstruct", {}, owner="cli")
    save_checkpoint(NeRFCheckpoint(model=_model(), config=ReconstructConfig.tiny(), background="matte"),
                    srv.store.job_dir(source.job_id) / "outputs" / "checkpoint.pt")
    source.state, source.outputs = "done", {"checkpoint": "checkpoint.pt"}
    srv.store.save(source)
    thread = threading.Thread(target=srv.serve, daemon=True)
    thread.start()
    assert srv.ready.wait(10)
    yield srv, source.job_id
    srv.stop()
    thread.join(30)


def cancel_in_stage(client: Client, job_id: str, stage: str, settle_s: float) -> float:
    """Wait for ``stage`` of the job, let it run ``settle_s`` into it, cancel; seconds until its result."""
    deadline = time.monotonic() + 30
    while not any(m.type == "progress" and m.job_id == job_id and m.content["stage"] == stage
                  for m in client.poll(0.05)):
        assert time.monotonic() < deadline, f"job {job_id} never reached {stage!r}"
    time.sleep(settle_s)
    t0 = time.monotonic()
    client.request(Message("cancel", {"job_id": job_id}))
    result = client.wait_job(job_id, timeout_s=60)
    assert result.content["state"] == "cancelled", result.content
    return time.monotonic() - t0


def test_a_render_job_is_cancelled_in_the_middle_of_a_frame(server_with_model: tuple[Server, str]) -> None:
    srv, source = server_with_model
    cams = ring_cameras(1, FRAME_SIZE)
    camera = {"name": "big", "frame": 1, "c2w": cams.c2w[0].tolist(), "fx": float(cams.fx[0]),
              "fy": float(cams.fy[0]), "cx": float(cams.cx[0]), "cy": float(cams.cy[0]), "width": FRAME_SIZE,
              "height": FRAME_SIZE}
    with Client(srv.bound_endpoint) as client:
        job = client.request(Message("submit", {"kind": "render", "params": {
            "source_job": source, "cameras": [camera]}})).content["job_id"]
        # The model loads in well under the settle time; the frame takes seconds on the CPU.
        took = cancel_in_stage(client, job, "loading model", settle_s=1.0)
    print(f"cancel took {took:.3f} s")
    assert took < CANCEL_WITHIN_S + 0.5, f"cancelling took {took:.2f} s"
    assert not list((srv.store.job_dir(job) / "outputs" / "frames").glob("*.png")), "the frame was finished"


def test_a_mesh_job_is_cancelled_while_it_samples_the_grid(server_with_model: tuple[Server, str]) -> None:
    srv, source = server_with_model
    with Client(srv.bound_endpoint) as client:
        job = client.request(Message("submit", {"kind": "extract_mesh", "params": {
            "source_job": source, "resolution": 128}})).content["job_id"]
        took = cancel_in_stage(client, job, "sampling density", settle_s=0.5)
    print(f"cancel took {took:.3f} s")
    assert took < CANCEL_WITHIN_S + 0.5, f"cancelling took {took:.2f} s"
    assert not (srv.store.job_dir(job) / "outputs" / "mesh.ply").exists()
