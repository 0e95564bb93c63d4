"""Jobs: records on disk, the queue, and the worker thread that runs one GPU job at a time.

Every job has an id, a state and a directory ``<work_dir>/jobs/<job_id>/`` holding ``job.json`` (the record,
rewritten atomically on every state change), ``inputs/`` (uploads) and ``outputs/`` (checkpoints, frames,
meshes). A client that disconnects loses nothing: the outputs stay on disk and ``attach`` re-sends them.

Job runners are plain functions ``run(ctx: JobContext) -> dict`` (the outputs). They report progress through
``ctx.progress``, stream frames through ``ctx.send`` and call ``ctx.check_cancel()`` at every step boundary,
which is how a cancel stops a running job within a second.

Crashes and restarts. Every file a job writes (``job.json``, uploads, checkpoints, frames, meshes) is written
under a temporary name and renamed into place (:func:`atomic_write_bytes`), so even ``kill -9`` never leaves a
half-written file under a final name. While a job runs its process holds a lock on ``<job dir>/running.lock``;
the next process to open the work dir marks a ``running`` job whose lock is free (its process died) as
``interrupted``. :meth:`Worker.resume` (the ``resume`` message) queues an interrupted job again: the reconstruct
and stylize runners then continue from their latest periodic checkpoint (``ctx.resuming``); other kinds run
again from the start.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import json
import logging
import math
import os
import re
import shutil
import threading
import time
import traceback
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import IO, Any

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; a running job found at start-up is then always interrupted
    fcntl = None  # type: ignore[assignment]

from protocol import FINAL_STATES, JOB_KINDS, ErrorCode, Message, ProtocolError, validate_content
from protocol.errors import clip_text
from protocol.framing import check_json_value

from .disk import DiskBudget, is_disk_full

log = logging.getLogger("nerfart.jobs")

INPUT_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
JOB_ID = INPUT_NAME  # the same rule for job folders (new ids are 16 hex digits); a folder named otherwise is no job
PROGRESS_INTERVAL_S = 0.1  # at most ten progress messages a second; stage changes and previews always go
RUNNING_LOCK = "running.lock"
RESUMABLE_STATES = ("interrupted",)
DISK_RECHECK_S = 2.0  # how often a worker held by a full disk looks again


@contextlib.contextmanager
def atomic_path(path: Path, durable: bool = False) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; renamed over ``path`` when the block succeeds.

    Readers (and a process started after a crash) see the old file or the complete new one, never part of
    one: a rename within a folder is atomic. ``durable`` also fsyncs the file before the rename, so that a
    power cut cannot leave an empty file under the final name (worth it for small, precious files such as
    ``job.json``; frames skip it, a crash of the machine costs at most a re-render of the last few).
    The temporary file is removed when the block raises.
    """
    path = Path(path)
    # Unique per writer: two threads writing the same file never share a temporary.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        yield tmp
        if durable:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def atomic_write_bytes(path: Path, data: bytes | memoryview | str, durable: bool = False) -> None:
    """Write ``data`` (text is UTF-8 encoded) to ``path`` atomically; see :func:`atomic_path`."""
    with atomic_path(path, durable) as tmp:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)


class JobCancelled(Exception):
    """Raised by :meth:`JobContext.check_cancel` when the job was cancelled."""


