"""Writing files so that a crash never leaves half of one under its final name."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: Path, durable: bool = False) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; renamed over ``path`` when the block succeeds.

    Readers (and a process started after a crash) see the old file or the complete new one, never part of
    one: a rename within a folder is atomic. ``durable`` also fsyncs the file before the rename, so that a
    power cut cannot leave an empty file under the final name (worth it for small, precious files such as
    ``job.json``; frames skip it, a crash of the machine costs at most a re-render of the last few).
    The temporary file is removed when the block raises.
    """
    path = Path(path)
    # Unique per writer: two threads writing the same file never share a temporary.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        yield tmp
        if durable:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def atomic_write_bytes(path: Path, data: bytes | memoryview | str, durable: bool = False) -> None:
    """Write ``data`` (text is UTF-8 encoded) to ``path`` atomically; see :func:`atomic_path`."""
    with atomic_path(path, durable) as tmp:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)

