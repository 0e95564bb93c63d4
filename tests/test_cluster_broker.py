"""The broker's rules (``serve --workers``), against MDP workers played by the test.

A :class:`FakeWorker` speaks MDP/0.2 on a DEALER socket the way ``python -m backend worker`` does, but runs
nothing: the test decides what it answers and when it falls silent. So every rule of the broker is checked
without a process or a model: least-recently-used dispatch, progress and results on to the client, heartbeat
expiry, re-queueing from the last checkpoint, the limit on lost workers, cancel, and DISCONNECT for peers that
break the protocol.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
from backend_process import wait_for
from test_server import serving

from backend import cli
from backend.cluster import mdp
from backend.cluster.broker import MAX_WORKER_LOSSES, Broker, ClusterConfig
from backend.cluster.local import devices_for, local_endpoint
from backend.cluster.worker import pin_cuda_device
from backend.server import auth
from backend.server.jobs import JobLock, JobStore
from backend.server.server import Server
from protocol import Client, Message, encode

HEARTBEAT_S = 0.5  # the broker's; a worker silent for 3 of them (1.5 s) is gone


class FakeWorker:
    """An MDP/0.2 worker run by a thread of the test: it heartbeats on its own (unless :attr:`silent`), queues
    every other command the broker sends, and sends what the test asks for."""

    def __init__(self, endpoint: str, name: str, curve: tuple[bytes, bytes, bytes] | None = None) -> None:
        self.identity = f"testhost/{name}/cpu/0".encode()
        self.curve = curve  # (the broker's public key, this worker's public and secret key)
        self.commands: queue.Queue[mdp.Command] = queue.Queue()
        self.silent = threading.Event()
        self._outgoing: queue.Queue[list[Any]] = queue.Queue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, args=(endpoint,), daemon=True)
        self._thread.start()

    def _loop(self, endpoint: str) -> None:
        sock = zmq.Context.instance().socket(zmq.DEALER)
        sock.setsockopt(zmq.ROUTING_ID, self.identity)
        sock.setsockopt(zmq.LINGER, 0)
        if self.curve is not None:
            sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = self.curve
        sock.connect(endpoint)
        last_told = time.monotonic()  # the first heartbeat after one interval: a READY sent at once comes first
        try:
            while not self._stop.is_set():
                while not self._outgoing.empty():
                    self._send_now(sock, self._outgoing.get())
                    last_told = time.monotonic()
                if not self.silent.is_set() and time.monotonic() - last_told > HEARTBEAT_S:
                    self._send_now(sock, mdp.heartbeat())
                    last_told = time.monotonic()
                if sock.poll(20):
                    command = mdp.parse(sock.recv_multipart())
                    if command.name != mdp.HEARTBEAT:
                        self.commands.put(command)
        finally:
            sock.close()

    @staticmethod
    def _send_now(sock: zmq.Socket, frames: list[Any]) -> None:
        with contextlib.suppress(zmq.Again):  # no connection (a refused CURVE handshake): the message is lost
            sock.send_multipart(frames, zmq.NOBLOCK)

    def send(self, frames: list[Any]) -> None:
        self._outgoing.put(frames)

    def ready(self, service: bytes = mdp.SERVICE) -> None:
        self.send([mdp.WORKER_PROTOCOL, mdp.READY, service])

    def next_command(self, timeout_s: float = 5.0) -> mdp.Command:
        try:
            return self.commands.get(timeout=timeout_s)
        except queue.Empty:
            raise AssertionError(f"worker {self.identity!r} got no command within {timeout_s} s") from None

    def request(self) -> tuple[str, dict[str, Any]]:
        """The next command, which must be a REQUEST: (job id, its body)."""
        command = self.next_command()
        assert command.name == mdp.REQUEST, command.label
        return command.address, json.loads(command.body[0])

    def partial(self, msg: Message) -> None:
        self.send(mdp.addressed(mdp.PARTIAL, msg.job_id, encode(msg)))

    def final(self, job_id: str, state: str = "done", outputs: dict[str, Any] | None = None) -> None:
        error = None if state in ("done", "cancelled") else {"code": state, "message": f"it ended {state}"}
        msg = Message("result", {"job_id": job_id, "state": state, "outputs": outputs or {}, "error": error})
        self.send(mdp.addressed(mdp.FINAL, job_id, encode(msg)))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Server]:
    with serving(tmp_path / "work", cluster=ClusterConfig(heartbeat_s=HEARTBEAT_S)) as srv:
        yield srv


@pytest.fixture
def workers(cluster: Server) -> Iterator[list[FakeWorker]]:
    made: list[FakeWorker] = []

    def make(n: int) -> list[FakeWorker]:
        for _ in range(n):
            made.append(FakeWorker(broker_of(cluster).bound_endpoint, str(len(made))))
            made[-1].ready()
            # One at a time, so that the order in which they became idle is known.
            wait_for(lambda: len(broker_of(cluster).workers()) == len(made), 5, "the worker's READY")
        return made

    yield make  # type: ignore[misc]
    for worker in made:
        worker.close()


def broker_of(srv: Server) -> Broker:
    assert isinstance(srv._worker, Broker)
    return srv._worker


def submit(client: Client, steps: int = 5) -> str:
    return client.request(Message("submit", {"kind": "reconstruct", "params": {"steps": steps}})).content["job_id"]


def progress(job_id: str, step: int) -> Message:
    return Message("progress", {"job_id": job_id, "stage": "training", "step": step, "total": 10, "eta_s": 1.0,
                                "losses": {"mse": 0.5}, "metrics": {}, "message": ""})


def test_oldest_job_to_the_longest_idle_worker_with_progress_and_results_on_to_the_client(
        cluster: Server, workers: Any) -> None:
    a, b = workers(2)
    with Client(cluster.bound_endpoint) as client:
        assert client.handshake()["gpu"]["name"].startswith("2 workers (0 busy)")
        jobs = [submit(client, steps) for steps in (3, 4, 5)]
        job_a, body = a.request()
        assert job_a == jobs[0] and body["record"]["params"] == {"steps": 3} and body["record"]["resumes"] == 0
        assert b.request()[0] == jobs[1]
        status = {j["job_id"]: j for j in client.request(Message("status", {})).content["jobs"]}
        assert [status[j]["state"] for j in jobs] == ["running", "running", "queued"]
        assert status[jobs[2]]["position"] == 1

        a.partial(progress(jobs[0], 7))
        seen: list[Message] = []
        a.final(jobs[0], outputs={"steps": 3, "psnr": 30.5})
        result = client.wait_job(jobs[0], on_message=seen.append, timeout_s=5).content
        assert result["state"] == "done" and result["outputs"] == {"steps": 3, "psnr": 30.5}
        assert [m.content["step"] for m in seen] == [7]
        # a is idle again and has been longest: it takes the third job while b still works.
        assert a.request()[0] == jobs[2]
        b.final(jobs[1], state="failed")
        a.final(jobs[2])
        assert client.wait_job(jobs[2], timeout_s=5).content["state"] == "done"
        failed = client.wait_job(jobs[1], timeout_s=5).content
        assert failed["state"] == "failed" and failed["error"]["message"] == "it ended failed"
        rec = cluster.store.get(jobs[0])
        assert (rec.state, rec.stage, rec.step, rec.outputs["psnr"]) == ("done", "training", 7, 30.5)
        assert rec.started is not None and rec.finished >= rec.started


def test_a_silent_worker_is_gone_and_its_job_continues_on_another(cluster: Server, workers: Any) -> None:
    a, b = workers(2)
    with Client(cluster.bound_endpoint) as client:
        job = submit(client)
        assert a.request()[0] == job
        a.partial(progress(job, 4))
        a.silent.set()  # hung: no heartbeats, no answers
        job_b, body = b.request()  # (after three silent heartbeat intervals: a speed, not asserted here)
        assert job_b == job and body["record"]["resumes"] == 1, "the runner continues from its checkpoint"
        assert [w.identity for w in broker_of(cluster).workers()] == [b.identity]
        seen: list[Message] = []
        b.final(job)
        assert client.wait_job(job, on_message=seen.append, timeout_s=5).content["state"] == "done"
        notes = [m.content["message"] for m in seen if m.type == "progress"]
        assert any("was lost (no word from it" in n and "continues from its last checkpoint" in n for n in notes)
        # A worker declared gone that speaks again is told to start over.
        a.silent.clear()
        assert a.next_command().name == mdp.DISCONNECT


def test_a_job_that_loses_every_worker_fails(cluster: Server, workers: Any) -> None:
    pool = workers(MAX_WORKER_LOSSES)
    with Client(cluster.bound_endpoint) as client:
        job = submit(client)
        for i, worker in enumerate(pool):
            job_id, body = worker.request()
            assert job_id == job and body["record"]["resumes"] == i
            worker.send(mdp.disconnect())  # it leaves with the job
        result = client.wait_job(job, timeout_s=5).content
        assert result["state"] == "failed" and result["error"]["code"] == "internal"
        assert f"{MAX_WORKER_LOSSES} workers were lost while running this job" in result["error"]["message"]
        assert cluster.store.get(job).state == "failed"


def test_an_interrupted_worker_hands_its_job_on(cluster: Server, workers: Any) -> None:
    a, b = workers(2)
    with Client(cluster.bound_endpoint) as client:
        job = submit(client)
        assert a.request()[0] == job
        a.final(job, state="interrupted")  # what a worker stopped with SIGTERM reports
        job_b, body = b.request()
        assert job_b == job and body["record"]["resumes"] == 1
        b.final(job)
        assert client.wait_job(job, timeout_s=5).content["state"] == "done"


def test_an_unreadable_result_fails_the_job_and_frees_the_worker(cluster: Server, workers: Any) -> None:
    (a,) = workers(1)
    with Client(cluster.bound_endpoint) as client:
        job, after = submit(client), submit(client)
        assert a.request()[0] == job
        a.send(mdp.addressed(mdp.FINAL, job, [b"not a protocol message"]))
        result = client.wait_job(job, timeout_s=5).content
        assert result["state"] == "failed" and "without a readable result" in result["error"]["message"]
        assert a.request()[0] == after


def test_cancel_reaches_the_job_on_its_worker(cluster: Server, workers: Any) -> None:
    (a,) = workers(1)
    with Client(cluster.bound_endpoint) as client:
        running, queued = submit(client), submit(client)
        assert a.request()[0] == running
        assert client.request(Message("cancel", {"job_id": queued})).content["state"] == "cancelled"
        assert client.request(Message("cancel", {"job_id": running})).content["state"] == "running"
        command = a.next_command()
        assert (command.name, command.address) == (mdp.CANCEL, running)
        a.final(running, state="cancelled")
        assert client.wait_job(running, timeout_s=5).content["state"] == "cancelled"
        assert client.wait_job(queued, timeout_s=5).content["state"] == "cancelled"
        # A cancelled job whose worker is lost before it answers ends cancelled, not queued again.
        job = submit(client)
        assert a.request()[0] == job
        client.request(Message("cancel", {"job_id": job}))
        assert a.next_command().name == mdp.CANCEL
        a.send(mdp.disconnect())
        assert client.wait_job(job, timeout_s=5).content["state"] == "cancelled"


def test_peers_that_break_the_protocol_are_disconnected(cluster: Server, workers: Any) -> None:
    endpoint = broker_of(cluster).bound_endpoint
    stranger = FakeWorker(endpoint, "stranger")  # heartbeats without READY
    wrong = FakeWorker(endpoint, "wrong")
    try:
        assert stranger.next_command().name == mdp.DISCONNECT
        wrong.ready(service=b"another.service")
        assert wrong.next_command().name == mdp.DISCONNECT
        (a,) = workers(1)
        a.send([b"not MDP", b"garbage"])  # dropped
        a.partial(progress("0123456789abcdef", 1))  # a job it does not run
        assert a.next_command().name == mdp.DISCONNECT
        wait_for(lambda: not broker_of(cluster).workers(), 5, "the worker to be forgotten")
        with Client(cluster.bound_endpoint) as client:
            assert client.handshake()["gpu"]["name"].startswith("0 workers")
    finally:
        stranger.close()
        wrong.close()


def test_only_authorised_worker_keys_join_a_curve_broker(tmp_path: Path) -> None:
    keys, _ = auth.load_or_create_server_keys(tmp_path / "keys")
    _, worker_secret = auth.new_client(keys.keys_dir, "gpu-box-2", workers=True)
    _, client_secret = auth.new_client(keys.keys_dir, "artist")  # a client's key is no worker's
    with serving(tmp_path / "work", cluster=ClusterConfig(heartbeat_s=HEARTBEAT_S, curve=keys)) as srv:
        endpoint = broker_of(srv).bound_endpoint
        others = [FakeWorker(endpoint, "stranger", (keys.public, *zmq.curve_keypair())),
                  FakeWorker(endpoint, "client", (keys.public, *auth.read_key_pair(client_secret))),
                  FakeWorker(endpoint, "plain")]
        good = FakeWorker(endpoint, "authorised", (keys.public, *auth.read_key_pair(worker_secret)))
        try:
            for worker in (*others, good):
                worker.ready()
            wait_for(lambda: [w.identity for w in broker_of(srv).workers()] == [good.identity], 5,
                     "the authorised worker")
            time.sleep(1.0)  # the handshakes of the others are long over: they never join
            assert [w.identity for w in broker_of(srv).workers()] == [good.identity]
            # Clients without CURVE still work: CURVE is on the worker endpoint only.
            with Client(srv.bound_endpoint) as client:
                job = submit(client)
                assert good.request()[0] == job
        finally:
            for worker in (*others, good):
                worker.close()


def test_jobs_another_process_held_at_start_settle_once_it_lets_go(tmp_path: Path) -> None:
    # What a quick restart of the server leaves: jobs its workers were still running (their locks held).
    store = JobStore(tmp_path / "work")
    finishing, dying = (store.create("reconstruct", {"steps": 3}, owner="cli") for _ in range(2))
    locks = []
    for rec in (finishing, dying):
        rec.state = "running"
        store.save(rec)
        locks.append(JobLock(store.job_dir(rec.job_id)))
        assert locks[-1].acquire()
    try:
        with serving(tmp_path / "work", cluster=ClusterConfig(heartbeat_s=HEARTBEAT_S)) as srv:
            assert {srv.store.get(r.job_id).state for r in (finishing, dying)} == {"running"}
            time.sleep(4 * HEARTBEAT_S)
            assert srv.store.get(finishing.job_id).state == "running", "held: another process runs it"
            finishing.state, finishing.outputs = "done", {"steps": 3}
            store.save(finishing)
            for lock in locks:  # one finished its job, the other died with its job running
                lock.release()
            wait_for(lambda: srv.store.get(finishing.job_id).state == "done", 5, "the finished job")
            wait_for(lambda: srv.store.get(dying.job_id).state == "interrupted", 5, "the interrupted job")
            assert srv.store.get(finishing.job_id).outputs == {"steps": 3}
    finally:
        for lock in locks:
            lock.release()


def test_the_command_line_refuses_what_would_expose_or_break_a_cluster(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    serve = ["serve", "--work-dir", str(tmp_path / "work"), "--device", "cpu", "--endpoint", "tcp://127.0.0.1:0"]
    assert cli.main([*serve, "--workers", "1", "--worker-endpoint", "tcp://0.0.0.0:5556"]) == 2
    assert "refusing to listen on tcp://0.0.0.0:5556" in capsys.readouterr().err
    assert cli.main([*serve, "--workers", "-1"]) == 2
    assert "--workers -1: give 0 or more" in capsys.readouterr().err
    assert cli.main([*serve, "--workers", "2", "--devices", "cpu,,cpu"]) == 2
    assert "holds an empty name" in capsys.readouterr().err
    worker = ["worker", "--work-dir", str(tmp_path / "work"), "--device", "cpu"]
    assert cli.main([*worker, "--connect", "tcp://10.1.2.3:5556"]) == 2
    assert "refusing to join tcp://10.1.2.3:5556 without CURVE" in capsys.readouterr().err
    assert cli.main([*worker, "--connect", "tcp://127.0.0.1:5556", "--server-key", "x"]) == 2
    assert "CURVE needs both --server-key" in capsys.readouterr().err
    assert cli.main([*worker, "--connect", "tcp://127.0.0.1:5556", "--device", "cuda:x"]) == 2
    assert "write cuda:0, cuda:1" in capsys.readouterr().err


def test_local_workers_devices_and_address(monkeypatch: pytest.MonkeyPatch) -> None:
    assert devices_for(3, "cpu", ("cuda:0", "cuda:0")) == ["cuda:0", "cuda:0", "cuda:0"]  # one GPU, named twice
    assert devices_for(2, "cpu") == ["cpu", "cpu"]
    assert local_endpoint("tcp://0.0.0.0:5556") == "tcp://127.0.0.1:5556"
    assert local_endpoint("tcp://127.0.0.1:41234") == "tcp://127.0.0.1:41234"
    # A worker on cuda:K sees GPU K of those visible to it, and only that one.
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert pin_cuda_device("cuda:1") == "cuda" and os.environ["CUDA_VISIBLE_DEVICES"] == "1"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6")
    assert pin_cuda_device("cuda:1") == "cuda" and os.environ["CUDA_VISIBLE_DEVICES"] == "6"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6")
    with pytest.raises(ValueError, match="lists 2 GPU"):
        pin_cuda_device("cuda:2")
    assert (pin_cuda_device("cpu"), pin_cuda_device("cuda")) == ("cpu", "cuda")
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "4,6", "only cuda:K narrows the GPUs"
