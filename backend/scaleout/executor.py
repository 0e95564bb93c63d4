"""The server's side of scale-out: its job queue served by Ray tasks, N at a time.

``serve --workers N`` / ``--ray-address`` put a :class:`RayExecutor` where the single-process server has its
:class:`~backend.jobstore.Worker`: the same queue (oldest first, positions, cancel, resume), the same job
store, the same messages to the same clients. It runs on a thread of its own, which, over and over:

* dispatches: while fewer than ``capacity`` jobs run, the oldest queued job becomes one Ray task
  (:func:`backend.scaleout.task.run_job`) asking for ``gpus_per_job`` GPUs; Ray places it on a worker that
  has them, on any host, and runs it again (up to ``max_retries`` times) when that worker process or its node
  dies; the new attempt resumes from the job's latest checkpoint;
* forwards what the tasks put in the :class:`~backend.scaleout.channel.JobChannel` (progress, previews,
  frames, meshes) to the jobs' clients, keeping each job's stage and step for ``status``;
* ends the jobs whose task ended (below), and kills the worker of a cancelled job that does not stop within
  ``cancel_grace_s``.

Who writes ``job.json``: the job store, in the task for the job it runs (:func:`execute_job`, as in the
single-process server) and here for the jobs no task holds (queued, cancelled before they ran, failed after
their last retry, killed after a cancel). The server's copy of a record never takes a state from a message:
when a task ends, the job's record is read back from disk, and only if the disk holds no final state (its
task could not write it: a full disk) is the task's return value, which Ray authenticated, used in memory.
Cancel reaches the running task through the channel: it stops at its next step boundary and records itself
``cancelled``; stopping the server asks every task to stop the same way and record itself ``interrupted``
(resumable), waits ``stop_timeout_s`` for them, then disconnects from Ray (Ray ends the tasks of a driver that
leaves).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import asdict, dataclass, fields
from typing import Any

from backend.jobstore.context import RunnerFn
from backend.jobstore.execute import finish_job
from backend.jobstore.messages import interrupted_error, result_message
from backend.jobstore.queue import JobQueue
from backend.jobstore.record import JobRecord
from backend.jobstore.store import JobStore, read_record
from protocol import DEFAULT_LIMITS, FINAL_STATES, ErrorCode, Limits, ProtocolError, decode
from protocol.errors import clip_text

from .ray_cluster import RayConfig, RayRuntime, start_ray

log = logging.getLogger("nerfart.scaleout")

TURN_S = 0.05  # the thread's turn: how long it waits for a task to end before it forwards messages again
SETTLE_EVERY_S = 3.0  # how often jobs another process held at start are looked at again


@dataclass
class RunningTask:
    """A job's task: its Ray object ref, and when a cancel was asked (for the kill after the grace time)."""

    job_id: str
    ref: Any
    cancel_asked: float | None = None
    killed: bool = False


def channel_actor() -> Any:
    """The :class:`~backend.scaleout.channel.JobChannel` as a Ray actor class (no CPU of its own).

    Restarted whenever it dies, its calls retried meanwhile: Ray's memory monitor kills workers, actors
    included, when the node runs low on memory (whoever used it), and without the channel no running job could
    report or be cancelled. A restarted channel has lost its buffered messages (live views only: frames and
    meshes are on disk) and takes up each running job's attempt from its next message (``JobChannel.put``).
    """
    import ray

    from .channel import JobChannel

    return ray.remote(num_cpus=0, max_concurrency=1, max_restarts=-1, max_task_retries=-1)(JobChannel)


