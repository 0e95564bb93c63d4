"""The job channel: one Ray actor, beside the server, that carries job messages and cancel requests.

A Ray task cannot call back into the process that submitted it, so each running job talks to the server
through this actor: the task ``put``s its messages (progress with previews, frames, meshes; encoded protocol
frames, unsigned: the cluster is authenticated by its token) and the server ``take``s them, in order, many
times a second, and forwards them to the job's client. The other way, the server ``request``s a cancel (or an
interrupt, when it stops) and the task polls ``requested`` between steps.

Ray runs an actor's methods one at a time, in the order each caller sent them, so a task's messages arrive in
the order it sent them and a ``take`` never sees half of a ``put``.

Each attempt of a job (Ray runs a task again when its worker or node dies) calls :meth:`JobChannel.begin`
first and gets its attempt number: the task knows it continues a lost attempt, and the messages of an older
attempt that still lives on (a worker cut off from the cluster) are dropped.

This module does not import Ray: :func:`backend.scaleout.executor.channel_actor` makes the class an actor.
"""

from __future__ import annotations

from collections import deque

MAX_BUFFERED_BYTES = 256 * 2**20  # messages the server has not taken yet; beyond, the oldest are dropped


class JobChannel:
    """Messages from running jobs to the server, and cancel requests from the server to the jobs."""

    def __init__(self, max_buffered_bytes: int = MAX_BUFFERED_BYTES) -> None:
        self._messages: deque[tuple[str, list[bytes]]] = deque()
        self._bytes = 0
        self._max_bytes = max_buffered_bytes
        self._attempts: dict[str, int] = {}
        self._requests: dict[str, str] = {}
        self.dropped = 0

    def begin(self, job_id: str) -> int:
        """A task starts (or starts again) on ``job_id``; returns its attempt number, 1 for the first."""
        self._attempts[job_id] = self._attempts.get(job_id, 0) + 1
        return self._attempts[job_id]

    def put(self, job_id: str, attempt: int, frames: list[bytes]) -> None:
        """One encoded message of attempt ``attempt`` of ``job_id``; dropped unless that is its latest attempt.

        A job this channel has no attempt of (it was restarted after the job began) takes ``attempt`` as its
        latest: the server ignores messages of jobs it no longer runs."""
        latest = self._attempts.setdefault(job_id, attempt)
        if latest != attempt:
            self.dropped += 1
            return
        self._messages.append((job_id, frames))
        self._bytes += sum(len(f) for f in frames)
        while self._bytes > self._max_bytes and len(self._messages) > 1:
            # The server stopped taking (it is stopping, or stuck): every frame and mesh is on disk, and
            # 'attach' sends the result again; what is dropped is a live view only.
            _, old = self._messages.popleft()
            self._bytes -= sum(len(f) for f in old)
            self.dropped += 1

    def take(self, max_messages: int = 500) -> list[tuple[str, list[bytes]]]:
        """The oldest messages not taken yet (job id, frames), at most ``max_messages``."""
        batch = []
        while self._messages and len(batch) < max_messages:
            job_id, frames = self._messages.popleft()
            self._bytes -= sum(len(f) for f in frames)
            batch.append((job_id, frames))
        return batch

    def request(self, job_id: str, what: str) -> None:
        """Ask the task of ``job_id`` to stop: ``"cancel"`` (the user) or ``"interrupt"`` (the server stops,
        the job ends resumable). A cancel is never turned into an interrupt."""
        if self._requests.get(job_id) != "cancel":
            self._requests[job_id] = what

    def requested(self, job_id: str) -> str | None:
        """What the server asked of ``job_id``'s task, if anything."""
        return self._requests.get(job_id)

    def forget(self, job_id: str) -> None:
        """The server has the job's outcome: a later ``resume`` starts over at attempt 1, with no request."""
        self._attempts.pop(job_id, None)
        self._requests.pop(job_id, None)

    def stats(self) -> dict[str, int]:
        return {"buffered": len(self._messages), "buffered_bytes": self._bytes, "dropped": self.dropped}
