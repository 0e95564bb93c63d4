"""Real worker processes (``serve --workers 2`` on the CPU): concurrency, kill -9, a hung worker, cancel.

The server runs in this process (so that the test can ask its broker which worker runs which job); its two
workers are ``python -m backend worker`` processes, as ``serve --workers 2`` starts them. Jobs are tiny
reconstructions of the analytic-spheres capture, which checkpoint every second of training. A job whose
worker is killed must finish on the other worker, from its checkpoint, with the very model an uninterrupted
run trains (as ``tests/test_restart_resume.py`` shows for a restarted backend).
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from backend_process import BackendProcess, job_dir, job_record, submit, wait_for
from test_jobs_live import write_sphere_capture
from test_restart_resume import assert_same_model
from test_server import serving

from backend.access import auth
from backend.cluster.broker import Broker, ClusterConfig, WorkerLink
from backend.jobs import default_runners
from backend.jobs.local import run_job_locally
from backend.nerf.checkpoint import load_checkpoint
from backend.server.server import Server
from protocol import Client, Message

WORKER_START_S = 90  # two processes importing torch on two shared cores


@pytest.fixture(scope="module")
def capture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_sphere_capture(tmp_path_factory.mktemp("cluster") / "capture")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with pytest.MonkeyPatch.context() as env:
        # The workers inherit this: one torch thread each (see tests/conftest.py for why).
        env.setenv("OMP_NUM_THREADS", "1")
        env.setenv("MKL_NUM_THREADS", "1")
        work = tmp_path_factory.mktemp("cluster") / "work"
        with serving(work, default_runners(), cluster=ClusterConfig(devices=("cpu", "cpu"))) as srv:
            yield srv


@pytest.fixture
def broker(cluster: Server) -> Broker:
    """The cluster's broker once both workers are connected (a worker killed by an earlier test is replaced)."""
    assert isinstance(cluster._worker, Broker)
    wait_for(lambda: len(cluster._worker.workers()) == 2 and not cluster._worker.running_ids(), WORKER_START_S,
             "two idle workers")
    return cluster._worker


def runner_of(broker: Broker, job_id: str) -> WorkerLink | None:
    return next((w for w in broker.workers() if w.job_id == job_id), None)


def reconstruct_params(capture: Path, steps: int) -> dict:
    return {"capture_path": str(capture), "preset": "tiny", "steps": steps, "holdout_every": 0, "seed": 7}


def first_checkpoint(work: Path, job: str, total: int) -> None:
    """Wait until the job has written a resumable checkpoint and trains on."""
    path = job_dir(work, job) / "outputs" / "checkpoint.pt"
    wait_for(path.is_file, 60, "the first periodic checkpoint")
    ckpt = load_checkpoint(path, "cpu")
    assert ckpt.train_state is not None and 0 < ckpt.step < total, "the test needs the job mid-training"


def test_two_workers_run_two_jobs_at_once(cluster: Server, broker: Broker, capture: Path) -> None:
    with Client(cluster.bound_endpoint) as client:
        assert client.handshake()["gpu"]["name"].startswith("2 workers")
        jobs = [submit(client, "reconstruct", reconstruct_params(capture, 30)) for _ in range(2)]
        wait_for(lambda: all(runner_of(broker, j) for j in jobs), 10, "both jobs on workers")
        assert runner_of(broker, jobs[0]).pid != runner_of(broker, jobs[1]).pid
        for job in jobs:
            result = client.wait_job(job, timeout_s=120).content
            assert result["state"] == "done" and result["outputs"]["steps"] == 30, result
    a, b = (cluster.store.get(j) for j in jobs)
    assert a.started < b.finished and b.started < a.finished, "they ran at the same time"


def test_kill9_of_a_worker_mid_reconstruction_resumes_on_the_other(cluster: Server, broker: Broker, capture: Path,
                                                                   tmp_path: Path) -> None:
    total = 100
    params = reconstruct_params(capture, total)
    with Client(cluster.bound_endpoint) as client:
        job = submit(client, "reconstruct", params)
        first_checkpoint(cluster.store.work_dir, job, total)
        killed = runner_of(broker, job)
        os.kill(killed.pid, signal.SIGKILL)
        wait_for(lambda: (w := runner_of(broker, job)) is not None and w.pid != killed.pid, 30,
                 "the job on the other worker")
        progress: list[Message] = []
        result = client.wait_job(job, on_message=progress.append, timeout_s=120).content
    assert result["state"] == "done", result
    assert result["outputs"]["steps"] == total and 0 < result["outputs"]["resumed_from_step"] < total
    assert any("was lost (its process exited)" in m.content["message"] for m in progress if m.type == "progress")
    assert cluster.store.get(job).resumes == 1
    # The same model as a run that was never interrupted.
    straight = run_job_locally("reconstruct", params, tmp_path / "straight", "cpu", lambda m: None)
    assert straight.state == "done"
    assert_same_model(load_checkpoint(tmp_path / "straight" / "jobs" / straight.job_id / "outputs" / "checkpoint.pt",
                                      "cpu"),
                      load_checkpoint(job_dir(cluster.store.work_dir, job) / "outputs" / "checkpoint.pt", "cpu"))


