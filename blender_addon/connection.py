"""The add-on's one ZeroMQ context and backend client, the local backend process, and the session state.

No bpy here: :mod:`.tick` (the timer) calls :func:`poll` and turns the returned events into Blender data.
pyzmq comes from the wheels bundled in the extension; if it cannot be imported, :func:`zmq_error` says so and
everything else keeps working (capture import, camera export), so the panel can show a readable message.

Reconnecting. A backend that goes away and comes back on the same address (a restart, a network drop) is
picked up without the user doing anything: ZeroMQ reconnects the socket by itself, and :func:`poll` notices the
comeback, either because heartbeats are answered again after the connection was shown as lost, or because the
answers come from another backend process (its session id changed: a restart quicker than the heartbeat
timeout). It then says ``hello`` again; the ``connected`` event that the answer produces makes :mod:`.tick`
re-attach every unfinished job, so their states are refreshed and their results re-sent. Meanwhile the status
reads "reconnecting…".

A failed security handshake (CURVE: a key the backend does not trust, a wrong backend key) is final for that
socket, so it puts the session in ERROR with a message that says where to fix it; Connect tries again.
"""

from __future__ import annotations

import sys
import time
import uuid
from typing import Any

from .core.dependencies import import_problem
from .core.jobs import Event, JobState, Session
from .core.local_backend import LocalBackend

HEARTBEAT_INTERVAL_S = 1.0  # the client sends a heartbeat this often; the backend answers each
HEARTBEAT_TIMEOUT_S = 4.0  # a backend silent this long shows as "not responding"
HELLO_TIMEOUT_S = 5.0

session = Session()
local_backend = LocalBackend()

_context: Any = None
_client: Any = None
_hello_sent_at = 0.0
_timeout_s = HEARTBEAT_TIMEOUT_S
_backend_session: str | None = None  # session id of the backend process that answered our last hello
_reconnecting = False  # the connection was lost and is being re-established automatically
_session_client_id = uuid.uuid4().hex  # when the preferences hold none (add-on registered by a script)

PREFS_PATH = "Preferences ▸ Add-ons ▸ NeRF-Art"


def zmq_error() -> str | None:
    """None if pyzmq and the protocol package import, else a sentence saying what is missing."""
    problem = import_problem("zmq", "Talking to a backend")
    if problem is not None:
        if sys.platform == "darwin":  # Blender 4.2.0-4.2.22 skip the universal2 wheels the zip carries for macOS
            problem += "; on macOS, Blender 4.2.23 or newer installs the pyzmq wheels bundled with the extension"
        return problem
    try:
        from . import protocol  # noqa: F401
    except ImportError as exc:
        return f"the extension is incomplete: its protocol package does not import ({exc}); reinstall it"
    return None


def _get_context():
    global _context
    if _context is None:
        import zmq

        _context = zmq.Context()
    return _context


def client():
    """The current client, or None when not connected."""
    return _client


def check_key(text: str, what: str) -> bytes:
    """A CURVE key from the preferences (40 characters of Z85), as bytes.

    Raises:
        ValueError: naming the preference and how to get a right value.
    """
    from zmq.utils import z85

    key = text.strip().encode("ascii", "replace")
    try:
        if len(key) == 40 and len(z85.decode(key)) == 32:
            return key
    except (ValueError, KeyError):  # z85.decode raises KeyError for a character outside its alphabet
        pass
    raise ValueError(f"the {what} in {PREFS_PATH} is not a CURVE key (40 characters, e.g. as printed by "
                     "'python -m backend keys show'); paste it again")


def curve_keys(server_public: str, client_public: str, client_secret: str) -> tuple[bytes, bytes, bytes] | None:
    """The client's CURVE keys from the preferences, or None when no backend key is set (no encryption).

    Raises:
        ValueError: a backend key without a key pair of this Blender, or keys that are malformed or mismatched.
    """
    import zmq

    if not server_public.strip():
        return None
    server = check_key(server_public, "Backend Public Key")
    if not client_public.strip() or not client_secret.strip():
        raise ValueError(f"the backend uses encryption keys but this Blender has no key pair yet: press Generate "
                         f"Key Pair in {PREFS_PATH}, then authorise its public key on the backend")
    public = check_key(client_public, "Public Key")
    secret = check_key(client_secret, "Secret Key")
    if zmq.curve_public(secret) != public:
        raise ValueError(f"the Public Key and Secret Key in {PREFS_PATH} do not belong together; press Generate "
                         "Key Pair for a new pair (and authorise the new public key on the backend)")
    return server, public, secret


