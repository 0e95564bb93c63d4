"""How tests wait: for an event, never for a duration, and never assert how long something took.

The suite runs on 2 shared cores beside other work, where anything can take ten times longer than on an idle
machine. So a test waits for what it needs (a message, a file, a state) by polling or blocking on it, and the
only limit on the wait is :data:`HANG_S`, a guard against a hang, not a claim about speed: the wait returns as
soon as the event happens, so a generous guard costs nothing when things work. What a test asserts is counted
in steps or events (the job stopped between two batches; no batch ran after the cancel); latencies are
measured in ``bench/``.
"""

from __future__ import annotations

import time
from collections.abc import Callable

# Longest a test waits for anything before calling it a hang. Under pytest-timeout's 600 s per test, so a hang
# fails with the name of what it waited for rather than a bare timeout.
HANG_S = 300.0


def wait_until(condition: Callable[[], bool], what: str, timeout_s: float = HANG_S, poll_s: float = 0.02) -> None:
    """Poll ``condition`` until it holds; AssertionError naming ``what`` after ``timeout_s`` (a hang guard)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} after {timeout_s:g} s (a hang guard: the wait ends at the event)")
        time.sleep(poll_s)
