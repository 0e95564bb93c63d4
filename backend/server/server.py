"""The backend server: a ZeroMQ ROUTER socket, a job worker, heartbeats.

Threads and sockets (ZeroMQ sockets are used only by the thread that made them):

* the *socket thread* (``Server.serve``) owns the ROUTER bound to the public endpoint and an inproc PULL
  socket; it decodes requests, answers them at once, and forwards job messages to their clients;
* the *worker thread* runs one job at a time and pushes its messages through an inproc PUSH socket; or,
  with a :class:`~backend.scaleout.ray_cluster.RayConfig` (``serve --workers N`` or ``--ray-address``), the
  :class:`~backend.scaleout.executor.RayExecutor`'s thread runs the jobs as Ray tasks, N at a time
  (:mod:`backend.scaleout`), and their messages take the same way to the clients.

Answering never waits on a job, so hello/status/cancel stay instant while a GPU job runs, and a client that
vanishes costs nothing: sends are non-blocking and messages for an absent client are dropped (the job's
outputs are on disk, and ``attach`` re-sends the result).

Owners. Every job belongs to the client that submitted it, named by a stable *owner* string:

* with CURVE (:mod:`backend.access.auth`), ``key:<client public key>``: the ZAP handler's User-Id, which the handshake has
  proven, so isolation between clients is enforced;
* without CURVE, ``id:<client id>`` from the client's routing id ``<client id>/<session>`` (see
  :class:`protocol.Client`): stable across reconnects, but anyone can claim any id, so isolation is only
  advisory; a peer that does not follow that convention is ``rid:<routing id in hex>``.

In multi-user mode a client sees, attaches to and cancels only its own jobs; in single-user mode (the default
on loopback without CURVE) every client sees every job. A job's messages go to the connection that submitted
or last attached it, or, once that connection is gone, to the latest connection of the job's owner (the server
keeps owner -> latest routing id), so a client that reconnects gets its jobs' messages again.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import signal
import threading
import uuid
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import zmq

import backend
from backend.access.auth import (
    AuthorizedKeys,
    ServerKeys,
    admit_clients,
    curve_server_options,
    start_authenticator,
)
from backend.access.endpoints import check_bind_endpoint, check_transport_security, is_loopback_endpoint
from backend.jobstore.context import RunnerFn
from backend.jobstore.disk import DEFAULT_MIN_FREE_BYTES, DiskBudget
from backend.jobstore.messages import result_message, status_entry, status_summary
from backend.jobstore.record import JobRecord
from backend.jobstore.store import JobStore
from backend.jobstore.thread_worker import ThreadWorker
from protocol import (
    DEFAULT_LIMITS,
    JOB_KINDS,
    PROTOCOL_VERSION,
    ErrorCode,
    Limits,
    Message,
    ProtocolError,
    Signer,
    decode,
    encode,
    make_reply,
    split_identities,
    validate_content,
)
from protocol.client import CLIENT_ID
from protocol.errors import clip_text, error_content
from protocol.framing import check_json_value, load_json_object

if TYPE_CHECKING:
    from backend.scaleout.executor import RayExecutor
    from backend.scaleout.ray_cluster import RayConfig

log = logging.getLogger("nerfart.server")

DEFAULT_ENDPOINT = "tcp://127.0.0.1:5555"
OUTBOX = "inproc://nerfart-outbox"
REQUEST_TYPES = ("hello", "submit", "cancel", "status", "attach", "resume", "heartbeat")
SESSIONLESS_TYPES = ("hello", "heartbeat")  # with signing, every other request must name this run's session
MAX_ROUTES = 10_000  # owners and jobs whose latest connection is remembered (the oldest are forgotten)


def peer_host(frame: zmq.Frame, endpoint: str) -> str:
    """The host a message came from, as the operating system tells it (never what the client says of itself).

    ``local`` for ipc (only this machine reaches it); for tcp the peer's IP address, an IPv6 one cut to its
    /64 network (one machine is handed a whole /64 and can pick any address in it); ``unknown`` when libzmq
    does not tell (older than 4.1).
    """
    if endpoint.startswith("ipc://"):
        return "local"
    try:
        address = frame.get("Peer-Address")
    except zmq.ZMQError:
        return "unknown"
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return clip_text(str(address), 64) or "unknown"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


def device_info(device: str) -> dict[str, Any] | None:
    """``hello_reply.gpu``: name and memory of the compute device (None if torch cannot be imported)."""
    try:
        import torch
    except ImportError:
        return None
    if device.startswith("cuda") and torch.cuda.is_available():
        free, total = torch.cuda.mem_get_info()
        return {"name": torch.cuda.get_device_name(), "memory_total": int(total), "memory_free": int(free)}
    return {"name": "cpu", "memory_total": 0, "memory_free": 0}


class Server:
    """A backend server.

    Args:
        endpoint: where the ROUTER binds (checked by :func:`check_bind_endpoint`).
        work_dir: job records and outputs live under ``<work_dir>/jobs``.
        runners: job kind -> runner function.
        device: ``"cuda"`` or ``"cpu"``; passed to runners.
        allow_remote: allow a non-loopback endpoint.
        hmac_key: sign and check every message with this key (None: unsigned, for loopback).
        single_user: every client sees and may cancel every job; otherwise a client sees only the jobs it
            submitted. None: single-user exactly on loopback without CURVE (one person's machine).
        limits: size limits for incoming messages.
        max_queued_per_client: queued jobs a client (an owner) may have at once.
        max_queued_per_host: queued jobs all the clients of one host may have at once (see :func:`peer_host`):
            what bounds a script that rotates client names, which without CURVE cost nothing to make up.
        clip_models: advertised in ``hello_reply``.
        curve: the server's CURVE keys (see :mod:`backend.access.auth`): the connection is encrypted and only authorised
            client keys can connect. None: no CURVE (loopback, or ``insecure``).
        insecure: allow a non-loopback endpoint without CURVE.
        work_dir_quota_bytes: the most the work dir may hold (None: no quota); see :mod:`backend.jobstore.disk`.
        min_free_bytes: free space left on the work dir's disk for everything else.
        scaleout: run the jobs as Ray tasks (see :mod:`backend.scaleout`) instead of on a thread of this
            process.

    Raises:
        ValueError: an endpoint that :func:`check_bind_endpoint` or :func:`check_transport_security` refuses.
    """

    def __init__(self, endpoint: str = DEFAULT_ENDPOINT, work_dir: str | Path = "work_dir", *,
                 runners: dict[str, RunnerFn] | None = None, device: str = "cpu", allow_remote: bool = False,
                 hmac_key: bytes | None = None, single_user: bool | None = None, limits: Limits = DEFAULT_LIMITS,
                 max_queued_per_client: int = 32, max_queued_per_host: int = 128, clip_models: tuple[str, ...] = (),
                 curve: ServerKeys | None = None, insecure: bool = False, work_dir_quota_bytes: int | None = None,
                 min_free_bytes: int = DEFAULT_MIN_FREE_BYTES, scaleout: RayConfig | None = None) -> None:
        check_bind_endpoint(endpoint, allow_remote)
        check_transport_security(endpoint, curve is not None, insecure)
        self.endpoint = endpoint
        self.session = uuid.uuid4().hex
        self.device = device
        self.curve = curve
        self.single_user = single_user if single_user is not None else (
            curve is None and is_loopback_endpoint(endpoint))
        self.limits = limits
        self.max_queued_per_client = max_queued_per_client
        self.max_queued_per_host = max_queued_per_host
        self.clip_models = clip_models
        self.store = JobStore(Path(work_dir), DiskBudget(Path(work_dir).resolve(), work_dir_quota_bytes,
                                                         min_free_bytes))
        self.runners = dict(runners or {})
        self._signer = Signer(hmac_key)
        self._ctx = zmq.Context()
        self._stop = threading.Event()
        self.scaleout = scaleout
        self._worker: ThreadWorker | RayExecutor
        if scaleout is None:
            self._worker = ThreadWorker(self.store, self.runners, self._emit_from_worker, device)
        else:
            from backend.scaleout.executor import RayExecutor

            self._worker = RayExecutor(self.store, self._emit_from_worker, scaleout, device, self.runners, limits)
        self._push_local = threading.local()
        self.bound_endpoint: str | None = None
        self.ready = threading.Event()
        self._trusted: AuthorizedKeys | None = None
        # Socket-thread state: owner -> its latest connection, job -> the connection that follows it, and
        # job -> the owner whose connections receive its messages when that is not the job's own owner
        # (single-user mode lets anyone attach). In memory only: clients re-attach after a restart.
        self._routes: OrderedDict[str, bytes] = OrderedDict()
        self._job_routes: OrderedDict[str, bytes] = OrderedDict()
        self._listeners: OrderedDict[str, str] = OrderedDict()

    # Lifecycle ---------------------------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the loop to finish (safe from signal handlers and other threads)."""
        self._stop.set()

    def install_signal_handlers(self) -> None:
        """SIGINT and SIGTERM stop the server cleanly: the running job is interrupted at its next step."""
        def handler(signum: int, _frame: Any) -> None:
            log.info("signal %s: shutting down", signal.Signals(signum).name)
            self.stop()
        signal.signal(signal.SIGINT, handler)
        signal.signal(signal.SIGTERM, handler)

    def serve(self) -> None:
        """Run until :meth:`stop`. Binds, starts the worker, then serves; always cleans up."""
        authenticator = None
        if self.curve is not None:
            # The ZAP handler must be up before the socket binds, or libzmq would admit any client key.
            authenticator = start_authenticator(self._ctx)
            self._trusted = admit_clients(authenticator, self.curve)
        router = self._ctx.socket(zmq.ROUTER)
        router.setsockopt(zmq.LINGER, 0)
        router.setsockopt(zmq.ROUTER_MANDATORY, 1)  # know when a client is gone instead of silently queueing
        router.setsockopt(zmq.SNDHWM, 10000)
        router.setsockopt(zmq.RCVHWM, 1000)
        # The kernel-level guard: ZeroMQ drops the connection of a peer that sends an over-sized message.
        router.setsockopt(zmq.MAXMSGSIZE, self.limits.max_message_bytes)
        if self.curve is not None:
            curve_server_options(router, self.curve)
        outbox = self._ctx.socket(zmq.PULL)
        outbox.setsockopt(zmq.LINGER, 0)
        try:
            try:
                router.bind(self.endpoint)
            except zmq.ZMQError as exc:
                # A plain ValueError with what to do (the command line prints it without a traceback).
                hint = ("another backend (or program) is already listening there: stop it, or pick another port "
                        "with --endpoint tcp://127.0.0.1:PORT" if exc.errno == errno.EADDRINUSE else
                        "check the address")
                raise ValueError(f"cannot listen on {self.endpoint}: {exc.strerror}; {hint}") from None
            self.bound_endpoint = router.getsockopt_string(zmq.LAST_ENDPOINT)
            outbox.bind(OUTBOX)
            self._worker.start()  # with Ray: starts or joins it (ValueError: no token, an open cluster...)
            log.info("NeRF-Art backend %s listening on %s (device %s, work dir %s)", backend.__version__,
                     self.bound_endpoint, self.device, self.store.work_dir)
            log.info("%s; %s", f"CURVE on: server public key {self.curve.public.decode()}, authorised client keys "
                     f"in {self.curve.authorized_dir}" if self.curve else "CURVE off (no encryption)",
                     "single-user: every client sees every job" if self.single_user
                     else "multi-user: each client sees only its own jobs")
            if self.store.disk.room() <= 0:
                log.warning("starting read-only: %s. Status and attach answer; new jobs are refused and queued "
                            "ones wait until there is room", self.store.disk.shortage("new jobs"))
            self.ready.set()
            poller = zmq.Poller()
            poller.register(router, zmq.POLLIN)
            poller.register(outbox, zmq.POLLIN)
            while not self._stop.is_set():
                self._serve_once(poller, router, outbox)
        finally:
            self._worker.stop()
            # Deliver what the worker said while stopping (e.g. 'interrupted' results) if clients are there.
            self._drain_outbox(outbox, router)
            if authenticator is not None:
                authenticator.stop()
            # destroy() also closes the PUSH sockets the worker thread made, which term() would wait for.
            self._ctx.destroy(linger=0)
            log.info("backend stopped")

    def _serve_once(self, poller: zmq.Poller, router: zmq.Socket, outbox: zmq.Socket) -> None:
        """One turn of the socket loop. Nothing a message or a job does may end the loop: it is the backend."""
        try:
            events = dict(poller.poll(100))
            if outbox in events:
                self._drain_outbox(outbox, router)
            if router in events:
                self._drain_requests(router)
            self._worker.ensure_alive()
        except zmq.ContextTerminated:
            raise
        except Exception:  # a bug: log it and keep serving (handlers already answer their own errors)
            log.exception("error in the socket loop; serving on")

    # Incoming ------------------------------------------------------------------------------------------------

    def _drain_requests(self, router: zmq.Socket, budget: int = 200) -> None:
        for _ in range(budget):
            try:
                frames = router.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            self._handle(router, frames)

    def _owner(self, frames: list[Any]) -> str:
        """The owner string of the connection a message came from (see the module docstring).

        Raises:
            ProtocolError: ``unauthorized`` for a CURVE key that was revoked since the connection was made.
        """
        if self.curve is not None:
            # The ZAP handler's User-Id (the client's Z85 public key), attached by libzmq to every frame.
            key = frames[0].get("User-Id")
            if self._trusted is None or not self._trusted.contains(key.encode()):
                raise ProtocolError(ErrorCode.UNAUTHORIZED, f"this client's key {key} is no longer authorised on "
                                    "this backend; ask its administrator (python -m backend keys authorize)")
            return f"key:{key}"
        identity = frames[0].bytes
        client_id = identity.split(b"/", 1)[0]
        if b"/" in identity and CLIENT_ID.match(client_id.decode("ascii", "replace")):
            return f"id:{client_id.decode('ascii')}"
        return f"rid:{identity.hex()}"

    def _handle(self, router: zmq.Socket, frames: list[Any]) -> None:
        """Answer one incoming message: its reply, or an ``error`` for whatever went wrong. Never raises."""
        identity = frames[0].bytes
        request: Message | None = None
        try:
            ids, body = split_identities(frames)
            request = decode(body, self._signer, self.limits)
            self._check_session(request)
            owner = self._owner(frames)  # after decoding, so that a refusal answers the request by its id
            host = peer_host(frames[0], self.endpoint)
            # Only a message that decoded (and passed the HMAC check, when there is a key) may move its
            # owner's route: a forged routing id alone must not divert someone's job messages.
            self._remember(self._routes, owner, identity)
            self._dispatch(router, ids, request, owner, host)
            return
        except ProtocolError as exc:
            code, message, field = exc.code, exc.message, exc.field
        except Exception as exc:  # never let one message take the server down
            log.exception("error while handling a %s message", request.type if request else "malformed")
            code, message, field = ErrorCode.INTERNAL, f"internal error ({type(exc).__name__}: {exc})", None
        error = self._error(code, message, field, request)
        if request is None and not self._signer.key:
            # The message did not decode (too large, bad JSON, ...): answer it by the id in its header when that
            # can be read, so that the client's request ends with this error, not a timeout. Not with a key: an
            # unverified header is never parsed, and echoing its id would sign what a stranger chose.
            error.parent_id = self._header_msg_id(frames)
        self._send(router, [identity], error)

    def _check_session(self, msg: Message) -> None:
        """With signing on, a request must be signed for this run of the backend, not replayed from another.

        Raises:
            ProtocolError: ``unauthorized`` for a request that names another session (or none).
        """
        if self._signer.key and msg.type not in SESSIONLESS_TYPES and msg.to_session != self.session:
            raise ProtocolError(ErrorCode.UNAUTHORIZED, f"this {msg.type} was signed for backend session "
                                f"{msg.to_session[:40]!r}, but this backend runs as session {self.session}: it was "
                                "replayed, or sent before the backend restarted. Say hello again and resend it",
                                "header.to_session")

    def _header_msg_id(self, frames: list[Any]) -> str | None:
        """``msg_id`` of an undecodable message's header frame, if it is a small, strict JSON object that has one."""
        try:
            _ids, body = split_identities(frames)
            header_frame = body[2] if len(body) > 2 else b""
            header = bytes(getattr(header_frame, "bytes", header_frame))
            if len(header) > self.limits.max_header_bytes:
                return None
            msg_id = load_json_object(header, "header").get("msg_id")
        except ProtocolError:
            return None
        return msg_id if isinstance(msg_id, str) and 0 < len(msg_id) <= 128 else None

    @staticmethod
    def _remember(table: OrderedDict[str, Any], key: str, value: Any) -> None:
        """Set ``table[key]``, keeping the table to the :data:`MAX_ROUTES` most recently set keys."""
        table[key] = value
        table.move_to_end(key)
        while len(table) > MAX_ROUTES:
            table.popitem(last=False)

    def _dispatch(self, router: zmq.Socket, ids: list[bytes], msg: Message, owner: str, host: str) -> None:
        if msg.type not in REQUEST_TYPES:
            raise ProtocolError(ErrorCode.UNKNOWN_TYPE, f"{msg.type!r} is sent by the server, not to it", "msg_type")
        if msg.type == "heartbeat":
            self._send(router, ids, make_reply(msg, "heartbeat", {}))
        elif msg.type == "hello":
            self._hello(router, ids, msg, owner)
        elif msg.type == "submit":
            self._submit(router, ids, msg, owner, host)
        elif msg.type == "status":
            job_id = msg.content.get("job_id")
            positions = self._worker.positions()
            if job_id:  # one job: its whole record
                jobs = [self._job_info(self._visible_job(job_id, owner), positions, whole=True)]
            else:  # every job: summaries of bounded size, whatever the jobs hold (a render's 100,000 cameras)
                jobs = [self._job_info(r, positions) for r in self.store.all() if self.single_user or r.owner == owner]
            self._send(router, ids, make_reply(msg, "status_reply", {"jobs": jobs}))
        elif msg.type == "cancel":
            rec = self._visible_job(msg.content["job_id"], owner)
            if rec.state not in ("queued", "running"):
                raise ProtocolError(ErrorCode.BAD_STATE, f"job {rec.job_id} is already {rec.state}", "job_id")
            state = self._worker.cancel(rec.job_id)
            self._send(router, ids, make_reply(msg, "cancel_reply", {"job_id": rec.job_id, "state": state}))
        elif msg.type == "resume":
            rec = self._visible_job(msg.content["job_id"], owner)
            self._check_queue_room(owner, host, "job_id")
            self.store.disk.check(0, "a resumed job")
            position = self._worker.resume(rec.job_id, host)  # bad_state unless interrupted
            self._follow(rec.job_id, owner, ids[-1])  # its messages go to the client that resumed it
            self._send(router, ids, make_reply(msg, "accepted", {"job_id": rec.job_id, "kind": rec.kind,
                                                                 "position": position}))
        elif msg.type == "attach":
            rec = self._visible_job(msg.content["job_id"], owner)
            self._follow(rec.job_id, owner, ids[-1])  # further messages of the job go to this connection
            self._send(router, ids, make_reply(msg, "status_reply", {
                "jobs": [self._job_info(rec, self._worker.positions(), whole=True)]}))
            if rec.state in ("done", "failed", "cancelled", "interrupted"):
                self._send(router, ids, result_message(rec))

    def _job_info(self, rec: JobRecord, positions: dict[str, int], whole: bool = False) -> dict[str, Any]:
        """The ``status_reply`` entry of a job: its whole record, or a summary of bounded size (see
        :func:`~backend.jobstore.messages.status_summary`); one the protocol cannot carry is reported as corrupt.

        Records are checked when they are made and when they are loaded, so this is the last line: one bad
        record must never make the status of every job unreadable.
        """
        position = positions.get(rec.job_id, -1)
        info = status_entry(rec, position) if whole else status_summary(rec, position)
        try:
            check_json_value(info, "job record")
            validate_content("status_reply", {"jobs": [info]})
        except ProtocolError as exc:
            log.error("job %s cannot be reported as it is: %s", rec.job_id, exc.message)
            info.update(params={}, outputs={}, error={"code": ErrorCode.CORRUPT_RECORD, "message": clip_text(
                f"this job's record cannot be sent ({exc.message}); its folder is kept as it is")})
        return info

    def _follow(self, job_id: str, owner: str, identity: bytes) -> None:
        self._remember(self._job_routes, job_id, identity)
        self._remember(self._listeners, job_id, owner)

    def _hello(self, router: zmq.Socket, ids: list[bytes], msg: Message, owner: str) -> None:
        version = msg.content["protocol_version"]
        if version != PROTOCOL_VERSION:
            raise ProtocolError(ErrorCode.VERSION_MISMATCH, f"this backend speaks protocol v{PROTOCOL_VERSION} "
                                f"but the client ({msg.content['client'][:80]}) speaks v{version}; update the "
                                f"{'add-on' if version < PROTOCOL_VERSION else 'backend'} so both match",
                                "protocol_version")
        log.info("hello from %s (owner %s)", msg.content["client"][:200], owner[:60])
        content = {"protocol_version": PROTOCOL_VERSION, "backend_version": backend.__version__,
                   "session": self.session,
                   "gpu": device_info(self.device) if self.scaleout is None else self._worker.gpu_summary(),
                   "clip_models": list(self.clip_models), "job_kinds": sorted(self.runners),
                   "queue_length": self._worker.queue_length(),
                   "limits": {"max_message_bytes": self.limits.max_message_bytes,
                              "max_queued_jobs_per_client": self.max_queued_per_client,
                              "max_queued_jobs_per_host": self.max_queued_per_host, **self.store.disk.limits()}}
        self._send(router, ids, make_reply(msg, "hello_reply", content))

    def _submit(self, router: zmq.Socket, ids: list[bytes], msg: Message, owner: str, host: str) -> None:
        kind = msg.content["kind"]
        if kind not in self.runners:
            available = ", ".join(sorted(self.runners)) or "none yet"
            known = kind in JOB_KINDS
            raise ProtocolError(ErrorCode.UNKNOWN_KIND, f"job kind {kind!r} is "
                                f"{'not available in this backend version' if known else 'unknown'}; this "
                                f"backend runs: {available}", "kind")
        self._check_queue_room(owner, host, "kind")
        if "source_job" in msg.content["params"]:
            self._visible_job(msg.content["params"]["source_job"], owner, field="params.source_job")
        inputs = {name: (msg.blob(spec), spec["format"]) for name, spec in msg.content.get("inputs", {}).items()}
        rec = self.store.create(kind, msg.content["params"], owner, inputs, host=host)
        self._follow(rec.job_id, owner, ids[-1])
        position = self._worker.enqueue(rec)
        log.info("job %s (%s) of %s from %s accepted at queue position %d", rec.job_id, kind, owner[:60], host,
                 position)
        self._send(router, ids, make_reply(msg, "accepted", {"job_id": rec.job_id, "kind": kind,
                                                             "position": position}))

    def _check_queue_room(self, owner: str, host: str, field: str) -> None:
        """Refuse a submit or resume that would give ``owner``, or the host it connects from, more queued jobs
        than allowed.

        A cap per connection would add nothing: a connection always belongs to one owner (its key, or the client
        id in its routing id). The host is what a script cannot change by making up names or reconnecting.
        """
        queued = self._worker.queued(owner=owner)
        if queued >= self.max_queued_per_client:
            raise ProtocolError(ErrorCode.QUEUE_FULL, f"you already have {queued} queued jobs (limit "
                                f"{self.max_queued_per_client}); wait or cancel some", field)
        queued = self._worker.queued(host=host)
        if queued >= self.max_queued_per_host:
            raise ProtocolError(ErrorCode.QUEUE_FULL, f"the clients on your machine ({host}) already have {queued} "
                                f"queued jobs (limit {self.max_queued_per_host} per machine); wait or cancel some",
                                field)

    def _visible_job(self, job_id: str, owner: str, field: str = "job_id") -> Any:
        rec = self.store.get(job_id)
        if rec is None or not (self.single_user or rec.owner == owner):
            # The same answer for "absent" and "not yours", so job ids of others cannot be probed.
            raise ProtocolError(ErrorCode.UNKNOWN_JOB, f"no job {job_id[:40]!r} on this backend", field)
        return rec

    def _error(self, code: str, message: str, field: str | None, request: Message | None) -> Message:
        """An ``error`` answering ``request``; what it quotes is cut to size and made encodable."""
        content = error_content(code, message, field)
        content["job_id"] = request.job_id if request is not None else None
        return Message("error", content, parent_id=request.msg_id if request is not None else None,
                       to_session=request.session if request is not None else "")

    # Outgoing ------------------------------------------------------------------------------------------------

    def _send(self, router: zmq.Socket, ids: list[bytes], msg: Message) -> bool:
        """Send ``msg`` to the connection ``ids`` without blocking; False if it could not go.

        A reply that cannot be encoded (a bug) goes out as an ``internal`` error instead, so the request still
        gets its answer.
        """
        msg.session = self.session
        try:
            frames = encode(msg, self._signer)
        except ProtocolError as exc:
            log.error("a %s reply could not be encoded: %s", msg.type, exc.message)
            content = error_content(ErrorCode.INTERNAL, f"internal error: the {msg.type} reply could not be "
                                    "encoded; the backend log has the details")
            fallback = Message("error", {**content, "job_id": None}, parent_id=msg.parent_id, session=self.session,
                               to_session=msg.to_session)
            frames = encode(fallback, self._signer)
        try:
            router.send_multipart([*ids, *frames], flags=zmq.NOBLOCK, copy=False)
            return True
        except zmq.ZMQError as exc:  # EHOSTUNREACH (client gone) or EAGAIN (client not reading)
            log.debug("dropped a %s message for an unreachable client: %s", msg.type, exc)
            return False

    def _emit_from_worker(self, msg: Message) -> None:
        """Called on the worker thread: hand the message to the socket thread through inproc PUSH/PULL."""
        push = getattr(self._push_local, "socket", None)
        if push is None:
            push = self._ctx.socket(zmq.PUSH)
            push.setsockopt(zmq.LINGER, 1000)
            push.connect(OUTBOX)
            self._push_local.socket = push
        msg.session = self.session
        push.send_multipart([msg.job_id.encode() if msg.job_id else b"", *encode(msg, self._signer)], copy=False)

    def _drain_outbox(self, outbox: zmq.Socket, router: zmq.Socket, budget: int = 500) -> None:
        for _ in range(budget):
            try:
                frames = outbox.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            rec = self.store.get(frames[0].bytes.decode())
            if rec is None:
                continue
            self._send_job_message(router, rec.job_id, rec.owner, frames[1:])

    def _send_job_message(self, router: zmq.Socket, job_id: str, job_owner: str, frames: list[Any]) -> None:
        """Send to the connection following the job; if it is gone, to the latest connection of its owner.

        A client that is gone (or not reading) loses nothing: the job's outputs are on disk and 'attach'
        re-sends the result.
        """
        owner = self._listeners.get(job_id, job_owner)
        if not self._still_authorised(owner):
            return  # a key revoked while connected gets nothing more of its jobs (their outputs stay on disk)
        tried: set[bytes] = set()
        for identity in (self._job_routes.get(job_id), self._routes.get(owner)):
            if identity is None or identity in tried:
                continue
            tried.add(identity)
            try:
                router.send_multipart([identity, *frames], flags=zmq.NOBLOCK, copy=False)
            except zmq.ZMQError as exc:
                if exc.errno == errno.EHOSTUNREACH:  # that connection is closed: try the owner's latest
                    continue
                return  # EAGAIN: the client is connected but not reading; drop rather than block
            self._remember(self._job_routes, job_id, identity)
            return

    def _still_authorised(self, owner: str) -> bool:
        """With CURVE, whether the key of ``owner`` (``key:<Z85>``) is still authorised; always True without."""
        if self.curve is None or not owner.startswith("key:"):
            return True
        return self._trusted is not None and self._trusted.contains(owner[len("key:"):].encode())


def serve(endpoint: str, work_dir: str | Path, runners: dict[str, RunnerFn], **kwargs: Any) -> None:
    """Run a server in this (main) thread until SIGINT or SIGTERM."""
    server = Server(endpoint, work_dir, runners=runners, **kwargs)
    server.install_signal_handlers()
    server.serve()
