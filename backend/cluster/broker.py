"""The broker: the front-end's job queue served by worker processes, the broker side of MDP/0.2 (see :mod:`.mdp`).

``python -m backend serve`` runs jobs on a thread of its own (:class:`backend.jobstore.thread_worker.ThreadWorker`). With
``--workers N`` it runs them on worker processes instead, N of them started on this machine (one per GPU) and
any number joining from other hosts (``python -m backend worker --connect ...``) over a work dir they share.
Clients see no difference: the server's socket loop keeps the one client endpoint, the job store and the
routing of every job's messages; it polls one more socket, this broker's ROUTER on the worker endpoint, and
asks the broker instead of the thread to queue, cancel and resume jobs. The broker is used only by that
socket thread.

What the broker does, and the MDP/PPP rules it follows:

* A worker exists from its READY on. A command from an unknown peer (other than READY) is answered with
  DISCONNECT, as is a second READY; a message that is not MDP is dropped.
* Dispatch is MDP's least-recently-used rule and nothing more: the oldest queued job goes to the worker that
  has been idle longest, as one REQUEST whose body is the job's record (and the records of the jobs it reads).
  The worker answers with PARTIAL (progress, frames, meshes), which go on to the job's client, and one FINAL
  (the result). While the work dir's disk is full, queued jobs wait, as with the in-process worker.
* Heartbeats (Paranoid Pirate): every command counts as one; the broker sends HEARTBEAT to each worker it has
  sent nothing to for an interval, and a worker it has heard nothing from for :data:`~.mdp.HEARTBEAT_LIVENESS`
  intervals is gone. So is a worker that sent DISCONNECT, or whose process (a local one) exited.
* A gone worker's job is queued again at the front, with ``resumes`` counted up, so that it continues from its
  last checkpoint on the next free worker (as the ``resume`` message does after a crash); its client gets a
  progress message saying so. A job whose workers die :data:`MAX_WORKER_LOSSES` times fails instead (it may be
  what kills them). A local worker declared gone is killed first: a hung process must never wake up and write
  the folder of a job that has moved on (the job's lock file keeps a remote one out until it lets go).
* Cancel: a queued job ends at once; for a running one the broker sends CANCEL (the extension of
  :mod:`.mdp`), and the job ends ``cancelled`` by its FINAL, or at once if its worker is gone meanwhile.

Who writes ``job.json``: the worker that runs a job (the same :func:`~backend.jobstore.execute.execute_job` as the
in-process worker); the broker for jobs no worker holds (queued, re-queued, cancelled while queued). The broker
keeps its copy of each record up to date from the messages, so ``status`` answers from memory as before.
"""

from __future__ import annotations

import json
import logging
import socket
import time
from collections import Counter, deque
from dataclasses import asdict, dataclass
from typing import Any

import zmq

from backend.access.auth import ServerKeys, admit_workers, curve_server_options
from backend.jobstore.execute import finish_job
from backend.jobstore.messages import (
    internal_error,
    interrupted_error,
    progress_message,
    requeued_note,
    result_message,
)
from backend.jobstore.queue import JobQueue
from backend.jobstore.record import JobRecord
from backend.jobstore.store import JobStore
from protocol import DEFAULT_LIMITS, FINAL_STATES, Limits, Message, ProtocolError, decode
from protocol.errors import clip_text

from . import mdp
from .local import LocalWorkers

log = logging.getLogger("nerfart.cluster")

MAX_WORKER_LOSSES = 3  # workers lost while running one job before that job fails
DEFAULT_WORKER_ENDPOINT = "tcp://127.0.0.1:*"  # loopback, any free port: local workers are told where
STOP_TIMEOUT_S = 30.0  # how long a stopping broker waits for its local workers to interrupt their jobs


@dataclass(frozen=True)
class ClusterConfig:
    """How the server runs its jobs on worker processes.

    Attributes:
        worker_endpoint: where the broker's ROUTER binds (checked like the client endpoint).
        devices: one entry per local worker to start (``cuda:0``, ``cpu``...); empty: remote workers only.
        curve: the server's keys when the worker endpoint uses CURVE (workers authorised in
            ``authorized_workers/``, local ones with a key pair made at start); None: no CURVE.
        worker_args: more options for the local workers' command line (disk limits, ``-v``).
        heartbeat_s, liveness: the heartbeat interval and the intervals of silence before a peer is gone.
        limits: size limits of the messages workers send.
    """

    worker_endpoint: str = DEFAULT_WORKER_ENDPOINT
    devices: tuple[str, ...] = ()
    curve: ServerKeys | None = None
    worker_args: tuple[str, ...] = ()
    heartbeat_s: float = mdp.HEARTBEAT_INTERVAL_S
    liveness: int = mdp.HEARTBEAT_LIVENESS
    limits: Limits = DEFAULT_LIMITS


