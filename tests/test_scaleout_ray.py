"""Scale-out on Ray (``serve --workers N``, ``--ray-address``) on the CPU: a local Ray cluster with tiny jobs.

What must hold: two jobs run at once; ``kill -9`` of the Ray worker process running a job makes Ray run it
again, and the new attempt resumes from the job's checkpoint to the very model an uninterrupted run trains;
cancel reaches the running task; a server stopped and started again resumes an interrupted job; and only a
driver with the cluster's token reaches Ray (a wrong token or none is refused by Ray's authentication, and
the server refuses to join a cluster that lets drivers in without one).

The server runs in this process (so that the tests can see its executor and its Ray cluster), except in the
restart test, which runs ``python -m backend serve --workers 1`` as users do. Jobs are tiny reconstructions of
the analytic-spheres capture, which checkpoint every second of training.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from backend_process import BackendProcess, job_dir, job_record, submit, wait_for
from test_jobs_live import write_sphere_capture
from test_restart_resume import assert_same_model
from waits import HANG_S

from backend import cli
from backend.jobs import default_runners
from backend.jobs.local import run_job_locally
from backend.nerf.checkpoint import load_checkpoint
from backend.scaleout.channel import JobChannel
from backend.scaleout.executor import RayExecutor
from backend.scaleout.ray_cluster import AUTH_REFUSAL, RayConfig, check_token_file, ensure_token_file
from backend.server.server import Server
from protocol import Client, Message

START_S = 180  # a Ray cluster, then worker processes importing torch, on two shared cores


def free_port() -> int:
    """A port nothing listens on now: for an address that must not answer, and for ``ray start --head --port``
    (Ray binds it itself; the backend's own ports are bound by the backend, see backend_process)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def ray_environment_kept() -> Iterator[None]:
    """Put this process's ``RAY_*`` environment variables back as they were (a server sets them for Ray)."""
    saved = {k: v for k, v in os.environ.items() if k.startswith("RAY_")}
    try:
        yield
    finally:
        for key in [k for k in os.environ if k.startswith("RAY_")]:
            del os.environ[key]
        os.environ.update(saved)


@contextlib.contextmanager
def ray_serving(work: Path, config: RayConfig) -> Iterator[Server]:
    """A :class:`Server` running its jobs on Ray, serving on a thread until the block ends."""
    with ray_environment_kept(), _serving(work, config) as srv:
        yield srv


@contextlib.contextmanager
def _serving(work: Path, config: RayConfig) -> Iterator[Server]:
    srv = Server("tcp://127.0.0.1:*", work, runners=default_runners(), scaleout=config)
    errors: list[BaseException] = []

    def serve() -> None:
        try:
            srv.serve()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        wait_for(lambda: srv.ready.is_set() or bool(errors), START_S, "the server and its Ray cluster")
        if errors:
            raise errors[0]
        yield srv
    finally:
        srv.stop()
        thread.join(120)
        assert not thread.is_alive()


@pytest.fixture(scope="module")
def capture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_sphere_capture(tmp_path_factory.mktemp("scaleout") / "capture")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("scaleout")
    with pytest.MonkeyPatch.context() as env:
        # The Ray workers inherit this: one torch thread each (see tests/conftest.py for why).
        env.setenv("OMP_NUM_THREADS", "1")
        env.setenv("MKL_NUM_THREADS", "1")
        config = RayConfig(workers=2, token_file=root / "keys" / "ray_auth_token", stop_timeout_s=60,
                           cancel_grace_s=20)
        with ray_serving(root / "work", config) as srv:
            yield srv


@pytest.fixture
def executor(cluster: Server) -> RayExecutor:
    assert isinstance(cluster._worker, RayExecutor)
    wait_for(lambda: not cluster._worker.running_ids(), 60, "an idle executor")
    return cluster._worker


def reconstruct_params(capture: Path, steps: int) -> dict:
    return {"capture_path": str(capture), "preset": "tiny", "steps": steps, "holdout_every": 0, "seed": 7}


def first_checkpoint(work: Path, job: str, total: int) -> None:
    """Wait until the job has written a resumable checkpoint and trains on."""
    path = job_dir(work, job) / "outputs" / "checkpoint.pt"
    wait_for(path.is_file, START_S, "the first periodic checkpoint")
    ckpt = load_checkpoint(path, "cpu")
    assert ckpt.train_state is not None and 0 < ckpt.step < total, "the test needs the job mid-training"


def lock_holder(job_folder: Path) -> int | None:
    """The process that holds the job's ``running.lock`` (the one running it), as the kernel lists it."""
    inode = (job_folder / "running.lock").stat().st_ino
    for line in Path("/proc/locks").read_text().splitlines():
        parts = line.split()
        # "1: FLOCK  ADVISORY  WRITE 4242 00:2e:131 0 EOF"; a waiting request has "->" after the number.
        if "->" not in parts and len(parts) >= 6 and parts[1] == "FLOCK" and parts[5].endswith(f":{inode}"):
            return int(parts[4])
    return None


# ---------------------------------------------------------------------------------------------------------
# Without Ray: the channel, the token file, the command line
# ---------------------------------------------------------------------------------------------------------


def test_the_channel_keeps_order_drops_stale_attempts_and_bounds_its_buffer() -> None:
    channel = JobChannel(max_buffered_bytes=10)
    assert channel.begin("a") == 1 and channel.begin("b") == 1
    channel.put("a", 1, [b"1"])
    channel.put("b", 1, [b"2"])
    channel.put("a", 1, [b"3"])
    assert channel.take() == [("a", [b"1"]), ("b", [b"2"]), ("a", [b"3"])] and channel.take() == []
    assert channel.begin("a") == 2  # Ray runs the task again: the old attempt's messages no longer count
    channel.put("a", 1, [b"old"])
    channel.put("a", 2, [b"new"])
    assert channel.take() == [("a", [b"new"])] and channel.stats()["dropped"] == 1
    channel.put("a", 2, [b"123456"])
    channel.put("a", 2, [b"789012"])  # 12 bytes held: the oldest goes
    assert channel.take() == [("a", [b"789012"])] and channel.stats()["dropped"] == 2
    channel.request("a", "cancel")
    channel.request("a", "interrupt")  # a stopping server never turns a user's cancel into an interrupt
    assert channel.requested("a") == "cancel" and channel.requested("b") is None
    channel.forget("a")
    assert channel.requested("a") is None and channel.begin("a") == 1, "a resumed job starts over"
    # Restarted by Ray (killed when the node ran low on memory): it takes up each running job's attempt from
    # that job's next message, and still drops an older attempt's.
    restarted = JobChannel()
    restarted.put("c", 3, [b"go on"])
    restarted.put("c", 2, [b"stale"])
    assert restarted.take() == [("c", [b"go on"])] and restarted.stats()["dropped"] == 1


def test_the_local_token_file_is_private_and_made_once(tmp_path: Path) -> None:
    path = ensure_token_file(tmp_path / "keys" / "ray_auth_token")
    token = path.read_text()
    assert len(token) == 64 and path.stat().st_mode & 0o777 == 0o600
    assert ensure_token_file(path).read_text() == token, "a restarted server keeps its cluster's token"
    path.chmod(0o644)
    with pytest.raises(ValueError, match="other users"):
        check_token_file(path)


def test_the_command_line_refuses_ray_options_that_do_not_fit(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    work = str(tmp_path / "work")
    for args, why in ((["--workers", "0"], "give 1 or more"),
                      (["--gpus-per-job", "0.5"], "go with --workers N or --ray-address"),
                      (["--ray-address", "127.0.0.1:1", "--ray-dashboard"], "head node's")):
        assert cli.main(["serve", "--work-dir", work, "--device", "cpu", *args]) == 2
        assert why in capsys.readouterr().err
    # Joining a cluster needs its token; none is found in an empty home and environment.
    with pytest.MonkeyPatch.context() as env, ray_environment_kept():
        env.setenv("HOME", str(tmp_path))
        for name in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
            env.delenv(name, raising=False)
        assert cli.main(["serve", "--work-dir", work, "--device", "cpu", "--ray-address",
                         f"127.0.0.1:{free_port()}"]) == 2
    assert "needs its token" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------
# A local Ray cluster of two workers
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_two_jobs_run_at_once_on_two_ray_workers(cluster: Server, executor: RayExecutor, capture: Path) -> None:
    work = cluster.store.work_dir
    with Client(cluster.bound_endpoint) as client:
        assert client.handshake()["gpu"]["name"].startswith("2 workers")
        jobs = [submit(client, "reconstruct", reconstruct_params(capture, 30)) for _ in range(2)]
        wait_for(lambda: all(job_dir(work, j).joinpath("running.lock").is_file() and lock_holder(job_dir(work, j))
                             for j in jobs), START_S, "both jobs running")
        holders = {lock_holder(job_dir(work, j)) for j in jobs}
        assert len(holders) == 2 and os.getpid() not in holders, "two Ray worker processes, not the server"
        for job in jobs:
            result = client.wait_job(job, timeout_s=300).content
            assert result["state"] == "done" and result["outputs"]["steps"] == 30, result
    a, b = (cluster.store.get(j) for j in jobs)
    assert a.started < b.finished and b.started < a.finished, "they ran at the same time"
    assert all(job_record(work, j)["state"] == "done" for j in jobs)


@pytest.mark.slow
def test_kill9_of_the_worker_running_a_job_resumes_it_to_the_uninterrupted_model(
        cluster: Server, executor: RayExecutor, capture: Path, tmp_path: Path) -> None:
    total = 100
    params = reconstruct_params(capture, total)
    work = cluster.store.work_dir
    with Client(cluster.bound_endpoint) as client:
        job = submit(client, "reconstruct", params)
        first_checkpoint(work, job, total)
        killed = lock_holder(job_dir(work, job))
        assert killed is not None and killed != os.getpid()
        os.kill(killed, signal.SIGKILL)
        progress: list[Message] = []
        result = client.wait_job(job, on_message=progress.append, timeout_s=300).content
    assert result["state"] == "done", result
    assert result["outputs"]["steps"] == total and 0 < result["outputs"]["resumed_from_step"] < total
    assert any("its Ray worker was lost; attempt 2 continues from its last checkpoint" in m.content["message"]
               for m in progress if m.type == "progress")
    assert cluster.store.get(job).resumes == 1 and job_record(work, job)["resumes"] == 1
    # The same model as a run that was never interrupted.
    straight = run_job_locally("reconstruct", params, tmp_path / "straight", "cpu", lambda m: None)
    assert straight.state == "done"
    assert_same_model(load_checkpoint(tmp_path / "straight" / "jobs" / straight.job_id / "outputs" / "checkpoint.pt",
                                      "cpu"),
                      load_checkpoint(job_dir(work, job) / "outputs" / "checkpoint.pt", "cpu"))


@pytest.mark.slow
def test_a_job_goes_on_reporting_when_its_channel_is_killed(cluster: Server, executor: RayExecutor,
                                                           capture: Path) -> None:
    import ray

    work = cluster.store.work_dir
    with Client(cluster.bound_endpoint) as client:
        job = submit(client, "reconstruct", reconstruct_params(capture, 100))
        first_checkpoint(work, job, 100)
        # As Ray's memory monitor does when the node runs low: the actor is killed, and Ray restarts it.
        ray.kill(executor._channel, no_restart=False)
        client.poll()  # what came before the kill
        after: list[Message] = []
        result = client.wait_job(job, on_message=after.append, timeout_s=HANG_S).content
    assert result["state"] == "done" and result["outputs"]["steps"] == 100, result
    assert any(m.type == "progress" and m.content["stage"] == "training" for m in after), \
        "progress from the job after its channel came back"


@pytest.mark.slow
def test_cancel_reaches_the_running_task(cluster: Server, executor: RayExecutor, capture: Path) -> None:
    work = cluster.store.work_dir
    with Client(cluster.bound_endpoint) as client:
        job = submit(client, "reconstruct", reconstruct_params(capture, 5000))
        wait_for(lambda: any(m.type == "progress" and m.content["stage"] == "training" for m in client.poll()),
                 START_S, "the job training on its worker", poll_s=0.05)
        holder = lock_holder(job_dir(work, job))
        reply = client.request(Message("cancel", {"job_id": job}))
        assert reply.content["state"] == "running"
        result = client.wait_job(job, timeout_s=HANG_S).content
    assert result["state"] == "cancelled"
    assert job_record(work, job)["state"] == "cancelled", "the task recorded it at a step boundary"
    wait_for(lambda: not executor.running_ids(), 10, "the executor to be idle again")
    os.kill(holder, 0)  # stopped at a step boundary: its worker process was not killed, and runs the next job


@pytest.mark.slow
def test_only_a_driver_with_the_token_reaches_the_cluster(cluster: Server, tmp_path: Path) -> None:
    import ray

    address = ray.get_runtime_context().gcs_address
    token_file = Path(os.environ["RAY_AUTH_TOKEN_PATH"])

    def driver(**env_changes: str) -> subprocess.CompletedProcess:
        """A Ray driver process (any program using Ray) that tries to join the server's cluster."""
        env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")}
        env.update(HOME=str(tmp_path), RAY_gcs_server_port_wait_time_s="3", **env_changes)
        code = (f"import ray\nray.init(address={address!r}, log_to_driver=False)\n"
                "print('ADMITTED', ray.cluster_resources().get('CPU'))\n")
        return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)

    for why, done in (("a wrong token", driver(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN="0" * 64)),
                      ("no token", driver(RAY_AUTH_MODE="disabled"))):
        assert "ADMITTED" not in done.stdout, why
        assert AUTH_REFUSAL in done.stderr, f"{why}: refused by Ray's authentication, not by chance"
    # The same driver with the cluster's token is let in: the refusals above were the token's doing.
    assert "ADMITTED 2.0" in driver(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_file)).stdout


