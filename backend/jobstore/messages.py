"""The one place that builds the messages about jobs, and the errors they carry.

Whoever runs a job (the server's thread, a cluster worker, the command line) or answers for one (the server,
a broker) builds its ``progress``, ``result`` and ``status_reply`` entries here, and every ``error`` a job can
end with: so an interrupted render says the same thing whichever executor saw it stop.
"""

from __future__ import annotations

import errno
import logging
import math
import traceback
from typing import Any

from protocol import ErrorCode, Message, ProtocolError
from protocol.errors import clip_text

from .disk import DiskBudget, is_disk_full
from .record import JobRecord

log = logging.getLogger("nerfart.jobs")

RESUMABLE_KINDS = ("reconstruct", "stylize")  # runners that continue from a periodic checkpoint
SUMMARY_TEXT_CHARS = 200  # a string output longer than this is left out of a status summary
SUMMARY_OUTPUTS = 64  # at most this many outputs in a status summary


# status_reply entries ---------------------------------------------------------------------------------------

def status_entry(rec: JobRecord, position: int = -1) -> dict[str, Any]:
    """The whole record as a ``status_reply`` job entry (``status`` of one job, ``attach``)."""
    return {**status_summary(rec, position), "params": rec.params, "outputs": rec.outputs}


def status_summary(rec: JobRecord, position: int = -1) -> dict[str, Any]:
    """A ``status_reply`` entry of bounded size, whatever the job holds (``status`` of all jobs).

    Its parameters are left out (a render's can list 100,000 cameras) and of its outputs only the plain values
    are kept (file names, metrics; not a render's list of frames): the whole record is one ``status`` of that job
    away. The error message is clipped when the record is written (:func:`finish_job`).
    """
    outputs = {k: v for k, v in list(rec.outputs.items())[:SUMMARY_OUTPUTS] if _is_plain(v)}
    return {"job_id": rec.job_id, "kind": rec.kind, "state": rec.state, "created": rec.created,
            "started": rec.started, "finished": rec.finished, "position": position, "stage": rec.stage,
            "step": rec.step, "total": rec.total, "outputs": outputs, "error": rec.error, "resumes": rec.resumes}


def _is_plain(value: Any) -> bool:
    return value is None or isinstance(value, bool | int | float) or (
        isinstance(value, str) and len(value) <= SUMMARY_TEXT_CHARS)


# Messages a job sends -------------------------------------------------------------------------------------------

def progress_message(job_id: str, stage: str, step: int, total: int, *, eta_s: float | None = None,
                     losses: dict[str, float] | None = None, metrics: dict[str, float] | None = None,
                     preview_png: bytes | None = None, message: str = "") -> Message:
    """A ``progress`` message; non-finite losses and metrics become huge numbers (JSON has no NaN)."""
    msg = Message("progress", {"job_id": job_id, "stage": stage, "step": int(step), "total": int(total),
                               "eta_s": None if eta_s is None else float(eta_s), "losses": _finite(losses),
                               "metrics": _finite(metrics), "message": message})
    if preview_png is not None:
        msg.content["preview"] = msg.add_blob(preview_png, "png")
    return msg


def result_message(rec: JobRecord) -> Message:
    """The ``result`` message for a job in a final state."""
    return Message("result", {"job_id": rec.job_id, "state": rec.state, "outputs": rec.outputs,
                              "error": None if rec.error is None else
                              {"code": rec.error["code"], "message": rec.error["message"]}})


def failed_result(job_id: str, error: dict[str, Any]) -> Message:
    """The ``result`` of a job that failed before its record could even be read (no outputs)."""
    return result_message(JobRecord(job_id=job_id, kind="", params={}, owner="", state="failed", error=error))


# Errors a job ends with ------------------------------------------------------------------------------------------

def interrupted_error(rec: JobRecord, why: str) -> dict[str, Any]:
    """The ``error`` of an interrupted job: why, and how to continue it."""
    resumable = rec.kind in RESUMABLE_KINDS
    # The record's step is the last checkpoint's: runners record it when they save one (ctx.checkpointed).
    where = f" (its last checkpoint is at {rec.stage} step {rec.step} of {rec.total})" if resumable and rec.step \
        else ""
    how = "continues from its last checkpoint" if resumable else "runs it again from the start"
    return {"code": "interrupted", "message": f"{why}{where}; 'resume' {how}"}