def connect(endpoint: str, hmac_key: str = "", client_name: str = "blender", timeout_s: float | None = None, *,
            curve: tuple[str, str, str] | None = None, client_id: str = "") -> None:
    """Open a client to ``endpoint`` and send ``hello``. Never blocks; the answer arrives through :func:`poll`.

    Args:
        curve: ``(backend public key, this Blender's public key, its secret key)`` as in the preferences; an
            empty backend key means no CURVE (a loopback backend needs none).
        client_id: this Blender's stable id (the owner of its jobs on a backend without CURVE).

    Raises:
        ValueError: for a malformed endpoint or keys, or missing pyzmq, with a readable message.
    """
    global _client, _hello_sent_at, _timeout_s, _reconnecting
    _timeout_s = float(timeout_s) if timeout_s is not None else HEARTBEAT_TIMEOUT_S
    if (err := zmq_error()) is not None:
        raise ValueError(err)
    endpoint = endpoint.strip()
    if not endpoint.startswith(("tcp://", "ipc://")) or ":" not in endpoint[6:]:
        raise ValueError(f"backend address {endpoint!r} must look like tcp://HOST:PORT, e.g. tcp://127.0.0.1:5555")
    keys = curve_keys(*curve) if curve is not None else None
    from .protocol import Client

    disconnect()
    _reconnecting = False
    local_backend.exit_message = ""  # an earlier local backend's exit says nothing about this connection
    c = Client(endpoint, hmac_key=hmac_key.encode() if hmac_key else None, client_name=client_name,
               heartbeat_interval_s=HEARTBEAT_INTERVAL_S, context=_get_context(), curve=keys,
               client_id=client_id or _session_client_id)
    try:
        c.connect()
    except Exception as exc:  # zmq.ZMQError for e.g. an unresolvable host
        c.close()
        raise ValueError(f"cannot open a connection to {endpoint}: {exc}") from None
    _client = c
    msg_id = c.hello()
    _hello_sent_at = time.monotonic()
    session.connecting(endpoint, msg_id)


def disconnect() -> None:
    """Close the client (jobs keep running on the backend; reconnecting reattaches them)."""
    global _client, _backend_session, _reconnecting
    _backend_session = None
    _reconnecting = False
    if _client is not None:
        _client.close()
        _client = None
    if session.state != "DISCONNECTED":
        session.disconnected()


def shutdown() -> None:
    """Close everything the add-on opened: client, context, local backend (for unregister / quit)."""
    global _context
    disconnect()
    if _context is not None:
        _context.term()
        _context = None
    local_backend.stop_now()
    session.__init__()  # forget the jobs of this Blender session (a later register starts clean)


def submit(job: JobState, inputs: dict[str, tuple[bytes, str]] | None = None) -> None:
    """Send a job; it shows as "sending" until ``accepted`` arrives.

    Raises:
        ValueError: when not connected or the backend is unreachable (readable message).
    """
    if _client is None or session.state not in ("CONNECTED", "CONNECTING"):
        raise ValueError("not connected to a backend: press Connect in the Backend panel first")
    try:
        msg_id = _client.submit(job.kind, job.params, inputs)
    except ConnectionError as exc:
        raise ValueError(str(exc)) from None
    except Exception as exc:  # protocol.ProtocolError: our own params do not match the schema
        message = getattr(exc, "message", str(exc))
        raise ValueError(f"the {job.kind} request is invalid: {message}") from None
    session.submitted(msg_id, job)


def cancel(job_id: str) -> None:
    if _client is None:
        raise ValueError("not connected to a backend")
    _client.cancel(job_id)


def resume(job_id: str) -> None:
    """Queue an interrupted job again on the backend; it continues from its latest checkpoint.

    The request is followed like a submit, so the job shows as queued once the backend accepts it, and its
    progress, frames and result arrive as for any job of this session.
    """
    if _client is None:
        raise ValueError("not connected to a backend")
    job = session.jobs.get(job_id)
    if job is None:
        raise ValueError(f"job {job_id} is not followed by this Blender session; connect (or Reattach Jobs) first")
    try:
        msg_id = _client.resume(job_id)
    except ConnectionError as exc:
        raise ValueError(str(exc)) from None
    job.error, job.error_code = "", ""
    session.submitted(msg_id, job)


def attach(job_ids: list[str]) -> None:
    """Ask the backend to route these jobs' messages here again (and re-send results of finished ones)."""
    if _client is None:
        return
    for job_id in job_ids:
        _client.attach(job_id)


def reconnecting() -> bool:
    """Whether a lost connection is being re-established (the panel says "reconnecting…")."""
    return session.state == "LOST" or (_reconnecting and session.state == "CONNECTING")


