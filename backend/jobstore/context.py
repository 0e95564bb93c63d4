"""What a job runner gets: :class:`JobContext` (its parameters, folders, device, progress and cancel).

Job runners are plain functions ``run(ctx: JobContext) -> dict`` (the outputs). They report progress through
``ctx.progress``, stream frames through ``ctx.send`` and call ``ctx.check_cancel()`` at every step boundary,
which is how a cancel stops a running job within a second. A runner raises :class:`JobFailed` for a failure the
user can act on; any other exception becomes a user-facing error in :func:`~.execute.execute_job`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from protocol import ErrorCode, Message

from .messages import progress_message
from .record import JobRecord
from .store import JobStore

PROGRESS_INTERVAL_S = 0.1  # at most ten progress messages a second; stage changes and previews always go


class JobCancelled(Exception):
    """Raised by :meth:`JobContext.check_cancel` when the job was cancelled."""


class JobFailed(Exception):
    """A job failed for a reason the user can act on; ``code`` is an :class:`protocol.ErrorCode`."""

    def __init__(self, message: str, code: str = ErrorCode.JOB_FAILED) -> None:
        super().__init__(message)
        self.code = code


RunnerFn = Callable[["JobContext"], dict[str, Any]]


class JobContext:
    """What a runner gets: its parameters, its folders, the device, progress and cancel.

    Attributes:
        record: the job's record (``params`` validated against the protocol schema).
        job_dir, inputs_dir, outputs_dir: its folders.
        device: the compute device the server was started with (``"cuda"`` or ``"cpu"``).
    """

    def __init__(self, record: JobRecord, store: JobStore, emit: Callable[[Message], None],
                 cancel_event: threading.Event, device: str) -> None:
        self.record = record
        self.store = store
        self.device = device
        self.job_dir = store.job_dir(record.job_id)
        self.inputs_dir = self.job_dir / "inputs"
        self.outputs_dir = self.job_dir / "outputs"
        self._emit = emit
        self._cancel = cancel_event
        self._last_progress = 0.0
        self._last_stage = ""

    @property
    def job_id(self) -> str:
        return self.record.job_id

    @property
    def params(self) -> dict[str, Any]:
        return self.record.params

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    @property
    def resuming(self) -> bool:
        """True when this run continues an interrupted one: runners pick up their latest checkpoint."""
        return self.record.resumes > 0

    def checkpointed(self, stage: str, step: int, total: int) -> None:
        """Record in ``job.json`` that a periodic checkpoint at ``step`` of ``total`` (of ``stage``) was saved.

        This is what a restart reports for an interrupted job: where it will resume.
        """
        self.record.stage, self.record.step, self.record.total = stage, int(step), int(total)
        self.store.save(self.record)

    def reserve_disk(self, n_bytes: int, what: str) -> None:
        """Check that ``n_bytes`` more fit in the work dir's quota and disk, and count them as written.

        Raises:
            ProtocolError: ``disk_full`` (the job then fails with it), naming ``what`` and what to free.
        """
        self.store.disk.check(n_bytes, what)
        self.store.disk.charge(n_bytes)

    def check_cancel(self) -> None:
        """Raise :class:`JobCancelled` if a cancel arrived. Call at every step boundary."""
        if self._cancel.is_set():
            raise JobCancelled()

    def progress(self, stage: str, step: int, total: int, *, eta_s: float | None = None,
                 losses: dict[str, float] | None = None, metrics: dict[str, float] | None = None,
                 preview_png: bytes | None = None, message: str = "") -> None:
        """Report progress (rate-limited to ten a second; stage changes, the last step and previews always go)."""
        now = time.monotonic()
        self.record.stage, self.record.step, self.record.total = stage, step, total
        important = stage != self._last_stage or step >= total or preview_png is not None
        if not important and now - self._last_progress < PROGRESS_INTERVAL_S:
            return
        self._last_progress, self._last_stage = now, stage
        self._emit(progress_message(self.job_id, stage, step, total, eta_s=eta_s, losses=losses, metrics=metrics,
                                    preview_png=preview_png, message=message))

    def send(self, msg: Message) -> None:
        """Send a ``frame`` or ``mesh`` message of this job to its client (dropped if none is attached)."""
        msg.content["job_id"] = self.job_id
        self._emit(msg)

    def source_job(self, job_id: str, kinds: tuple[str, ...]) -> JobRecord:
        """A finished job this one builds on (e.g. the reconstruction a stylization starts from).

        Raises:
            JobFailed: unknown, unfinished or of the wrong kind.
        """
        rec = self.store.get(job_id)
        if rec is None:
            raise JobFailed(f"source job {job_id!r} does not exist on this backend", ErrorCode.UNKNOWN_JOB)
        if rec.kind not in kinds:
            raise JobFailed(f"source job {job_id} is a {rec.kind} job; expected one of {', '.join(kinds)}")
        if rec.state != "done":
            raise JobFailed(f"source job {job_id} is {rec.state}, not done")
        return rec
