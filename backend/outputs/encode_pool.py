"""Encode frames on worker threads while the GPU renders the next ones, handing results back in order.

A 1920x1080 PNG takes ~200 ms to compress on one core, longer than the GPU takes to render the frame, so
encoding in the job's thread would cap a render at a few frames per second. ``zlib.compress`` releases the
GIL, so threads run in parallel; results come back in submission order (frames are written and streamed
as an image sequence), and at most ``max_pending`` frames wait, which bounds memory and lets a slow disk
or client push back on the renderer.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class OrderedEncodePool(Generic[T]):
    """A thread pool whose results are consumed in submission order.

    Example::

        with OrderedEncodePool(workers=4) as pool:
            for i, frame in enumerate(frames):
                for key, data in pool.submit(i, encode_png, frame):   # finished frames, in order
                    write(key, data)
            for key, data in pool.drain():
                write(key, data)
    """

    def __init__(self, workers: int | None = None, max_pending: int | None = None) -> None:
        self.workers = max(1, workers if workers is not None else min(8, (os.cpu_count() or 2) - 1))
        self.max_pending = max(1, max_pending if max_pending is not None else 2 * self.workers)
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="nerfart-encode")
        self._pending: deque[tuple[Any, Future[T]]] = deque()

    def submit(self, key: Any, fn: Callable[..., T], *args: Any) -> list[tuple[Any, T]]:
        """Queue ``fn(*args)``; returns ``(key, result)`` of the work that is finished, in order, after
        waiting for the oldest while more than ``max_pending`` are queued. Exceptions of ``fn`` surface here."""
        self._pending.append((key, self._pool.submit(fn, *args)))
        ready = []
        while self._pending and (len(self._pending) > self.max_pending or self._pending[0][1].done()):
            key0, fut = self._pending.popleft()
            ready.append((key0, fut.result()))
        return ready

    def drain(self) -> Iterator[tuple[Any, T]]:
        """Everything still queued, in order (waits for each)."""
        while self._pending:
            key0, fut = self._pending.popleft()
            yield key0, fut.result()

    def close(self) -> None:
        """Drop queued work that has not started and wait for running work (results are discarded)."""
        for _, fut in self._pending:
            fut.cancel()
        self._pending.clear()
        self._pool.shutdown(wait=True)

    def __enter__(self) -> OrderedEncodePool[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