def status_line() -> str:
    """The connection status for the panel: the session's line, or that it is reconnecting."""
    if session.state == "LOST":
        return f"backend at {session.endpoint} is not responding — reconnecting…"
    if _reconnecting and session.state == "CONNECTING":
        return f"reconnecting to {session.endpoint}…"
    return session.status_line()


def lost_explanation() -> str:
    """What the panel says while the connection is lost: that jobs go on only where the backend answered on
    this connection before; a backend that never answered, or a local one that exited, is said to be so."""
    from .core.advice import lost_text

    lb = local_backend
    local_exit = lb.exit_message if lb.exit_message and not lb.running else ""
    return lost_text(bool(session.info) and _backend_session is not None, local_exit)


def _say_hello_again() -> None:
    """Re-handshake on the same socket: the answer brings the (new) backend's info and a ``connected`` event."""
    global _hello_sent_at, _reconnecting
    assert _client is not None
    _reconnecting = True
    msg_id = _client.hello()
    _hello_sent_at = time.monotonic()
    session.connecting(session.endpoint, msg_id)


def _backend_restarted() -> list[Event]:
    """A new backend process answered: submits the old one never accepted are lost; say so, per job."""
    events = []
    for job in session.pending.values():
        job.state, job.error = "failed", "the backend restarted before it accepted this job; submit it again"
        events.append(Event("finished", job))
    session.pending.clear()
    return events


def _handshake_message(failure: Any) -> str:
    """What the user must do about a refused security handshake, in the add-on's own words."""
    where = f"the backend at {session.endpoint}"
    if failure.reason == "unauthorized":
        key = _client.public_key.decode() if _client is not None and _client.public_key else ""
        return (f"{where} refused this Blender's key: it is not authorised there. On the backend machine run "
                f"python -m backend keys authorize -- '{key}' (Copy Command in {PREFS_PATH}), then Connect again")
    if failure.reason == "curve_required":
        return (f"{where} requires encryption keys: paste the key that 'python -m backend keys show' prints on "
                f"the backend into Backend Public Key in {PREFS_PATH}, press Generate Key Pair and authorise this "
                "Blender's public key on the backend, then Connect again")
    if failure.reason == "curve_unsupported":
        return (f"{where} runs without encryption keys, but a Backend Public Key is set in {PREFS_PATH}: clear "
                "it, or start the backend with --curve")
    if failure.reason == "wrong_server_key":
        return (f"the secure handshake with {where} failed: the Backend Public Key in {PREFS_PATH} is not this "
                "backend's; copy it again from 'python -m backend keys show' on the backend machine")
    return f"{failure}; check the Backend Address in {PREFS_PATH}"


def poll(budget_s: float = 0.005, max_messages: int = 1000) -> list[Event]:
    """Drain what has arrived within ``budget_s`` (at most ``max_messages``) and update :data:`session`;
    returns the events to handle."""
    global _backend_session, _reconnecting
    events: list[Event] = []
    exit_message = local_backend.service()
    if exit_message:
        if "code" in exit_message:
            session.set_error(exit_message)
        events.append(Event("backend_exit", message=exit_message))
    if _client is None:
        return events
    for msg in _client.poll(budget_s=budget_s, max_messages=max_messages):
        if msg.type == "hello_reply":
            new_session = str(msg.content.get("session", ""))
            if _backend_session is not None and new_session != _backend_session:
                events.extend(_backend_restarted())
            _backend_session = new_session
            _reconnecting = False
        events.extend(session.apply(msg))
    failure = _client.handshake_failure
    if failure is not None and session.state != "ERROR":
        session.state = "ERROR"
        session.set_error(_handshake_message(failure), f"handshake: {failure.reason}")
        events.append(Event("error"))
        return events
    if (session.state == "CONNECTED" and _backend_session is not None and _client.peer_session is not None
            and _client.peer_session != _backend_session):
        # Answers from another backend process on the same address: it restarted within the heartbeat
        # timeout, so the connection never showed as lost, yet its jobs were interrupted or requeued.
        _say_hello_again()
    # A local backend that is still starting (importing torch, loading CLIP) gets a minute to answer.
    hello_timeout = 60.0 if local_backend.running else max(HELLO_TIMEOUT_S, _timeout_s)
    ev = session.check_liveness(_client.alive(_timeout_s), time.monotonic() - _hello_sent_at, hello_timeout)
    if ev is not None and ev.kind == "connected":
        # Heartbeats are answered again after a loss: handshake anew before showing it as connected (the
        # backend may be a new process, with other capabilities and a new job state).
        _say_hello_again()
    elif ev is not None:
        events.append(ev)
    return events
