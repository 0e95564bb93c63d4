"""The add-on's one ZeroMQ context and backend client, the local backend process, and the session state.

No bpy here: :mod:`.tick` (the timer) calls :func:`poll` and turns the returned events into Blender data.
pyzmq comes from the wheels bundled in the extension; if it cannot be imported, :func:`zmq_error` says so and
everything else keeps working (capture import, camera export), so the panel can show a readable message.
"""

from __future__ import annotations

import time
from typing import Any

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


def zmq_error() -> str | None:
    """None if pyzmq and the protocol package import, else a sentence saying what is missing."""
    try:
        import zmq  # noqa: F401
    except ImportError:
        return ("the add-on cannot talk to a backend: the pyzmq module is missing. The pyzmq wheel bundled with "
                "this extension was not installed for this platform or Blender version (macOS needs Blender "
                "4.2.23 or newer); reinstall the extension zip built for your platform")
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


def connect(endpoint: str, hmac_key: str = "", client_name: str = "blender", timeout_s: float | None = None) -> None:
    """Open a client to ``endpoint`` and send ``hello``. Never blocks; the answer arrives through :func:`poll`.

    Raises:
        ValueError: for a malformed endpoint or missing pyzmq, with a readable message.
    """
    global _client, _hello_sent_at, _timeout_s
    _timeout_s = float(timeout_s) if timeout_s is not None else HEARTBEAT_TIMEOUT_S
    if (err := zmq_error()) is not None:
        raise ValueError(err)
    endpoint = endpoint.strip()
    if not endpoint.startswith(("tcp://", "ipc://")) or ":" not in endpoint[6:]:
        raise ValueError(f"backend address {endpoint!r} must look like tcp://HOST:PORT, e.g. tcp://127.0.0.1:5555")
    from .protocol import Client

    disconnect()
    c = Client(endpoint, hmac_key=hmac_key.encode() if hmac_key else None, client_name=client_name,
               heartbeat_interval_s=HEARTBEAT_INTERVAL_S, context=_get_context())
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
    global _client
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


def attach(job_ids: list[str]) -> None:
    """Ask the backend to route these jobs' messages here again (and re-send results of finished ones)."""
    if _client is None:
        return
    for job_id in job_ids:
        _client.attach(job_id)


def poll(budget_s: float = 0.005, max_messages: int = 1000) -> list[Event]:
    """Drain what has arrived within ``budget_s`` (at most ``max_messages``) and update :data:`session`;
    returns the events to handle."""
    events: list[Event] = []
    exit_message = local_backend.service()
    if exit_message:
        if "code" in exit_message:
            session.set_error(exit_message)
        events.append(Event("backend_exit", message=exit_message))
    if _client is None:
        return events
    for msg in _client.poll(budget_s=budget_s, max_messages=max_messages):
        events.extend(session.apply(msg))
    # A local backend that is still starting (importing torch, loading CLIP) gets a minute to answer.
    hello_timeout = 60.0 if local_backend.running else max(HELLO_TIMEOUT_S, _timeout_s)
    ev = session.check_liveness(_client.alive(_timeout_s), time.monotonic() - _hello_sent_at, hello_timeout)
    if ev is not None:
        events.append(ev)
    return events
