"""Job records and their folders under ``<work dir>/jobs/``.

Every job has an id, a state and a directory ``<work_dir>/jobs/<job_id>/`` holding ``job.json`` (the record,
rewritten atomically on every state change), ``inputs/`` (uploads) and ``outputs/`` (checkpoints, frames,
meshes). A client that disconnects loses nothing: the outputs stay on disk and ``attach`` re-sends them.

Crashes and restarts. Every file a job writes (``job.json``, uploads, checkpoints, frames, meshes) is written
under a temporary name and renamed into place (:func:`~.atomic.atomic_write_bytes`), so even ``kill -9`` never
leaves a half-written file under a final name. While a job runs its process holds a lock on
``<job dir>/running.lock`` (:class:`~.lock.JobLock`); the next process to open the work dir marks a ``running``
job whose lock is free (its process died) as ``interrupted``.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import threading
import time
import uuid
from dataclasses import fields as dataclass_fields
from pathlib import Path
from typing import Any

from protocol import JOB_KINDS, ErrorCode, ProtocolError, validate_content
from protocol.errors import clip_text
from protocol.framing import check_json_value

from .atomic import atomic_write_bytes
from .disk import DiskBudget, is_disk_full
from .lock import JobLock
from .messages import interrupted_error, status_entry
from .record import INPUT_NAME, JOB_ID, JobRecord

log = logging.getLogger("nerfart.jobs")


class JobStore:
    """Job records and their directories under ``work_dir``.

    On start it reloads every record: jobs that were running when the last process died are marked
    ``interrupted`` (their checkpoints stay), jobs that were queued are queued again. A record that cannot be
    read (damaged, or holding what the protocol cannot carry) is reported as a failed job with error code
    ``corrupt_record`` when its kind can be told, else skipped with a warning; it never stops the others.
    Starting works on a full disk too: what cannot be written then is logged and kept in memory.

    Args:
        work_dir: the backend's work dir.
        disk: its quota and free-space guard (default: no quota, :data:`~.disk.DEFAULT_MIN_FREE_BYTES` free).
    """

    def __init__(self, work_dir: Path, disk: DiskBudget | None = None) -> None:
        self.work_dir = Path(work_dir).resolve()
        self.jobs_dir = self.work_dir / "jobs"
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        self.disk = disk or DiskBudget(self.work_dir)
        self.jobs: dict[str, JobRecord] = {}
        self._lock = threading.RLock()
        self._load()

    def _load(self) -> None:
        records = [rec for path in self.jobs_dir.glob("*/job.json") if (rec := read_record(path)) is not None]
        for rec in sorted(records, key=lambda r: r.created):
            if rec.state == "running" and not self._running_elsewhere(rec.job_id):
                self._mark_interrupted(rec)
            self.jobs[rec.job_id] = rec

    def _mark_interrupted(self, rec: JobRecord) -> None:
        """Record that a job found ``running`` with no process holding it died with its process (a crash,
        kill -9, a power cut): nothing will finish it, ``resume`` continues it."""
        rec.state = "interrupted"
        rec.finished = time.time()
        rec.error = interrupted_error(rec, "the backend stopped while this job was running")
        try:
            self.save(rec)
        except OSError as exc:  # a full disk: the next start finds it running and marks it again
            log.warning("job %s is interrupted, but its record could not be updated: %s", rec.job_id, exc)

    def reload_released(self, job_id: str) -> JobRecord | None:
        """The record of a job that another process was running (one found ``running`` at start, its lock held),
        read again once that process has let go of it; one it left ``running`` (it died) is marked interrupted.

        Returns:
            The record now in the store, or None while the other process still holds the job (or its record
            cannot be read).
        """
        if self._running_elsewhere(job_id):
            return None
        rec = read_record(self.job_dir(job_id) / "job.json")
        if rec is None:
            return None
        if rec.state == "running":
            self._mark_interrupted(rec)
        with self._lock:
            self.jobs[job_id] = rec
        return rec

    def _running_elsewhere(self, job_id: str) -> bool:
        """Whether another live process (e.g. a command-line run beside the server) is running this job."""
        lock = JobLock(self.job_dir(job_id))
        try:
            if not lock.acquire():
                return True
        except OSError:  # the lock file cannot even be created (a full disk): no process holds it
            return False
        lock.release()
        return False

    def job_dir(self, job_id: str) -> Path:
        return self.jobs_dir / job_id

    def create(self, kind: str, params: dict[str, Any], owner: str,
               inputs: dict[str, tuple[bytes | memoryview, str]] | None = None, host: str = "") -> JobRecord:
        """A new queued job with its directory, uploaded inputs and record written.

        The job exists (in :meth:`get`, :meth:`all`, the queue) only once all of that is on disk: a job that
        cannot be saved is never created, and its half-written folder is removed.

        Raises:
            ProtocolError: an input name that is not a plain file-name stem (nothing is written outside the
                job's own directory), ``disk_full`` when the inputs do not fit or the disk fills up, or
                ``invalid_field`` for parameters that cannot be stored.
        """
        inputs = inputs or {}
        for name, (_, fmt) in inputs.items():
            if not INPUT_NAME.match(name):
                raise ProtocolError(ErrorCode.INVALID_FIELD, f"input name {name[:80]!r} must be 1-64 letters, "
                                    "digits, '_' or '-'", f"inputs.{name[:80]}")
            if not INPUT_NAME.match(fmt):
                raise ProtocolError(ErrorCode.INVALID_FIELD, "input format must be a plain word",
                                    f"inputs.{name}.format")
        upload_bytes = sum(memoryview(data).nbytes for data, _ in inputs.values())
        self.disk.check(upload_bytes, "the uploaded inputs" if inputs else "a new job")
        job_id = uuid.uuid4().hex[:16]
        rec = JobRecord(job_id=job_id, kind=kind, params=params, owner=owner, host=host)
        job_dir = self.job_dir(job_id)
        try:
            (job_dir / "inputs").mkdir(parents=True)
            (job_dir / "outputs").mkdir()
            for name, (data, fmt) in inputs.items():
                file_name = f"{name}.{fmt}"
                atomic_write_bytes(job_dir / "inputs" / file_name, data)
                rec.inputs[name] = file_name
            self.disk.charge(upload_bytes)
            self.save(rec)
        except BaseException as exc:
            shutil.rmtree(job_dir, ignore_errors=True)
            if is_disk_full(exc):
                raise ProtocolError(ErrorCode.DISK_FULL, self.disk.shortage("a new job", upload_bytes)) from None
            raise
        with self._lock:
            self.jobs[job_id] = rec
        return rec

    def save(self, rec: JobRecord) -> None:
        """Write ``job.json`` atomically and durably (temporary file, fsync, rename): a crash never leaves half.

        Raises:
            OSError: the disk is full (or another write error); the previous ``job.json`` is then intact.
            ProtocolError: ``invalid_field`` for a record that JSON cannot hold (nothing is written).
        """
        try:
            text = record_json(rec)
        except (ValueError, TypeError, RecursionError) as exc:
            raise ProtocolError(ErrorCode.INVALID_FIELD, f"the job's record cannot be stored: {exc}") from None
        with self._lock:
            atomic_write_bytes(self.job_dir(rec.job_id) / "job.json", text, durable=True)

    def get(self, job_id: str) -> JobRecord | None:
        with self._lock:
            return self.jobs.get(job_id)

    def all(self) -> list[JobRecord]:
        with self._lock:
            return list(self.jobs.values())


def record_json(rec: JobRecord) -> str:
    """The text of ``job.json``: one field a line, each value compact JSON.

    Not ``json.dumps(asdict(rec), indent=1)``: ``asdict`` deep-copies the record and ``indent`` takes Python's
    own encoder instead of the C one: many times slower for a render with a long list of cameras.

    Raises:
        ValueError, TypeError, RecursionError: a value JSON cannot hold (NaN, an object).
    """
    fields = record_fields(rec)
    return "{\n" + ",\n".join(f" {json.dumps(k)}: {json.dumps(v, allow_nan=False)}" for k, v in fields.items()) \
        + "\n}"


def record_fields(rec: JobRecord) -> dict[str, Any]:
    """The record's fields as a dict, sharing its values (no deep copy, unlike ``dataclasses.asdict``)."""
    return {f.name: getattr(rec, f.name) for f in dataclass_fields(rec)}


def read_record(path: Path) -> JobRecord | None:
    """The record in ``path`` (``<jobs dir>/<job id>/job.json``), checked as :func:`check_record` does.

    A record that fails is replaced by a failed one with error ``corrupt_record`` (no parameters or outputs)
    when its job id, kind and owner can be read, so that its owner sees what happened; otherwise it is skipped.
    Either way it is logged with what to do; the file itself is left as it is.
    """
    job_id = path.parent.name
    if not JOB_ID.match(job_id):
        log.warning("ignoring %r: a job folder's name is its job id (letters, digits, '_' or '-')", str(path))
        return None
    data: Any = None
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
        if not isinstance(data, dict):
            raise ValueError("it is not a JSON object")
        rec = JobRecord.from_dict(data)
        check_record(rec, job_id)
        return rec
    except (OSError, ValueError, TypeError, KeyError, RecursionError, ProtocolError) as exc:
        why = clip_text(exc.message if isinstance(exc, ProtocolError) else f"{type(exc).__name__}: {exc}", 300)
    kind, owner = (data.get("kind"), data.get("owner")) if isinstance(data, dict) else (None, None)
    if kind not in JOB_KINDS or not isinstance(owner, str) or not owner.isascii() or len(owner) > 200:
        log.warning("ignoring unreadable job record %s (%s); delete its folder once you have looked at it",
                    path, why)
        return None
    log.warning("job record %s is corrupt (%s); the job is listed as failed", path, why)
    created = data.get("created")
    return JobRecord(job_id=job_id, kind=kind, params={}, owner=owner, state="failed",
                     created=float(created) if isinstance(created, int | float) and math.isfinite(created) else 0.0,
                     error={"code": ErrorCode.CORRUPT_RECORD, "message": f"this job's record {path} cannot be read "
                            f"({why}); its folder is kept as it is: delete it to remove this entry"})


def check_record(rec: JobRecord, job_id: str) -> None:
    """Refuse a record that would break the messages that carry it (``status_reply``, ``result``).

    Raises:
        ValueError: a field of the wrong type, or a record that names another job than its folder.
        ProtocolError: what the protocol's schema or strict JSON refuses.
    """
    if rec.job_id != job_id:
        raise ValueError(f"it names job {rec.job_id!r}, but lies in the folder of job {job_id}")
    if not isinstance(rec.owner, str) or not isinstance(rec.host, str) or not isinstance(rec.inputs, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and INPUT_NAME.match(k) for k, v in rec.inputs.items()):
        raise ValueError("its owner, host or inputs are not strings")
    if rec.error is not None and not (isinstance(rec.error, dict) and isinstance(rec.error.get("code"), str)
                                      and isinstance(rec.error.get("message"), str)):
        raise ValueError("its error is not {code, message}")
    check_json_value(record_fields(rec), "job record")
    validate_content("status_reply", {"jobs": [status_entry(rec)]})

