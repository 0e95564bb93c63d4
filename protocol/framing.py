"""Wire framing: a logical :class:`Message` to ZeroMQ multipart frames and back.

After any ROUTER routing identities, a message is these frames, in order (the layout follows the Jupyter
messaging protocol):

=====  ==================  ===============================================================================
index  frame               contents
=====  ==================  ===============================================================================
0      delimiter           ``b"<NERFART|MSG>"``; everything before it is routing identities
1      signature           hex HMAC-SHA256 of frames 2.. and their boundaries (see :class:`Signer`), or
                           ``b""`` when no key is configured (loopback default)
2      header              strict JSON object: ``v``, ``msg_id``, ``msg_type``, ``session``, ``date``,
                           ``parent_id``, ``to_session``
3      content             strict JSON object, checked against :mod:`protocol.schema`
4..    buffers             raw binary payloads (arrays, PNG/EXR/PLY bytes), referenced from the content by
                           index; never base64, never pickle
=====  ==================  ===============================================================================

Strict JSON means: UTF-8 without lone surrogates (not even as ``\\ud800`` escapes), an object at the top,
nesting at most :data:`MAX_JSON_DEPTH` deep, finite numbers only (no NaN or Infinity, nor ``1e400``, which
parses to infinity) and integers within 64 bits. Arrays are C-ordered little-endian with ``dtype`` and
``shape`` in their spec, and the frame's length must equal ``itemsize * prod(shape)``.

Decoding checks the sizes, then the signature, and only then parses anything: with a key configured, a
message from someone without it costs the receiver an HMAC, never a JSON parse.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import re
import time
import uuid
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import ErrorCode, ProtocolError
from .schema import MESSAGES, PROTOCOL_VERSION, check_array_spec, check_blob_spec, validate_content

DELIMITER = b"<NERFART|MSG>"
HEADER_KEYS = ("v", "msg_id", "msg_type", "session", "date", "parent_id")  # required; "to_session" is optional
MAX_JSON_DEPTH = 32  # nesting of objects and lists; the deepest schema (status_reply's cameras) needs 8
MAX_JSON_INT = 2**63  # integers must lie strictly inside +-2**63 (every integer field fits in 64 bits)
MAX_INPUTS = 16  # named uploads of one submit (jobs take one, the capture)
SIGNATURE_DOMAIN = b"nerfart-protocol-v2"  # fed first to the HMAC: a v1 signature never checks as a v2 one
# A lone surrogate can only enter a str through a JSON escape (UTF-8 decoding refuses encoded surrogates), so
# only a frame that holds such an escape needs its strings checked.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


@dataclass(frozen=True)
class Limits:
    """Size limits applied while decoding, before anything is parsed into memory.

    Attributes:
        max_frames: buffers plus the four fixed frames.
        max_header_bytes: the header frame.
        max_content_bytes: the JSON content frame (a long camera list fits in the default).
        max_message_bytes: all frames together (uploads of a capture zip are the largest messages).
    """

    max_frames: int = 64
    max_header_bytes: int = 16 * 1024
    max_content_bytes: int = 32 * 1024 * 1024
    max_message_bytes: int = 1024 * 1024 * 1024


DEFAULT_LIMITS = Limits()


@dataclass
class Message:
    """A logical protocol message.

    Attributes:
        type: message type, a key of :data:`protocol.schema.MESSAGES`.
        content: the JSON content.
        buffers: raw binary payloads referenced by index from ``content``.
        msg_id: unique id of this message.
        parent_id: ``msg_id`` of the request this answers, or None.
        session: id of the sending process (a new one after every restart).
        date: Unix time of sending.
        to_session: ``session`` of the process this message is for, or ``""`` when the sender does not know it
            yet. Signed with the rest of the header, it ties a request to one run of the backend, so a
            captured request cannot be replayed to it after a restart (see :class:`Signer`).
    """

    type: str
    content: dict[str, Any]
    buffers: list[bytes | memoryview] = field(default_factory=list)
    msg_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    parent_id: str | None = None
    session: str = ""
    date: float = field(default_factory=time.time)
    to_session: str = ""

    @property
    def job_id(self) -> str | None:
        """The job this message is about, if any."""
        value = self.content.get("job_id")
        return value if isinstance(value, str) else None

    # Binary payload helpers -----------------------------------------------------------------------------

    def add_array(self, array: np.ndarray) -> dict[str, Any]:
        """Append ``array`` as a raw frame and return its spec for the content."""
        arr = np.ascontiguousarray(array)
        if arr.dtype.name not in ("uint8", "uint16", "int32", "int64", "float16", "float32", "float64"):
            raise ValueError(f"dtype {arr.dtype} cannot travel; convert it first")
        if arr.dtype.byteorder == ">":
            arr = arr.astype(arr.dtype.newbyteorder("<"))
        self.buffers.append(memoryview(arr).cast("B"))
        return {"buffer": len(self.buffers) - 1, "dtype": arr.dtype.name, "shape": list(arr.shape)}

    def add_blob(self, data: bytes | bytearray | memoryview, fmt: str) -> dict[str, Any]:
        """Append file bytes (PNG, EXR, PLY, zip...) as a raw frame and return its spec."""
        self.buffers.append(memoryview(data).cast("B") if not isinstance(data, bytes) else data)
        return {"buffer": len(self.buffers) - 1, "format": fmt}

    def array(self, spec: dict[str, Any]) -> np.ndarray:
        """The array a spec in this message's content names (a read-only view of the frame)."""
        check_array_spec(spec, "array")
        buf = self._buffer(spec["buffer"])
        dtype = np.dtype(spec["dtype"]).newbyteorder("<")
        count = math.prod(spec["shape"])
        if count * dtype.itemsize != len(buf):
            raise ProtocolError(ErrorCode.INVALID_FIELD, f"array frame {spec['buffer']} holds {len(buf)} bytes, "
                                f"but dtype {spec['dtype']} and shape {spec['shape']} need "
                                f"{count * dtype.itemsize}", "buffers")
        return np.frombuffer(buf, dtype=dtype, count=count).reshape(spec["shape"])

    def blob(self, spec: dict[str, Any]) -> memoryview:
        """The bytes a blob spec in this message's content names."""
        check_blob_spec(spec, "blob")
        return memoryview(self._buffer(spec["buffer"]))

    def _buffer(self, index: int) -> bytes | memoryview:
        if not 0 <= index < len(self.buffers):
            raise ProtocolError(ErrorCode.INVALID_FIELD, f"content names frame {index}, but the message has "
                                f"{len(self.buffers)} buffer frames", "buffers")
        return self.buffers[index]