class JobFailed(Exception):
    """A job failed for a reason the user can act on; ``code`` is an :class:`protocol.ErrorCode`."""

    def __init__(self, message: str, code: str = ErrorCode.JOB_FAILED) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class JobRecord:
    """What ``job.json`` holds. ``owner`` is who submitted it: ``key:<CURVE public key>``, ``id:<client id>``
    (without CURVE; advisory), ``rid:<routing id hex>`` (a client without an id) or ``cli`` (command line)."""

    job_id: str
    kind: str
    params: dict[str, Any]
    owner: str
    state: str = "queued"
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    stage: str = ""
    step: int = 0
    total: int = 0
    outputs: dict[str, Any] = field(default_factory=dict)
    error: dict[str, Any] | None = None
    inputs: dict[str, str] = field(default_factory=dict)  # upload name -> file name in inputs/
    resumes: int = 0  # times it was queued again by 'resume'; > 0 makes its runner continue from a checkpoint

    def info(self, position: int = -1) -> dict[str, Any]:
        """The record as a ``status_reply`` job entry."""
        return {"job_id": self.job_id, "kind": self.kind, "state": self.state, "created": self.created,
                "started": self.started, "finished": self.finished, "position": position, "stage": self.stage,
                "step": self.step, "total": self.total, "params": self.params, "outputs": self.outputs,
                "error": self.error, "resumes": self.resumes}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobRecord:
        """A record from ``job.json``; keys of a newer backend are ignored, missing ones take defaults."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


RunnerFn = Callable[["JobContext"], dict[str, Any]]


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
               inputs: dict[str, tuple[bytes | memoryview, str]] | None = None) -> JobRecord:
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
        rec = JobRecord(job_id=job_id, kind=kind, params=params, owner=owner)
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
            text = json.dumps(asdict(rec), indent=1, allow_nan=False)
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
    if not isinstance(rec.owner, str) or not isinstance(rec.inputs, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and INPUT_NAME.match(k) for k, v in rec.inputs.items()):
        raise ValueError("its owner or inputs are not strings")
    if rec.error is not None and not (isinstance(rec.error, dict) and isinstance(rec.error.get("code"), str)
                                      and isinstance(rec.error.get("message"), str)):
        raise ValueError("its error is not {code, message}")
    check_json_value(asdict(rec), "job record")
    validate_content("status_reply", {"jobs": [rec.info()]})


class JobLock:
    """An advisory lock on ``<job dir>/running.lock``, held by the process that runs the job.

    The operating system drops it when that process dies, however it dies, so a later process can tell a job
    whose runner is gone from one that another live process (a command-line run beside the server) is running.
    """

    def __init__(self, job_dir: Path) -> None:
        self.path = Path(job_dir) / RUNNING_LOCK
        self._file: IO[bytes] | None = None

    def acquire(self) -> bool:
        """Take the lock without waiting; False if another process (or another JobLock) holds it."""
        if fcntl is None:
            return True
        f = open(self.path, "ab")  # noqa: SIM115 - held open for as long as the lock
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            return False
        self._file = f
        return True

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing drops the lock
            self._file = None


def interrupted_error(rec: JobRecord, why: str) -> dict[str, Any]:
    """The ``error`` of an interrupted job: why, and how to continue it."""
    resumable = rec.kind in ("reconstruct", "stylize")
    # The record's step is the last checkpoint's: runners record it when they save one (ctx.checkpointed).
    where = f" (its last checkpoint is at {rec.stage} step {rec.step} of {rec.total})" if resumable and rec.step \
        else ""
    how = "continues from its last checkpoint" if resumable else "runs it again from the start"
    return {"code": "interrupted", "message": f"{why}{where}; 'resume' {how}"}


def prepare_resume(rec: JobRecord, store: JobStore) -> None:
    """Turn an interrupted job back into a queued one that resumes (the caller queues it).

    It keeps its id, owner, parameters, folder and outputs so far; ``resumes`` counts up.

    Raises:
        ProtocolError: ``bad_state`` unless the job is interrupted.
    """
    if rec.state not in RESUMABLE_STATES:
        raise ProtocolError(ErrorCode.BAD_STATE, f"job {rec.job_id} is {rec.state}; only an interrupted job (one "
                            "that was running when the backend stopped) can be resumed", "job_id")
    rec.state, rec.finished, rec.error = "queued", None, None
    rec.resumes += 1
    store.save(rec)


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
        msg = Message("progress", {"job_id": self.job_id, "stage": stage, "step": int(step), "total": int(total),
                                   "eta_s": None if eta_s is None else float(eta_s),
                                   "losses": _finite(losses), "metrics": _finite(metrics), "message": message})
        if preview_png is not None:
            msg.content["preview"] = msg.add_blob(preview_png, "png")
        self._emit(msg)

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


def _finite_or_none(value: Any) -> Any:
    """``value`` with every NaN or infinite float replaced by None: JSON (and so ``job.json``) has no such numbers,
    and a metric that came out NaN (a diverged training) is one that is not available."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite_or_none(v) for v in value]
    return value


def _finite(values: dict[str, float] | None) -> dict[str, float]:
    # JSON has no NaN; a diverging loss is reported as a huge number rather than breaking the message.
    out = {}
    for k, v in (values or {}).items():
        v = float(v)
        out[k] = v if v == v and abs(v) != float("inf") else 3.0e38
    return out


