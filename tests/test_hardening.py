"""One message of each kind that used to kill the backend, against a real backend process, which must answer
every one and then still say hello and run a job.

Issue 13 found them: deep nesting (a RecursionError), lone UTF-16 surrogates in ids, names and texts (a
UnicodeEncodeError while answering), error texts over the 4,096-character limit (an error reply that failed
its own validation), numbers that overflow to infinity and nested extras in job parameters (ghost jobs that
could not be saved), paths that broke the job worker, and, with signing on, the same messages without the key
(the header was parsed before the signature was checked), frame tricks that kept a signature valid, and
replays. Each runs once here, unsigned against a plain backend, and signed and unsigned against one with an
HMAC key. The backend's log must hold no traceback: none of them may even reach an unexpected exception.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
from backend_process import BackendProcess, submit
from test_jobs_live import write_sphere_capture
from test_server import counting_runner
from waits import HANG_S

from backend.server.server import Server
from protocol import DELIMITER, PROTOCOL_VERSION, BackendError, Client, Message, Signer, decode, encode

KEY = b"hardening-test-key"
DEEP = 5_000  # deeper than the JSON parser's recursion limit (and still under the header's 16 KiB)
NESTED = 500  # parses, but deeper than the protocol allows
LONE = "\ud800"


def header(msg_type: str, session: str, **changes: Any) -> dict[str, Any]:
    return {"v": PROTOCOL_VERSION, "msg_id": uuid.uuid4().hex, "msg_type": msg_type, "session": "attacker",
            "date": time.time(), "parent_id": None, "to_session": session, **changes}


def frames(head: dict[str, Any] | bytes, content: dict[str, Any] | bytes, *buffers: bytes) -> list[bytes]:
    """Unsigned frames; dicts are dumped by ``json`` as it is (lone surrogates become ``\\ud800`` escapes)."""
    as_bytes = [x if isinstance(x, bytes) else json.dumps(x).encode() for x in (head, content)]
    return [DELIMITER, b"", *as_bytes, *buffers]


def signed(message: list[bytes], key: bytes = KEY) -> list[bytes]:
    return [message[0], Signer(key).sign(message[2:]), *message[2:]]


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def camera(**extra: Any) -> dict[str, Any]:
    return {"name": "Camera", "frame": 1, "c2w": [[1.0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]],
            "fx": 20.0, "fy": 20.0, "cx": 12.0, "cy": 12.0, "width": 24, "height": 24, **extra}


def killers(session: str) -> list[tuple[str, list[bytes], tuple[str, ...]]]:
    """(what, unsigned frames, the error codes that may answer it) for every class of issue 13."""
    h = lambda msg_type, **kw: header(msg_type, session, **kw)  # noqa: E731
    render = {"kind": "render", "params": {"source_job": "0" * 16, "cameras": [camera()]}}
    render_json = json.dumps(render).encode()
    upload = Message("submit", {"kind": "reconstruct", "params": {}})
    shared = upload.add_blob(b"\0" * 4096, "zip")
    upload.content["inputs"] = {f"frame{i}": shared for i in range(60)}
    return [
        # 1. Messages that killed the process.
        ("header nested past the parser's limit", frames(b'{"v":2,"x":' + nested(DEEP) + b"}", {}), ("malformed",)),
        ("header nested past the protocol's limit", frames(b'{"x":' + nested(NESTED) + b"}", {}), ("malformed",)),
        ("content nested past the parser's limit", frames(h("status"), b'{"x":' + nested(DEEP) + b"}"),
         ("malformed",)),
        ("content nested past the protocol's limit", frames(h("status"), b'{"x":' + nested(NESTED) + b"}"),
         ("malformed",)),
        ("lone surrogate in msg_id", frames(h("status", msg_id=LONE), {}), ("malformed",)),
        ("lone surrogate in job_id", frames(h("cancel"), {"job_id": LONE}), ("malformed",)),
        ("lone surrogate in a parameter name", frames(h("submit"), {"kind": "reconstruct", "params": {LONE: 1}}),
         ("malformed",)),
        ("lone surrogate in the client name", frames(h("hello"), {"protocol_version": PROTOCOL_VERSION,
                                                                  "client": LONE}), ("malformed",)),
        ("an error text over 4096 characters (parameter name)",
         frames(h("submit"), {"kind": "reconstruct", "params": {"p" * 4090: 1}}), ("invalid_field",)),
        ("an error text over 4096 characters (message type)", frames(h("x" * 12_000), {}), ("unknown_type",)),
        # 2. Job parameters that killed the worker.
        ("lone surrogate in capture_path", frames(h("submit"), {"kind": "reconstruct", "params": {
            "capture_path": "/tmp/" + LONE}}), ("malformed",)),
        # 3. Ghost jobs: valid-looking, unsavable.
        ("1e400 in an extra camera field", frames(h("submit"), render_json.replace(b'"width"', b'"extra":1e400,'
                                                                                  b'"width"')), ("invalid_field",)),
        ("1e400 in a camera's focal length", frames(h("submit"), render_json.replace(b'"fx": 20.0', b'"fx": 1e400')),
         ("invalid_field",)),
        ("NaN in a parameter", frames(h("submit"), b'{"kind":"reconstruct","params":{"scale":NaN}}'), ("malformed",)),
        ("nesting in an extra camera field", frames(h("submit"), {"kind": "render", "params": {
            "source_job": "0" * 16, "cameras": [camera(extra=[[[[[[1]]]]]])]}}), ("invalid_field",)),
        ("an integer beyond 64 bits", frames(h("submit"), {"kind": "reconstruct", "params": {"steps": 10**30}}),
         ("invalid_field",)),
        # 4. What broke status(all) for everyone once stored.
        ("lone surrogate in a prompt", frames(h("submit"), {"kind": "stylize", "params": {
            "source_job": "0" * 16, "prompt": "a marble " + LONE}}), ("malformed",)),
        ("lone surrogate in a camera name", frames(h("submit"), {"kind": "render", "params": {
            "source_job": "0" * 16, "cameras": [camera(name=LONE)]}}), ("malformed",)),
        # 5. One frame named by 60 inputs (252 MB written from 4 MB sent).
        ("one frame named by 60 inputs", [DELIMITER, b"", *encode(upload, validate=False)[2:]], ("invalid_field",)),
    ]


def signature_tricks(session: str) -> list[tuple[str, list[bytes]]]:
    """Signed messages altered so that a v1 signature would still have checked (item 7)."""
    status = signed(frames(header("status", session), {}, b"abcd", b"efgh"))
    moved = [*status[:4], b"abcde", b"fgh"]  # one byte moved from the second buffer to the first
    appended = [*signed(frames(header("status", session), {})), b""]
    return [("bytes moved between buffer frames", moved), ("an empty frame appended", appended)]


class Probe:
    """A raw DEALER socket that sends exactly the frames given and decodes each answer."""

    def __init__(self, endpoint: str, key: bytes | None = None) -> None:
        self.sock = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)
        self.signer = Signer(key)

    def ask(self, what: str, message: list[bytes]) -> Message:
        self.sock.send_multipart(message)
        assert self.sock.poll(HANG_S * 1000), f"no answer to: {what}"
        return decode(self.sock.recv_multipart(), self.signer)

    def close(self) -> None:
        self.sock.close()


def still_serves(backend: BackendProcess, capture: Path, key: bytes | None) -> None:
    """The process lives, answers hello and status, runs a tiny job, and logged no traceback."""
    assert backend.proc.poll() is None, f"the backend died:\n{backend.log()[-3000:]}"
    with Client(backend.endpoint, hmac_key=key, client_name="after the killers") as client:
        assert client.handshake(timeout_s=HANG_S)["protocol_version"] == PROTOCOL_VERSION
        jobs = client.request(Message("status", {}), timeout_s=HANG_S).content["jobs"]
        job = submit(client, "reconstruct", {"capture_path": str(capture), "preset": "tiny", "steps": 3,
                                             "holdout_every": 0})
        assert client.wait_job(job, timeout_s=HANG_S).content["state"] == "done"
    ghosts = [j for j in jobs if j["state"] == "queued"]
    assert not ghosts, f"jobs left queued by the killers: {ghosts}"
    assert "Traceback" not in backend.log(), backend.log()[-5000:]


@pytest.fixture(scope="module")
def capture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_sphere_capture(tmp_path_factory.mktemp("hardening") / "capture")


@pytest.fixture
def plain_backend(tmp_path: Path) -> Iterator[BackendProcess]:
    backend = BackendProcess(tmp_path / "work", tmp_path / "backend.log")
    try:
        yield backend
    finally:
        backend.terminate()


@pytest.fixture
def signing_backend(tmp_path: Path) -> Iterator[BackendProcess]:
    key_file = tmp_path / "hmac.key"
    key_file.write_bytes(KEY)
    backend = BackendProcess(tmp_path / "work", tmp_path / "backend.log", ("--hmac-key-file", str(key_file)), KEY)
    try:
        yield backend
    finally:
        backend.terminate()


def bad_path_job(client: Client) -> None:
    """Item 2: the path that broke the worker (its error quoted it past the limit) fails its job; the worker
    goes on (:func:`still_serves` runs the next job)."""
    job = submit(client, "reconstruct", {"capture_path": "/" + "../" * 900, "preset": "tiny"})
    result = client.wait_job(job, timeout_s=HANG_S).content
    assert result["state"] == "failed" and result["error"]["code"] == "job_failed", result
    assert 0 < len(result["error"]["message"]) <= 2000


@pytest.mark.slow
def test_every_killer_is_answered_by_a_plain_backend_which_then_still_serves(plain_backend: BackendProcess,
                                                                             capture: Path) -> None:
    session = plain_backend.wait_ready()["session"]
    probe = Probe(plain_backend.endpoint)
    try:
        for what, message, codes in killers(session):
            reply = probe.ask(what, message)
            assert reply.type == "error" and reply.content["code"] in codes, (what, reply.content)
            assert len(reply.content["message"]) <= 2000, what
    finally:
        probe.close()
    with Client(plain_backend.endpoint) as client:
        bad_path_job(client)
    still_serves(plain_backend, capture, None)


@pytest.mark.slow
def test_every_killer_signed_or_not_is_answered_by_a_signing_backend_which_then_still_serves(
        signing_backend: BackendProcess, capture: Path) -> None:
    session = signing_backend.wait_ready()["session"]
    probe = Probe(signing_backend.endpoint, KEY)
    try:
        for what, message, codes in killers(session):
            # Without the key: refused before anything is parsed, and not answered by the id it claims.
            reply = probe.ask(what, message)
            assert reply.type == "error" and reply.content["code"] == "unauthorized", (what, reply.content)
            assert reply.parent_id is None, what
            # With the key: the same answer as a plain backend gives.
            reply = probe.ask(what, signed(message))
            assert reply.type == "error" and reply.content["code"] in codes, (what, reply.content)
        for what, message in signature_tricks(session):
            reply = probe.ask(what, message)
            assert reply.content["code"] == "unauthorized" and "signature" in reply.content["message"], what
        again = signed(frames(header("status", session), {}))
        assert probe.ask("a status", again).type == "status_reply"
        reply = probe.ask("the same status replayed", again)
        assert reply.content["code"] == "unauthorized" and "replayed" in reply.content["message"]
        reply = probe.ask("a status for another session", signed(frames(header("status", "0" * 32), {})))
        assert reply.content["code"] == "unauthorized" and "restarted" in reply.content["message"]
    finally:
        probe.close()
    with Client(signing_backend.endpoint, hmac_key=KEY) as client:
        bad_path_job(client)
    still_serves(signing_backend, capture, KEY)


def test_a_signed_submit_replayed_after_a_restart_is_refused(tmp_path: Path) -> None:
    """Item 7: the replay window is per process, so the header names the backend's session, which is signed."""

    def start() -> tuple[Server, threading.Thread]:
        srv = Server("tcp://127.0.0.1:*", tmp_path / "work", runners={"reconstruct": counting_runner},
                     hmac_key=KEY)
        thread = threading.Thread(target=srv.serve, daemon=True)
        thread.start()
        assert srv.ready.wait(HANG_S)
        return srv, thread

    srv, thread = start()
    with Client(srv.bound_endpoint, hmac_key=KEY) as client:
        client.handshake()
        captured = Message("submit", {"kind": "reconstruct", "params": {"steps": 2}}, to_session=srv.session)
        wire = encode(captured, Signer(KEY))
        probe = Probe(srv.bound_endpoint, KEY)
        assert probe.ask("a signed submit", wire).type == "accepted"
        assert probe.ask("the same submit again", wire).content["code"] == "unauthorized"
        probe.close()
    srv.stop()
    thread.join(HANG_S)
    srv, thread = start()  # a new process: a new session and an empty replay history
    try:
        probe = Probe(srv.bound_endpoint, KEY)
        reply = probe.ask("the submit replayed after the restart", wire)
        probe.close()
        assert reply.content["code"] == "unauthorized" and "restarted" in reply.content["message"]
        assert len(srv.store.all()) == 1, "the replay made a second job"
        # A client that knew the old session says hello again by itself and is served.
        with Client(srv.bound_endpoint, hmac_key=KEY) as client:
            client.peer_session = "an earlier run"
            with pytest.raises(BackendError) as err:
                client.request(Message("status", {}))
            assert err.value.code == "unauthorized"
            client.handshake()
            assert client.request(Message("status", {})).type == "status_reply"
    finally:
        srv.stop()
        thread.join(HANG_S)
