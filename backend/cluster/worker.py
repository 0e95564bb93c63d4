"""A cluster worker: one process per GPU that runs the jobs its broker hands it (the worker side of MDP/0.2).

``python -m backend worker --connect tcp://head:5556 --work-dir /shared/nerfart --device cuda:0``

Threads (ZeroMQ sockets are used only by the thread that made them):

* the main thread (:meth:`ClusterWorker.run`) owns the DEALER socket to the broker: READY, then it answers
  REQUEST by starting the job, CANCEL by cancelling it, and forwards the job's messages as PARTIAL and its
  result as FINAL (once the job's thread has ended, so that the next REQUEST finds the GPU free). It sends
  HEARTBEAT whenever it has sent nothing for an interval, and considers the broker gone after
  :data:`~.mdp.HEARTBEAT_LIVENESS` silent intervals (Paranoid Pirate);
* a job thread runs one job with :func:`~backend.jobstore.execute.execute_job`, exactly as the in-process worker
  does (same runners, checkpoints, ``job.json`` updates and lock), and pushes its messages to the main thread
  through an inproc PUSH/PULL pair.

When the conversation ends (DISCONNECT from the broker, or the broker gone), the running job is interrupted at
its next step (its checkpoint and ``interrupted`` record are written, its lock freed) and its messages are
dropped: the broker has given it to another worker or will find it interrupted. The worker then reconnects on a
new socket, waiting :data:`~.mdp.RECONNECT_MIN_S` doubling to :data:`~.mdp.RECONNECT_MAX_S` between attempts.
SIGTERM or SIGINT interrupt the running job, report it to the broker and end the process; so does the end of
the process that started it (``--parent-pid``, set by ``serve --workers``).

A job's folder may still be locked by a worker that was declared gone but lives on (a hung process on another
host): the job then waits, saying so in its progress, until the lock is free. It never runs twice at once.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq
from zmq.utils.monitor import recv_monitor_message

from backend.jobstore.context import RunnerFn
from backend.jobstore.disk import DiskBudget
from backend.jobstore.execute import execute_job
from backend.jobstore.lock import JobLock
from backend.jobstore.messages import failed_result, internal_error, progress_message
from backend.jobstore.record import JobRecord
from backend.jobstore.store import JobStore, check_record
from protocol import Message, encode

from . import mdp

log = logging.getLogger("nerfart.worker")

JOB_OUTBOX = "inproc://nerfart-job-outbox"
LOCK_RECHECK_S = 0.5
HANDSHAKE_FAILURES = (zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                      | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)


class SharedJobStore(JobStore):
    """The work dir as a worker sees it: no recovery at start, and records from the broker, not from a scan.

    The broker owns the records of jobs nobody runs (it recovers them at start, queues and re-queues them): a
    worker must neither mark jobs interrupted nor trust what it read earlier. It knows the job it runs and the
    jobs that job reads, as the broker sent them with the REQUEST (:meth:`adopt`).
    """

    def _load(self) -> None:
        """Nothing to load: see the class docstring."""

    def adopt(self, records: list[JobRecord]) -> None:
        """Replace the known records by ``records`` (the job to run and its sources)."""
        with self._lock:
            self.jobs = {rec.job_id: rec for rec in records}


def pin_cuda_device(device: str) -> str:
    """``cuda:K`` becomes ``cuda`` with ``CUDA_VISIBLE_DEVICES`` narrowed to the K-th GPU visible now; other
    devices are returned as they are. Call before torch initialises CUDA.

    One visible GPU per worker process keeps every library (Triton kernels, the caching allocator, memory
    queries) on the worker's own GPU, whatever it takes as "the current device".

    Raises:
        ValueError: ``cuda:K`` with K not a number, or beyond the GPUs that ``CUDA_VISIBLE_DEVICES`` lists.
    """
    kind, _, index = device.partition(":")
    if kind != "cuda" or not index:
        return device
    if not index.isdigit():
        raise ValueError(f"device {device!r}: write cuda:0, cuda:1, ...")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        ids = [v.strip() for v in visible.split(",") if v.strip()]
        if int(index) >= len(ids):
            raise ValueError(f"device {device!r}: CUDA_VISIBLE_DEVICES={visible!r} lists {len(ids)} GPU(s)")
        os.environ["CUDA_VISIBLE_DEVICES"] = ids[int(index)]
    else:
        os.environ["CUDA_VISIBLE_DEVICES"] = index
    return "cuda"


@dataclass
class RunningJob:
    """The job this worker runs: its thread, its cancel flag, and its result once the thread reported it."""

    job_id: str
    thread: threading.Thread | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    interrupting: threading.Event = field(default_factory=threading.Event)
    result: list[Any] | None = None  # the encoded result message, sent as FINAL once the thread has ended

    @property
    def alive(self) -> bool:
        return self.thread is not None and self.thread.is_alive()


@dataclass(frozen=True)
class WorkerCurve:
    """CURVE keys of a worker: the broker's public key and the worker's own pair (Z85)."""

    server_public: bytes
    public: bytes
    secret: bytes


class ClusterWorker:
    """One worker process (see the module docstring).

    Args:
        broker: the broker's worker endpoint, e.g. ``tcp://head:5556``.
        store: the shared work dir (:class:`SharedJobStore`).
        runners: job kind -> runner.
        device: passed to the runners (``cuda`` after :func:`pin_cuda_device`, or ``cpu``).
        name: how the broker and its log call this worker (``host/pid/device``).
        curve: CURVE keys when the broker's worker endpoint uses CURVE.
        parent_pid: end when this process is gone (the ``serve --workers`` that started this one).
        heartbeat_s, liveness: the heartbeat interval and the silent intervals before the broker is gone.
    """

    def __init__(self, broker: str, store: SharedJobStore, runners: dict[str, RunnerFn], device: str, *,
                 name: str = "", curve: WorkerCurve | None = None, parent_pid: int | None = None,
                 heartbeat_s: float = mdp.HEARTBEAT_INTERVAL_S, liveness: int = mdp.HEARTBEAT_LIVENESS) -> None:
        self.broker = broker
        self.store = store
        self.runners = runners
        self.device = device
        self.name = name or f"{socket.gethostname()[:100]}/{os.getpid()}/{device}"
        self.curve = curve
        self.parent_pid = parent_pid
        self.heartbeat_s = heartbeat_s
        self.liveness = liveness
        self.jobs_run = 0
        self._ctx = zmq.Context()
        self._stop = threading.Event()
        self._job: RunningJob | None = None
        self._last_told = 0.0  # when anything last went to the broker: heartbeats fill only the silences

    # Lifecycle -------------------------------------------------------------------------------------------------

    def stop(self) -> None:
        """End after interrupting the running job (safe from signal handlers and other threads)."""
        self._stop.set()

    def install_signal_handlers(self) -> None:
        def handler(signum: int, _frame: Any) -> None:
            log.info("signal %s: this worker ends (a running job is interrupted first)", signal.Signals(signum).name)
            self.stop()
        signal.signal(signal.SIGINT, handler)
        signal.signal(signal.SIGTERM, handler)

    def run(self) -> None:
        """Talk to the broker until :meth:`stop`, reconnecting with back-off whenever the conversation ends."""
        inbox = self._ctx.socket(zmq.PULL)
        inbox.setsockopt(zmq.LINGER, 0)
        inbox.bind(JOB_OUTBOX)
        delay = mdp.RECONNECT_MIN_S
        log.info("worker %s: joining the broker at %s (device %s, work dir %s)", self.name, self.broker,
                 self.device, self.store.work_dir)
        try:
            while not self._stop.is_set():
                heard = self._converse(inbox)
                if self._stop.is_set():
                    break
                delay = mdp.RECONNECT_MIN_S if heard else min(mdp.RECONNECT_MAX_S, 2 * delay)
                log.warning("worker %s: reconnecting to %s in %.0f s", self.name, self.broker, delay)
                self._stop.wait(delay)
        finally:
            self._end_job(inbox, None)
            self._ctx.destroy(linger=0)
            log.info("worker %s: stopped after %d job(s)", self.name, self.jobs_run)

    def _connect(self) -> zmq.Socket:
        sock = self._ctx.socket(zmq.DEALER)
        # A routing id per connection: the broker tells this conversation from an earlier one of the same process.
        sock.setsockopt(zmq.ROUTING_ID, f"{self.name}/{uuid.uuid4().hex[:8]}".encode("ascii", "replace"))
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, 10000)
        # A broker that takes nothing for as long as it may be silent is as good as gone.
        sock.setsockopt(zmq.SNDTIMEO, int(self.heartbeat_s * self.liveness * 1000))
        if self.curve is not None:
            sock.curve_serverkey = self.curve.server_public
            sock.curve_publickey = self.curve.public
            sock.curve_secretkey = self.curve.secret
        sock.connect(self.broker)
        return sock

    # The conversation with the broker ---------------------------------------------------------------------------

    def _converse(self, inbox: zmq.Socket) -> bool:
        """One conversation, from READY to its end; returns whether the broker said anything in it."""
        sock = self._connect()
        monitor = sock.get_monitor_socket(HANDSHAKE_FAILURES)
        heard_any = False
        try:
            if not self._send(sock, mdp.ready()):
                return False
            last_heard = time.monotonic()
            poller = zmq.Poller()
            poller.register(sock, zmq.POLLIN)
            poller.register(inbox, zmq.POLLIN)
            poller.register(monitor, zmq.POLLIN)
            while True:
                if self.parent_pid is not None and os.getppid() != self.parent_pid:
                    log.warning("worker %s: the process that started it (%d) is gone; stopping", self.name,
                                self.parent_pid)
                    self.stop()
                    self._end_job(inbox, None)  # its broker went with it: nobody to report to
                    return heard_any
                if self._stop.is_set():
                    self._end_job(inbox, sock)  # interrupted, and reported as such
                    self._send(sock, mdp.disconnect())
                    return heard_any
                events = dict(poller.poll(100))
                now = time.monotonic()
                if monitor in events:
                    self._explain_handshake(recv_monitor_message(monitor))
                    break
                if sock in events:
                    last_heard, heard_any = now, True
                    if not self._read_broker(sock, inbox):
                        return True
                if inbox in events and not self._forward(inbox, sock):
                    break
                if self._job is not None and self._job.result is not None and not self._job.alive:
                    job, self._job = self._job, None
                    if not self._send(sock, mdp.addressed(mdp.FINAL, job.job_id, job.result)):
                        break
                if now - last_heard > self.heartbeat_s * self.liveness:
                    log.warning("worker %s: no word from the broker for %.1f s", self.name, now - last_heard)
                    break
                if now - self._last_told >= self.heartbeat_s and not self._send(sock, mdp.heartbeat()):
                    break
            self._end_job(inbox, None)  # the broker is gone: it will re-queue the job or find it interrupted
            return heard_any
        finally:
            sock.disable_monitor()
            monitor.close(0)
            sock.close(0)

    def _explain_handshake(self, event: dict[str, Any]) -> None:
        """Say why the broker would not talk to this worker, and what to do."""
        if event["event"] == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            key = self.curve.public.decode() if self.curve else "?"
            log.error("worker %s: the broker at %s refused this worker's key %s; on the broker's machine, authorise "
                      "it: python -m backend keys authorize --worker -- '%s'", self.name, self.broker, key, key)
        elif self.curve is None:
            log.error("worker %s: the handshake with %s failed: that broker uses CURVE (give this worker "
                      "--server-key and --worker-key) or is no NeRF-Art broker", self.name, self.broker)
        else:
            log.error("worker %s: the secure handshake with %s failed: check --server-key (the broker's public "
                      "key, 'python -m backend keys show' there) and that the broker uses CURVE for its workers",
                      self.name, self.broker)

    def _read_broker(self, sock: zmq.Socket, inbox: zmq.Socket) -> bool:
        """Handle what the broker sent; False when the conversation is over (DISCONNECT, or a protocol error)."""
        while True:
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return True
            try:
                command = mdp.parse(frames)
            except mdp.MdpError as exc:
                log.warning("worker %s: dropped a message from the broker: %s", self.name, exc)
                continue
            if command.name == mdp.HEARTBEAT:
                continue
            if command.name == mdp.DISCONNECT:
                log.warning("worker %s: the broker disconnected it", self.name)
                self._end_job(inbox, None)
                return False
            if command.name == mdp.CANCEL:
                if self._job is not None and self._job.job_id == command.address:
                    self._job.cancel.set()
                continue
            if command.name == mdp.REQUEST and self._job is None:
                self._start_job(command)
                continue
            # MDP: one request at a time, and no other command comes from a broker; start the conversation over.
            log.error("worker %s: the broker sent %s %s; reconnecting", self.name, command.label,
                      "while a job runs" if self._job else "")
            self._send(sock, mdp.disconnect())
            self._end_job(inbox, None)
            return False

    def _forward(self, inbox: zmq.Socket, sock: zmq.Socket) -> bool:
        """Send the job thread's messages on as PARTIAL (the result is kept for FINAL); False if the broker is gone."""
        while True:
            try:
                frames = inbox.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return True
            job = self._job
            if job is None:
                continue  # a message of a job given up
            if frames[0].bytes == b"result":
                job.result = frames[1:]
            elif not self._send(sock, mdp.addressed(mdp.PARTIAL, job.job_id, frames[1:])):
                return False

    def _send(self, sock: zmq.Socket, frames: list[Any]) -> bool:
        try:
            sock.send_multipart(frames, copy=False)
            self._last_told = time.monotonic()
            return True
        except zmq.Again:  # SNDTIMEO: the broker has taken nothing for a whole heartbeat expiry
            log.warning("worker %s: the broker takes no messages", self.name)
            return False

    # The job ------------------------------------------------------------------------------------------------

    def _start_job(self, command: mdp.Command) -> None:
        try:
            body = json.loads(bytes(getattr(command.body[0], "bytes", command.body[0])).decode())
            rec = JobRecord.from_dict(body["record"])
            check_record(rec, command.address)
            sources = [JobRecord.from_dict(d) for d in body.get("sources", [])]
        except (ValueError, TypeError, KeyError) as exc:
            # The broker's own records: this is a bug there. The job fails rather than the worker.
            log.error("worker %s: a REQUEST for job %s could not be read: %s", self.name, command.address, exc)
            error = internal_error(f"its record could not be read by the worker ({exc})")
            self._job = RunningJob(command.address, result=encode(failed_result(command.address, error)))
            return
        self.store.adopt([rec, *sources])
        job = RunningJob(rec.job_id)
        job.thread = threading.Thread(target=self._job_main, args=(rec, job), name=f"nerfart-job-{rec.job_id}",
                                      daemon=True)
        self._job = job
        self.jobs_run += 1
        log.info("worker %s: job %s (%s)%s", self.name, rec.job_id, rec.kind,
                 f", resuming (resume {rec.resumes})" if rec.resumes else "")
        job.thread.start()

    def _job_main(self, rec: JobRecord, job: RunningJob) -> None:
        """The job thread: wait until no other process holds the job's folder, then run the job."""
        push = self._ctx.socket(zmq.PUSH)
        push.setsockopt(zmq.LINGER, 5000)
        push.connect(JOB_OUTBOX)

        def emit(msg: Message) -> None:
            push.send_multipart([msg.type.encode(), *encode(msg)], copy=False)

        try:
            wait_for_job_folder(self.store.job_dir(rec.job_id), job.cancel, rec, emit)
            execute_job(rec, self.store, self.runners.get(rec.kind), emit, job.cancel, self.device,
                        shutting_down=job.interrupting.is_set)
        except Exception:  # execute_job never raises; should it, the job must still end with a result
            log.exception("worker %s: job %s broke its thread", self.name, rec.job_id)
            emit(failed_result(rec.job_id, internal_error("the worker's job thread failed")))
        finally:
            push.close()

    def _end_job(self, inbox: zmq.Socket, sock: zmq.Socket | None) -> None:
        """Interrupt the running job (it saves its checkpoint and ends ``interrupted``) and wait for it.

        With ``sock`` its messages and result still go to the broker (a clean stop); without, they are dropped.
        """
        job = self._job
        if job is None:
            return
        job.interrupting.set()
        job.cancel.set()
        reporting = sock is not None
        while job.alive or inbox.poll(0):
            if inbox.poll(100):
                if reporting and sock is not None:
                    reporting = self._forward(inbox, sock)  # a broker that takes nothing gets nothing more
                else:
                    inbox.recv_multipart()
        if reporting and sock is not None and job.result is not None:
            self._send(sock, mdp.addressed(mdp.FINAL, job.job_id, job.result))
        self._job = None


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
            log.warning("job %s: its folder is still locked by another process (a worker declared gone that lives "
                        "on?); waiting", rec.job_id)
            emit(progress_message(rec.job_id, "waiting", 0, 0,
                                  message="waiting for another process to let go of this job's folder"))
        cancel.wait(LOCK_RECHECK_S)


def worker_store(work_dir: Path, quota_bytes: int | None, min_free_bytes: int) -> SharedJobStore:
    """The shared work dir with this worker's disk limits."""
    work_dir = Path(work_dir).resolve()
    return SharedJobStore(work_dir, DiskBudget(work_dir, quota_bytes, min_free_bytes))
