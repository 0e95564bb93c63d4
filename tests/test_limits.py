"""Limits: over-size messages, the per-client queue limit, and out-of-memory failures of a job.

Each is refused or reported with an error that says what to do, and the server keeps serving afterwards.
"""

from __future__ import annotations

import math
import threading
import time
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import zmq
from test_server import counting_runner
from waits import HANG_S

from backend.jobstore.context import JobContext
from backend.jobstore.messages import error_for_exception
from backend.server.server import Server
from protocol import BackendError, Client, Limits, Message, ProtocolError, decode, encode

LIMIT = 1_000_000  # bytes: small, so that the test messages stay small too


def serve(srv: Server) -> threading.Thread:
    thread = threading.Thread(target=srv.serve, daemon=True)
    thread.start()
    assert srv.ready.wait(HANG_S)
    return thread


@pytest.fixture
def small_limits(tmp_path: Path) -> Iterator[Server]:
    srv = Server("tcp://127.0.0.1:*", tmp_path / "work", runners={"reconstruct": counting_runner},
                 limits=Limits(max_message_bytes=LIMIT), max_queued_per_client=2)
    thread = serve(srv)
    yield srv
    srv.stop()
    thread.join(HANG_S)


def upload(sizes: list[int]) -> Message:
    msg = Message("submit", {"kind": "reconstruct", "params": {"steps": 2}})
    msg.content["inputs"] = {f"part{i}": msg.add_blob(b"\0" * n, "zip") for i, n in enumerate(sizes)}
    return msg


def dealer(endpoint: str) -> zmq.Socket:
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RECONNECT_IVL, 50)
    sock.connect(endpoint)
    return sock


def test_an_oversize_upload_is_refused_and_the_server_keeps_serving(small_limits: Server) -> None:
    srv = small_limits
    with Client(srv.bound_endpoint) as client:
        assert client.handshake()["limits"]["max_message_bytes"] == LIMIT  # advertised, for clients to check
    sock = dealer(srv.bound_endpoint)
    try:
        # Every frame under the limit, the message over it: refused by the decoder, before anything is written.
        sock.send_multipart(encode(upload([600_000, 600_000])))
        assert sock.poll(HANG_S * 1000), "no answer to an over-size message"
        reply = decode(sock.recv_multipart())
        assert reply.type == "error" and reply.content["code"] == "too_large"
        assert f"over the limit of {LIMIT} bytes" in reply.content["message"]
        assert srv.store.all() == [] and not list((srv.store.jobs_dir).iterdir()), "nothing was written"
        # One frame over the limit: ZeroMQ itself drops the connection before reading it (MAXMSGSIZE), so a
        # huge upload never reaches memory. The socket reconnects by itself and is served again.
        sock.send_multipart(encode(upload([2 * LIMIT])))
        assert not sock.poll(1000), "the over-size frame got an answer"
        deadline = time.monotonic() + HANG_S
        while True:
            sock.send_multipart(encode(Message("status", {})))
            if sock.poll(500):
                assert decode(sock.recv_multipart()).type == "status_reply"
                break
            assert time.monotonic() < deadline, "the dropped client was not served again"
    finally:
        sock.close()
    # Other clients never noticed; a job under the limit runs.
    with Client(srv.bound_endpoint) as client:
        job = client.request(upload([1000])).content["job_id"]
        assert client.wait_job(job, timeout_s=HANG_S).content["state"] == "done"


def test_the_client_gets_the_oversize_error_as_the_answer_to_its_request(small_limits: Server) -> None:
    # Before any handshake the client does not know the limit: the backend refuses the message and answers it
    # by the msg_id in its header, so the request ends with the error at once rather than a timeout.
    with Client(small_limits.bound_endpoint) as client:
        # No timeout to end the wait: only the backend's answer can.
        with pytest.raises(BackendError) as err:
            client.request(upload([600_000, 600_000]), timeout_s=math.inf)
        assert err.value.code == "too_large"
        # After the handshake it knows the advertised limit and refuses locally, also a single frame over the
        # limit, which ZeroMQ would drop unanswered.
        client.handshake()
        with pytest.raises(ProtocolError) as local:
            client.request(upload([2 * LIMIT]), timeout_s=5)
        assert local.value.code == "too_large" and "limit" in local.value.message
        assert client.request(Message("status", {})).type == "status_reply"  # the connection is fine