def test_a_hung_worker_is_declared_dead_and_its_job_moves(cluster: Server, broker: Broker, capture: Path) -> None:
    total = 100
    with Client(cluster.bound_endpoint) as client:
        job = submit(client, "reconstruct", reconstruct_params(capture, total))
        first_checkpoint(cluster.store.work_dir, job, total)
        hung = runner_of(broker, job)
        os.kill(hung.pid, signal.SIGSTOP)
        try:
            wait_for(lambda: (w := runner_of(broker, job)) is not None and w.pid != hung.pid, 30,
                     "the job on the other worker")
            # Killed by the broker, so that it can never wake up and write the job's folder.
            wait_for(lambda: not _alive(hung.pid), 10, "the hung worker to be killed")
            progress: list[Message] = []
            result = client.wait_job(job, on_message=progress.append, timeout_s=120).content
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(hung.pid, signal.SIGKILL)
    assert result["state"] == "done" and result["outputs"]["steps"] == total, result
    assert 0 < result["outputs"]["resumed_from_step"] < total
    assert any("was lost (no word from it" in m.content["message"] for m in progress if m.type == "progress")


def test_cancel_reaches_a_job_on_a_worker(cluster: Server, broker: Broker, capture: Path) -> None:
    with Client(cluster.bound_endpoint) as client:
        job = submit(client, "reconstruct", reconstruct_params(capture, 5000))
        for _ in range(200):
            if any(m.type == "progress" and m.content["stage"] == "training" for m in client.poll(0.1)):
                break
        reply = client.request(Message("cancel", {"job_id": job}))
        assert reply.content["state"] == "running"
        result = client.wait_job(job, timeout_s=10).content
    assert result["state"] == "cancelled"
    wait_for(lambda: not broker.running_ids(), 5, "the worker to be idle again")


def test_a_stopping_curve_cluster_interrupts_its_job_resumably(tmp_path: Path, capture: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    keys, _ = auth.load_or_create_server_keys(tmp_path / "keys")
    work, total = tmp_path / "work", 100
    # CURVE on the worker endpoint: the local worker joins with the key pair its broker made for it.
    with serving(work, default_runners(), cluster=ClusterConfig(devices=("cpu",), curve=keys)) as srv, \
            Client(srv.bound_endpoint) as client:
        job = submit(client, "reconstruct", reconstruct_params(capture, total))
        wait_for(lambda: srv._worker.running_ids() == [job], WORKER_START_S, "the job on the CURVE worker")
        first_checkpoint(srv.store.work_dir, job, total)
        srv.stop()  # what SIGTERM does: the worker interrupts the job at its next step and reports it
        result = client.wait_job(job, timeout_s=60).content
        assert result["state"] == "interrupted" and "'resume' continues" in result["error"]["message"]
        wait_for(lambda: not srv._worker.local.any_alive(), 30, "the local worker to end")
    record = job_record(work, job)
    assert record["state"] == "interrupted" and 0 < record["step"] < total, "the worker recorded where it stopped"


def test_kill9_of_the_server_leaves_its_workers_job_resumable(tmp_path: Path, capture: Path) -> None:
    work, total = tmp_path / "work", 100
    backend = BackendProcess(work, tmp_path / "serve1.log", ("--workers", "1"))  # the command line, as users run it
    try:
        backend.wait_ready()
        with Client(backend.endpoint) as client:
            wait_for(lambda: client.handshake()["gpu"]["name"].startswith("1 worker"), WORKER_START_S, "the worker")
            job = submit(client, "reconstruct", reconstruct_params(capture, total))
            first_checkpoint(work, job, total)
        backend.kill9()
    finally:
        if backend.proc.poll() is None:
            backend.kill9()
    # Its worker sees the server gone, interrupts the job at its next step (saving its checkpoint) and ends.
    wait_for(lambda: job_record(work, job)["state"] == "interrupted", 30, "the worker to interrupt the job")
    stopped_at = job_record(work, job)["step"]
    assert 0 < stopped_at < total
    # Any backend on the work dir resumes it from there, here the plain one.
    with serving(work, default_runners()) as plain, Client(plain.bound_endpoint) as client:
        assert client.request(Message("status", {"job_id": job})).content["jobs"][0]["state"] == "interrupted"
        client.request(Message("resume", {"job_id": job}))
        result = client.wait_job(job, timeout_s=120).content
    assert result["state"] == "done" and result["outputs"]["resumed_from_step"] == stopped_at


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
