"""The jobs waiting to run, taken in fair turns, and what an executor answers about them.

Turns. One client must not make everybody else wait behind its thousands of jobs, and a client's name is no
help there (without CURVE anyone can claim any name, and a script can rotate a hundred). So the queue shares its
turns first between *hosts* (the network address a submit came from, which the operating system tells, not the
client), then between the *owners* of one host, and takes an owner's own jobs oldest first. A newcomer's first
job therefore waits for at most one job of every host and of every owner on its own host, however many jobs
those have queued. The caps on how many jobs an owner and a host may have queued are the server's
(:meth:`JobQueue.queued`), so that a host cannot mint owners to queue without bound either.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter, OrderedDict, deque
from collections.abc import Callable

from protocol import ErrorCode, Message, ProtocolError

from .execute import finish_job, prepare_resume
from .record import JobRecord
from .store import JobStore

log = logging.getLogger("nerfart.jobs")


class FairQueue:
    """Job ids in turns: hosts in rotation, within a host its owners in rotation, within an owner oldest first.

    A host (or owner) that gets a turn goes to the back of the rotation; one that arrives, or comes back after
    its jobs ran out, joins at the back. Not thread-safe: :class:`JobQueue` holds its lock around every call.
    """

    def __init__(self) -> None:
        self._hosts: OrderedDict[str, OrderedDict[str, deque[str]]] = OrderedDict()
        self._where: dict[str, tuple[str, str]] = {}  # job id -> (host, owner)
        self._per_host: Counter[str] = Counter()
        self._per_owner: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._where

    def append(self, job_id: str, host: str, owner: str) -> None:
        """Queue a job behind its owner's others."""
        self._add(job_id, host, owner).append(job_id)

    def push_front(self, job_id: str, host: str, owner: str) -> None:
        """Queue a job to run next (one whose executor was lost under it)."""
        self._add(job_id, host, owner).appendleft(job_id)
        self._hosts[host].move_to_end(owner, last=False)
        self._hosts.move_to_end(host, last=False)

    def _add(self, job_id: str, host: str, owner: str) -> deque[str]:
        if job_id in self._where:
            raise ValueError(f"job {job_id} is queued already")
        self._where[job_id] = (host, owner)
        self._per_host[host] += 1
        self._per_owner[owner] += 1
        return self._hosts.setdefault(host, OrderedDict()).setdefault(owner, deque())

    def remove(self, job_id: str) -> bool:
        """Take a job out of the queue; False if it is not queued."""
        if job_id not in self._where:
            return False
        host, owner = self._where[job_id]
        self._hosts[host][owner].remove(job_id)
        self._forget(job_id)
        return True

    def pop(self) -> str:
        """The job whose turn it is, taken out of the queue.

        Raises:
            IndexError: the queue is empty.
        """
        if not self._hosts:
            raise IndexError("pop from an empty queue")
        host, owners = next(iter(self._hosts.items()))
        owner, jobs = next(iter(owners.items()))
        job_id = jobs.popleft()
        owners.move_to_end(owner)
        self._hosts.move_to_end(host)
        self._forget(job_id)
        return job_id

    def _forget(self, job_id: str) -> None:
        host, owner = self._where.pop(job_id)
        self._per_host[host] -= 1
        self._per_owner[owner] -= 1
        owners = self._hosts[host]
        if not owners[owner]:
            del owners[owner]
        if not owners:
            del self._hosts[host]
        for counter, key in ((self._per_host, host), (self._per_owner, owner)):
            if counter[key] <= 0:
                del counter[key]

    def order(self) -> list[str]:
        """Every queued job in the order they will run if nothing else arrives (what :meth:`pop` would give)."""
        hosts = deque((host, deque((owner, deque(jobs)) for owner, jobs in owners.items()))
                      for host, owners in self._hosts.items())
        out: list[str] = []
        while hosts:
            host, owners = hosts.popleft()
            owner, jobs = owners.popleft()
            out.append(jobs.popleft())
            if jobs:
                owners.append((owner, jobs))
            if owners:
                hosts.append((host, owners))
        return out

    def count(self, *, host: str | None = None, owner: str | None = None) -> int:
        """Queued jobs of ``host`` or of ``owner`` (all of them when neither is given)."""
        if host is not None:
            return self._per_host[host]
        if owner is not None:
            return self._per_owner[owner]
        return len(self._where)


