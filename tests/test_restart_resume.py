"""Crash and restart: ``kill -9`` of a real backend mid-job, restart on the same work dir, ``resume``.

What must hold after a crash: finished outputs and the latest periodic checkpoint are intact (every file is
renamed into place complete), the job that was running is ``interrupted``, and ``resume`` continues it from its
checkpoint to the step or iteration count it was submitted with, its progress going on from there. In-process
tests check that a resumed run is the *same* run (bit-identical to one never interrupted, on the CPU).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from pathlib import Path

import pytest
import torch
from backend_process import BackendProcess, job_dir, job_record, submit, wait_for
from test_jobs_live import write_sphere_capture
from test_stylize_deferred import tiny_reconstruction
from waits import HANG_S

from backend import cli
from backend.jobs import default_runners
from backend.jobstore.atomic import atomic_path, atomic_write_bytes
from backend.jobstore.lock import JobLock
from backend.jobstore.store import JobStore
from backend.nerf.checkpoint import NeRFCheckpoint, load_checkpoint, save_checkpoint
from backend.nerf.config import ReconstructConfig
from backend.nerf.synthetic import render_spheres, ring_cameras
from backend.nerf.train import train_on_images
from backend.server.server import Server
from backend.stylize.clip_model import load_clip
from backend.stylize.loop import preset_config, stylize
from backend.stylize.perceptual import load_lpips
from protocol import BackendError, Client, Message

PROMPT = "a marble statue"
RANDOM_CLIP = {"clip_model": "ViT-S-32", "clip_pretrained": "random", "preset": "tiny"}


def stop_after(n_calls: int):
    """A ``should_stop`` that says stop on its ``n_calls + 1``-th call (the reconstruction polls once a step)."""
    calls = [0]

    def should_stop() -> bool:
        calls[0] += 1
        return calls[0] > n_calls

    return should_stop


def assert_same_model(a: NeRFCheckpoint, b: NeRFCheckpoint) -> None:
    for (name, x), (_, y) in zip(a.model.state_dict().items(), b.model.state_dict().items(), strict=True):
        assert torch.equal(x, y), f"{name} differs between the uninterrupted and the resumed run"


# ---------------------------------------------------------------------------------------------------------
# In process: a resumed run is the same run
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_resumed_reconstruction_equals_the_uninterrupted_one(tmp_path: Path) -> None:
    cams = ring_cameras(8, 24)
    images = render_spheres(cams)
    config = ReconstructConfig.tiny(steps=20, seed=5)
    straight = train_on_images(cams, images, config, torch.device("cpu"), background="matte")
    assert straight.train_state is None, "a finished checkpoint carries no training state"

    periodic: list[int] = []
    stopped = train_on_images(cams, images, config, torch.device("cpu"), background="matte",
                              should_stop=stop_after(9), on_checkpoint=lambda c: periodic.append(c.step),
                              checkpoint_every_steps=4)
    assert stopped.step == 9 and periodic == [4, 8]
    assert stopped.train_state is not None and stopped.train_state["step"] == 9
    # Through the file format (weights_only loading) as a restarted backend reads it.
    save_checkpoint(stopped, tmp_path / "checkpoint.pt")
    loaded = load_checkpoint(tmp_path / "checkpoint.pt", "cpu")
    reports = []
    resumed = train_on_images(cams, images, config, torch.device("cpu"), background="matte", resume=loaded,
                              on_progress=reports.append)
    assert resumed.step == 20 and resumed.train_state is None
    assert reports[0].step == 10, "progress continues after the checkpoint's step"
    assert_same_model(straight, resumed)
    # A checkpoint of other training is refused rather than silently mixed in.
    with pytest.raises(ValueError, match="trained towards 20 steps"):
        train_on_images(cams, images, ReconstructConfig.tiny(steps=30, seed=5), torch.device("cpu"),
                        background="matte", resume=loaded)


@pytest.mark.slow
def test_resumed_stylization_equals_the_uninterrupted_one(tmp_path_factory: pytest.TempPathFactory,
                                                          tmp_path: Path) -> None:
    rec = tiny_reconstruction(tmp_path_factory)
    clip = load_clip("ViT-S-32", pretrained=None, random_init=True, device="cpu")
    lpips = load_lpips("cpu", random_init=True)
    config = preset_config("tiny", PROMPT, iterations=4)  # tiny: a periodic checkpoint every 2 iterations
    straight = stylize(rec, config, "cpu", clip=clip, perceptual=lpips)
    assert straight.train_state is None

    periodic: list[NeRFCheckpoint] = []
    # Stop as soon as the first periodic checkpoint is out (checked between chunks, so mid-iteration 3).
    stopped = stylize(rec, config, "cpu", lambda p: None, lambda: bool(periodic), clip=clip, perceptual=lpips,
                      on_checkpoint=periodic.append)
    assert stopped.metrics["cancelled"] == 1 and stopped.train_state["done"] == 2
    save_checkpoint(stopped, tmp_path / "checkpoint.pt")
    loaded = load_checkpoint(tmp_path / "checkpoint.pt", "cpu")
    steps: list[int] = []
    resumed = stylize(rec, config, "cpu", lambda p: p.stage == "stylizing" and steps.append(p.step), clip=clip,
                      perceptual=lpips, resume=loaded)
    assert steps == [3, 4], "progress continues at the next iteration"
    assert resumed.metrics["stylize_iterations"] == 4 and resumed.train_state is None
    assert resumed.step == rec.step + 4
    assert_same_model(straight, resumed)


# ---------------------------------------------------------------------------------------------------------
# Real backend processes, killed with SIGKILL
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture
def capture(tmp_path: Path) -> Path:
    return write_sphere_capture(tmp_path / "capture")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def resume_request(client: Client, job_id: str) -> Message:
    """Send ``resume`` and return its answer (``accepted``); BackendError for an ``error``."""
    return client.request(Message("resume", {"job_id": job_id}), timeout_s=HANG_S)


def client_resume_error(client: Client, job_id: str) -> Message:
    """``Client.resume`` (the non-blocking call) for a job that cannot be resumed: the ``error`` it gets.

    Nothing else is in flight when the tests call this, so the answer is the only message to arrive.
    """
    msg_id = client.resume(job_id)
    deadline = time.monotonic() + HANG_S
    while time.monotonic() < deadline:
        messages = client.poll(0.05)
        if messages:
            assert len(messages) == 1 and messages[0].parent_id == msg_id, [m.type for m in messages]
            assert messages[0].type == "error"
            return messages[0]
        time.sleep(0.02)
    raise AssertionError("no answer to resume")


@pytest.mark.slow
def test_kill9_mid_reconstruction_then_resume_finishes_the_same_job(tmp_path: Path, capture: Path) -> None:
    work = tmp_path / "work"
    total = 40
    backend = BackendProcess(work, tmp_path / "backend1.log")
    try:
        backend.wait_ready()
        with Client(backend.endpoint) as client:
            job = submit(client, "reconstruct", {"capture_path": str(capture), "preset": "tiny", "steps": total,
                                                 "holdout_every": 0})
            ckpt_path = job_dir(work, job) / "outputs" / "checkpoint.pt"
            # The tiny preset writes a resumable checkpoint every second of training.
            wait_for(ckpt_path.is_file, HANG_S, "the first periodic checkpoint")
        backend.kill9()
    finally:
        if backend.proc.poll() is None:
            backend.kill9()
    # The checkpoint on disk is complete and resumable, whenever the kill landed.
    ckpt = load_checkpoint(ckpt_path, "cpu")
    assert ckpt.train_state is not None and ckpt.train_state["kind"] == "reconstruct"
    assert 0 < ckpt.step < total, "killed mid-training"
    assert job_record(work, job)["state"] == "running", "nobody marked it: the process died"

    backend = BackendProcess(work, tmp_path / "backend2.log")
    try:
        backend.wait_ready()
        with Client(backend.endpoint) as client:
            info = client.request(Message("status", {"job_id": job})).content["jobs"][0]
            assert info["state"] == "interrupted" and info["error"]["code"] == "interrupted"
            assert "'resume' continues from its last checkpoint" in info["error"]["message"]
            assert 0 < info["step"] <= ckpt.step, "job.json records the checkpoint's step"
            # The checkpoint may have moved on between our read and the kill; the resume takes the latest.
            resume_from = load_checkpoint(ckpt_path, "cpu").step
            accepted = resume_request(client, job)
            assert accepted.type == "accepted" and accepted.content["job_id"] == job
            progress: list[Message] = []
            result = client.wait_job(job, on_message=progress.append, timeout_s=HANG_S)
            assert result.content["state"] == "done", result.content
            out = result.content["outputs"]
            assert out["steps"] == total and out["resumed_from_step"] == resume_from
            assert "resume_note" not in out
            training = [m.content for m in progress if m.content["stage"] == "training"]
            assert training[0]["step"] == resume_from + 1 and training[0]["total"] == total
            assert training[-1]["step"] == total
            final = load_checkpoint(ckpt_path, "cpu")
            assert final.step == total and final.train_state is None and final.metrics["cancelled"] == 0
            assert job_record(work, job)["resumes"] == 1
            # Only an interrupted job can be resumed.
            error = client_resume_error(client, job).content
            assert error["code"] == "bad_state" and "only an interrupted job" in error["message"]
            with pytest.raises(BackendError) as err:
                resume_request(client, "0123456789abcdef")
            assert err.value.code == "unknown_job"
        assert backend.terminate() == 0
    finally:
        if backend.proc.poll() is None:
            backend.kill9()


@pytest.mark.slow
def test_kill9_mid_stylization_then_resume(tmp_path: Path, capture: Path) -> None:
    work = tmp_path / "work"
    iterations = 6
    backend = BackendProcess(work, tmp_path / "backend1.log")
    try:
        backend.wait_ready()
        with Client(backend.endpoint) as client:
            # A rough source is enough: the test is about the stylization's checkpoints, not its looks.
            source = submit(client, "reconstruct", {"capture_path": str(capture), "preset": "tiny", "steps": 10,
                                                    "holdout_every": 0})
            assert client.wait_job(source, timeout_s=HANG_S).content["state"] == "done"
            source_ckpt = job_dir(work, source) / "outputs" / "checkpoint.pt"
            source_hash = sha256(source_ckpt)
            job = submit(client, "stylize", {"source_job": source, "prompt": PROMPT, "iterations": iterations,
                                             **RANDOM_CLIP})
            ckpt_path = job_dir(work, job) / "outputs" / "checkpoint.pt"
            # The tiny preset checkpoints every 2 iterations.
            wait_for(ckpt_path.is_file, HANG_S, "the first periodic stylization checkpoint")
        backend.kill9()
    finally:
        if backend.proc.poll() is None:
            backend.kill9()
    ckpt = load_checkpoint(ckpt_path, "cpu")
    assert ckpt.train_state is not None and ckpt.train_state["kind"] == "stylize"
    assert 0 < ckpt.train_state["done"] < iterations

    backend = BackendProcess(work, tmp_path / "backend2.log")
    try:
        backend.wait_ready()
        with Client(backend.endpoint) as client:
            jobs = {j["job_id"]: j for j in client.request(Message("status", {})).content["jobs"]}
            # The finished reconstruction is untouched by the crash; the stylization is interrupted.
            assert jobs[source]["state"] == "done" and sha256(source_ckpt) == source_hash
            assert jobs[job]["state"] == "interrupted"
            done_before = load_checkpoint(ckpt_path, "cpu").train_state["done"]
            assert resume_request(client, job).content["job_id"] == job
            progress: list[Message] = []
            result = client.wait_job(job, on_message=progress.append, timeout_s=HANG_S)
            assert result.content["state"] == "done", result.content
            out = result.content["outputs"]
            assert out["iterations"] == iterations and out["resumed_from_iteration"] == done_before
            steps = [m.content["step"] for m in progress if m.content["stage"] == "stylizing"]
            assert steps == list(range(done_before + 1, iterations + 1)), "progress goes on from the checkpoint"
            loading = [m.content.get("message", "") for m in progress if m.content["stage"] == "loading models"]
            assert any(f"resuming at iteration {done_before} of {iterations}" in t for t in loading)
            final = load_checkpoint(ckpt_path, "cpu")
            assert final.train_state is None and final.metrics["stylize_iterations"] == iterations
        assert backend.terminate() == 0
    finally:
        if backend.proc.poll() is None:
            backend.kill9()


# ---------------------------------------------------------------------------------------------------------
# In process: no checkpoint yet, and a clean shutdown
# ---------------------------------------------------------------------------------------------------------


def test_resume_without_a_checkpoint_starts_again_and_says_so(tmp_path: Path, capture: Path) -> None:
    work = tmp_path / "work"
    # The state a crash leaves before the first checkpoint: job.json says running, no checkpoint on disk.
    first = Server("tcp://127.0.0.1:*", work, runners=default_runners())
    rec = first.store.create("reconstruct", {"capture_path": str(capture), "preset": "tiny", "steps": 12}, "id:x")
    rec.state = "running"
    first.store.save(rec)
    srv = Server("tcp://127.0.0.1:*", work, runners=default_runners())
    assert srv.store.get(rec.job_id).state == "interrupted"
    thread = threading.Thread(target=srv.serve, daemon=True)
    thread.start()
    try:
        assert srv.ready.wait(HANG_S)
        with Client(srv.bound_endpoint) as client:
            assert resume_request(client, rec.job_id).content["position"] == 0
            progress: list[Message] = []
            result = client.wait_job(rec.job_id, on_message=progress.append, timeout_s=HANG_S)
        assert result.content["state"] == "done", result.content
        note = result.content["outputs"]["resume_note"]
        assert "no checkpoint had been saved" in note and "starting again from the beginning" in note
        assert any(note in m.content.get("message", "") for m in progress)
        assert result.content["outputs"]["steps"] == 12 and "resumed_from_step" not in result.content["outputs"]
    finally:
        srv.stop()
        thread.join(HANG_S)


@pytest.mark.slow
def test_clean_shutdown_mid_reconstruction_resumes_exactly_where_it_stopped(tmp_path: Path,
                                                                            capture: Path) -> None:
    work = tmp_path / "work"
    params = {"capture_path": str(capture), "preset": "tiny", "steps": 80, "holdout_every": 0}
    srv = Server("tcp://127.0.0.1:*", work, runners=default_runners())
    thread = threading.Thread(target=srv.serve, daemon=True)
    thread.start()
    assert srv.ready.wait(HANG_S)
    with Client(srv.bound_endpoint) as client:
        job = submit(client, "reconstruct", params)
        wait_for(lambda: srv.store.get(job).stage == "training" and srv.store.get(job).step >= 3, HANG_S, "training")
        srv.stop()  # what SIGTERM does: the job stops at its next step and is marked interrupted
        thread.join(HANG_S)
    rec = job_record(work, job)
    assert rec["state"] == "interrupted" and "shut down" in rec["error"]["message"]
    # On a clean stop the model is saved at the very step it stopped, not only at the last periodic save.
    stopped = load_checkpoint(job_dir(work, job) / "outputs" / "checkpoint.pt", "cpu")
    assert stopped.train_state is not None and stopped.step == stopped.train_state["step"] > 0
    assert f"its last checkpoint is at training step {stopped.step} of 80" in rec["error"]["message"]

    srv = Server("tcp://127.0.0.1:*", work, runners=default_runners())
    thread = threading.Thread(target=srv.serve, daemon=True)
    thread.start()
    try:
        assert srv.ready.wait(HANG_S)
        with Client(srv.bound_endpoint) as client:
            assert resume_request(client, job).content["job_id"] == job
            result = client.wait_job(job, timeout_s=HANG_S)
        assert result.content["state"] == "done", result.content
        assert result.content["outputs"]["steps"] == 80
        assert result.content["outputs"]["resumed_from_step"] == stopped.step
    finally:
        srv.stop()
        thread.join(HANG_S)


def test_the_command_line_resumes_an_interrupted_job(tmp_path: Path, capture: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    work = tmp_path / "work"
    store = JobStore(work)
    rec = store.create("reconstruct", {"capture_path": str(capture), "preset": "tiny", "steps": 8,
                                       "holdout_every": 0}, owner="cli")
    rec.state = "running"  # its process died before the first checkpoint
    store.save(rec)
    assert cli.main(["resume", rec.job_id, "--work-dir", str(work), "--device", "cpu", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["job_id"] == rec.job_id and out["outputs"]["steps"] == 8
    assert "starting again from the beginning" in out["outputs"]["resume_note"]
    assert job_record(work, rec.job_id)["state"] == "done"
    # A finished job is not resumed again.
    assert cli.main(["resume", rec.job_id, "--work-dir", str(work), "--device", "cpu"]) == 2
    assert "only an interrupted job" in capsys.readouterr().err


def test_a_job_another_live_process_runs_is_not_marked_interrupted(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "work")
    rec = store.create("reconstruct", {"steps": 3}, owner="cli")
    rec.state = "running"
    store.save(rec)
    # What a command-line run beside the server holds while it runs the job (the OS drops it if it dies).
    lock = JobLock(store.job_dir(rec.job_id))
    assert lock.acquire()
    try:
        assert JobStore(tmp_path / "work").get(rec.job_id).state == "running"
    finally:
        lock.release()
    assert JobStore(tmp_path / "work").get(rec.job_id).state == "interrupted"


def test_an_atomic_write_that_fails_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "frame.png"
    atomic_write_bytes(path, b"old")
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_bytes(b"half a fr")
        raise RuntimeError("killed mid-write")
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["frame.png"]
    atomic_write_bytes(path, "new", durable=True)
    assert path.read_bytes() == b"new"


def test_a_resumed_render_sends_the_frames_it_has_and_renders_the_rest(tmp_path: Path, capture: Path) -> None:
    from backend.jobs.local import resume_job_locally, run_job_locally

    work = tmp_path / "work"
    recon = run_job_locally("reconstruct", {"capture_path": str(capture), "preset": "tiny", "steps": 10,
                                            "holdout_every": 0}, work, "cpu", lambda m: None)
    assert recon.state == "done"
    cams = ring_cameras(3, 16)
    cameras = [{"name": f"cam{i}", "frame": i + 1, "c2w": cams.c2w[i].tolist(), "fx": float(cams.fx[i]),
                "fy": float(cams.fy[i]), "cx": float(cams.cx[i]), "cy": float(cams.cy[i]), "width": 16,
                "height": 16} for i in range(3)]
    params = {"source_job": recon.job_id, "cameras": cameras, "depth": True}
    render = run_job_locally("render", params, work, "cpu", lambda m: None)
    assert render.state == "done"
    frames_dir = job_dir(work, render.job_id) / "outputs" / "frames"
    first = frames_dir / "00001_cam0.png"
    marker = first.read_bytes() + b"\0"  # still the same image to a PNG reader, but recognisable
    first.write_bytes(marker)
    last = frames_dir / "00003_cam2.png"
    last.unlink()  # the state a crash during the last frame leaves: frames 1-2 on disk, frame 3 missing
    store = JobStore(work)
    rec = store.get(render.job_id)
    rec.state = "running"
    store.save(rec)
    assert JobStore(work).get(render.job_id).state == "interrupted"
    sent: dict[int, bytes] = {}

    def on_message(msg: Message) -> None:
        if msg.type == "frame":
            sent[msg.content["index"]] = bytes(msg.blob(msg.content["image"]))

    resumed = resume_job_locally(render.job_id, work, "cpu", on_message)
    assert resumed.state == "done" and resumed.outputs["count"] == 3
    assert sorted(sent) == [0, 1, 2] and sent[0] == marker, "frame 1 was rendered again instead of re-sent"
    assert last.is_file() and sent[2] == last.read_bytes() and sent[2] != marker