def requeued_note(rec: JobRecord, why: str) -> str:
    """What the client of a job that was queued again after its executor was lost is told (``progress``)."""
    how = "continues from its last checkpoint" if rec.kind in RESUMABLE_KINDS else "runs again from the start"
    return f"{why}; it {how} on the next free worker"


def internal_error(what: str) -> dict[str, Any]:
    """The ``error`` of a job that an executor's fault (not the job's) ended; ``what`` says what happened."""
    return {"code": ErrorCode.INTERNAL, "message": clip_text(f"{what} (a bug; the backend log has the details)")}


def busy_elsewhere_error(job_id: str) -> dict[str, Any]:
    """The ``error`` answered for a job that another live process on the same work dir is running."""
    return {"code": ErrorCode.BAD_STATE, "message": f"job {job_id} is being run by another backend process on "
            "this work dir"}


# What to make smaller after an out-of-memory failure, per job kind (parameter names as in SPEC.md).
SMALLER_SETTINGS = {
    "reconstruct": "a lower 'scale' (e.g. 0.5) or the 'fast' preset",
    "stylize": "a lower 'scale' (e.g. 0.25) or the 'fast' preset",
    "render": "smaller frames (a lower camera width and height)",
    "extract_mesh": "a lower 'resolution' (e.g. 256)",
}

# What the operating system says of a path that cannot be used as given (far too long, looping links, a file
# where a folder should be): the user's input, not a backend fault.
BAD_PATH_ERRNOS = (errno.ENAMETOOLONG, errno.ELOOP, errno.ENOTDIR, errno.EISDIR)


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` says the device (or the host) ran out of memory."""
    text = str(exc).lower()
    return (type(exc).__name__ == "OutOfMemoryError" or "out of memory" in text
            or "can't allocate memory" in text or isinstance(exc, MemoryError))


def error_for_exception(exc: Exception, kind: str = "", disk: DiskBudget | None = None) -> dict[str, Any]:
    """A user-facing error for an exception raised by a runner of a ``kind`` job."""
    name = type(exc).__name__
    if is_out_of_memory(exc):
        # torch's CPU allocator says "can't allocate memory"; Python raises MemoryError: host memory, not GPU.
        host = isinstance(exc, MemoryError) or "can't allocate memory" in str(exc).lower()
        smaller = SMALLER_SETTINGS.get(kind, "smaller settings")
        return {"code": ErrorCode.OUT_OF_MEMORY, "message": f"the {'machine' if host else 'GPU'} ran out of "
                f"memory; try again with {smaller}. The backend freed the memory and keeps serving. "
                f"Details: {str(exc)[:300]}"}
    if is_disk_full(exc):
        where = disk.shortage("this job's outputs") if disk is not None else "free space on the backend's disk"
        return {"code": ErrorCode.DISK_FULL, "message": f"the disk filled up while this job wrote ({exc}); {where}"}
    if isinstance(exc, ProtocolError) and exc.code == ErrorCode.DISK_FULL:
        return {"code": exc.code, "message": exc.message}
    if isinstance(exc, ValueError | FileNotFoundError | PermissionError | ProtocolError) or (
            isinstance(exc, OSError) and exc.errno in BAD_PATH_ERRNOS):
        # Bad input (an unreadable capture, a bad parameter, an unusable path): the message is for the user.
        return {"code": ErrorCode.JOB_FAILED, "message": clip_text(str(exc))}
    log.error("job failed with an unexpected error:\n%s", traceback.format_exc())
    return {"code": ErrorCode.INTERNAL, "message": clip_text(f"internal error ({name}: {exc}); the backend log has "
                                                             "the traceback")}


# Numbers JSON can carry -------------------------------------------------------------------------------------------

def finite_or_none(value: Any) -> Any:
    """``value`` with every NaN or infinite float replaced by None: JSON (and so ``job.json``) has no such numbers,
    and a metric that came out NaN (a diverged training) is one that is not available."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite_or_none(v) for v in value]
    return value


def _finite(values: dict[str, float] | None) -> dict[str, float]:
    # JSON has no NaN; a diverging loss is reported as a huge number rather than breaking the message.
    out = {}
    for k, v in (values or {}).items():
        v = float(v)
        out[k] = v if v == v and abs(v) != float("inf") else 3.0e38
    return out