def test_the_queue_limit_is_per_client_and_frees_up(small_limits: Server) -> None:
    srv = small_limits
    with Client(srv.bound_endpoint) as a, Client(srv.bound_endpoint) as b:
        running = a.request(Message("submit", {"kind": "reconstruct", "params": {"steps": 500}})).content["job_id"]
        deadline = time.monotonic() + HANG_S
        while srv.store.get(running).state != "running":
            assert time.monotonic() < deadline
            time.sleep(0.01)
        queued = [a.request(Message("submit", {"kind": "reconstruct", "params": {"steps": 1}})).content["job_id"]
                  for _ in range(2)]
        with pytest.raises(BackendError) as err:
            a.request(Message("submit", {"kind": "reconstruct", "params": {"steps": 1}}))
        assert err.value.code == "queue_full" and "limit 2" in str(err.value) and "cancel" in str(err.value)
        # Resuming an interrupted job queues it too, so it counts against the same allowance.
        interrupted = srv.store.create("reconstruct", {"steps": 1}, srv.store.get(queued[0]).owner)
        interrupted.state = "interrupted"
        srv.store.save(interrupted)
        with pytest.raises(BackendError) as err:
            a.request(Message("resume", {"job_id": interrupted.job_id}))
        assert err.value.code == "queue_full"
        assert srv.store.get(interrupted.job_id).state == "interrupted"
        # Another client has its own allowance.
        other = b.request(Message("submit", {"kind": "reconstruct", "params": {"steps": 1}})).content["job_id"]
        # Cancelling a queued job makes room again.
        assert a.request(Message("cancel", {"job_id": queued[0]})).content["state"] == "cancelled"
        again = a.request(Message("submit", {"kind": "reconstruct", "params": {"steps": 1}})).content["job_id"]
        a.request(Message("cancel", {"job_id": running}))
        for client, job in ((a, queued[1]), (b, other), (a, again)):
            assert client.wait_job(job, timeout_s=HANG_S).content["state"] == "done"
        assert srv.store.get(running).state == "cancelled"


# ---------------------------------------------------------------------------------------------------------
# Out of memory
# ---------------------------------------------------------------------------------------------------------


def out_of_memory_runner(held: list[weakref.ref]) -> Any:
    """A runner that fails like a CUDA allocation mid-job when ``steps`` is 7, holding memory when it does."""

    def run(ctx: JobContext) -> dict[str, Any]:
        if ctx.params.get("steps") != 7:
            return counting_runner(ctx)
        ctx.progress("training", 3, 7)
        activations = torch.empty(8_000_000)  # 32 MB the failed job holds in its frame when it raises
        held.append(weakref.ref(activations))
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (GPU 0; 79.19 GiB total "
                                     "capacity; 70.02 GiB already allocated)")

    return run


@pytest.mark.parametrize("device", ["cuda", "cpu"])
def test_out_of_memory_fails_the_job_with_advice_frees_memory_and_the_next_job_runs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, device: str) -> None:
    held: list[weakref.ref] = []
    emptied: list[bool] = []
    # The CUDA cache can only be observed on a GPU machine (tests/test_gpu_oom.py does); here the call itself is
    # recorded, with whether the failed job's tensors were already released when it was made.
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(held[0]() is None))
    srv = Server("tcp://127.0.0.1:*", tmp_path / "work", runners={"reconstruct": out_of_memory_runner(held)},
                 device=device)
    thread = serve(srv)
    try:
        with Client(srv.bound_endpoint) as client:
            job = client.request(Message("submit", {"kind": "reconstruct", "params": {"steps": 7}})).content[
                "job_id"]
            result = client.wait_job(job, timeout_s=HANG_S).content
            assert result["state"] == "failed" and result["error"]["code"] == "out_of_memory"
            message = result["error"]["message"]
            assert message.startswith("the GPU ran out of memory; try again with a lower 'scale'")
            assert "'fast' preset" in message and "Tried to allocate 20.00 GiB" in message
            assert srv.store.get(job).state == "failed"
            # The result goes out before the worker cleans up: wait for the worker to be idle.
            deadline = time.monotonic() + HANG_S
            while srv._worker.queue_length():
                assert time.monotonic() < deadline
                time.sleep(0.01)
            # On CUDA the cache is emptied once, after the job's memory was released; on the CPU there is none.
            assert emptied == ([True] if device == "cuda" else [])
            assert held[0]() is None, "the failed job's tensors are freed"
            # The same server runs the next job.
            nxt = client.request(Message("submit", {"kind": "reconstruct", "params": {"steps": 3}})).content[
                "job_id"]
            assert client.wait_job(nxt, timeout_s=HANG_S).content["state"] == "done"
    finally:
        srv.stop()
        thread.join(HANG_S)


def test_out_of_memory_advice_names_the_setting_of_each_job_kind() -> None:
    gpu = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    advice = {"reconstruct": "lower 'scale'", "stylize": "lower 'scale'", "render": "lower camera width and height",
              "extract_mesh": "lower 'resolution'"}
    for kind, setting in advice.items():
        error = error_for_exception(gpu, kind)
        assert error["code"] == "out_of_memory" and setting in error["message"], (kind, error)
    # PyTorch's CPU allocator and Python itself: the machine's memory, not the GPU's.
    host = error_for_exception(RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate "
                                   "memory: you tried to allocate 85899345920 bytes"), "reconstruct")
    assert host["code"] == "out_of_memory" and host["message"].startswith("the machine ran out of memory")
    assert error_for_exception(MemoryError(), "extract_mesh")["code"] == "out_of_memory"
    # Other failures are not mistaken for it.
    assert error_for_exception(ValueError("bad capture"), "reconstruct")["code"] == "job_failed"