def make_reply(request: Message, msg_type: str, content: dict[str, Any], session: str = "") -> Message:
    """A reply to ``request``: its ``parent_id`` is the request's ``msg_id``, its ``to_session`` the request's
    ``session``."""
    return Message(type=msg_type, content=content, parent_id=request.msg_id, session=session,
                   to_session=request.session)


# ---------------------------------------------------------------------------------------------------------
# Signing
# ---------------------------------------------------------------------------------------------------------


class Signer:
    """HMAC-SHA256 signing and checking, with a bounded history against replays.

    An empty key turns signing off (loopback, zero configuration); CURVE encryption is separate and sits at
    the socket level. The signature covers the frame count and every frame's length as well as its bytes
    (changed in v2), so bytes cannot be moved from one frame to the next, nor empty frames appended, without
    breaking it, and it covers the buffers too, since they carry the payload.

    The history rejects a message seen before by this process. Across restarts, replays are stopped by the
    header's ``to_session``, which the backend checks against its own (new) session id.
    """

    def __init__(self, key: bytes | None = None, history: int = 65536) -> None:
        self.key = key or b""
        self._seen: set[bytes] = set()
        self._order: deque[bytes] = deque()
        self._history = history

    def sign(self, frames: Sequence[bytes | memoryview]) -> bytes:
        if not self.key:
            return b""
        mac = hmac.new(self.key, SIGNATURE_DOMAIN, digestmod=hashlib.sha256)
        mac.update(len(frames).to_bytes(8, "little"))
        for frame in frames:
            view = memoryview(frame)
            mac.update(view.nbytes.to_bytes(8, "little"))
            mac.update(view)
        return mac.hexdigest().encode()

    def check(self, signature: bytes, frames: Sequence[bytes | memoryview]) -> None:
        if not self.key:
            return
        expected = self.sign(frames)
        if not signature or not hmac.compare_digest(signature, expected):
            raise ProtocolError(ErrorCode.UNAUTHORIZED, "message signature is missing or wrong "
                                "(check that client and server use the same key and protocol version)")
        if signature in self._seen:
            raise ProtocolError(ErrorCode.UNAUTHORIZED, "replayed message (signature seen before)")
        self._seen.add(signature)
        self._order.append(signature)
        if len(self._order) > self._history:
            self._seen.discard(self._order.popleft())