class RayExecutor(JobQueue):
    """Jobs of a :class:`~backend.jobstore.JobStore` run as Ray tasks (see the module docstring).

    Args:
        store: the server's job store (on the work dir every host of the cluster mounts at the same path).
        emit: the server's outlet for job messages (any thread).
        config: Ray's address or local workers, the token, retries and timeouts.
        device: the server's ``--device``: ``cuda`` gives each task its GPU share, ``cpu`` none.
        runners: job kind -> runner, sent with every task (None: the tasks use :func:`default_runners`).
        limits: size limits of the messages tasks send.
    """

    def __init__(self, store: JobStore, emit: Any, config: RayConfig, device: str,
                 runners: dict[str, RunnerFn] | None = None, limits: Limits = DEFAULT_LIMITS) -> None:
        super().__init__(store, emit)
        self.config = config
        self.device = device
        self.runners = runners
        self.limits = limits
        self.runtime: RayRuntime | None = None
        self.restarts = 0
        self._channel: Any = None
        self._remote_run: Any = None
        self._running: dict[str, RunningTask] = {}
        self._stop = threading.Event()
        self._stopping = threading.Event()  # no new job goes to Ray
        self._started = False
        self._settled_at = 0.0
        self._thread = self._new_thread()

    def _new_thread(self) -> threading.Thread:
        return threading.Thread(target=self._loop, name="nerfart-ray", daemon=True)

    # Lifecycle -------------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start or join Ray (see :mod:`.ray_cluster`) and the dispatch thread.

        Raises:
            ValueError: Ray could not be started or joined (no token, an open cluster, ...).
        """
        import ray

        from .task import run_job

        self.runtime = start_ray(self.config, self.device)
        self._channel = channel_actor().remote()
        # max_calls=0: a worker process keeps running jobs (its imports, CUDA context and caches stay warm;
        # Ray's default for GPU tasks is a new process per task). retry_exceptions=False: only a dead worker
        # or node is retried; execute_job turns every exception of a job into its failed state.
        self._remote_run = ray.remote(max_calls=0)(run_job).options(
            num_cpus=self.runtime.cpus_per_job, num_gpus=self.runtime.gpus_per_job,
            max_retries=self.config.max_retries, retry_exceptions=False, name="nerfart-job")
        self._started = True
        self._thread.start()
        log.info("jobs run as Ray tasks: %d at once (%s)", self.runtime.capacity, self.runtime.where)

    def ensure_alive(self) -> bool:
        """Start a new dispatch thread if the current one died (a bug); False when it had to. Its running jobs
        stay theirs: the new thread follows them on."""
        if not self._started or self._stop.is_set() or self._thread.is_alive():
            return True
        self.restarts += 1
        log.error("the Ray dispatch thread died; starting a new one")
        self._thread = self._new_thread()
        self._thread.start()
        return False

    def stop(self, timeout_s: float | None = None) -> None:
        """Interrupt every running job at its next step (each records itself ``interrupted``, resumable), wait
        for them, and leave Ray (a local cluster ends); queued jobs stay queued for the next start."""
        if not self._started:
            return
        timeout_s = self.config.stop_timeout_s if timeout_s is None else timeout_s
        self._stopping.set()
        with self._cond:
            running = list(self._running.values())
        for task in running:
            self._ask(task.job_id, "interrupt")
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self._running and self._thread.is_alive():
            time.sleep(TURN_S)
        self._stop.set()
        self._thread.join(30)
        import ray

        for task in list(self._running.values()):  # did not stop in time: its worker is killed
            log.warning("job %s did not stop within %.0f s; killing its Ray worker", task.job_id, timeout_s)
            rec = self.store.get(task.job_id)
            try:
                ray.cancel(task.ref, force=True)
            except Exception as exc:
                log.warning("could not cancel the task of job %s: %s", task.job_id, exc)
            if rec is not None and not self._back_in_queue(rec) and rec.state not in FINAL_STATES:
                finish_job(rec, self.store, self._emit, "interrupted",
                           interrupted_error(rec, "the backend was shut down while this job ran"))
        self._running.clear()
        ray.shutdown()
        self._started = False
        log.info("left Ray")

    # JobQueue -------------------------------------------------------------------------------------------------

    def running_ids(self) -> list[str]:
        return list(self._running)

    def _cancel_running(self, job_id: str) -> bool:
        task = self._running.get(job_id)
        if task is None:
            return False
        if task.cancel_asked is None:
            task.cancel_asked = time.monotonic()
        self._ask(job_id, "cancel")
        return True

    def gpu_summary(self) -> dict[str, Any]:
        """``hello_reply.gpu``: how many jobs run at once, and where."""
        capacity = self.runtime.capacity if self.runtime else 0
        where = self.runtime.where if self.runtime else "Ray not started"
        return {"name": f"{capacity} worker{'s' if capacity != 1 else ''} ({len(self._running)} busy): {where}",
                "memory_total": 0, "memory_free": 0}

    # The thread ---------------------------------------------------------------------------------------------

    def _loop(self) -> None:
        import ray

        while not self._stop.is_set():
            try:
                self._dispatch()
                refs = [t.ref for t in list(self._running.values())]
                if refs:
                    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=TURN_S)
                else:
                    ready = []
                    with self._cond:
                        self._cond.wait(TURN_S)
                self._forward_messages()  # before the ended tasks: their last messages go before their result
                for ref in ready:
                    self._end(ref)
                self._kill_overdue_cancels()
                if time.monotonic() - self._settled_at > SETTLE_EVERY_S:
                    self._settled_at = time.monotonic()
                    self._settle_orphans()
            except Exception:  # a bug, or Ray unreachable for a moment: log it and go on
                log.exception("error in the Ray dispatch thread")
                self._stop.wait(1.0)

    def _dispatch(self) -> None:
        """The oldest queued jobs to Ray while fewer than ``capacity`` run (and the disk has room)."""
        assert self.runtime is not None
        while len(self._running) < self.runtime.capacity and not self._stopping.is_set():
            with self._cond:
                if not self._queue:
                    return
            if not self._disk_has_room():
                return
            with self._cond:
                if not self._queue:
                    return
                job_id = self._pop()
                rec = self.store.get(job_id)
                if rec is None or rec.state != "queued":
                    continue
                sources = self._source_records(rec)
                ref = self._remote_run.remote(asdict(rec), sources, str(self.store.work_dir),
                                              self.store.disk.quota_bytes, self.store.disk.min_free_bytes,
                                              self._channel, self.runtime.task_device, self.runners)
                self._running[job_id] = RunningTask(job_id, ref)
                # In memory only: job.json says 'running' once the task has started it.
                rec.state, rec.started, rec.error = "running", time.time(), None
            log.info("job %s (%s) to Ray%s", job_id, rec.kind, f" (resume {rec.resumes})" if rec.resumes else "")

    def _source_records(self, rec: JobRecord) -> list[dict[str, Any]]:
        """The records of the jobs ``rec`` reads, as the server knows them (a host of the cluster could see an
        older ``job.json`` for a moment on a network file system)."""
        source_id = rec.params.get("source_job")
        source = self.store.get(source_id) if isinstance(source_id, str) else None
        return [asdict(source)] if source is not None else []

    def _forward_messages(self) -> None:
        import ray

        batch = ray.get(self._channel.take.remote(), timeout=60)
        for job_id, frames in batch:
            rec = self.store.get(job_id)
            if rec is None or job_id not in self._running:
                continue  # a job already ended here: what its task still says is stale
            try:
                msg = decode(frames, None, self.limits)
                if msg.job_id != job_id or msg.type not in ("progress", "frame", "mesh"):
                    raise ProtocolError(ErrorCode.INVALID_FIELD, f"a {msg.type} naming job {msg.job_id!r}")
            except ProtocolError as exc:
                log.warning("job %s: a message of its task cannot be used: %s", job_id, exc.message)
                continue
            if msg.type == "progress":
                rec.stage, rec.step, rec.total = msg.content["stage"], msg.content["step"], msg.content["total"]
            self._emit(msg)

    def _end(self, ref: Any) -> None:
        """A job's task ended: take the job's final state from its record on disk and announce it."""
        import ray

        task = next((t for t in list(self._running.values()) if t.ref == ref), None)
        if task is None:
            return
        rec = self.store.get(task.job_id)
        returned: dict[str, Any] | None = None
        error: dict[str, Any] | None = None
        state = "failed"
        try:
            returned = ray.get(ref, timeout=60)
        except ray.exceptions.TaskCancelledError:
            state = "interrupted" if self._stopping.is_set() and task.cancel_asked is None else "cancelled"
        except (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError,
                ray.exceptions.LocalRayletDiedError) as exc:
            error = {"code": ErrorCode.INTERNAL, "message": clip_text(
                f"its Ray worker was lost {self.config.max_retries + 1} times while running it (the last: "
                f"{type(exc).__name__}); it may be what stops them, so it is not tried again. 'resume' tries "
                f"once more; the backend log has the details")}
        except Exception as exc:  # RayTaskError (a bug in the task's code), an object lost...
            log.error("job %s: its Ray task failed: %s", task.job_id, exc)
            error = {"code": ErrorCode.INTERNAL, "message": clip_text(
                f"its Ray task failed ({type(exc).__name__}); the backend log has the details")}
        with self._cond:
            self._running.pop(task.job_id, None)
            self._cond.notify_all()
        self._channel.forget.remote(task.job_id)
        if rec is None:
            return
        if returned is None:
            if state == "interrupted" and self._back_in_queue(rec):
                return
            if state == "interrupted":
                error = interrupted_error(rec, "the backend was shut down while this job ran")
            elif state == "cancelled":
                error = None
            finish_job(rec, self.store, self._emit, state, error)
            return
        on_disk = read_record(self.store.job_dir(rec.job_id) / "job.json")
        if on_disk is not None and on_disk.state in FINAL_STATES:
            _update(rec, on_disk)
        else:
            # Its task could not write its final state (a full disk): what it returned holds, in memory.
            log.error("job %s: its record on disk says %s; keeping the %s its task ended with, in memory", rec.job_id,
                      on_disk.state if on_disk else "nothing readable", returned.get("state"))
            _update(rec, JobRecord.from_dict(returned))
            if rec.state not in FINAL_STATES:
                rec.state, rec.error = "failed", {"code": ErrorCode.INTERNAL,
                                                  "message": "its task ended without a final state (a bug)"}
        self._emit(result_message(rec))
        log.info("job %s (%s) %s%s", rec.job_id, rec.kind, rec.state,
                 f": {rec.error['message']}" if rec.error else "")

    def _back_in_queue(self, rec: JobRecord) -> bool:
        """A job whose task was ended before it began (waiting in Ray for a free GPU): its ``job.json`` still
        says ``queued``, and so does the server again; the next start runs it."""
        on_disk = read_record(self.store.job_dir(rec.job_id) / "job.json")
        if on_disk is None or on_disk.state != "queued":
            return False
        rec.state, rec.started = "queued", None
        return True

    def _ask(self, job_id: str, what: str) -> None:
        try:
            self._channel.request.remote(job_id, what)
        except Exception as exc:  # Ray is gone: the task is gone with it
            log.warning("could not ask job %s to %s: %s", job_id, what, exc)

    def _kill_overdue_cancels(self) -> None:
        """A cancelled job that did not stop at a step boundary within the grace time: kill its worker."""
        import ray

        now = time.monotonic()
        for task in list(self._running.values()):
            if task.cancel_asked is not None and not task.killed and now - task.cancel_asked > self.config.cancel_grace_s:
                log.warning("job %s did not stop within %.0f s of its cancel; killing its Ray worker", task.job_id,
                            self.config.cancel_grace_s)
                task.killed = True
                ray.cancel(task.ref, force=True)

    def _settle_orphans(self) -> None:
        """Jobs listed ``running`` that no task of this server runs: those another process held when the server
        started (a task of the server before a quick restart, a command-line run). Once that process lets go,
        the job takes the state it left (done, or interrupted and resumable) and its client is told."""
        for rec in self.store.all():
            if rec.state != "running" or rec.job_id in self._running:
                continue
            settled = self.store.reload_released(rec.job_id)
            if settled is not None and settled.state in FINAL_STATES:
                log.info("job %s, run by another process, is %s", settled.job_id, settled.state)
                self._emit(result_message(settled))


def _update(rec: JobRecord, source: JobRecord) -> None:
    """Copy every field of ``source`` into ``rec`` (the server's object stays the one everything refers to)."""
    for f in fields(JobRecord):
        setattr(rec, f.name, getattr(source, f.name))

