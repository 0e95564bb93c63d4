"""Session / job state driven by protocol-shaped messages, and the local backend process (no bpy)."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any

import pytest
from waits import HANG_S

from blender_addon.core.jobs import JobState, Session, format_bytes, format_duration
from blender_addon.core.local_backend import LocalBackend, build_command


@dataclass
class Msg:
    type: str
    content: dict[str, Any]
    parent_id: str | None = None
    buffers: list = field(default_factory=list)

    @property
    def job_id(self):
        v = self.content.get("job_id")
        return v if isinstance(v, str) else None


def connected_session() -> Session:
    s = Session()
    s.connecting("tcp://127.0.0.1:5555", "h1")
    events = s.apply(Msg("hello_reply", {"gpu": {"name": "H100", "memory_total": 80 * 2**30, "memory_free": 1},
                                         "queue_length": 2}, parent_id="h1"))
    assert [e.kind for e in events] == ["connected"]
    return s


def test_job_lifecycle_and_events():
    s = connected_session()
    assert s.status_line() == "connected to tcp://127.0.0.1:5555 (H100)"
    job = JobState("render", "render cam", frames_expected=2)
    s.submitted("m1", job)
    assert s.busy and job.status_line() == "render cam: sending…"
    assert [e.kind for e in s.apply(Msg("accepted", {"job_id": "j1", "position": 1}, parent_id="m1"))] == ["accepted"]
    assert job.job_id == "j1" and job.status_line() == "render cam: queued (position 2)"
    events = s.apply(Msg("progress", {"job_id": "j1", "stage": "rendering", "step": 0, "total": 2, "eta_s": 65.0,
                                      "preview": {"buffer": 0, "format": "png"}}))
    assert [e.kind for e in events] == ["stage", "preview"] and job.state == "running"
    assert [e.kind for e in s.apply(Msg("frame", {"job_id": "j1", "index": 0}))] == ["frame"]
    assert job.progress == 0.5 and job.status_line() == "render cam: rendering 1/2 frames ETA 1:05"
    assert s.current_job() is job
    # The next steps of the same stage only move the progress; a new stage is an event again.
    assert s.apply(Msg("progress", {"job_id": "j1", "stage": "rendering", "step": 1, "total": 2})) == []
    assert [e.kind for e in s.apply(Msg("progress", {"job_id": "j1", "stage": "encoding", "step": 1,
                                                     "total": 2}))] == ["stage"]
    assert s.apply(Msg("progress", {"job_id": "other", "stage": "x", "step": 1, "total": 2})) == []
    events = s.apply(Msg("result", {"job_id": "j1", "state": "done", "outputs": {"frames": 2}}))
    assert [e.kind for e in events] == ["finished"] and not s.busy and job.progress == 1.0


def test_errors_and_failures_set_readable_text():
    s = connected_session()
    job = JobState("stylize", "stylize 'x'")
    s.submitted("m1", job)
    events = s.apply(Msg("error", {"code": "invalid_field", "message": "field 'params.strength' must be at most 1",
                                   "field": "params.strength"}, parent_id="m1"))
    assert [e.kind for e in events] == ["error", "finished"]
    assert job.state == "failed" and "at most 1" in s.last_error and "params.strength" in s.last_error_detail
    s.clear_error()
    job2 = JobState("reconstruct", "rec")
    s.submitted("m2", job2)
    s.apply(Msg("accepted", {"job_id": "j2", "position": 0}, parent_id="m2"))
    s.apply(Msg("result", {"job_id": "j2", "state": "failed", "outputs": {},
                           "error": {"code": "out_of_memory", "message": "CUDA out of memory"}}))
    assert s.last_error == "rec failed: CUDA out of memory"
    assert s.last_error_detail.startswith("Code: out_of_memory\nWhat to do: Free GPU memory")
    s.apply(Msg("error", {"code": "malformed", "message": "undecodable message"}))
    assert s.last_error == "undecodable message"


def test_version_mismatch_on_hello_is_an_error_state():
    s = Session()
    s.connecting("tcp://h:1", "h1")
    s.apply(Msg("error", {"code": "version_mismatch", "message": "update the add-on"}, parent_id="h1"))
    assert s.state == "ERROR" and s.status_line() == "update the add-on"


def test_liveness_transitions():
    s = connected_session()
    assert s.check_liveness(True, 1.0, 5.0) is None
    assert s.check_liveness(False, 1.0, 5.0).kind == "error" and s.state == "LOST"
    assert "not responding" in s.status_line()
    assert s.check_liveness(True, 1.0, 5.0).kind == "connected" and s.state == "CONNECTED"
    s2 = Session()
    s2.connecting("tcp://127.0.0.1:9", "h")
    assert s2.check_liveness(False, 6.0, 5.0).kind == "error" and "Is it running" in s2.last_error
    # The backend was only slow to start: its hello_reply clears the error.
    s2.apply(Msg("hello_reply", {}, parent_id="h"))
    assert s2.state == "CONNECTED" and s2.last_error == ""


def test_disconnect_fails_unsent_jobs_and_status_reply_updates():
    s = connected_session()
    job = JobState("stylize", "s")
    s.submitted("m", job)
    s.disconnected()
    assert job.state == "failed" and not s.busy and s.status_line() == "not connected"
    s = connected_session()
    j = JobState("render", "r", job_id="j9", state="queued")
    s.track(j)
    s.apply(Msg("status_reply", {"jobs": [{"job_id": "j9", "state": "running", "stage": "rendering", "step": 3,
                                           "total": 10, "position": -1}]}))
    assert (j.state, j.stage, j.step, j.total) == ("running", "rendering", 3, 10)
    s.apply(Msg("cancel_reply", {"job_id": "j9", "state": "cancelled"}))
    assert j.state == "cancelled"


def test_formatting():
    assert format_duration(75) == "1:15" and format_duration(3700) == "1:01:40" and format_duration(-3) == "0:00"
    assert format_bytes(80 * 2**30) == "80.0 GiB" and format_bytes(5 * 2**20) == "5 MiB"


def test_local_backend_start_stop_and_crash(tmp_path):
    with pytest.raises(ValueError, match="set the backend's Python"):
        build_command("", "-m backend serve", "tcp://127.0.0.1:5555")
    with pytest.raises(ValueError, match="does not exist"):
        build_command(str(tmp_path / "nope"), "-m x", "e")
    cmd = build_command(sys.executable, "-c \"import sys, time; print(sys.argv[1]); sys.stdout.flush(); "
                        "time.sleep(3600)\" {endpoint}", "tcp://127.0.0.1:5555")
    assert cmd[-1] == "tcp://127.0.0.1:5555"
    lb = LocalBackend()
    lb.start(cmd, tmp_path, tmp_path / "logs" / "backend.log")
    assert lb.running
    with pytest.raises(ValueError, match="already running"):
        lb.start(cmd, tmp_path, tmp_path / "logs" / "backend.log")
    time.sleep(0.3)
    lb.stop()  # returns at once
    deadline = time.monotonic() + HANG_S
    msg = None
    while msg is None and time.monotonic() < deadline:
        msg = lb.service()
        time.sleep(0.02)
    assert msg == "local backend stopped" and not lb.running
    assert "tcp://127.0.0.1:5555" in lb.log_tail()
    crash = build_command(sys.executable, "-c \"import sys; print('ImportError: no torch'); sys.exit(3)\"", "e")
    lb.start(crash, None, tmp_path / "logs" / "backend.log")
    deadline = time.monotonic() + HANG_S
    msg = None
    while msg is None and time.monotonic() < deadline:
        msg = lb.service()
        time.sleep(0.02)
    assert msg is not None and "exited with code 3" in msg and "no torch" in msg
