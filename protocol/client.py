"""The client both the Blender add-on and the command line use.

A ``zmq.DEALER`` socket talks to the backend's ``ROUTER`` (the ZeroMQ guide's asynchronous client/server
pattern): requests carry a ``msg_id``, replies name it as ``parent_id``, and a job streams any number of
``progress``/``frame``/``mesh`` messages followed by one ``result``.

* :meth:`Client.poll` never blocks longer than its time budget: Blender calls it from a timer about 20 times
  a second. It also sends heartbeats, so :meth:`Client.alive` tells within seconds when the backend is gone.
* :meth:`Client.request` and :meth:`Client.wait_job` block, for scripts and Blender's background mode.

Identity. The routing id is ``<client_id>/<session>``: ``client_id`` is stable (the add-on keeps it in its
preferences), the session part is new for every socket, so two sockets never collide on the server's ROUTER. A
backend without CURVE takes ``client_id`` as the owner of the jobs this client submits (advisory: anyone can
claim any id); a backend with CURVE takes the client's public key, which the handshake has proven.

Security handshake. With CURVE, a refused key or a wrong server key never produces a message: ZeroMQ drops
the connection during its handshake. A monitor socket reports those handshake events, so
:attr:`Client.handshake_failure` (and :class:`HandshakeError` from the blocking calls) can say what is wrong
at once instead of timing out.

Every socket call happens on the thread that owns the client (ZeroMQ sockets are not thread-safe).
"""

from __future__ import annotations

import contextlib
import re
import time
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any

import zmq
from zmq.utils.monitor import recv_monitor_message

from .errors import ErrorCode, ProtocolError
from .framing import DEFAULT_LIMITS, Limits, Message, Signer, decode, encode, split_identities
from .schema import PROTOCOL_VERSION

DEFAULT_ENDPOINT = "tcp://127.0.0.1:5555"
CLIENT_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_MONITORED = (zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
              | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)
NO_DETAIL_FAILURES = 3  # broken-off handshakes in a row before they count as a failure (see _drain_monitor)
SESSIONLESS_TYPES = ("hello", "heartbeat")  # requests a signing backend takes without its session in to_session


class BackendError(RuntimeError):
    """The backend answered a request with an ``error`` message."""

    def __init__(self, message: Message) -> None:
        self.code = str(message.content.get("code", ErrorCode.INTERNAL))
        self.field = message.content.get("field")
        self.job_id = message.content.get("job_id")
        super().__init__(str(message.content.get("message", "backend error")))


