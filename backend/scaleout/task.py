"""The Ray task that runs one job: :func:`run_job`, on whichever Ray worker (and GPU) Ray gives it.

It runs the job exactly as the single-process server does, with :func:`~backend.jobstore.execute.execute_job`: the
same runners, the job's lock file, its checkpoints and its ``job.json`` written through the job store on the
work dir every host of the cluster shares (at the same path). Its messages go to the server through the
:class:`~backend.scaleout.channel.JobChannel`; its ``result`` does not: the server builds the result from the
record on disk once the task has ended (see :mod:`backend.scaleout.executor`).

When Ray runs the task again because its worker process or its node died, the new attempt continues the job
from its latest checkpoint (``resumes`` counts up, as after a ``resume``), and says so in a progress message.
It first waits until no process holds the job's lock: an older attempt that lives on, cut off from the cluster,
must have let go of the folder before another writes it.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from dataclasses import asdict
from pathlib import Path
from typing import Any

from backend.jobstore.context import RunnerFn
from backend.jobstore.disk import DiskBudget
from backend.jobstore.execute import execute_job
from backend.jobstore.lock import JobLock
from backend.jobstore.messages import progress_message
from backend.jobstore.record import JobRecord
from backend.jobstore.store import JobStore
from protocol import Message, encode

log = logging.getLogger("nerfart.scaleout")

CANCEL_POLL_S = 0.25  # how often a task asks whether it was cancelled: cancel ends a job within a second
LOCK_RECHECK_S = 0.5
FLUSH_TIMEOUT_S = 120.0
GPU_MISMATCH_EXIT = 75  # the exit status of a worker that must not run a task on another GPU (see below)

# The GPUs the CUDA context of this worker process was made for (see _same_gpus_as_before).
_process_gpu_ids: tuple[str, ...] | None = None


class TaskJobStore(JobStore):
    """The work dir as a task sees it: the records the server sent, no recovery of other jobs at start.

    The server owns the records of the jobs no task runs (it recovers them at start, queues and cancels them):
    a task must neither mark other jobs interrupted nor trust a copy of a record it read earlier.
    """

    def _load(self) -> None:
        """Nothing to load: see the class docstring."""

    def adopt(self, records: list[JobRecord]) -> None:
        with self._lock:
            self.jobs = {rec.job_id: rec for rec in records}


class ChannelEmitter:
    """``emit`` for :func:`execute_job`: each message goes to the channel, encoded; ``result`` stays here."""

    def __init__(self, channel: Any, job_id: str, attempt: int) -> None:
        self.channel = channel
        self.job_id = job_id
        self.attempt = attempt
        self._last: Any = None

    def __call__(self, msg: Message) -> None:
        if msg.type == "result":
            return  # the server builds it from the job's record on disk
        frames = [bytes(f) for f in encode(msg)]
        self._last = self.channel.put.remote(self.job_id, self.attempt, frames)

    def flush(self) -> None:
        """Wait until the channel holds every message sent so far (a caller's calls run in order)."""
        if self._last is not None:
            import ray

            ray.get(self._last, timeout=FLUSH_TIMEOUT_S)


class CancelWatcher:
    """A thread that asks the channel whether the job was cancelled or interrupted, and raises the job's flags."""

    def __init__(self, channel: Any, job_id: str, cancel: threading.Event, interrupting: threading.Event) -> None:
        self.channel = channel
        self.job_id = job_id
        self.cancel = cancel
        self.interrupting = interrupting
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name=f"nerfart-cancel-{job_id}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._done.set()
        self._thread.join(5)

    def _watch(self) -> None:
        import ray

        while not self._done.wait(CANCEL_POLL_S):
            try:
                what = ray.get(self.channel.requested.remote(self.job_id), timeout=30)
            except Exception as exc:  # the channel is gone with the server: Ray ends this task soon
                log.warning("job %s: cannot ask the server about cancel: %s", self.job_id, exc)
                continue
            if what is not None:
                if what == "interrupt":
                    self.interrupting.set()
                self.cancel.set()
                return


def run_job(record: dict[str, Any], sources: list[dict[str, Any]], work_dir: str, quota_bytes: int | None,
            min_free_bytes: int, channel: Any, device: str,
            runners: dict[str, RunnerFn] | None = None) -> dict[str, Any]:
    """Run one job to a final state on this Ray worker; returns its final record (as ``job.json`` holds it).

    Args:
        record: the job's record as the server has it (``queued``).
        sources: the records of the jobs it reads (a stylization's reconstruction), as the server has them.
        work_dir: the shared work dir, at the same path on every host.
        quota_bytes, min_free_bytes: the server's disk limits for the work dir.
        channel: the server's :class:`~backend.scaleout.channel.JobChannel` actor.
        device: ``cuda`` for a task given a GPU (Ray narrows ``CUDA_VISIBLE_DEVICES`` to it), else ``cpu``.
        runners: job kind -> runner (default: :func:`backend.jobs.default_runners`).
    """
    import ray

    if device.startswith("cuda") and not _same_gpus_as_before(ray.get_gpu_ids()):
        # This worker process made its CUDA context for other GPUs than Ray gives this task, and a context
        # cannot move: end the process before touching anything. Ray runs the task again on a new worker.
        log.warning("this Ray worker's CUDA context is on other GPUs than its task's; ending it so that Ray runs "
                    "the task on a fresh worker")
        os._exit(GPU_MISMATCH_EXIT)
    if runners is None:
        from backend.jobs import default_runners

        runners = default_runners()
    rec = JobRecord.from_dict(record)
    attempt = int(ray.get(channel.begin.remote(rec.job_id)))
    work = Path(work_dir)
    store = TaskJobStore(work, DiskBudget(work, quota_bytes, min_free_bytes))
    store.adopt([rec, *(JobRecord.from_dict(s) for s in sources)])
    emit = ChannelEmitter(channel, rec.job_id, attempt)
    cancel, interrupting = threading.Event(), threading.Event()
    watcher = CancelWatcher(channel, rec.job_id, cancel, interrupting)
    watcher.start()
    try:
        if attempt > 1:
            rec.resumes += 1  # the runner picks up its latest checkpoint, as after a 'resume'
            log.warning("job %s: attempt %d (its previous Ray worker was lost); resuming", rec.job_id, attempt)
            emit(_progress(rec, f"its Ray worker was lost; attempt {attempt} continues from its last checkpoint"))
        wait_for_job_folder(store.job_dir(rec.job_id), cancel, rec, emit)
        execute_job(rec, store, runners.get(rec.kind), emit, cancel, device, shutting_down=interrupting.is_set)
    finally:
        watcher.stop()
        emit.flush()
    return asdict(rec)


def wait_for_job_folder(job_dir: Path, cancel: threading.Event, rec: JobRecord, emit: Any) -> None:
    """Return once no other process holds the job's lock (or the job is cancelled), saying once that it waits."""
    lock = JobLock(job_dir)
    said = False
    while not cancel.is_set():
        try:
            if lock.acquire():
                lock.release()
                return
        except OSError:
            return  # the lock file cannot even be made: execute_job reports why
        if not said:
            said = True
            log.warning("job %s: its folder is still locked by another process (an earlier attempt that lives "
                        "on?); waiting", rec.job_id)
            emit(_progress(rec, "waiting for another process to let go of this job's folder", stage="waiting"))
        cancel.wait(LOCK_RECHECK_S)


def _progress(rec: JobRecord, text: str, stage: str | None = None) -> Message:
    return progress_message(rec.job_id, stage or rec.stage or "queued", rec.step, rec.total, message=text)


def _same_gpus_as_before(gpu_ids: list[Any]) -> bool:
    """Whether this worker process may run a task on ``gpu_ids`` (what Ray gave the task).

    Ray keeps worker processes for further tasks, and sets ``CUDA_VISIBLE_DEVICES`` for each one; but torch
    makes its CUDA context once, for the GPUs visible then. A task given other GPUs than the process's context
    would run on GPUs Ray gave to another task.
    """
    global _process_gpu_ids
    ids = tuple(str(i) for i in gpu_ids)
    torch = sys.modules.get("torch")
    cuda_made = torch is not None and torch.cuda.is_initialized()
    if _process_gpu_ids is None or not cuda_made:
        _process_gpu_ids = ids
        return True
    return ids == _process_gpu_ids
