"""Connection and job state, driven by protocol messages. Pure Python: the bpy layer only displays it.

:class:`Session` consumes every message the client drains (duck-typed: ``.type``, ``.content``,
``.parent_id``, ``.job_id``) and returns :class:`Event` objects for the things Blender must act on (a frame to
save, a mesh to import, a preview to show, a job that finished). Everything a panel draws (connection state,
GPU, queue, per-job stage and progress, the last error) is read from here, so the panel code stays trivial and
this logic is tested without Blender.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from .advice import in_panel_words

CONNECTION_STATES = ("DISCONNECTED", "CONNECTING", "CONNECTED", "LOST", "ERROR")
ACTIVE_STATES = ("submitting", "queued", "running")
FINAL_STATES = ("done", "failed", "cancelled", "interrupted", "lost")


@dataclass
class JobState:
    """What the add-on knows about one job."""

    kind: str
    label: str = ""
    job_id: str | None = None  # None until the backend accepts it
    state: str = "submitting"
    position: int = -1
    stage: str = ""
    step: int = 0
    total: int = 0
    eta_s: float | None = None
    message: str = ""
    losses: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    outputs: dict[str, Any] = field(default_factory=dict)
    error: str = ""
    error_code: str = ""
    frames_received: int = 0
    frames_expected: int = 0
    params: dict[str, Any] = field(default_factory=dict)
    submit_msg_id: str | None = None
    updated: float = field(default_factory=time.monotonic)
    meta: dict[str, Any] = field(default_factory=dict)  # the bpy layer's bookkeeping (scene, output folder...)

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES

    @property
    def progress(self) -> float:
        """0..1 within the current stage (frames for render jobs), 0 if unknown."""
        if self.state == "done":
            return 1.0
        if self.kind == "render" and self.frames_expected:
            return min(1.0, self.frames_received / self.frames_expected)
        return min(1.0, self.step / self.total) if self.total > 0 else 0.0

    def status_line(self) -> str:
        """One line for the panel and the status bar, e.g. ``stylize: training 120/400 (ETA 1:05)``."""
        name = self.label or self.kind
        if self.state == "submitting":
            return f"{name}: sending…"
        if self.state == "queued":
            return f"{name}: queued" + (f" (position {self.position + 1})" if self.position >= 0 else "")
        if self.state == "running":
            parts = [f"{name}: {self.stage or 'running'}"]
            if self.kind == "render" and self.frames_expected:
                parts.append(f"{self.frames_received}/{self.frames_expected} frames")
            elif self.total:
                parts.append(f"{self.step}/{self.total}")
            if self.eta_s is not None and self.eta_s >= 0:
                parts.append(f"ETA {format_duration(self.eta_s)}")
            return " ".join(parts)
        if self.state == "failed":
            return f"{name}: failed — {self.error}" if self.error else f"{name}: failed"
        return f"{name}: {self.state}"


@dataclass
class Event:
    """Something the bpy layer must act on.

    ``kind`` is one of ``"frame"``, ``"mesh"``, ``"preview"``, ``"finished"``, ``"accepted"``, ``"error"``,
    ``"connected"``, ``"status"``, ``"stage"`` (a job started running or entered another stage); ``job`` is the job concerned (if any) and ``message`` the protocol
    message (its buffers hold the payload).
    """

    kind: str
    job: JobState | None = None
    message: Any = None


# What to do about each error code (protocol/errors.py), shown under the backend's message in the details:
# the message says what went wrong, the hint where to fix it in the add-on.
ERROR_HINTS = {
    "malformed": "The add-on and the backend disagree about the message format or signature: check the Signing "
                 "Key in the add-on preferences, and that both come from the same version.",
    "invalid_field": "A setting was out of range or of the wrong kind: correct the field named above and try "
                     "again.",
    "unknown_type": "The backend is older or newer than the add-on: use both from the same version.",
    "version_mismatch": "Rebuild and reinstall the add-on from the backend's checkout (python build_addon.py), or "
                        "update the backend.",
    "too_large": "The request is larger than the backend accepts: use Capture ▸ Transfer ▸ Path for a backend "
                 "that can read this disk, or fewer or smaller images.",
    "unauthorized": "This Blender may not do that here: check the keys in the add-on preferences, or whether "
                    "the job belongs to another user of the backend.",
    "unknown_job": "The backend does not know this job: it may run with another work folder, or the job's "
                   "folder was deleted. Submit the job again.",
    "unknown_kind": "This backend does not run this kind of job: update the backend.",
    "job_failed": "The job stopped on the problem the message describes: correct that and submit it again (what "
                  "it wrote so far stays in its folder on the backend).",
    "out_of_memory": "Free GPU memory (Stop Local Backend frees the backend's; close Cycles renders or other GPU "
                     "programs) or lower the setting the message names, then submit again.",
    "queue_full": "Too many of your jobs are waiting: let some finish or cancel some, then submit again.",
    "bad_state": "The job is not in a state that allows this any more (e.g. it already finished).",
    "internal": "A bug in the backend: its log (the terminal or local_backend.log) has the traceback; please "
                "report it with the text above.",
}
MAX_ERROR_CHARS = 20_000  # longer texts are cut (with a note) before they go into Blender properties


def describe_error(code: str = "", field: str | None = None) -> str:
    """The details of a backend error beyond its message: its code, the field at fault, and what to do."""
    lines = []
    if code:
        lines.append(f"Code: {code}")
    if field:
        lines.append(f"Field: {field}")
    if ERROR_HINTS.get(code):
        lines.append(f"What to do: {ERROR_HINTS[code]}")
    return "\n".join(lines)


def clip_text(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    """``text``, cut to ``limit`` characters with a note saying how much was left out."""
    if len(text) <= limit:
        return text
    return text[:limit] + f"… ({len(text) - limit} more characters; the backend's log has the whole text)"


def format_duration(seconds: float) -> str:
    """``75`` -> ``"1:15"``, ``3700`` -> ``"1:01:40"``."""
    s = round(max(0.0, seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def format_bytes(n: int | float) -> str:
    """Bytes as GiB/MiB with one decimal."""
    gib = float(n) / 2**30
    return f"{gib:.1f} GiB" if gib >= 1 else f"{float(n) / 2**20:.0f} MiB"


class Session:
    """Connection and jobs of one backend connection, updated by :meth:`apply`."""

    def __init__(self) -> None:
        self.state = "DISCONNECTED"
        self.endpoint = ""
        self.info: dict[str, Any] = {}
        self.jobs: dict[str, JobState] = {}  # by job id
        self.pending: dict[str, JobState] = {}  # by submit msg_id, until accepted
        self.hello_msg_id: str | None = None
        self.last_error = ""
        self.last_error_detail = ""

    # Queries ---------------------------------------------------------------------------------------------

    @property
    def busy(self) -> bool:
        return bool(self.pending) or any(j.active for j in self.jobs.values())

    def active_jobs(self) -> list[JobState]:
        return [*self.pending.values(), *(j for j in self.jobs.values() if j.active)]

    def current_job(self) -> JobState | None:
        """The job the progress bar shows: a running one first, else the newest active one."""
        active = self.active_jobs()
        running = [j for j in active if j.state == "running"]
        if running:
            return max(running, key=lambda j: j.updated)
        return active[-1] if active else None

    def status_line(self) -> str:
        """The connection part of the status display."""
        if self.state == "CONNECTED":
            gpu = (self.info.get("gpu") or {}).get("name") or "no GPU"
            return f"connected to {self.endpoint} ({gpu})"
        if self.state == "CONNECTING":
            return f"connecting to {self.endpoint}…"
        if self.state == "LOST":
            return f"backend at {self.endpoint} is not responding"
        if self.state == "ERROR":
            return self.last_error or "connection error"
        return "not connected"

    # Transitions -------------------------------------------------------------------------------------------

    def connecting(self, endpoint: str, hello_msg_id: str) -> None:
        self.state = "CONNECTING"
        self.endpoint = endpoint
        self.hello_msg_id = hello_msg_id

    def disconnected(self) -> None:
        self.state = "DISCONNECTED"
        self.hello_msg_id = None
        for job in self.pending.values():
            job.state, job.error = "failed", "not sent: disconnected"
        self.pending.clear()

    def submitted(self, msg_id: str, job: JobState) -> None:
        job.submit_msg_id = msg_id
        job.state = "submitting"
        self.pending[msg_id] = job

    def track(self, job: JobState) -> None:
        """Follow a job accepted earlier (e.g. reattached after reopening a .blend)."""
        if job.job_id:
            self.jobs[job.job_id] = job

    def set_error(self, text: str, detail: str = "") -> None:
        self.last_error = text
        self.last_error_detail = detail

    def clear_error(self) -> None:
        self.last_error = ""
        self.last_error_detail = ""

    def check_liveness(self, alive: bool, seconds_since_hello: float, hello_timeout_s: float) -> Event | None:
        """Mark the backend lost when heartbeats stop, and back when they resume.

        Args:
            alive: the client heard from the backend recently (``Client.alive(timeout)``).
            seconds_since_hello: time since the ``hello`` was sent (for CONNECTING).
            hello_timeout_s: how long CONNECTING may last before it counts as lost.
        """
        if self.state == "CONNECTED" and not alive:
            self.state = "LOST"
            return Event("error")
        if self.state == "LOST" and alive:
            self.state = "CONNECTED"
            return Event("connected")
        if self.state == "CONNECTING" and seconds_since_hello > hello_timeout_s:
            self.state = "LOST"
            self.set_error(f"no answer from a backend at {self.endpoint} within {hello_timeout_s:g} s. Is it "
                           "running? Start it (Preferences ▸ Start local backend) or check the address.")
            return Event("error")
        return None

    def apply(self, msg: Any) -> list[Event]:
        """Update the state from one message; returns the events Blender must handle."""
        t, c = msg.type, msg.content if isinstance(msg.content, dict) else {}
        now = time.monotonic()
        if t == "hello_reply":
            self.info = dict(c)
            if self.state in ("CONNECTING", "LOST"):
                self.clear_error()  # e.g. "no answer within 5 s" from a backend that was still starting
            self.state = "CONNECTED"
            return [Event("connected", message=msg)]
        if t == "accepted":
            job = self.pending.pop(msg.parent_id, None) if msg.parent_id else None
            if job is None:
                return []
            job.job_id = str(c.get("job_id"))
            job.state = "queued"
            job.position = int(c.get("position", -1))
            job.updated = now
            self.jobs[job.job_id] = job
            return [Event("accepted", job, msg)]
        if t == "error":
            text = in_panel_words(str(c.get("message") or c.get("code") or "backend error"))
            detail = describe_error(str(c.get("code", "")), c.get("field"))
            job = None
            if msg.parent_id and msg.parent_id in self.pending:
                job = self.pending.pop(msg.parent_id)
            elif msg.job_id and msg.job_id in self.jobs:
                job = self.jobs[msg.job_id]
            if msg.parent_id and msg.parent_id == self.hello_msg_id:
                self.state = "ERROR"
            if job is not None:
                job.state, job.error, job.error_code, job.updated = "failed", text, str(c.get("code", "")), now
                self.set_error(f"{job.label or job.kind}: {text}", detail)
                return [Event("error", job, msg), Event("finished", job, msg)]
            self.set_error(text, detail)
            return [Event("error", None, msg)]
        job = self.jobs.get(msg.job_id) if msg.job_id else None
        if t == "status_reply":
            for rec in c.get("jobs", []) or []:
                j = self.jobs.get(rec.get("job_id"))
                if j is None:
                    continue
                j.state = rec.get("state", j.state)
                j.stage = rec.get("stage", j.stage) or j.stage
                j.step = int(rec.get("step", j.step) or 0)
                j.total = int(rec.get("total", j.total) or 0)
                j.position = int(rec.get("position", j.position) if rec.get("position") is not None else -1)
                if rec.get("error"):
                    j.error = in_panel_words(str(rec["error"].get("message", "")))
                j.updated = now
            return [Event("status", None, msg)]
        if job is None:
            return []  # a job of another client or session: ignore
        job.updated = now
        if t == "progress":
            stage = str(c.get("stage", job.stage))
            # A job that starts running (a resumed one too) or enters another stage shows so in the saved job
            # list at once; the steps in between only move the progress bar.
            events = [Event("stage", job, msg)] if (job.state, job.stage) != ("running", stage) else []
            job.state = "running"
            job.stage = stage
            job.step = int(c.get("step", 0))
            job.total = int(c.get("total", 0))
            job.eta_s = c.get("eta_s")
            job.message = str(c.get("message", "") or "")
            job.losses = dict(c.get("losses") or {})
            job.metrics = {**job.metrics, **(c.get("metrics") or {})}
            if c.get("preview"):
                events.append(Event("preview", job, msg))
            return events
        if t == "frame":
            job.state = "running"
            job.frames_received += 1
            return [Event("frame", job, msg)]
        if t == "mesh":
            job.state = "running"
            return [Event("mesh", job, msg)]
        if t == "cancel_reply":
            job.state = c.get("state", job.state)
            return [Event("finished", job, msg)] if job.state in FINAL_STATES else []
        if t == "result":
            job.state = str(c.get("state", "done"))
            job.outputs = dict(c.get("outputs") or {})
            err = c.get("error")
            if err:
                job.error = in_panel_words(str(err.get("message", "")))
                job.error_code = str(err.get("code", ""))
            if job.state == "failed":
                self.set_error(f"{job.label or job.kind} failed: {job.error or 'no reason given'}",
                               describe_error(job.error_code))
            return [Event("finished", job, msg)]
        return []