class HandshakeError(ConnectionError):
    """ZeroMQ's security handshake with the backend failed, so no message can pass.

    Attributes:
        reason: ``"unauthorized"`` (the backend does not trust this client's key), ``"wrong_server_key"``
            (the CURVE handshake failed: the server key is not the backend's), ``"curve_required"`` (the
            backend uses CURVE, this client has no keys), ``"curve_unsupported"`` (this client uses CURVE,
            the backend does not) or ``"handshake_failed"`` (a ZeroMQ protocol error: not a NeRF-Art backend?).
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class Client:
    """An asynchronous connection to one backend.

    Args:
        endpoint: ZeroMQ endpoint of the backend, e.g. ``tcp://127.0.0.1:5555``.
        hmac_key: shared signing key, or None (loopback default: unsigned).
        client_name: sent in ``hello`` so the server log says who connected.
        heartbeat_interval_s: how often to send a heartbeat while connected.
        context: a ``zmq.Context`` to use (the add-on owns one per Blender session); a new one otherwise.
        curve: optional ``(server_public, client_public, client_secret)`` Z85 keys for CURVE encryption.
        limits: size limits for received messages.
        client_id: stable id of this client (letters, digits, ``_``, ``-``; at most 64), kept across
            reconnects so that a backend without CURVE gives it back its jobs; a random one if None.

    Raises:
        ValueError: a malformed ``client_id``.
    """

    def __init__(self, endpoint: str = DEFAULT_ENDPOINT, *, hmac_key: bytes | None = None,
                 client_name: str = "nerfart-client", heartbeat_interval_s: float = 1.0,
                 context: zmq.Context | None = None, curve: tuple[bytes, bytes, bytes] | None = None,
                 limits: Limits = DEFAULT_LIMITS, client_id: str | None = None) -> None:
        self.endpoint = endpoint
        self.client_name = client_name
        self.heartbeat_interval_s = heartbeat_interval_s
        self.session = uuid.uuid4().hex
        self.client_id = client_id or uuid.uuid4().hex
        if not CLIENT_ID.match(self.client_id):
            raise ValueError(f"client id {self.client_id[:80]!r} must be 1-64 letters, digits, '_' or '-'")
        self.server_info: dict[str, Any] | None = None
        self.last_seen: float | None = None  # time.monotonic() of the last message from the backend
        self.peer_session: str | None = None  # the backend process's session id, from its last message
        self.handshake_failure: HandshakeError | None = None  # the last failed security handshake, until one works
        self._signer = Signer(hmac_key)
        self._limits = limits
        self._own_context = context is None
        self._context = context or zmq.Context()
        self._curve = curve
        self._socket: zmq.Socket | None = None
        self._monitor: zmq.Socket | None = None
        self._no_detail = 0
        self._last_no_detail = 0
        self._probe: zmq.Socket | None = None  # a plain socket that learns the backend's mechanism (see _start_probe)
        self._probe_monitor: zmq.Socket | None = None
        self._probe_secured = False  # the probe found that the backend speaks a security mechanism
        self._pending: deque[Message] = deque()  # received while a blocking call waited for something else
        self._last_heartbeat = 0.0

    # Connection ----------------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """Whether a socket is open (not whether the backend answers: see :meth:`alive`)."""
        return self._socket is not None

    def connect(self) -> None:
        """Open the socket. Never blocks and never fails for a missing backend: ZeroMQ connects lazily."""
        if self._socket is not None:
            return
        sock = self._context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        # A fixed routing id keeps the server's job routing intact across ZeroMQ's automatic reconnects; its
        # client-id part names the owner on a backend without CURVE (see the module docstring).
        sock.setsockopt(zmq.ROUTING_ID, f"{self.client_id}/{self.session}".encode())
        sock.setsockopt(zmq.SNDHWM, 1000)
        sock.setsockopt(zmq.RCVHWM, 10000)
        sock.setsockopt(zmq.RECONNECT_IVL, 200)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
        sock.setsockopt(zmq.MAXMSGSIZE, self._limits.max_message_bytes)
        if self._curve is not None:
            server_public, public, secret = self._curve
            sock.curve_serverkey = server_public
            sock.curve_publickey = public
            sock.curve_secretkey = secret
        # Before connect(), so that not even the first handshake's events are missed.
        self._monitor = sock.get_monitor_socket(_MONITORED)
        self.handshake_failure = None
        self._no_detail = 0
        self._probe_secured = False
        sock.connect(self.endpoint)
        self._socket = sock
        self._last_heartbeat = time.monotonic()

    def close(self) -> None:
        """Close the socket (and the context if this client created it)."""
        self._stop_probe()
        _close_monitored(self._socket, self._monitor)
        self._socket = self._monitor = None
        if self._own_context:
            self._context.term()
            self._own_context = False

    def __enter__(self) -> Client:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def public_key(self) -> bytes | None:
        """This client's CURVE public key (Z85), or None without CURVE: what the backend must authorise."""
        return self._curve[1] if self._curve is not None else None

    def alive(self, timeout_s: float = 3.0) -> bool:
        """Whether the backend sent anything (a heartbeat at least) within ``timeout_s`` seconds."""
        return self.last_seen is not None and time.monotonic() - self.last_seen < timeout_s

    # Sending ---------------------------------------------------------------------------------------------

    def send(self, msg: Message) -> str:
        """Send a message; returns its ``msg_id``. Never blocks.

        Raises:
            ProtocolError: the content does not match the schema (a client bug).
            ConnectionError: the outgoing queue is full because the backend has not been reachable.
        """
        if self._socket is None:
            self.connect()
        assert self._socket is not None
        msg.session = self.session
        msg.to_session = self.peer_session or ""  # ties a signed request to this run of the backend
        frames = encode(msg, self._signer)
        self._check_size(msg, frames)
        try:
            self._socket.send_multipart(frames, flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:
            raise ConnectionError(f"cannot send to the backend at {self.endpoint}: its queue is full because "
                                  "the backend has not been reachable") from None
        return msg.msg_id

    def _check_size(self, msg: Message, frames: list[Any]) -> None:
        """Refuse here what the backend said it would refuse: a message over its advertised size limit.

        The backend answers a message over the limit with ``too_large``, but one *frame* over it is dropped by
        ZeroMQ before anyone reads it (MAXMSGSIZE), which would leave the request without an answer.
        """
        limit = ((self.server_info or {}).get("limits") or {}).get("max_message_bytes")
        if not isinstance(limit, int):
            return
        total = sum(memoryview(f).nbytes for f in frames)
        if total > limit:
            raise ProtocolError(ErrorCode.TOO_LARGE, f"this {msg.type} message is {total / 2**20:.1f} MiB, over the "
                                f"backend's limit of {limit / 2**20:.1f} MiB; upload less (e.g. a smaller capture or "
                                "a path on the backend's disk) or raise the backend's limit")

    def _hello_message(self) -> Message:
        return Message("hello", {"protocol_version": PROTOCOL_VERSION, "client": self.client_name})

    def hello(self) -> str:
        """Ask for the backend's capabilities (answered by ``hello_reply``, or ``error`` on a version mismatch)."""
        return self.send(self._hello_message())

    def submit(self, kind: str, params: dict[str, Any],
               inputs: dict[str, tuple[bytes | memoryview, str]] | None = None) -> str:
        """Queue a job (answered by ``accepted`` or ``error``).

        Args:
            kind: job kind, e.g. ``"reconstruct"``.
            params: job parameters (see SPEC.md).
            inputs: named uploads as ``(bytes, format)``, e.g. ``{"capture": (zip_bytes, "zip")}``.
        """
        msg = Message("submit", {"kind": kind, "params": params})
        if inputs:
            msg.content["inputs"] = {name: msg.add_blob(data, fmt) for name, (data, fmt) in inputs.items()}
        return self.send(msg)

    def cancel(self, job_id: str) -> str:
        return self.send(Message("cancel", {"job_id": job_id}))

    def status(self, job_id: str | None = None) -> str:
        return self.send(Message("status", {"job_id": job_id}))

    def attach(self, job_id: str) -> str:
        return self.send(Message("attach", {"job_id": job_id}))

    def resume(self, job_id: str) -> str:
        """Queue an interrupted job again, to continue from its latest checkpoint (answered by ``accepted``
        with the same job id, or ``error`` with code ``bad_state`` if the job is not interrupted)."""
        return self.send(Message("resume", {"job_id": job_id}))

    # Receiving -------------------------------------------------------------------------------------------

    def poll(self, budget_s: float = 0.005, max_messages: int = 1000) -> list[Message]:
        """Messages that have arrived, drained within ``budget_s`` seconds; never waits for new ones.

        Heartbeats are consumed here (they only update :attr:`last_seen`) and one is sent when due.
        A message from the backend that fails to decode is returned as a local ``error`` message, so a
        caller sees every problem in one place.
        """
        if self._socket is None:
            return []
        self._drain_monitor()
        deadline = time.monotonic() + budget_s
        out: list[Message] = []
        while self._pending and len(out) < max_messages:
            out.append(self._pending.popleft())
        while len(out) < max_messages and time.monotonic() < deadline:
            msg = self._recv(zmq.NOBLOCK)
            if msg is None:
                break
            if msg.type != "heartbeat":
                out.append(msg)
        self._maybe_heartbeat()
        return out

    def request(self, msg: Message, timeout_s: float = 5.0) -> Message:
        """Send ``msg`` and wait for its reply; other messages stay queued for :meth:`poll`.

        Raises:
            TimeoutError: no reply within ``timeout_s`` (the message says how to start a backend).
            BackendError: the reply is an ``error`` message.
            HandshakeError: the security handshake failed (the message says what to change where).
        """
        if self._signer.key and self.peer_session is None and msg.type not in SESSIONLESS_TYPES:
            # A signed request must name the backend's session, which only a message from it tells.
            self.handshake(timeout_s)
        try:
            msg_id = self.send(msg)
        except ConnectionError:
            self._raise_handshake_failure_within(timeout_s)
            raise
        reply = self._wait(lambda m: m.parent_id == msg_id, timeout_s, f"a reply to {msg.type}")
        if reply.type == "error":
            raise BackendError(reply)
        if reply.type == "hello_reply":
            self.server_info = reply.content
        return reply

    def handshake(self, timeout_s: float = 5.0) -> dict[str, Any]:
        """Blocking ``hello``: the backend's capabilities, or an error that says what is wrong."""
        return self.request(self._hello_message(), timeout_s).content

    def wait_job(self, job_id: str, on_message: Callable[[Message], None] | None = None,
                 timeout_s: float | None = None) -> Message:
        """Block until job ``job_id`` sends its ``result``; other jobs' messages stay queued.

        Args:
            on_message: called with each ``progress``/``frame``/``mesh`` message of the job as it arrives.
            timeout_s: give up after this long (None waits as long as the backend stays alive).

        Raises:
            TimeoutError: the timeout passed, or the backend stopped answering heartbeats for 30 s.
            BackendError: an ``error`` message about this job.
            HandshakeError: the security handshake failed.
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            step = 0.5 if remaining is None else min(0.5, remaining)
            # Messages of this job that arrived while another wait ran come first (jobs of a backend with
            # several workers finish in any order).
            msg = self._take_pending(job_id) or self._next(step)
            if msg is None:
                if deadline is not None and time.monotonic() >= deadline:
                    raise TimeoutError(f"job {job_id} did not finish within {timeout_s} s")
                if self.last_seen is not None and not self.alive(30.0):
                    raise TimeoutError(f"the backend at {self.endpoint} stopped answering while job {job_id} "
                                       "was running; its outputs stay in the job folder on the backend")
                continue
            if msg.job_id != job_id:
                self._pending.append(msg)
                continue
            if msg.type == "error":
                raise BackendError(msg)
            if msg.type == "result":
                return msg
            if on_message is not None:
                on_message(msg)

    # Internals -------------------------------------------------------------------------------------------

    def _take_pending(self, job_id: str) -> Message | None:
        """The oldest queued message of job ``job_id``, taken out of the queue; None if there is none."""
        for i, msg in enumerate(self._pending):
            if msg.job_id == job_id:
                del self._pending[i]
                return msg
        return None

    def _next(self, timeout_s: float) -> Message | None:
        """The next non-heartbeat message, waiting up to ``timeout_s``.

        Raises:
            HandshakeError: the monitor reported a failed security handshake (nothing would ever arrive).
        """
        deadline = time.monotonic() + timeout_s
        assert self._socket is not None and self._monitor is not None
        poller = zmq.Poller()
        poller.register(self._socket, zmq.POLLIN)
        poller.register(self._monitor, zmq.POLLIN)
        while True:
            self._maybe_heartbeat()
            self._raise_if_refused()
            remaining = deadline - time.monotonic()
            # While a probe runs its verdict is read between waits, so the waits are short.
            wait_s = min(remaining, self.heartbeat_interval_s, 0.05 if self._probe is not None else remaining)
            events = dict(poller.poll(max(0, int(wait_s * 1000))))
            if self._socket not in events:
                if time.monotonic() >= deadline:
                    self._raise_if_refused()
                    return None
                continue
            msg = self._recv(zmq.NOBLOCK)
            if msg is not None and msg.type != "heartbeat":
                return msg

    def _wait(self, match: Callable[[Message], bool], timeout_s: float, what: str) -> Message:
        if self._socket is None:
            self.connect()
        for i, msg in enumerate(self._pending):
            if match(msg):
                del self._pending[i]
                return msg
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            msg = self._next(max(0.0, remaining))
            if msg is None:
                raise TimeoutError(f"no answer from the backend at {self.endpoint} within {timeout_s:g} s "
                                   f"(waiting for {what}). Is it running? Start one with "
                                   "'python -m backend serve'.")
            if match(msg):
                return msg
            self._pending.append(msg)

    def _recv(self, flags: int) -> Message | None:
        assert self._socket is not None
        try:
            frames = self._socket.recv_multipart(flags=flags, copy=False)
        except zmq.Again:
            return None
        self.last_seen = time.monotonic()
        try:
            _, body = split_identities(frames)
            msg = decode(body, self._signer, self._limits)
        except ProtocolError as exc:
            return Message("error", {"code": exc.code, "message": f"undecodable message from the backend: "
                                     f"{exc.message}", "field": exc.field, "job_id": None})
        if msg.session:
            self.peer_session = msg.session
        if msg.type == "hello_reply":
            self.server_info = msg.content
        return msg

    def _drain_monitor(self) -> None:
        """Read the socket's handshake events (never blocks) into :attr:`handshake_failure`.

        A refused key or a security-mechanism mismatch is definite at once (libzmq does not retry those). A
        handshake that just breaks off ("no detail") is ambiguous: it is what a wrong server key looks like,
        but also what this side sees when the other noticed a mechanism mismatch first and hung up; which side
        notices first is a race. So a CURVE client asks the backend's mechanism directly (see
        :meth:`_start_probe`): a plain backend is then always told as ``curve_unsupported``, and only a backend
        that speaks a security mechanism and keeps breaking off the handshake (:data:`NO_DETAIL_FAILURES` in a
        row) as ``wrong_server_key``. A client without CURVE counts broken-off handshakes the same way.
        """
        if self._monitor is None:
            return
        while True:
            try:
                event = recv_monitor_message(self._monitor, zmq.NOBLOCK)
            except zmq.Again:
                break
            kind = event["event"]
            if kind == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self.handshake_failure = None
                self._no_detail = 0
                self._probe_secured = False  # what a probe learnt was of the backend before this connection
                self._stop_probe()
            elif kind == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:
                self._no_detail += 1
                self._last_no_detail = int(event["value"])
                if self._curve is not None:
                    self._start_probe()
                elif self._no_detail >= NO_DETAIL_FAILURES:
                    self.handshake_failure = self._explain_handshake(kind, self._last_no_detail)
            elif kind in (zmq.EVENT_HANDSHAKE_FAILED_AUTH, zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL):
                self.handshake_failure = self._explain_handshake(kind, int(event["value"]))
                self._stop_probe()
        self._drain_probe()

    def _start_probe(self) -> None:
        """Connect a second socket without CURVE to the same endpoint, to learn the backend's mechanism.

        Its handshake succeeds exactly when the backend speaks no security mechanism; against a CURVE backend
        it fails (a mismatch, or a hang-up). Nothing is sent on it.
        """
        if self._probe is not None or self._probe_secured or self.handshake_failure is not None:
            return
        probe = self._context.socket(zmq.DEALER)
        probe.setsockopt(zmq.LINGER, 0)
        self._probe_monitor = probe.get_monitor_socket(_MONITORED)
        probe.connect(self.endpoint)
        self._probe = probe

    def _drain_probe(self) -> None:
        """Act on the probe's verdict, if it has come (never blocks)."""
        while self._probe_monitor is not None:
            try:
                event = recv_monitor_message(self._probe_monitor, zmq.NOBLOCK)
            except zmq.Again:
                break
            if event["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED:  # a plain backend: it can never take CURVE
                self.handshake_failure = self._explain_handshake(
                    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL, zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH)
            else:  # the backend speaks a security mechanism
                self._probe_secured = True
            self._stop_probe()
        if self._probe_secured and self.handshake_failure is None and self._no_detail >= NO_DETAIL_FAILURES:
            self.handshake_failure = self._explain_handshake(zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL, self._last_no_detail)

    def _stop_probe(self) -> None:
        _close_monitored(self._probe, self._probe_monitor)
        self._probe = self._probe_monitor = None

    def _raise_handshake_failure_within(self, timeout_s: float) -> None:
        """Raise the :class:`HandshakeError` the monitor reports within ``timeout_s``, if any.

        A message that cannot even be queued (:meth:`send`'s ConnectionError) usually means an unreachable
        backend, but libzmq also drops a connection's queue when its security handshake fails, until it
        reconnects; on a loaded machine that can happen before the first message is sent. The handshake's
        verdict is then the answer the caller needs, not a full queue.
        """
        if self._monitor is None:
            return
        poller = zmq.Poller()
        poller.register(self._monitor, zmq.POLLIN)
        deadline = time.monotonic() + timeout_s
        while True:
            self._raise_if_refused()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            poller.poll(max(1, int(min(remaining, 0.05) * 1000)))

    def _raise_if_refused(self) -> None:
        self._drain_monitor()
        if self.handshake_failure is not None:
            raise HandshakeError(self.handshake_failure.reason, str(self.handshake_failure))

    def _explain_handshake(self, kind: int, value: int) -> HandshakeError:
        where = f"the backend at {self.endpoint}"
        if kind == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            key = self.public_key.decode() if self.public_key else "?"
            return HandshakeError("unauthorized", f"{where} does not accept this client's key {key} (ZAP status "
                                  f"{value}). On the backend machine, authorise it: python -m backend keys "
                                  f"authorize -- '{key}'")
        mismatch = kind == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL and value == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH
        if self._curve is None and (mismatch or kind == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL):
            # A mechanism mismatch, or the hang-up of a server that noticed it first.
            return HandshakeError("curve_required", f"{where} requires CURVE encryption: give this client "
                                  "the backend's public key (python -m backend keys show, on the backend) and "
                                  "a key pair of its own that the backend has authorised")
        if self._curve is None:
            return HandshakeError("handshake_failed", f"the ZeroMQ handshake with {where} failed (protocol error "
                                  f"{value:#x}); is that address a NeRF-Art backend?")
        if mismatch:
            return HandshakeError("curve_unsupported", f"{where} does not use CURVE encryption, but this client "
                                  "was given CURVE keys: start the backend with CURVE (serve --curve) or remove "
                                  "the server key from this client's settings")
        # A CURVE server that cannot open the client's HELLO (made for another server key) just hangs up.
        return HandshakeError("wrong_server_key", f"the secure handshake with {where} failed: check that the "
                              "backend public key this client uses is the one 'python -m backend keys show' "
                              "prints on the backend machine")

    def _maybe_heartbeat(self) -> None:
        now = time.monotonic()
        if self._socket is not None and now - self._last_heartbeat >= self.heartbeat_interval_s:
            self._last_heartbeat = now
            # Not reachable: alive() already reports it, so a failed heartbeat needs no error of its own.
            with contextlib.suppress(ConnectionError):
                self.send(Message("heartbeat", {}))


def _close_monitored(sock: zmq.Socket | None, monitor: zmq.Socket | None) -> None:
    """Close a socket and the monitor socket watching its handshakes (either may be None)."""
    if sock is not None:
        with contextlib.suppress(zmq.ZMQError):
            sock.disable_monitor()
        sock.close(linger=0)
    if monitor is not None:
        monitor.close(linger=0)
