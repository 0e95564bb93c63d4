"""The in-process executor: queued jobs run one at a time on a thread of the server's process."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from protocol import FINAL_STATES, Message

from .context import RunnerFn
from .execute import execute_job, finish_job
from .messages import internal_error
from .queue import JobQueue
from .store import JobStore

log = logging.getLogger("nerfart.jobs")

DISK_RECHECK_S = 2.0  # how often a worker held by a full disk looks again


class ThreadWorker(JobQueue):
    """Runs queued jobs one at a time, in their turns (:mod:`.queue`), on a thread of its own.

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
                finish_job(rec, self.store, self._emit, "failed", internal_error(
                    "the backend's job worker stopped while running this job; it started again and runs the next "
                    "jobs"))
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
                job_id = self._pop()
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

