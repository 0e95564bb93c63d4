"""Typed protocol errors. Every malformed input becomes one of these, never an unhandled exception."""

from __future__ import annotations


class ErrorCode:
    """Error codes carried in ``error`` messages. Stable strings: clients switch on them."""

    MALFORMED = "malformed"  # frames that do not decode (bad JSON, wrong frame count, bad signature)
    INVALID_FIELD = "invalid_field"  # a field is missing, of the wrong type, or out of range
    UNKNOWN_TYPE = "unknown_type"  # a message type this protocol version does not know
    VERSION_MISMATCH = "version_mismatch"  # hello with another major protocol version
    TOO_LARGE = "too_large"  # a message, frame or array over the configured limit
    UNAUTHORIZED = "unauthorized"  # bad or missing signature, or a job owned by someone else
    UNKNOWN_JOB = "unknown_job"  # a job id the server does not know
    UNKNOWN_KIND = "unknown_kind"  # a job kind this backend does not run
    JOB_FAILED = "job_failed"  # the job itself raised (bad capture, missing weights, ...)
    OUT_OF_MEMORY = "out_of_memory"  # the GPU ran out of memory; retry with smaller settings
    QUEUE_FULL = "queue_full"  # too many queued jobs for this client
    BAD_STATE = "bad_state"  # e.g. cancel of a job that already finished
    DISK_FULL = "disk_full"  # the work dir's quota or its disk is full; the message says what to free
    CORRUPT_RECORD = "corrupt_record"  # a job's record on the backend's disk cannot be read
    INTERNAL = "internal"  # a bug in the backend; the message says what happened


MAX_ERROR_TEXT = 2000  # characters of an error message or field path that travel (the rest is cut)


def clip_text(text: str, limit: int = MAX_ERROR_TEXT) -> str:
    """``text`` made safe to send: characters UTF-8 cannot encode (lone surrogates) replaced, cut to ``limit``.

    Error messages quote what they refuse (a path, a parameter name), and what is refused may be huge or not
    valid Unicode; an error reply must never fail to encode because of it.
    """
    safe = text.encode("utf-8", "replace").decode("utf-8") if not text.isascii() else text
    return safe if len(safe) <= limit else safe[:limit - 1] + "\u2026"


class ProtocolError(Exception):
    """A message that cannot be accepted, with the code and the field at fault.

    Attributes:
        code: one of :class:`ErrorCode`'s strings.
        message: a sentence for a person ("field 'params.steps' must be an integer, got 'abc'").
        field: dotted path of the offending field, or None.
    """

    def __init__(self, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field

    def to_content(self) -> dict:
        """The ``error`` message content for this error."""
        return error_content(self.code, self.message, self.field)


def error_content(code: str, message: str, field: str | None = None) -> dict:
    """An ``error`` message's content; what the message and field quote is cut to size and made encodable."""
    return {"code": code, "message": clip_text(message), "field": None if field is None else clip_text(field, 200)}
