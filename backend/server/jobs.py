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
import gc
import json
import logging
import os
import re
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

from protocol import FINAL_STATES, ErrorCode, Message, ProtocolError

log = logging.getLogger("nerfart.jobs")

INPUT_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
PROGRESS_INTERVAL_S = 0.1  # at most ten progress messages a second; stage changes and previews always go
RUNNING_LOCK = "running.lock"
RESUMABLE_STATES = ("interrupted",)


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
    ``interrupted`` (their checkpoints stay), jobs that were queued are queued again.
    """

    def __init__(self, work_dir: Path) -> None:
        self.work_dir = Path(work_dir).resolve()
        self.jobs_dir = self.work_dir / "jobs"
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        self.jobs: dict[str, JobRecord] = {}
        self._lock = threading.RLock()
        self._load()

    def _load(self) -> None:
        records = []
        for path in self.jobs_dir.glob("*/job.json"):
            try:
                data = json.loads(path.read_text())
                records.append(JobRecord.from_dict(data))
            except (OSError, ValueError, TypeError) as exc:
                log.warning("ignoring unreadable job record %s: %s", path, exc)
        for rec in sorted(records, key=lambda r: r.created):
            if rec.state == "running" and not self._running_elsewhere(rec.job_id):
                # Its process died (crash, kill -9, power cut): nothing will finish it.
                rec.state = "interrupted"
                rec.finished = time.time()
                rec.error = interrupted_error(rec, "the backend stopped while this job was running")
                self.save(rec)
            self.jobs[rec.job_id] = rec

    def _running_elsewhere(self, job_id: str) -> bool:
        """Whether another live process (e.g. a command-line run beside the server) is running this job."""
        lock = JobLock(self.job_dir(job_id))
        if not lock.acquire():
            return True
        lock.release()
        return False

    def job_dir(self, job_id: str) -> Path:
        return self.jobs_dir / job_id

    def create(self, kind: str, params: dict[str, Any], owner: str,
               inputs: dict[str, tuple[bytes | memoryview, str]] | None = None) -> JobRecord:
        """A new queued job with its directory and uploaded inputs written.

        Raises:
            ProtocolError: an input name that is not a plain file-name stem (nothing is written outside the
                job's own directory).
        """
        for name, (_, fmt) in (inputs or {}).items():
            if not INPUT_NAME.match(name):
                raise ProtocolError(ErrorCode.INVALID_FIELD, f"input name {name[:80]!r} must be 1-64 letters, "
                                    "digits, '_' or '-'", f"inputs.{name[:80]}")
            if not INPUT_NAME.match(fmt):
                raise ProtocolError(ErrorCode.INVALID_FIELD, "input format must be a plain word",
                                    f"inputs.{name}.format")
        job_id = uuid.uuid4().hex[:16]
        rec = JobRecord(job_id=job_id, kind=kind, params=params, owner=owner)
        job_dir = self.job_dir(job_id)
        (job_dir / "inputs").mkdir(parents=True)
        (job_dir / "outputs").mkdir()
        for name, (data, fmt) in (inputs or {}).items():
            file_name = f"{name}.{fmt}"
            atomic_write_bytes(job_dir / "inputs" / file_name, data)
            rec.inputs[name] = file_name
        with self._lock:
            self.jobs[job_id] = rec
            self.save(rec)
        return rec

    def save(self, rec: JobRecord) -> None:
        """Write ``job.json`` atomically and durably (temporary file, fsync, rename): a crash never leaves half."""
        with self._lock:
            atomic_write_bytes(self.job_dir(rec.job_id) / "job.json",
                               json.dumps(asdict(rec), indent=1, allow_nan=False), durable=True)

    def get(self, job_id: str) -> JobRecord | None:
        with self._lock:
            return self.jobs.get(job_id)

    def all(self) -> list[JobRecord]:
        with self._lock:
            return list(self.jobs.values())


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


def _finite(values: dict[str, float] | None) -> dict[str, float]:
    # JSON has no NaN; a diverging loss is reported as a huge number rather than breaking the message.
    out = {}
    for k, v in (values or {}).items():
        v = float(v)
        out[k] = v if v == v and abs(v) != float("inf") else 3.0e38
    return out


class Worker:
    """Runs queued jobs one at a time, in order, on a thread of its own.

    ``emit`` is called from the worker thread with each outgoing message; the server hands it to its socket
    thread (ZeroMQ sockets are not thread-safe).
    """

    def __init__(self, store: JobStore, runners: dict[str, RunnerFn], emit: Callable[[Message], None],
                 device: str) -> None:
        self.store = store
        self.runners = runners
        self.device = device
        self._emit = emit
        self._queue: deque[str] = deque()
        self._cond = threading.Condition()
        self._running: tuple[str, threading.Event] | None = None
        self._stop = False
        self._thread = threading.Thread(target=self._loop, name="nerfart-worker", daemon=True)
        for rec in store.all():
            if rec.state == "queued":
                self._queue.append(rec.job_id)

    def start(self) -> None:
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

    def enqueue(self, job_id: str) -> int:
        """Queue a job; returns its position (0 = next)."""
        with self._cond:
            self._queue.append(job_id)
            self._cond.notify_all()
            return len(self._queue) - 1 + (1 if self._running else 0)

    def position(self, job_id: str) -> int:
        with self._cond:
            if self._running and self._running[0] == job_id:
                return 0
            try:
                return self._queue.index(job_id) + (1 if self._running else 0)
            except ValueError:
                return -1

    def queue_length(self) -> int:
        with self._cond:
            return len(self._queue) + (1 if self._running else 0)

    def cancel(self, job_id: str) -> str:
        """Cancel a job: a queued one at once, a running one at its next step boundary. Returns its state."""
        with self._cond:
            if job_id in self._queue:
                self._queue.remove(job_id)
                rec = self.store.get(job_id)
                assert rec is not None
                self._finish(rec, "cancelled", None)
                return "cancelled"
            if self._running and self._running[0] == job_id:
                self._running[1].set()
                return "running"
        rec = self.store.get(job_id)
        return rec.state if rec else "failed"

    def resume(self, job_id: str) -> int:
        """Queue an interrupted job again to continue from its checkpoint; returns its position (0 = next).

        Raises:
            ProtocolError: ``unknown_job``, or ``bad_state`` unless the job is interrupted.
        """
        with self._cond:
            rec = self.store.get(job_id)
            if rec is None:
                raise ProtocolError(ErrorCode.UNKNOWN_JOB, f"no job {job_id[:40]!r} on this backend", "job_id")
            prepare_resume(rec, self.store)
            return self.enqueue(job_id)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stop:
                    self._cond.wait()
                if self._stop:
                    return
                job_id = self._queue.popleft()
                cancel = threading.Event()
                self._running = (job_id, cancel)
            try:
                self._run(job_id, cancel)
            finally:
                with self._cond:
                    self._running = None

    def _run(self, job_id: str, cancel: threading.Event) -> None:
        rec = self.store.get(job_id)
        if rec is not None:
            execute_job(rec, self.store, self.runners.get(rec.kind), self._emit, cancel, self.device,
                        shutting_down=lambda: self._stop)

    def _finish(self, rec: JobRecord, state: str, error: dict[str, Any] | None) -> None:
        finish_job(rec, self.store, self._emit, state, error)


def execute_job(rec: JobRecord, store: JobStore, runner: RunnerFn | None, emit: Callable[[Message], None],
                cancel: threading.Event, device: str,
                shutting_down: Callable[[], bool] = lambda: False) -> None:
    """Run one job to a final state: the server's worker and the command line both use this.

    Every outcome is recorded in ``job.json`` and announced with a ``result`` message: done, cancelled,
    interrupted (cancelled because the process is shutting down), or failed with a user-facing error. After an
    out-of-memory failure the memory the job held is released (and the CUDA cache emptied) so that the next job
    starts on a clean device.
    """
    lock = JobLock(store.job_dir(rec.job_id))
    if not lock.acquire():
        # Another live process runs it (e.g. 'python -m backend resume' beside a server): its job.json is that
        # process's to write, so this one only answers its own client.
        rec.state, rec.finished = "failed", time.time()
        rec.error = {"code": ErrorCode.BAD_STATE, "message": f"job {rec.job_id} is being run by another backend "
                     "process on this work dir"}
        emit(result_message(rec))
        return
    out_of_memory = False
    try:
        rec.state, rec.started = "running", time.time()
        if rec.resumes:
            rec.outputs.pop("resume_note", None)  # a note of an earlier resume is stale
        store.save(rec)
        ctx = JobContext(rec, store, emit, cancel, device)
        try:
            if runner is None:
                raise JobFailed(f"this backend has no runner for {rec.kind} jobs", ErrorCode.UNKNOWN_KIND)
            outputs = runner(ctx)
            ctx.check_cancel()
            rec.outputs.update(outputs or {})
            finish_job(rec, store, emit, "done", None)
        except JobCancelled:
            if shutting_down():
                # Shut down mid-job: mark it interrupted so that it can be resumed from its checkpoint.
                finish_job(rec, store, emit, "interrupted",
                           interrupted_error(rec, "the backend was shut down while this job ran"))
            else:
                finish_job(rec, store, emit, "cancelled", None)
        except JobFailed as exc:
            finish_job(rec, store, emit, "failed", {"code": exc.code, "message": str(exc)})
        except Exception as exc:  # a runner bug or an unexpected failure must not stop the worker
            error = _error_for(exc, rec.kind)
            out_of_memory = error["code"] == ErrorCode.OUT_OF_MEMORY
            finish_job(rec, store, emit, "failed", error)
    finally:
        lock.release()
    if out_of_memory:
        # Outside the except block: only now is the traceback, and the tensors its frames hold, released.
        release_memory(device)


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
    """Record a final state and announce it."""
    assert state in FINAL_STATES
    rec.state, rec.finished, rec.error = state, time.time(), error
    store.save(rec)
    emit(result_message(rec))
    log.info("job %s (%s) %s%s", rec.job_id, rec.kind, state, f": {error['message']}" if error else "")


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


def _error_for(exc: Exception, kind: str = "") -> dict[str, Any]:
    """A user-facing error for an exception raised by a runner of a ``kind`` job."""
    name = type(exc).__name__
    if is_out_of_memory(exc):
        # torch's CPU allocator says "can't allocate memory"; Python raises MemoryError: host memory, not GPU.
        host = isinstance(exc, MemoryError) or "can't allocate memory" in str(exc).lower()
        smaller = SMALLER_SETTINGS.get(kind, "smaller settings")
        return {"code": ErrorCode.OUT_OF_MEMORY, "message": f"the {'machine' if host else 'GPU'} ran out of "
                f"memory; try again with {smaller}. The backend freed the memory and keeps serving. "
                f"Details: {str(exc)[:300]}"}
    if isinstance(exc, ValueError | FileNotFoundError | PermissionError | ProtocolError):
        # Bad input (an unreadable capture, a bad parameter): the message is for the user as it is.
        return {"code": ErrorCode.JOB_FAILED, "message": str(exc)}
    log.error("job failed with an unexpected error:\n%s", traceback.format_exc())
    return {"code": ErrorCode.INTERNAL, "message": f"internal error ({name}: {exc}); the backend log has the "
            "traceback"}