class JobQueue:
    """The jobs waiting to run, oldest first, and what a job runner answers about them.

    Shared by the in-process :class:`Worker` (one job at a time on a thread) and the cluster's broker
    (:class:`backend.cluster.broker.Broker`, one job per worker process). ``emit`` receives the messages to send
    to the jobs' clients (the server hands them to its socket thread). A subclass says which jobs run
    (:meth:`running_ids`) and how to stop a running one (:meth:`_cancel_running`).
    """

    def __init__(self, store: JobStore, emit: Callable[[Message], None]) -> None:
        self.store = store
        self._emit = emit
        self._queue: deque[str] = deque(rec.job_id for rec in store.all() if rec.state == "queued")
        self._cond = threading.Condition()
        self._disk_full_logged = False

    def running_ids(self) -> list[str]:
        """The jobs running now."""
        raise NotImplementedError

    def _cancel_running(self, job_id: str) -> bool:
        """Ask a running job to stop at its next step boundary; False if ``job_id`` is not running."""
        raise NotImplementedError

    def enqueue(self, job_id: str) -> int:
        """Queue a job; returns its position (0 = next)."""
        with self._cond:
            self._queue.append(job_id)
            self._cond.notify_all()
            return len(self._queue) - 1 + (1 if self.running_ids() else 0)

    def position(self, job_id: str) -> int:
        """0 for a running job, else the jobs before it (a running one counts as one); -1 if not queued."""
        with self._cond:
            running = self.running_ids()
            if job_id in running:
                return 0
            try:
                return self._queue.index(job_id) + (1 if running else 0)
            except ValueError:
                return -1

    def queue_length(self) -> int:
        """Jobs queued or running."""
        with self._cond:
            return len(self._queue) + len(self.running_ids())

    def cancel(self, job_id: str) -> str:
        """Cancel a job: a queued one at once, a running one at its next step boundary. Returns its state."""
        with self._cond:
            if job_id in self._queue:
                self._queue.remove(job_id)
                rec = self.store.get(job_id)
                if rec is not None:
                    finish_job(rec, self.store, self._emit, "cancelled", None)
                return "cancelled"
            if self._cancel_running(job_id):
                return "running"
        rec = self.store.get(job_id)
        return rec.state if rec else "failed"

    def resume(self, job_id: str) -> int:
        """Queue an interrupted job again to continue from its checkpoint; returns its position (0 = next).

        Raises:
            ProtocolError: ``unknown_job``, ``bad_state`` unless the job is interrupted, or ``disk_full``.
        """
        with self._cond:
            rec = self.store.get(job_id)
            if rec is None:
                raise ProtocolError(ErrorCode.UNKNOWN_JOB, f"no job {job_id[:40]!r} on this backend", "job_id")
            prepare_resume(rec, self.store)
            return self.enqueue(job_id)

    def _disk_has_room(self) -> bool:
        """Whether jobs may start; logs once when a full disk starts and stops holding them."""
        has_room = self.store.disk.room() > 0
        if not has_room and not self._disk_full_logged:
            log.warning("queued jobs wait: %s", self.store.disk.shortage("job outputs"))
        elif has_room and self._disk_full_logged:
            log.info("there is room on the disk again; queued jobs run")
        self._disk_full_logged = not has_room
        return has_room