# ---------------------------------------------------------------------------------------------------------
# Encode / decode
# ---------------------------------------------------------------------------------------------------------


def _dumps(obj: Any) -> bytes:
    try:
        return json.dumps(obj, allow_nan=False, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    except (ValueError, TypeError, RecursionError) as exc:  # NaN, a lone surrogate, a non-JSON value, deep nesting
        raise ProtocolError(ErrorCode.INVALID_FIELD, f"cannot be sent as strict JSON: {str(exc)[:200]}") from None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed in protocol JSON")


def load_json_object(frame: bytes | memoryview, what: str) -> dict[str, Any]:
    """A header or content frame as a JSON object, checked by :func:`check_json_value`."""
    raw = bytes(frame)
    try:
        obj = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        # RecursionError: nesting deeper than the C parser allows; ValueError: also integers of over 4300 digits.
        raise ProtocolError(ErrorCode.MALFORMED, f"{what} frame is not valid JSON: {str(exc)[:200]}", what) from None
    if not isinstance(obj, dict):
        raise ProtocolError(ErrorCode.MALFORMED, f"{what} frame must be a JSON object", what)
    check_json_value(obj, what, strings=_SURROGATE_ESCAPE.search(raw) is not None)
    return obj


def check_json_value(value: Any, what: str, strings: bool = True) -> None:
    """Refuse what strict JSON excludes (see the module docstring), walking ``value`` without recursion.

    Python's ``json`` accepts all of it: ``1e400`` becomes ``inf``, ``"\\ud800"`` a str that cannot be encoded
    again, and nesting is limited only by the interpreter's stack. Any of them, once accepted, breaks the
    reply, the job record or the status of everyone later, so they are refused at the door.

    Args:
        value: a parsed JSON value.
        what: its name in the error (``"content"``, ``"job record"``).
        strings: also check that every string (keys included) is encodable as UTF-8.

    Raises:
        ProtocolError: ``malformed`` for nesting or strings, ``invalid_field`` (with the field's path) for numbers.
    """
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise ProtocolError(ErrorCode.MALFORMED, f"{what} is nested more than {MAX_JSON_DEPTH} levels deep", what)
        children = node.items() if isinstance(node, dict) else enumerate(node)
        for key, item in children:
            if strings and isinstance(key, str) and not _encodable(key):
                raise _bad_string(what)
            if isinstance(item, dict | list):
                stack.append((item, depth + 1))
            elif isinstance(item, float):
                if not math.isfinite(item):
                    raise _bad_number(value, what, "is not a finite number (numbers such as 1e400 overflow to "
                                      "infinity)")
            elif isinstance(item, int) and not isinstance(item, bool):
                if not -MAX_JSON_INT < item < MAX_JSON_INT:
                    raise _bad_number(value, what, "is an integer beyond 64 bits")
            elif strings and isinstance(item, str) and not _encodable(item):
                raise _bad_string(what)


def _encodable(text: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _bad_string(what: str) -> ProtocolError:
    return ProtocolError(ErrorCode.MALFORMED, f"{what} holds a string that is not valid Unicode (a lone surrogate "
                         "such as \\ud800)", what)


def _bad_number(value: Any, what: str, why: str) -> ProtocolError:
    path = _path_of_bad_number(value) or what
    return ProtocolError(ErrorCode.INVALID_FIELD, f"field {path!r} {why}", path)


def _path_of_bad_number(node: Any, path: str = "") -> str | None:
    """The dotted path of the first non-finite or over-long number in ``node`` (only called to name it)."""
    children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, item in children:
        here = f"{path}[{key}]" if isinstance(node, list) else f"{path}.{key}" if path else str(key)
        if isinstance(item, dict | list):
            found = _path_of_bad_number(item, here)
            if found:
                return found
        elif (isinstance(item, float) and not math.isfinite(item)) or (
                isinstance(item, int) and not isinstance(item, bool) and not -MAX_JSON_INT < item < MAX_JSON_INT):
            return here[:200]
    return None


def encode(msg: Message, signer: Signer | None = None, validate: bool = True) -> list[bytes | memoryview]:
    """Frames for ``msg`` (without routing identities).

    Args:
        msg: the message.
        signer: signs the frames when it has a key.
        validate: check the content against the schema first, so a bug never reaches the wire.

    Raises:
        ProtocolError: when ``validate`` and the content does not match the schema, or when the header or
            content cannot be strict JSON (NaN, a lone surrogate).
    """
    if validate:
        validate_content(msg.type, msg.content)
    header = {"v": PROTOCOL_VERSION, "msg_id": msg.msg_id, "msg_type": msg.type, "session": msg.session,
              "date": msg.date, "parent_id": msg.parent_id, "to_session": msg.to_session}
    body: list[bytes | memoryview] = [_dumps(header), _dumps(msg.content), *msg.buffers]
    signature = (signer or Signer()).sign(body)
    return [DELIMITER, signature, *body]


def split_identities(frames: Sequence[Any]) -> tuple[list[bytes], list[Any]]:
    """Split a ROUTER's received frames into routing identities and the message frames (from the delimiter).

    Raises:
        ProtocolError: ``malformed`` when there is no delimiter.
    """
    for i, frame in enumerate(frames):
        if _frame_bytes(frame) == DELIMITER:
            return [_frame_bytes(f) for f in frames[:i]], list(frames[i:])
    raise ProtocolError(ErrorCode.MALFORMED, "no message delimiter frame; not a NeRF-Art protocol message")


def decode(frames: Sequence[Any], signer: Signer | None = None, limits: Limits = DEFAULT_LIMITS,
           validate: bool = True) -> Message:
    """The message in ``frames`` (starting at the delimiter), fully checked.

    Args:
        frames: bytes, memoryviews or ``zmq.Frame`` objects.
        signer: checks the signature when it has a key.
        limits: size limits, checked before parsing.
        validate: check the content against the schema.

    Raises:
        ProtocolError: for anything malformed, oversized, unsigned or invalid; never another exception.
    """
    parts = [_frame_view(f) for f in frames]
    if len(parts) < 4:
        raise ProtocolError(ErrorCode.MALFORMED, f"a message needs at least 4 frames (delimiter, signature, "
                            f"header, content), got {len(parts)}")
    if len(parts) > limits.max_frames:
        raise ProtocolError(ErrorCode.TOO_LARGE, f"{len(parts)} frames; at most {limits.max_frames} allowed")
    if bytes(parts[0]) != DELIMITER:
        raise ProtocolError(ErrorCode.MALFORMED, "first frame is not the message delimiter")
    total = sum(len(p) for p in parts)
    if total > limits.max_message_bytes:
        raise ProtocolError(ErrorCode.TOO_LARGE, f"message of {total} bytes is over the limit of "
                            f"{limits.max_message_bytes} bytes")
    if len(parts[2]) > limits.max_header_bytes:
        raise ProtocolError(ErrorCode.TOO_LARGE, f"header of {len(parts[2])} bytes is over the limit of "
                            f"{limits.max_header_bytes}")
    if len(parts[3]) > limits.max_content_bytes:
        raise ProtocolError(ErrorCode.TOO_LARGE, f"content of {len(parts[3])} bytes is over the limit of "
                            f"{limits.max_content_bytes}", "content")
    (signer or Signer()).check(bytes(parts[1]), parts[2:])
    header = load_json_object(parts[2], "header")
    content = load_json_object(parts[3], "content")
    for key in HEADER_KEYS:
        if key not in header:
            raise ProtocolError(ErrorCode.MALFORMED, f"header has no {key!r}", f"header.{key}")
    msg_type = header["msg_type"]
    if not isinstance(msg_type, str):
        raise ProtocolError(ErrorCode.MALFORMED, "header.msg_type must be a string", "header.msg_type")
    if not isinstance(header["msg_id"], str) or not 0 < len(header["msg_id"]) <= 128:
        raise ProtocolError(ErrorCode.MALFORMED, "header.msg_id must be a string of 1 to 128 characters",
                            "header.msg_id")
    parent = header["parent_id"]
    if parent is not None and (not isinstance(parent, str) or len(parent) > 128):
        raise ProtocolError(ErrorCode.MALFORMED, "header.parent_id must be null or a short string",
                            "header.parent_id")
    date = header["date"]
    if isinstance(date, bool) or not isinstance(date, int | float):
        raise ProtocolError(ErrorCode.MALFORMED, "header.date must be a number", "header.date")
    session = header["session"] if isinstance(header["session"], str) else ""
    to_session = header.get("to_session", "")  # absent from v1 headers: a v1 hello still gets its precise answer
    if not isinstance(to_session, str) or len(to_session) > 128:
        raise ProtocolError(ErrorCode.MALFORMED, "header.to_session must be a short string", "header.to_session")
    msg = Message(type=msg_type, content=content, buffers=list(parts[4:]), msg_id=header["msg_id"],
                  parent_id=parent, session=session[:128], date=float(date), to_session=to_session)
    if header["v"] != PROTOCOL_VERSION and msg_type != "hello":
        # A hello carries its own version field and gets a precise version_mismatch answer instead.
        raise ProtocolError(ErrorCode.VERSION_MISMATCH, f"message uses protocol v{header['v']!r}; this side "
                            f"speaks v{PROTOCOL_VERSION}", "header.v")
    if validate:
        validate_content(msg_type, content)
        _check_buffer_refs(msg)
    return msg


def _check_buffer_refs(msg: Message) -> None:
    """Every array/blob spec in the content must name an existing frame of the right size.

    A submit's inputs must each name a frame of their own: one frame named by many inputs would be written to
    disk once per name (a few MB sent, hundreds written).
    """
    spec = MESSAGES[msg.type]
    for f in spec.fields:
        value = msg.content.get(f.name)
        if value is None:
            continue
        if f.kind == "array":
            msg.array(value)
        elif f.kind == "blob":
            msg.blob(value)
        elif f.name == "inputs" and isinstance(value, dict):
            if len(value) > MAX_INPUTS:
                raise ProtocolError(ErrorCode.INVALID_FIELD, f"a submit may carry at most {MAX_INPUTS} inputs, "
                                    f"got {len(value)}", "inputs")
            named: dict[int, str] = {}
            for name, blob in value.items():
                check_blob_spec(blob, f"inputs.{name}")
                msg.blob(blob)
                if blob["buffer"] in named:
                    raise ProtocolError(ErrorCode.INVALID_FIELD, f"inputs {named[blob['buffer']]!r} and {name!r} "
                                        f"name the same frame {blob['buffer']}; each input needs its own",
                                        f"inputs.{name}")
                named[blob["buffer"]] = name


def _frame_bytes(frame: Any) -> bytes:
    return frame.bytes if hasattr(frame, "bytes") else bytes(frame)


def _frame_view(frame: Any) -> bytes | memoryview:
    # zmq.Frame (received with copy=False) exposes its memory without a copy.
    if hasattr(frame, "buffer"):
        return frame.buffer
    return frame