# ---------------------------------------------------------------------------------------------------------
# The command line: a server stopped mid-job and started again
# ---------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def serving_one_worker(work: Path, log: Path) -> Iterator[BackendProcess]:
    """``python -m backend serve --workers 1`` on ``work``, ready; killed on the way out if still running."""
    backend = BackendProcess(work, log, ("--workers", "1"))
    try:
        backend.wait_ready(timeout_s=START_S)
        yield backend
    finally:
        if backend.proc.poll() is None:
            backend.kill9()


def resume_interrupted(client: Client, job: str) -> None:
    """Check that a restarted server lists ``job`` as interrupted, and resume it."""
    assert client.request(Message("status", {"job_id": job})).content["jobs"][0]["state"] == "interrupted"
    client.request(Message("resume", {"job_id": job}))


@pytest.mark.slow
def test_a_server_stopped_or_killed_mid_job_and_started_again_resumes_it(tmp_path: Path, capture: Path) -> None:
    work, total = tmp_path / "work", 100
    # 1. SIGTERM: the task saves its checkpoint and records 'interrupted'.
    with serving_one_worker(work, tmp_path / "serve1.log") as backend:  # the command line, as users run it
        with Client(backend.endpoint) as client:
            job = submit(client, "reconstruct", reconstruct_params(capture, total))
            first_checkpoint(work, job, total)
        assert backend.terminate(timeout_s=120) == 0
    record = job_record(work, job)
    assert record["state"] == "interrupted" and "'resume' continues" in record["error"]["message"], record
    ckpt_path = job_dir(work, job) / "outputs" / "checkpoint.pt"
    stopped_at = load_checkpoint(ckpt_path, "cpu").step
    assert 0 < stopped_at < total
    assert (work / "keys" / "ray_auth_token").is_file(), "the local cluster's token, made on first use"

    # 2. Started again, the job resumed, then kill -9 of the server: its Ray cluster and the task go with it.
    with serving_one_worker(work, tmp_path / "serve2.log") as backend:
        with Client(backend.endpoint) as client:
            resume_interrupted(client, job)
            wait_for(lambda: job_record(work, job)["state"] == "running"
                     and load_checkpoint(ckpt_path, "cpu").step > stopped_at, START_S, "a checkpoint after the resume")
        backend.kill9()
    killed_at = load_checkpoint(ckpt_path, "cpu").step
    assert stopped_at < killed_at < total and job_record(work, job)["state"] == "running"
    wait_for(lambda: lock_holder(job_dir(work, job)) is None, 60, "the job's Ray worker to die with its server")

    # 3. Started again: the job is interrupted, and resumes from its latest checkpoint to the end.
    with serving_one_worker(work, tmp_path / "serve3.log") as backend:
        with Client(backend.endpoint) as client:
            resume_interrupted(client, job)
            result = client.wait_job(job, timeout_s=300).content
        assert result["state"] == "done" and result["outputs"]["steps"] == total, result
        assert killed_at <= result["outputs"]["resumed_from_step"] < total
        assert backend.terminate(timeout_s=120) == 0
    assert f"job {job} (reconstruct) to Ray (resume 2)" in backend.log()
    assert job_record(work, job)["resumes"] == 2


