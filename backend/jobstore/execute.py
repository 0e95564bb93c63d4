"""Running one job to a final state, and turning an interrupted one back into a queued one.

Every executor (the server's thread, a cluster worker, the command line) runs a job with :func:`execute_job`
and ends one with :func:`finish_job`: those are the only writers of a job's final state, and its ``result``
message comes from :func:`~.messages.result_message`.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from protocol import FINAL_STATES, ErrorCode, Message, ProtocolError
from protocol.errors import clip_text

from .context import JobCancelled, JobContext, JobFailed, RunnerFn
from .disk import is_disk_full
from .lock import JobLock
from .messages import (
    busy_elsewhere_error,
    error_for_exception,
    finite_or_none,
    interrupted_error,
    result_message,
)
from .record import JobRecord
from .store import JobStore

log = logging.getLogger("nerfart.jobs")

RESUMABLE_STATES = ("interrupted",)


def prepare_resume(rec: JobRecord, store: JobStore, host: str | None = None) -> None:
    """Turn an interrupted job back into a queued one that resumes (the caller queues it).

    It keeps its id, owner, parameters, folder and outputs so far; ``resumes`` counts up. ``host``, when given,
    is the address it now counts against (:mod:`.queue`): the one that resumed it.

    Raises:
        ProtocolError: ``bad_state`` unless the job is interrupted.
    """
    if rec.state not in RESUMABLE_STATES:
        raise ProtocolError(ErrorCode.BAD_STATE, f"job {rec.job_id} is {rec.state}; only an interrupted job (one "
                            "that was running when the backend stopped) can be resumed", "job_id")
    rec.state, rec.finished, rec.error = "queued", None, None
    rec.resumes += 1
    if host is not None:
        rec.host = host
    store.save(rec)


def execute_job(rec: JobRecord, store: JobStore, runner: RunnerFn | None, emit: Callable[[Message], None],
                cancel: threading.Event, device: str,
                shutting_down: Callable[[], bool] = lambda: False) -> None:
    """Run one job to a final state: the server's worker and the command line both use this.

    Every outcome is recorded in ``job.json`` and announced with a ``result`` message: done, cancelled,
    interrupted (cancelled because the process is shutting down), or failed with a user-facing error. It never
    raises an ``Exception``: not for a runner's, nor when the record cannot be written (a full disk). After an
    out-of-memory failure the memory the job held is released (and the CUDA cache emptied) so that the next job
    starts on a clean device.
    """
    lock = JobLock(store.job_dir(rec.job_id))
    try:
        acquired = lock.acquire()
    except OSError as exc:  # the lock file cannot be created: a full disk, or the job folder is gone
        finish_job(rec, store, emit, "failed", error_for_exception(exc, rec.kind, store.disk))
        return
    if not acquired:
        # Another live process runs it (e.g. 'python -m backend resume' beside a server): its job.json is that
        # process's to write, so this one only answers its own client.
        rec.state, rec.finished = "failed", time.time()
        rec.error = busy_elsewhere_error(rec.job_id)
        _emit_safely(emit, rec)
        return
    try:
        state, error = _run_runner(rec, store, runner, emit, cancel, device, shutting_down)
        finish_job(rec, store, emit, state, error)
    finally:
        lock.release()
    if error is not None and error["code"] == ErrorCode.OUT_OF_MEMORY:
        # Only now is the traceback, and the tensors its frames hold, released.
        release_memory(device)


def _run_runner(rec: JobRecord, store: JobStore, runner: RunnerFn | None, emit: Callable[[Message], None],
                cancel: threading.Event, device: str,
                shutting_down: Callable[[], bool]) -> tuple[str, dict[str, Any] | None]:
    """Run the job's runner; returns the final state and error it ends with."""
    try:
        rec.state, rec.started = "running", time.time()
        if rec.resumes:
            rec.outputs.pop("resume_note", None)  # a note of an earlier resume is stale
        store.save(rec)
        ctx = JobContext(rec, store, emit, cancel, device)
        if runner is None:
            raise JobFailed(f"this backend has no runner for {rec.kind} jobs", ErrorCode.UNKNOWN_KIND)
        outputs = runner(ctx)
        ctx.check_cancel()
        rec.outputs.update(finite_or_none(outputs or {}))
        return "done", None
    except JobCancelled:
        if shutting_down():
            # Shut down mid-job: mark it interrupted so that it can be resumed from its checkpoint.
            return "interrupted", interrupted_error(rec, "the backend was shut down while this job ran")
        return "cancelled", None
    except JobFailed as exc:
        return "failed", {"code": exc.code, "message": str(exc)}
    except Exception as exc:  # a runner bug or an unexpected failure must not stop the worker
        return "failed", error_for_exception(exc, rec.kind, store.disk)


def release_memory(device: str) -> None:
    """Free what a failed job left behind: collect its garbage and empty the CUDA caching allocator.

    Without this the allocator keeps the failed job's blocks reserved, and the next job on the same server can
    run out of memory although nothing uses it any more.
    """
    gc.collect()
    if not device.startswith("cuda"):
        return
    try:
        import torch
    except ImportError:
        return
    torch.cuda.empty_cache()
    log.info("emptied the CUDA cache after an out-of-memory failure (%.2f GiB still reserved)",
             torch.cuda.memory_reserved() / 2**30 if torch.cuda.is_initialized() else 0.0)


def finish_job(rec: JobRecord, store: JobStore, emit: Callable[[Message], None], state: str,
               error: dict[str, Any] | None) -> None:
    """Record a final state and announce it. Never raises: a job always ends, whatever the disk says.

    When the record cannot be written (a full disk), the job still ends, in memory and in its ``result``: a
    job that would be ``done`` is ``failed`` with ``disk_full`` instead (its outputs may be incomplete, and its
    record says otherwise); other states stay, with a note in a failure's message. Its ``job.json`` keeps the
    state before, so the next start finds it ``running`` and marks it ``interrupted``: it can be resumed then.
    """
    assert state in FINAL_STATES
    rec.state, rec.finished = state, time.time()
    rec.error = None if error is None else {"code": str(error["code"]), "message": clip_text(str(error["message"]))}
    try:
        store.save(rec)
    except (OSError, ProtocolError) as exc:
        log.error("job %s: its %s state could not be recorded: %s", rec.job_id, state, exc)
        full = is_disk_full(exc)
        why = f"its record could not be saved ({exc})" + (f". {store.disk.shortage('its record')}" if full else "")
        if state == "done":
            rec.state = "failed"
            rec.error = {"code": ErrorCode.DISK_FULL if full else ErrorCode.INTERNAL,
                         "message": clip_text(f"this job ran to its end, but {why}")}
        elif rec.error is not None:
            rec.error["message"] = clip_text(f"{rec.error['message']} (and {why})")
    _emit_safely(emit, rec)
    log.info("job %s (%s) %s%s", rec.job_id, rec.kind, rec.state, f": {rec.error['message']}" if rec.error else "")


def _emit_safely(emit: Callable[[Message], None], rec: JobRecord) -> None:
    """Send the job's ``result``; a failure to send loses the message only (``attach`` re-sends it)."""
    try:
        emit(result_message(rec))
    except Exception:
        log.exception("the result of job %s could not be sent", rec.job_id)


