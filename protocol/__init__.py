"""NeRF-Art for Blender wire protocol (see PROTOCOL_VERSION): message schema, ZeroMQ framing and the client.

Shared by the backend and the Blender add-on (which ships a copy inside its zip), so it uses relative
imports only and depends on nothing but the standard library, numpy and pyzmq. ``SPEC.md`` documents it.
"""

from .client import DEFAULT_ENDPOINT, BackendError, Client
from .errors import ErrorCode, ProtocolError
from .framing import (
    DEFAULT_LIMITS,
    DELIMITER,
    Limits,
    Message,
    Signer,
    decode,
    encode,
    make_reply,
    split_identities,
)
from .schema import (
    CAMERA,
    FINAL_STATES,
    JOB_KINDS,
    JOB_PARAMS,
    JOB_STATES,
    MESSAGES,
    PROTOCOL_VERSION,
    schema_markdown,
    validate_content,
    validate_params,
)

__all__ = [
    "CAMERA",
    "DEFAULT_ENDPOINT",
    "DEFAULT_LIMITS",
    "DELIMITER",
    "FINAL_STATES",
    "JOB_KINDS",
    "JOB_PARAMS",
    "JOB_STATES",
    "MESSAGES",
    "PROTOCOL_VERSION",
    "BackendError",
    "Client",
    "ErrorCode",
    "Limits",
    "Message",
    "ProtocolError",
    "Signer",
    "decode",
    "encode",
    "make_reply",
    "schema_markdown",
    "split_identities",
    "validate_content",
    "validate_params",
]
