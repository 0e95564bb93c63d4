"""The Majordomo worker sub-protocol, MDP/0.2 (rfc.zeromq.org/spec:18/MDP), with Paranoid Pirate heartbeats.

The broker (the front-end, :mod:`.broker`) and its workers (:mod:`.worker`) speak MDP/Worker v0.2 as the spec
frames it: a worker opens a DEALER socket to the broker's ROUTER and sends READY with the service name; the
broker hands it a REQUEST; the worker answers with zero or more PARTIAL commands and exactly one FINAL; both
sides send HEARTBEAT at a fixed interval and consider the peer gone when nothing arrived for
:data:`HEARTBEAT_LIVENESS` intervals (the Paranoid Pirate rule, rfc.zeromq.org/spec:6/PPP and chapter 4 of the
ZeroMQ guide); DISCONNECT ends a conversation, after which the worker reconnects on a new socket with
exponential back-off (:data:`RECONNECT_MIN_S` doubling to :data:`RECONNECT_MAX_S`).

MDP/0.2 rather than MDP/0.1 (spec 7): a job streams progress, frames and meshes before its result, and 0.1 has
one REPLY per request where 0.2 has PARTIAL (any number) and FINAL (one). Frames, as the ROUTER sees them after
the peer's identity:

=============  ===========================================================================================
command        frames
=============  ===========================================================================================
READY          ``"MDPW02"``, ``0x01``, service name
REQUEST        ``"MDPW02"``, ``0x02``, client address, ``""``, body
PARTIAL        ``"MDPW02"``, ``0x03``, client address, ``""``, body...
FINAL          ``"MDPW02"``, ``0x04``, client address, ``""``, body...
HEARTBEAT      ``"MDPW02"``, ``0x05``
DISCONNECT     ``"MDPW02"``, ``0x06``
CANCEL         ``"MDPW02"``, ``0x07``, client address (our one extension, broker to worker only)
=============  ===========================================================================================

How this backend fills them in: the *client address* is the job id (the front-end routes a job's messages
to whichever client follows the job, see :mod:`backend.server.server`); a REQUEST's body is one JSON frame,
the job's record and the records of the jobs it builds on; a PARTIAL or FINAL body is one encoded protocol
message (:func:`protocol.encode`, unsigned: the link is loopback or CURVE): ``progress``, ``frame`` and
``mesh`` travel as PARTIAL, the job's ``result`` as FINAL.

CANCEL is not in the spec, which has no way to stop a request in progress: a worker that receives it stops
the job at its next step boundary and still ends it with FINAL (``cancelled``), so the dialog stays as MDP
has it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

WORKER_PROTOCOL = b"MDPW02"
SERVICE = b"nerfart.jobs"  # one service: every worker runs every job kind

READY = b"\x01"
REQUEST = b"\x02"
PARTIAL = b"\x03"
FINAL = b"\x04"
HEARTBEAT = b"\x05"
DISCONNECT = b"\x06"
CANCEL = b"\x07"
COMMAND_NAMES = {READY: "READY", REQUEST: "REQUEST", PARTIAL: "PARTIAL", FINAL: "FINAL", HEARTBEAT: "HEARTBEAT",
                 DISCONNECT: "DISCONNECT", CANCEL: "CANCEL"}
# Commands that carry a client address and an empty delimiter frame, then a body.
ADDRESSED = (REQUEST, PARTIAL, FINAL)

HEARTBEAT_INTERVAL_S = 1.0
HEARTBEAT_LIVENESS = 3  # intervals without a word before a peer is gone: 3 s with the default interval
RECONNECT_MIN_S = 1.0
RECONNECT_MAX_S = 32.0

# The ZAP domain of the worker endpoint: CURVE keys of workers are checked apart from those of clients, so that
# a client key can never join as a worker (and read every job) or a worker key submit jobs.
WORKER_ZAP_DOMAIN = "nerfart-workers"


class MdpError(ValueError):
    """A multipart message that is not a valid MDP/Worker v0.2 command."""


@dataclass(frozen=True)
class Command:
    """One parsed MDP/Worker command.

    Attributes:
        name: the command byte (:data:`READY`, ...).
        address: the client address (here: a job id) of REQUEST, PARTIAL, FINAL and CANCEL; else ``""``.
        service: READY's service name; else ``b""``.
        body: the frames after the empty delimiter (REQUEST, PARTIAL, FINAL); else empty.
    """

    name: bytes
    address: str = ""
    service: bytes = b""
    body: tuple[Any, ...] = ()

    @property
    def label(self) -> str:
        return COMMAND_NAMES.get(self.name, repr(self.name))


def _bytes(frame: Any) -> bytes:
    return frame.bytes if hasattr(frame, "bytes") else bytes(frame)


def parse(frames: Sequence[Any]) -> Command:
    """The command in ``frames`` (without the ROUTER's identity frame), checked against the spec's framing.

    Raises:
        MdpError: a wrong protocol header, an unknown command, or missing or extra frames.
    """
    if len(frames) < 2 or _bytes(frames[0]) != WORKER_PROTOCOL:
        raise MdpError("not an MDP/Worker v0.2 command (no 'MDPW02' header frame)")
    name = _bytes(frames[1])
    if name not in COMMAND_NAMES:
        raise MdpError(f"unknown MDP command {name[:8]!r}")
    if name == READY:
        if len(frames) != 3:
            raise MdpError(f"READY has {len(frames)} frames; it needs 3")
        return Command(name, service=_bytes(frames[2]))
    if name in (HEARTBEAT, DISCONNECT):
        if len(frames) != 2:
            raise MdpError(f"{COMMAND_NAMES[name]} has {len(frames)} frames; it needs 2")
        return Command(name)
    address = _bytes(frames[2]) if len(frames) > 2 else b""
    try:
        job_id = address.decode("ascii")
    except UnicodeDecodeError:
        raise MdpError("the client address must be an ASCII job id") from None
    if not job_id or len(job_id) > 64:
        raise MdpError(f"{COMMAND_NAMES[name]} needs a client address (a job id)")
    if name == CANCEL:
        if len(frames) != 3:
            raise MdpError(f"CANCEL has {len(frames)} frames; it needs 3")
        return Command(name, address=job_id)
    if len(frames) < 5 or _bytes(frames[3]) != b"":
        raise MdpError(f"{COMMAND_NAMES[name]} needs an empty delimiter frame and a body after the address")
    return Command(name, address=job_id, body=tuple(frames[4:]))


def ready() -> list[bytes]:
    return [WORKER_PROTOCOL, READY, SERVICE]


def heartbeat() -> list[bytes]:
    return [WORKER_PROTOCOL, HEARTBEAT]


def disconnect() -> list[bytes]:
    return [WORKER_PROTOCOL, DISCONNECT]


def cancel(job_id: str) -> list[bytes]:
    return [WORKER_PROTOCOL, CANCEL, job_id.encode("ascii")]


def addressed(name: bytes, job_id: str, body: Sequence[Any]) -> list[Any]:
    """A REQUEST, PARTIAL or FINAL for ``job_id`` with ``body`` (frames)."""
    if name not in ADDRESSED:
        raise ValueError(f"{COMMAND_NAMES.get(name, name)!r} carries no address and body")
    return [WORKER_PROTOCOL, name, job_id.encode("ascii"), b"", *body]