@dataclass
class WorkerLink:
    """The broker's view of one connected worker.

    Attributes:
        identity: its routing id, ``host/pid/device/nonce`` (chosen by the worker, new for each connection).
        heard: when anything last came from it (monotonic seconds).
        told: when the broker last sent it anything.
        job_id: the job it runs, or None when idle.
    """

    identity: bytes
    heard: float
    told: float
    job_id: str | None = None

    @property
    def name(self) -> str:
        return self.identity.decode("ascii", "replace")

    @property
    def host(self) -> str:
        return self.name.split("/")[0]

    @property
    def pid(self) -> int:
        parts = self.name.split("/")
        return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else -1

    @property
    def device(self) -> str:
        parts = self.name.split("/")
        return parts[2] if len(parts) > 2 else "?"


class Broker(JobQueue):
    """Jobs of a :class:`~backend.jobstore.store.JobStore` run by worker processes (see the module docstring).

    Args:
        store: the server's job store (on the work dir the workers share).
        emit: the server's outlet for job messages (called on the socket thread).
        ctx: the server's ZeroMQ context (its ZAP handler checks CURVE keys).
        config: the worker endpoint, the local workers and the heartbeat.
    """

    def __init__(self, store: JobStore, emit: Any, ctx: zmq.Context, config: ClusterConfig) -> None:
        super().__init__(store, emit)
        self.config = config
        self.bound_endpoint: str | None = None
        self._ctx = ctx
        self._socket: zmq.Socket | None = None
        self._workers: dict[bytes, WorkerLink] = {}
        self._idle: deque[bytes] = deque()  # idle workers, longest idle first
        self._losses: Counter[str] = Counter()  # job id -> workers lost while running it
        self._cancelled: set[str] = set()  # running jobs a cancel was sent for
        self._stopping = False
        self._orphans_checked = time.monotonic()
        self._hostname = socket.gethostname()
        self._local_keys: tuple[bytes, bytes] | None = zmq.curve_keypair() if config.curve else None
        env = {}
        if self._local_keys is not None and config.curve is not None:
            env = {"NERFART_BROKER_PUBLIC_KEY": config.curve.public.decode(),
                   "NERFART_WORKER_PUBLIC_KEY": self._local_keys[0].decode(),
                   "NERFART_WORKER_SECRET_KEY": self._local_keys[1].decode()}
        self.local = LocalWorkers(config.devices, store.work_dir, config.worker_args, env) if config.devices \
            else None

    # Lifecycle -------------------------------------------------------------------------------------------------

    def start(self, authenticator: Any = None) -> None:
        """Bind the worker endpoint and start the local workers (on the server's socket thread).

        Raises:
            ValueError: the endpoint cannot be bound (in use, a bad address).
        """
        sock = self._ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)  # a send to a worker that is gone fails instead of vanishing
        sock.setsockopt(zmq.SNDHWM, 10000)
        sock.setsockopt(zmq.RCVHWM, 10000)
        # A worker's message is one protocol message plus a few MDP frames.
        sock.setsockopt(zmq.MAXMSGSIZE, self.config.limits.max_message_bytes + 4096)
        if self.config.curve is not None:
            if authenticator is None:
                raise ValueError("CURVE on the worker endpoint needs the server's ZAP handler")
            also = frozenset({self._local_keys[0]}) if self._local_keys else frozenset()
            admit_workers(authenticator, self.config.curve, mdp.WORKER_ZAP_DOMAIN, also)
            sock.zap_domain = mdp.WORKER_ZAP_DOMAIN.encode()
            curve_server_options(sock, self.config.curve)
        try:
            sock.bind(self.config.worker_endpoint)
        except zmq.ZMQError as exc:
            sock.close(0)
            raise ValueError(f"cannot listen for workers on {self.config.worker_endpoint}: {exc.strerror}; pick "
                             "another --worker-endpoint") from None
        self._socket = sock
        self.bound_endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        log.info("broker: workers connect to %s%s", self.bound_endpoint,
                 " (CURVE: authorised worker keys only)" if self.config.curve else "")
        if self.local is not None:
            self.local.start(self.bound_endpoint)
        else:
            log.warning("broker: no local workers; jobs wait until a worker joins: python -m backend worker "
                        "--connect %s --work-dir %s", self.bound_endpoint, self.store.work_dir)

    def sockets(self) -> list[zmq.Socket]:
        """The socket the server's loop polls for this broker."""
        return [self._socket] if self._socket is not None else []

    def ensure_alive(self) -> bool:
        """One turn, on every turn of the server's loop: read the workers, notice the gone ones, heartbeat,
        dispatch. Returns True (the broker has no thread that could die)."""
        self._receive()
        self._reap_local()
        now = time.monotonic()
        expiry = self.config.heartbeat_s * self.config.liveness
        if now - self._orphans_checked >= expiry:
            self._orphans_checked = now
            self._settle_orphans()
        for link in list(self._workers.values()):
            if now - link.heard > expiry:
                self._lose(link, f"no word from it for {now - link.heard:.1f} s")
            elif now - link.told >= self.config.heartbeat_s:
                self._send(link, mdp.heartbeat())
        self._dispatch()
        return True

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Interrupt every running job at its next step (each ends ``interrupted``, resumable from its checkpoint)
        and stop the local workers; queued jobs stay queued for the next start."""
        self._stopping = True
        if self._socket is None:
            return
        for link in list(self._workers.values()):
            if not self._is_local(link):
                # A remote worker interrupts its job (and records it) when told to disconnect.
                self._send(link, mdp.disconnect())
                self._drop(link, "the broker is stopping")
        if self.local is not None:
            self.local.terminate()
            deadline = time.monotonic() + timeout_s
            while self.local.any_alive() and time.monotonic() < deadline:
                if self._socket.poll(100):
                    self._receive()
            self._receive()
            self.local.kill_all()
            self.local.reap()
        for link in list(self._workers.values()):
            self._drop(link, "the broker stopped")
        self._socket.close(0)
        self._socket = None

    # JobQueue -------------------------------------------------------------------------------------------------

    def running_ids(self) -> list[str]:
        # list() copies the links at once: other threads (status in tests) may call this while workers come and go.
        return [link.job_id for link in list(self._workers.values()) if link.job_id is not None]

    def enqueue(self, rec: JobRecord) -> int:
        position = super().enqueue(rec)
        self._dispatch()
        return position

    def _cancel_running(self, job_id: str) -> bool:
        link = self._link_running(job_id)
        if link is None:
            return False
        self._cancelled.add(job_id)
        self._send(link, mdp.cancel(job_id))
        return True

    def gpu_summary(self) -> dict[str, Any]:
        """``hello_reply.gpu`` of a cluster: how many workers, and on which devices and hosts."""
        links = sorted(self._workers.values(), key=lambda w: w.name)
        where = ", ".join(f"{w.device}@{w.host}" for w in links[:8]) + (", ..." if len(links) > 8 else "")
        busy = sum(1 for w in links if w.job_id)
        return {"name": f"{len(links)} worker{'s' if len(links) != 1 else ''} ({busy} busy): {where or 'none yet'}",
                "memory_total": 0, "memory_free": 0}

    def workers(self) -> list[WorkerLink]:
        """The connected workers (a copy of the list)."""
        return list(self._workers.values())

    # Incoming -------------------------------------------------------------------------------------------------

    def _receive(self, budget: int = 500) -> None:
        if self._socket is None:
            return
        for _ in range(budget):
            try:
                frames = self._socket.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            try:
                self._on_command(frames[0].bytes, frames[1:])
            except Exception:  # a bug must not stop the server's loop; the worker's job is lost at worst
                log.exception("broker: error while handling a worker's message")

    def _on_command(self, identity: bytes, frames: list[Any]) -> None:
        try:
            command = mdp.parse(frames)
        except mdp.MdpError as exc:
            log.warning("broker: dropped a message from %r: %s", identity[:80], exc)
            return
        link = self._workers.get(identity)
        if command.name == mdp.READY:
            if link is not None or command.service != mdp.SERVICE:
                why = "a second READY" if link is not None else f"READY for service {command.service[:40]!r}"
                self._refuse(identity, link, why)
                return
            now = time.monotonic()
            link = WorkerLink(identity, heard=now, told=now)
            self._workers[identity] = link
            self._idle.append(identity)
            log.info("broker: worker %s is ready (%d connected)", link.name, len(self._workers))
            self._dispatch()
            return
        if link is None:
            if command.name != mdp.DISCONNECT:
                # A worker this broker does not know (declared gone, or from before a restart): it must start over.
                self._send_raw(identity, mdp.disconnect())
            return
        link.heard = time.monotonic()
        if command.name == mdp.HEARTBEAT:
            return
        if command.name == mdp.DISCONNECT:
            self._lose(link, "it disconnected", kill=False)
        elif command.name in (mdp.PARTIAL, mdp.FINAL) and command.address == link.job_id:
            self._on_job_message(link, command)
        else:
            self._refuse(identity, link, f"an unexpected {command.label} (for job {command.address or '-'})")

    def _refuse(self, identity: bytes, link: WorkerLink | None, why: str) -> None:
        """MDP: a valid but unexpected command is answered with DISCONNECT, and the worker is forgotten."""
        log.warning("broker: worker %r sent %s; disconnecting it", identity[:80], why)
        self._send_raw(identity, mdp.disconnect())
        if link is not None:
            self._lose(link, why)

    def _on_job_message(self, link: WorkerLink, command: mdp.Command) -> None:
        job_id = str(link.job_id)
        rec = self.store.get(job_id)
        msg: Message | None = None
        try:
            msg = decode(command.body, None, self.config.limits)
            if msg.job_id != job_id:
                raise ProtocolError("invalid_field", f"it names job {msg.job_id!r}")
        except ProtocolError as exc:
            log.warning("broker: a %s of job %s from %s cannot be used: %s", command.label, job_id, link.name,
                        exc.message)
            msg = None
        if command.name == mdp.PARTIAL:
            if msg is not None and rec is not None and msg.type != "result":
                if msg.type == "progress":
                    rec.stage, rec.step, rec.total = msg.content["stage"], msg.content["step"], msg.content["total"]
                self._emit(msg)
            return
        # FINAL: the worker is free again, whatever its result says.
        link.job_id = None
        self._idle.append(link.identity)
        if rec is not None and (msg is None or msg.type != "result"):
            finish_job(rec, self.store, self._emit, "failed", internal_error(
                "its worker ended it without a readable result"))
        elif rec is not None and msg is not None:
            self._adopt_result(rec, msg)
        self._dispatch()

    def _adopt_result(self, rec: Any, msg: Message) -> None:
        """Take a worker's final word on a job into the broker's record (the worker wrote ``job.json``)."""
        content = msg.content
        self._cancelled.discard(rec.job_id)
        if content["state"] == "interrupted" and not self._stopping:
            # The worker was stopped under its job (SIGTERM from someone): the job itself is fine, go on elsewhere.
            self._requeue(rec, "its worker was shut down while running it")
            return
        rec.state, rec.finished = content["state"], time.time()
        rec.outputs, rec.error = dict(content["outputs"]), content["error"]
        self._losses.pop(rec.job_id, None)
        self._emit(msg)

    # Workers that are gone ------------------------------------------------------------------------------------

    def _reap_local(self) -> None:
        """Local worker processes that exited are gone at once (no need to wait for their heartbeats to stop)."""
        if self.local is None:
            return
        for pid in self.local.reap():
            for link in list(self._workers.values()):
                if link.pid == pid and link.host == self._hostname:
                    self._lose(link, "its process exited", kill=False)

    def _settle_orphans(self) -> None:
        """Jobs listed ``running`` that no worker of this broker runs: those another process held when the server
        started (a worker of the server before a quick restart, a command-line run). Once that process lets go,
        the job takes the state it left (done, or interrupted and resumable) and its client is told."""
        ours = set(self.running_ids())
        for rec in self.store.all():
            if rec.state != "running" or rec.job_id in ours:
                continue
            settled = self.store.reload_released(rec.job_id)
            if settled is not None and settled.state in FINAL_STATES:
                log.info("broker: job %s, run by another process, is %s", settled.job_id, settled.state)
                self._emit(result_message(settled))

    def _is_local(self, link: WorkerLink) -> bool:
        return self.local is not None and link.host == self._hostname and self.local.owns(link.pid)

    def _drop(self, link: WorkerLink, why: str) -> None:
        """Forget a worker; a job it ran ends ``interrupted`` here (the broker is stopping)."""
        self._forget(link)
        rec = self.store.get(link.job_id) if link.job_id else None
        if rec is not None and rec.state == "running":
            rec.state, rec.finished = "interrupted", time.time()
            rec.error = interrupted_error(rec, f"the backend was shut down while this job ran ({why})")
            self._emit(result_message(rec))

    def _forget(self, link: WorkerLink) -> None:
        self._workers.pop(link.identity, None)
        if link.identity in self._idle:
            self._idle.remove(link.identity)

    def _lose(self, link: WorkerLink, why: str, kill: bool = True) -> None:
        """A worker is gone: forget it, kill it if it is ours (unless it left by itself), and give its job to
        another worker."""
        if link.identity not in self._workers:
            return
        self._forget(link)
        if kill and self._is_local(link) and self.local is not None:
            self.local.kill(link.pid)
        if self._stopping:
            self._drop(link, why)
            return
        log.warning("broker: lost worker %s (%s)%s", link.name, why,
                    f" while it ran job {link.job_id}" if link.job_id else "")
        rec = self.store.get(link.job_id) if link.job_id else None
        if rec is None or rec.state != "running":
            return
        if rec.job_id in self._cancelled:
            self._cancelled.discard(rec.job_id)
            finish_job(rec, self.store, self._emit, "cancelled", None)
            return
        self._losses[rec.job_id] += 1
        if self._losses[rec.job_id] >= MAX_WORKER_LOSSES:
            finish_job(rec, self.store, self._emit, "failed", {"code": "internal", "message": clip_text(
                f"{self._losses[rec.job_id]} workers were lost while running this job (the last: {why}); it may be "
                "what stops them, so it is not tried again. The backend log has the details")})
            self._losses.pop(rec.job_id, None)
            return
        self._requeue(rec, f"its worker {link.device}@{link.host} was lost ({why})")

    def _requeue(self, rec: Any, why: str) -> None:
        """Queue a job that was running again, first in line, to continue from its last checkpoint."""
        rec.state, rec.finished, rec.error = "queued", None, None
        rec.resumes += 1  # the runner picks up its latest checkpoint, as after a 'resume'
        try:
            self.store.save(rec)
        except OSError as exc:  # a full disk: the job still goes on (its record is written by its next worker)
            log.error("job %s: its queued state could not be recorded: %s", rec.job_id, exc)
        self._push_front(rec)
        log.warning("broker: job %s is queued again: %s", rec.job_id, why)
        self._emit(progress_message(rec.job_id, rec.stage, rec.step, rec.total,
                                    message=clip_text(requeued_note(rec, why), 500)))
        self._dispatch()

    # Outgoing -------------------------------------------------------------------------------------------------

    def _dispatch(self) -> None:
        """The next queued job (in the queue's turns) to the longest-idle worker, while there are both (and room
        on the disk)."""
        while self._queue and self._idle and not self._stopping and self._socket is not None:
            if not self._disk_has_room():
                return
            with self._cond:
                job_id = self._pop()
            rec = self.store.get(job_id)
            if rec is None or rec.state != "queued":
                continue
            link = self._workers[self._idle.popleft()]
            body = json.dumps({"record": asdict(rec), "sources": self._source_records(rec)}, allow_nan=False)
            if not self._send(link, mdp.addressed(mdp.REQUEST, job_id, [body.encode()])):
                self._push_front(rec)  # that worker is gone (and forgotten); the next one takes it
                continue
            link.job_id = job_id
            rec.state, rec.started, rec.error = "running", time.time(), None
            log.info("broker: job %s (%s) to worker %s", job_id, rec.kind, link.name)

    def _source_records(self, rec: Any) -> list[dict[str, Any]]:
        """The records of the jobs ``rec`` reads, as this broker knows them (a worker on another host could see
        an older ``job.json`` for a moment on a network file system)."""
        source_id = rec.params.get("source_job")
        source = self.store.get(source_id) if isinstance(source_id, str) else None
        return [asdict(source)] if source is not None else []

    def _link_running(self, job_id: str) -> WorkerLink | None:
        return next((w for w in self._workers.values() if w.job_id == job_id), None)

    def _send(self, link: WorkerLink, frames: list[Any]) -> bool:
        """Send to a worker; a worker that cannot be reached is lost (False)."""
        if self._send_raw(link.identity, frames):
            link.told = time.monotonic()
            return True
        self._lose(link, "it cannot be reached")
        return False

    def _send_raw(self, identity: bytes, frames: list[Any]) -> bool:
        if self._socket is None:
            return False
        try:
            self._socket.send_multipart([identity, *frames], flags=zmq.NOBLOCK, copy=False)
            return True
        except zmq.ZMQError as exc:  # EHOSTUNREACH: its connection is gone; EAGAIN: it does not read
            log.debug("broker: cannot send to %r: %s", identity[:80], exc)
            return False

