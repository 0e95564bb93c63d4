"""The backend server on loopback: the live session, the job machinery, shutdown, and malformed-input fuzzing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import zmq
from backend_process import listening_endpoint
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from waits import HANG_S, wait_until

from backend.access.endpoints import check_bind_endpoint
from backend.jobstore.context import JobContext, JobFailed
from backend.server.server import REQUEST_TYPES, Server
from protocol import DELIMITER, PROTOCOL_VERSION, BackendError, Client, Message, ProtocolError, decode, encode

ROOT = Path(__file__).resolve().parents[1]


def counting_runner(ctx: JobContext) -> dict[str, Any]:
    """A job runner for exercising the machinery: ``steps`` steps of 20 ms, progress and cancel at each."""
    steps = ctx.params.get("steps", 10)
    if steps == 13:
        raise JobFailed("thirteen steps are unlucky")
    for i in range(steps):
        ctx.check_cancel()
        time.sleep(0.02)
        ctx.progress("counting", i + 1, steps, eta_s=(steps - i - 1) * 0.02, losses={"loss": 1.0 / (i + 1)})
    (ctx.outputs_dir / "count.json").write_text(json.dumps({"steps": steps}))
    return {"file": "count.json", "steps": steps}


@contextmanager
def serving(work: Path, runners: dict[str, Any] | None = None, prepare: Callable[[Server], None] | None = None,
            **kwargs: Any) -> Iterator[Server]:
    """A :class:`Server` on a free loopback port, serving on a thread until the block ends.

    ``prepare`` is called with the server before it starts serving; ``kwargs`` go to :class:`Server`.
    """
    srv = Server("tcp://127.0.0.1:*", work, runners=runners or {"reconstruct": counting_runner}, **kwargs)
    if prepare is not None:
        prepare(srv)
    thread = threading.Thread(target=srv.serve, daemon=True)
    thread.start()
    assert srv.ready.wait(HANG_S)
    try:
        yield srv
    finally:
        srv.stop()
        thread.join(HANG_S)
        assert not thread.is_alive()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    with serving(tmp_path / "work") as srv:
        yield srv


def test_live_session_hello_submit_progress_cancel_status(server: Server) -> None:
    with Client(server.bound_endpoint, client_name="pytest") as client:
        info = client.handshake()
        assert info["protocol_version"] == PROTOCOL_VERSION and info["job_kinds"] == ["reconstruct"]
        assert info["gpu"]["name"] == "cpu" and info["session"] == server.session

        # A job runs to completion, streaming progress.
        accepted = client.request(Message("submit", {"kind": "reconstruct", "params": {"steps": 5}}))
        job_id = accepted.content["job_id"]
        seen: list[Message] = []
        result = client.wait_job(job_id, on_message=seen.append, timeout_s=HANG_S)
        assert result.content["state"] == "done" and result.content["outputs"]["steps"] == 5
        assert [m.content["step"] for m in seen][-1] == 5 and all(m.type == "progress" for m in seen)
        assert json.loads((server.store.job_dir(job_id) / "outputs" / "count.json").read_text()) == {"steps": 5}

        # A long job is cancelled mid-run, at its next step: no step starts after the cancel.
        long_id = client.request(Message("submit", {"kind": "reconstruct", "params": {"steps": 100_000}})).content[
            "job_id"]
        wait_until(lambda: any(m.type == "progress" and m.job_id == long_id for m in client.poll(0.05)),
                   "progress of the long job")
        reply = client.request(Message("cancel", {"job_id": long_id}))
        assert reply.type == "cancel_reply" and reply.content["state"] == "running"
        at_cancel = server.store.get(long_id).step  # the steps done when the cancel landed (or fewer)
        result = client.wait_job(long_id, timeout_s=HANG_S)
        assert result.content["state"] == "cancelled"
        assert server.store.get(long_id).step <= at_cancel + 1, "steps ran after the cancel"
        assert not (server.store.job_dir(long_id) / "outputs" / "count.json").exists()

        # Status lists both, with their final states.
        jobs = {j["job_id"]: j for j in client.request(Message("status", {})).content["jobs"]}
        assert jobs[job_id]["state"] == "done" and jobs[long_id]["state"] == "cancelled"
        with pytest.raises(BackendError) as err:
            client.request(Message("cancel", {"job_id": job_id}))
        assert err.value.code == "bad_state"


def test_jobs_queue_in_order_and_queued_jobs_cancel_at_once(server: Server) -> None:
    with Client(server.bound_endpoint) as client:
        ids = [client.request(Message("submit", {"kind": "reconstruct", "params": {"steps": s}})).content["job_id"]
               for s in (10, 10, 10)]
        reply = client.request(Message("cancel", {"job_id": ids[2]}))
        assert reply.content["state"] == "cancelled"
        for job_id in ids[:2]:
            assert client.wait_job(job_id, timeout_s=HANG_S).content["state"] == "done"
        recs = [server.store.get(i) for i in ids]
        assert recs[0].finished <= recs[1].started, "one job at a time, in order"
        assert recs[2].state == "cancelled" and recs[2].started is None


def test_failures_and_bad_requests_get_clear_errors(server: Server, tmp_path: Path) -> None:
    with Client(server.bound_endpoint) as client:
        failed = client.request(Message("submit", {"kind": "reconstruct", "params": {"steps": 13}})).content
        result = client.wait_job(failed["job_id"], timeout_s=HANG_S)
        assert result.content["state"] == "failed" and "unlucky" in result.content["error"]["message"]
        for content, code in [({"kind": "stylize", "params": {"source_job": "x", "prompt": "p"}}, "unknown_kind"),
                              ({"kind": "reconstruct", "params": {"steps": "ten"}}, "invalid_field"),
                              ({"kind": "reconstruct", "params": {"stepz": 1}}, "invalid_field")]:
            reply = raw_request(server.bound_endpoint, Message("submit", content))
            assert (reply.type, reply.content["code"]) == ("error", code), content
            if code == "invalid_field":  # the client checks before sending, too
                with pytest.raises(ProtocolError):
                    client.request(Message("submit", content))
        with pytest.raises(BackendError) as err:
            client.request(Message("status", {"job_id": "nope"}))
        assert err.value.code == "unknown_job"
        # Upload names cannot escape the job folder.
        msg = Message("submit", {"kind": "reconstruct", "params": {}})
        msg.content["inputs"] = {"../../escape": msg.add_blob(b"data", "zip")}
        reply = raw_request(server.bound_endpoint, msg)
        assert reply.type == "error" and reply.content["field"].startswith("inputs.")
        assert not list(tmp_path.rglob("escape*"))
        # Version mismatch on hello says which side to update.
        with pytest.raises(BackendError) as err:
            client.request(Message("hello", {"protocol_version": 0, "client": "old add-on"}))
        assert err.value.code == "version_mismatch" and "update the add-on" in str(err.value)


def raw_request(endpoint: str, msg: Message) -> Message:
    """Send ``msg`` without the client's own validation and return the server's answer."""
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    try:
        sock.send_multipart(encode(msg, validate=False))
        assert sock.poll(HANG_S * 1000), "no answer"
        return decode(sock.recv_multipart())
    finally:
        sock.close()


def test_vanished_client_does_not_stall_the_server(server: Server) -> None:
    gone = Client(server.bound_endpoint)
    gone.connect()
    job_id = gone.request(Message("submit", {"kind": "reconstruct", "params": {"steps": 20}})).content["job_id"]
    gone.close()  # vanishes mid-job, messages for it pile up nowhere
    with Client(server.bound_endpoint) as other:
        other.handshake(timeout_s=HANG_S)  # a server stalled on the vanished client would never answer
        wait_until(lambda: server.store.get(job_id).state == "done", "the vanished client's job to finish")
        # Reattaching re-sends the finished job's result.
        reply = other.request(Message("attach", {"job_id": job_id}))
        assert reply.content["jobs"][0]["state"] == "done"
        assert other.wait_job(job_id, timeout_s=HANG_S).content["outputs"]["steps"] == 20


def test_heartbeats_show_a_dead_backend(server: Server) -> None:
    with Client(server.bound_endpoint, heartbeat_interval_s=0.1) as client:
        client.handshake()
        assert client.alive(1.0)
        server.stop()
        time.sleep(1.2)
        client.poll(0.01)
        assert not client.alive(1.0)


def test_non_loopback_endpoints_are_refused_without_the_flag() -> None:
    for endpoint in ("tcp://0.0.0.0:5555", "tcp://*:5555", "tcp://192.168.1.4:5555", "tcp://example.com:1"):
        with pytest.raises(ValueError, match="--allow-remote"):
            check_bind_endpoint(endpoint, allow_remote=False)
        check_bind_endpoint(endpoint, allow_remote=True)
    for endpoint in ("tcp://127.0.0.1:5555", "tcp://localhost:1", "tcp://[::1]:5555", "ipc:///tmp/x"):
        check_bind_endpoint(endpoint, allow_remote=False)
    with pytest.raises(ValueError, match="must look like"):
        check_bind_endpoint("udp://127.0.0.1", allow_remote=False)


def test_restart_marks_running_jobs_interrupted_and_requeues_queued(tmp_path: Path) -> None:
    srv = Server("tcp://127.0.0.1:*", tmp_path / "w", runners={"reconstruct": counting_runner})
    running = srv.store.create("reconstruct", {"steps": 3}, owner="aa")
    queued = srv.store.create("reconstruct", {"steps": 3}, owner="aa")
    running.state = "running"
    srv.store.save(running)
    srv2 = Server("tcp://127.0.0.1:*", tmp_path / "w", runners={"reconstruct": counting_runner})
    assert srv2.store.get(running.job_id).state == "interrupted"
    thread = threading.Thread(target=srv2.serve, daemon=True)
    thread.start()
    wait_until(lambda: srv2.store.get(queued.job_id).state == "done", "the requeued job to run")
    srv2.stop()
    thread.join(HANG_S)


# ----------------------------------------------------------------------------------------------------------
# A real server process: signals and fuzzing
# ----------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path, subprocess.Popen]]:
    root = tmp_path_factory.mktemp("served")
    log = tmp_path_factory.mktemp("served-log") / "serve.log"  # outside root: the test checks what root holds
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "backend", "serve", "--endpoint", "tcp://127.0.0.1:*",
                                 "--work-dir", str(root / "work"), "--device", "cpu"], cwd=root, env=env,
                                stdout=out, stderr=subprocess.STDOUT)
    endpoint = listening_endpoint(log, 0, proc)
    with Client(endpoint) as client:
        client.handshake(timeout_s=HANG_S)
    yield endpoint, root, proc
    proc.send_signal(signal.SIGTERM)
    proc.wait(HANG_S)
    assert proc.returncode == 0, log.read_text()[-2000:]
    assert "backend stopped" in log.read_text()


json_values = st.recursive(st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats(allow_nan=False)
                           | st.text(max_size=20), lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=12)
message_types = st.sampled_from(["hello", "submit", "cancel", "status", "attach", "heartbeat", "progress",
                                 "result", "bogus", ""])
# What killed the backend in issue 13, each a shape of message the fuzzer draws (see killer_frames).
KILLERS = ("surrogate", "nesting", "number", "long_string", "frame_trick")
lone_surrogates = st.sampled_from(["\ud800", "\udfff", "x\udc80y", "\udbff"])


@st.composite
def labelled_messages(draw: st.DrawFn) -> tuple[str, list[bytes]]:
    """``(shape, frames)``: multipart messages from raw garbage to nearly valid ones with one thing wrong, and
    the classes of message that used to kill the backend (:data:`KILLERS`)."""
    shape = draw(st.sampled_from(["raw", "structured", "structured", "structured", *KILLERS]))
    if shape == "raw":
        return shape, draw(st.lists(st.binary(max_size=64), min_size=1, max_size=6))
    header = {"v": draw(st.sampled_from([PROTOCOL_VERSION] * 3 + [PROTOCOL_VERSION + 1, "1", None])),
              "msg_id": draw(st.text(min_size=1, max_size=8)), "msg_type": draw(message_types), "session": "",
              "date": 0.0, "parent_id": None}
    if shape == "structured" and draw(st.booleans()):
        header.pop(draw(st.sampled_from(sorted(header))))
    content = draw(st.dictionaries(st.sampled_from(["kind", "params", "job_id", "protocol_version", "client",
                                                    "inputs", "x"]), json_values, max_size=4))
    if shape in KILLERS:
        header["v"] = PROTOCOL_VERSION
        return shape, killer_frames(draw, shape, header, content)
    frames = [DELIMITER, draw(st.sampled_from([b"", b"abc"])), json.dumps(header).encode(),
              json.dumps(content).encode()]
    frames += draw(st.lists(st.binary(max_size=32), max_size=3))
    if draw(st.booleans()):
        i = draw(st.integers(0, len(frames) - 1))
        frames[i] = draw(st.binary(max_size=40))
    return shape, frames


def killer_frames(draw: st.DrawFn, shape: str, header: dict[str, Any], content: dict[str, Any]) -> list[bytes]:
    """A message of one killer class, built on a plausible header and content."""
    msg_type = draw(st.sampled_from(["hello", "submit", "cancel", "status", "attach"]))
    header["msg_type"] = msg_type
    if msg_type == "submit":
        content.update(kind=draw(st.sampled_from(["reconstruct", "stylize", "render"])), params={})
    buffers = draw(st.lists(st.binary(max_size=16), max_size=2))
    head, body = json.dumps(header).encode(), json.dumps(content).encode()
    if shape == "surrogate":  # json.dumps writes a lone surrogate as a \ud800 escape, which json.loads reads back
        where = draw(st.sampled_from(["msg_id", "job_id", "client", "param", "prompt", "key"]))
        bad = draw(lone_surrogates)
        if where == "msg_id":
            head = json.dumps({**header, "msg_id": bad}).encode()
        elif where in ("param", "prompt"):
            params = {bad: 1} if where == "param" else {"source_job": "0" * 16, "prompt": bad}
            body = json.dumps({**content, "kind": "stylize", "params": params}).encode()
        else:
            body = json.dumps({**content, {"job_id": "job_id", "client": "client", "key": bad}[where]: bad}).encode()
    elif shape == "nesting":
        depth = draw(st.sampled_from([33, 200, 3000, 50_000]))
        nested = b"[" * depth + b"]" * depth
        if draw(st.booleans()) and depth < 5000:  # the header frame is limited to 16 KiB
            head = head[:-1] + b', "x": ' + nested + b"}"
        else:
            body = body[:-1] + (b", " if content else b"") + b'"x": ' + nested + b"}"
    elif shape == "number":
        number = draw(st.sampled_from([b"1e400", b"-1e400", b"NaN", b"Infinity", b"-Infinity", b"1" + b"0" * 30]))
        key = draw(st.sampled_from([b'"steps"', b'"fx"', b'"x"', b'"date"']))
        body = body[:-1] + (b", " if content else b"") + key + b": " + number + b"}"
    elif shape == "long_string":
        text = "x" * draw(st.integers(4_097, 12_000))
        where = draw(st.sampled_from(["msg_type", "job_id", "param", "client"]))
        if where == "msg_type":
            head = json.dumps({**header, "msg_type": text}).encode()
        elif where == "param":
            body = json.dumps({**content, "kind": "reconstruct", "params": {text: 1}}).encode()
        else:
            body = json.dumps({**content, where: text}).encode()
    elif draw(st.booleans()):  # frame_trick: one byte moved from one buffer frame to the next ...
        buffers = [b"abcde", b"fgh"]
    else:  # ... or empty frames appended (past 64 frames in all, too)
        buffers = buffers + [b""] * draw(st.integers(1, 70))
    return [DELIMITER, draw(st.sampled_from([b"", b"abc"])), head, body, *buffers]


JOB_STREAM = ("progress", "frame", "mesh", "result")


def answer(sock: zmq.Socket, timeout_s: float, frames: list[bytes]) -> Message:
    """The answer to the message just sent on ``sock``, skipping the messages of jobs that earlier fuzzed
    submits started (a fuzzed submit is sometimes valid, and its job's messages come to this socket too)."""
    deadline = time.monotonic() + timeout_s
    while True:
        remaining_ms = int(max(0.0, deadline - time.monotonic()) * 1000)
        assert sock.poll(remaining_ms), f"no answer to {frames!r}"
        reply = decode(sock.recv_multipart())
        if reply.type not in JOB_STREAM:
            return reply


def malformed_messages() -> st.SearchStrategy[list[bytes]]:
    """The frames of :func:`labelled_messages`."""
    return labelled_messages().map(lambda labelled: labelled[1])


def test_fuzzed_messages_all_get_answers_and_the_server_keeps_serving(server_process) -> None:
    endpoint, root, proc = server_process
    before = {p for p in root.rglob("*") if "work" not in p.relative_to(root).parts}
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    answered = 0

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), database=None,
              derandomize=True)
    @given(malformed_messages())
    def check(frames: list[bytes]) -> None:
        nonlocal answered
        sock.send_multipart(frames)
        reply = answer(sock, HANG_S, frames)
        answered += 1
        try:
            valid_request = decode(frames).type in REQUEST_TYPES
        except ProtocolError:
            valid_request = False
        if not valid_request:
            assert reply.type == "error", f"{frames!r} got {reply.type}"
            assert reply.content["message"]

    try:
        check()
    finally:
        sock.close()
    assert answered >= 150
    assert proc.poll() is None, "the server died"
    with Client(endpoint) as client:
        assert client.handshake()["protocol_version"] == PROTOCOL_VERSION
    after = {p for p in root.rglob("*") if "work" not in p.relative_to(root).parts}
    assert after == before, f"written outside the work dir: {sorted(after - before)}"


def test_encoded_requests_from_a_raw_socket_work(server_process) -> None:
    endpoint, _, _ = server_process
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    try:
        sock.send_multipart(encode(Message("status", {})))
        assert sock.poll(HANG_S * 1000)
        assert decode(sock.recv_multipart()).type == "status_reply"
    finally:
        sock.close()


def test_a_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    ctx = zmq.Context.instance()
    taken = ctx.socket(zmq.REP)
    taken.setsockopt(zmq.LINGER, 0)
    port = taken.bind_to_random_port("tcp://127.0.0.1")
    try:
        srv = Server(f"tcp://127.0.0.1:{port}", tmp_path / "work", runners={})
        with pytest.raises(ValueError, match="already listening there"):
            srv.serve()
    finally:
        taken.close()
