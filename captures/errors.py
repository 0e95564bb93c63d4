"""The one exception a capture reader raises for bad input."""

from __future__ import annotations


class CaptureError(ValueError):
    """A capture cannot be read. The message always names the offending file or folder and what is wrong.

    It subclasses ``ValueError`` so that callers which already treat bad input as ``ValueError`` keep working;
    the server turns it into an ``error`` reply with the message shown to the user verbatim.
    """