class JobQueue:
    """The jobs waiting to run, in fair turns (:class:`FairQueue`), and what a job runner answers about them.

    Shared by the in-process :class:`~.thread_worker.ThreadWorker` (one job at a time on a thread) and the
    cluster's executors (one job per worker process). ``emit`` receives the messages to send to the jobs'
    clients (the server hands them to its socket thread). A subclass says which jobs run (:meth:`running_ids`)
    and how to stop a running one (:meth:`_cancel_running`).
    """

    def __init__(self, store: JobStore, emit: Callable[[Message], None]) -> None:
        self.store = store
        self._emit = emit
        self._queue = FairQueue()
        for rec in store.all():  # oldest first
            if rec.state == "queued":
                self._queue.append(rec.job_id, rec.host, rec.owner)
        self._cond = threading.Condition()
        self._disk_full_logged = False

    def running_ids(self) -> list[str]:
        """The jobs running now."""
        raise NotImplementedError

    def _cancel_running(self, job_id: str) -> bool:
        """Ask a running job to stop at its next step boundary; False if ``job_id`` is not running."""
        raise NotImplementedError

    def enqueue(self, rec: JobRecord) -> int:
        """Queue a job; returns its position (0 = next)."""
        with self._cond:
            self._queue.append(rec.job_id, rec.host, rec.owner)
            self._cond.notify_all()
            return self._position(rec.job_id)

    def _push_front(self, rec: JobRecord) -> None:
        """Queue a job that was running again, first in line (its executor was lost under it)."""
        with self._cond:
            self._queue.push_front(rec.job_id, rec.host, rec.owner)
            self._cond.notify_all()

    def _pop(self) -> str:
        """The next job to run, out of the queue (the caller holds the lock and saw the queue non-empty)."""
        return self._queue.pop()

    def position(self, job_id: str) -> int:
        """0 for a running job, else the jobs before it (a running one counts as one); -1 if not queued."""
        with self._cond:
            return self._position(job_id)

    def _position(self, job_id: str) -> int:
        return self.positions().get(job_id, -1)

    def positions(self) -> dict[str, int]:
        """The :meth:`position` of every queued or running job, worked out once (``status`` of all jobs)."""
        with self._cond:
            running = self.running_ids()
            out = dict.fromkeys(running, 0)
            ahead = 1 if running else 0
            out.update((job_id, i + ahead) for i, job_id in enumerate(self._queue.order()))
            return out

    def queue_length(self) -> int:
        """Jobs queued or running."""
        with self._cond:
            return len(self._queue) + len(self.running_ids())

    def queued(self, *, host: str | None = None, owner: str | None = None) -> int:
        """Jobs queued (not running) of ``host`` or of ``owner``."""
        with self._cond:
            return self._queue.count(host=host, owner=owner)

    def cancel(self, job_id: str) -> str:
        """Cancel a job: a queued one at once, a running one at its next step boundary. Returns its state."""
        with self._cond:
            if self._queue.remove(job_id):
                rec = self.store.get(job_id)
                if rec is not None:
                    finish_job(rec, self.store, self._emit, "cancelled", None)
                return "cancelled"
            if self._cancel_running(job_id):
                return "running"
        rec = self.store.get(job_id)
        return rec.state if rec else "failed"

    def resume(self, job_id: str, host: str | None = None) -> int:
        """Queue an interrupted job again to continue from its checkpoint; returns its position (0 = next).

        ``host`` (the address the ``resume`` came from) is where the job counts from now on, as if submitted again.

        Raises:
            ProtocolError: ``unknown_job``, ``bad_state`` unless the job is interrupted, or ``disk_full``.
        """
        with self._cond:
            rec = self.store.get(job_id)
            if rec is None:
                raise ProtocolError(ErrorCode.UNKNOWN_JOB, f"no job {job_id[:40]!r} on this backend", "job_id")
            prepare_resume(rec, self.store, host)
            return self.enqueue(rec)

    def _disk_has_room(self) -> bool:
        """Whether jobs may start; logs once when a full disk starts and stops holding them."""
        has_room = self.store.disk.room() > 0
        if not has_room and not self._disk_full_logged:
            log.warning("queued jobs wait: %s", self.store.disk.shortage("job outputs"))
        elif has_room and self._disk_full_logged:
            log.info("there is room on the disk again; queued jobs run")
        self._disk_full_logged = not has_room
        return has_room