# ---------------------------------------------------------------------------------------------------------
# Joining a cluster started with 'ray start'
# ---------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def ray_head(tmp_path: Path, auth: bool) -> Iterator[str]:
    """``ray start --head --block`` on a free port (token authentication on or off); yields its address."""
    port = free_port()
    token = tmp_path / "head_token"
    token.write_text("f" * 64)
    token.chmod(0o600)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(HOME=str(tmp_path), OMP_NUM_THREADS="1", RAY_AUTH_MODE="token" if auth else "disabled",
               RAY_AUTH_TOKEN_PATH=str(token))
    ray_cli = Path(sys.executable).parent / "ray"
    log = open(tmp_path / "ray_head.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([str(ray_cli), "start", "--head", f"--port={port}", "--num-cpus=1",
                             "--include-dashboard=false", "--disable-usage-stats", "--block"], env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: "Ray runtime started" in (tmp_path / "ray_head.log").read_text() or proc.poll() is not None,
                 START_S, "ray start")
        assert proc.poll() is None, (tmp_path / "ray_head.log").read_text()
        yield f"127.0.0.1:{port}"
    finally:
        proc.send_signal(signal.SIGTERM)  # --block: it stops every process it started
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.mark.slow
def test_joining_a_token_cluster_runs_jobs_there_and_an_open_cluster_is_refused(tmp_path: Path,
                                                                                capture: Path) -> None:
    for name in ("open", "secure"):
        (tmp_path / name).mkdir()
    with ray_head(tmp_path / "open", auth=False) as address:
        backend = BackendProcess(tmp_path / "work0", tmp_path / "refused.log",
                                 ("--ray-address", address, "--ray-token-file", str(tmp_path / "open" / "head_token")))
        try:
            assert backend.proc.wait(START_S) == 2
        finally:
            if backend.proc.poll() is None:
                backend.kill9()
        assert "lets in drivers without a token" in backend.log()
    with ray_head(tmp_path / "secure", auth=True) as address:
        backend = BackendProcess(tmp_path / "work", tmp_path / "joined.log",
                                 ("--ray-address", address, "--workers", "1", "--ray-token-file",
                                  str(tmp_path / "secure" / "head_token")))
        try:
            info = backend.wait_ready(timeout_s=START_S)
            assert info["gpu"]["name"] == f"1 worker (0 busy): Ray {address}, CPU"
            with Client(backend.endpoint) as client:
                job = submit(client, "reconstruct", reconstruct_params(capture, 5))
                result = client.wait_job(job, timeout_s=300).content
            assert result["state"] == "done" and result["outputs"]["steps"] == 5, result
            assert backend.terminate(timeout_s=120) == 0
        finally:
            if backend.proc.poll() is None:
                backend.kill9()