class Worker(JobQueue):
    """Runs queued jobs one at a time, in order, on a thread of its own.

    ``emit`` is called from the worker thread with each outgoing message; the server hands it to its socket
    thread (ZeroMQ sockets are not thread-safe).

    Nothing a job does stops the worker: every exception ends that job (failed, with a message) and the next
    one runs. Should the thread die all the same (a ``BaseException`` from a library), :meth:`ensure_alive`,
    which the server calls all the time, starts a new one. While the work dir's disk is full (see
    :class:`~.disk.DiskBudget`), queued jobs wait instead of failing one after the other.
    """

    def __init__(self, store: JobStore, runners: dict[str, RunnerFn], emit: Callable[[Message], None],
                 device: str) -> None:
        super().__init__(store, emit)
        self.runners = runners
        self.device = device
        self.restarts = 0  # times ensure_alive() found the thread dead
        self._running: tuple[str, threading.Event] | None = None
        self._stop = False
        self._started = False
        self._thread = self._new_thread()

    def _new_thread(self) -> threading.Thread:
        return threading.Thread(target=self._loop, name="nerfart-worker", daemon=True)

    def sockets(self) -> list[Any]:
        """ZeroMQ sockets the server's loop should poll for this job runner: none, it is a thread."""
        return []

    def start(self) -> None:
        self._started = True
        self._thread.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Cancel the running job at its next step boundary and wait for the thread; queued jobs stay queued."""
        with self._cond:
            self._stop = True
            if self._running is not None:
                self._running[1].set()
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def ensure_alive(self) -> bool:
        """Start a new worker thread if the current one died; False when it had to.

        The job that was running when it died is failed (it cannot finish), and the queue carries on.
        """
        if not self._started or self._stop or self._thread.is_alive():
            return True
        with self._cond:
            running, self._running = self._running, None
        self.restarts += 1
        log.error("the job worker thread died%s; starting a new one", f" while running job {running[0]}" if running
                  else "")
        if running is not None:
            rec = self.store.get(running[0])
            if rec is not None and rec.state not in FINAL_STATES:
                finish_job(rec, self.store, self._emit, "failed", {
                    "code": ErrorCode.INTERNAL, "message": "the backend's job worker stopped while running this "
                    "job (a bug; the backend log has the details); it started again and runs the next jobs"})
        self._thread = self._new_thread()
        self._thread.start()
        return False

    def running_ids(self) -> list[str]:
        return [self._running[0]] if self._running else []

    def _cancel_running(self, job_id: str) -> bool:
        if self._running and self._running[0] == job_id:
            self._running[1].set()
            return True
        return False

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stop:
                    self._cond.wait()
                if self._stop:
                    return
            if not self._disk_has_room():
                with self._cond:
                    self._cond.wait(DISK_RECHECK_S)  # woken early by stop() or a new job
                continue
            with self._cond:
                if self._stop or not self._queue:
                    continue
                job_id = self._queue.popleft()
                cancel = threading.Event()
                self._running = (job_id, cancel)
            try:
                self._run(job_id, cancel)
            except Exception:  # execute_job never raises; this keeps the worker alive should it ever
                log.exception("the job worker caught an error of job %s", job_id)
            # Not in a 'finally': a thread killed by a BaseException leaves the job here for ensure_alive().
            with self._cond:
                self._running = None

    def _run(self, job_id: str, cancel: threading.Event) -> None:
        rec = self.store.get(job_id)
        if rec is not None:
            execute_job(rec, self.store, self.runners.get(rec.kind), self._emit, cancel, self.device,
                        shutting_down=lambda: self._stop)


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
        finish_job(rec, store, emit, "failed", _error_for(exc, rec.kind, store.disk))
        return
    if not acquired:
        # Another live process runs it (e.g. 'python -m backend resume' beside a server): its job.json is that
        # process's to write, so this one only answers its own client.
        rec.state, rec.finished = "failed", time.time()
        rec.error = {"code": ErrorCode.BAD_STATE, "message": f"job {rec.job_id} is being run by another backend "
                     "process on this work dir"}
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
        rec.outputs.update(_finite_or_none(outputs or {}))
        return "done", None
    except JobCancelled:
        if shutting_down():
            # Shut down mid-job: mark it interrupted so that it can be resumed from its checkpoint.
            return "interrupted", interrupted_error(rec, "the backend was shut down while this job ran")
        return "cancelled", None
    except JobFailed as exc:
        return "failed", {"code": exc.code, "message": str(exc)}
    except Exception as exc:  # a runner bug or an unexpected failure must not stop the worker
        return "failed", _error_for(exc, rec.kind, store.disk)


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


def result_message(rec: JobRecord) -> Message:
    """The ``result`` message for a job in a final state."""
    return Message("result", {"job_id": rec.job_id, "state": rec.state, "outputs": rec.outputs,
                              "error": None if rec.error is None else
                              {"code": rec.error["code"], "message": rec.error["message"]}})


# What to make smaller after an out-of-memory failure, per job kind (parameter names as in SPEC.md).
SMALLER_SETTINGS = {
    "reconstruct": "a lower 'scale' (e.g. 0.5) or the 'fast' preset",
    "stylize": "a lower 'scale' (e.g. 0.25) or the 'fast' preset",
    "render": "smaller frames (a lower camera width and height)",
    "extract_mesh": "a lower 'resolution' (e.g. 256)",
}


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` says the device (or the host) ran out of memory."""
    text = str(exc).lower()
    return (type(exc).__name__ == "OutOfMemoryError" or "out of memory" in text
            or "can't allocate memory" in text or isinstance(exc, MemoryError))


def _error_for(exc: Exception, kind: str = "", disk: DiskBudget | None = None) -> dict[str, Any]:
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


# What the operating system says of a path that cannot be used as given (far too long, looping links, a file
# where a folder should be): the user's input, not a backend fault.
BAD_PATH_ERRNOS = (errno.ENAMETOOLONG, errno.ELOOP, errno.ENOTDIR, errno.EISDIR)
