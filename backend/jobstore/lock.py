"""The advisory lock a process holds on a job's folder while it runs the job."""

from __future__ import annotations

from pathlib import Path
from typing import IO

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; a running job found at start-up is then always interrupted
    fcntl = None  # type: ignore[assignment]

RUNNING_LOCK = "running.lock"


class JobLock:
    """An advisory lock on ``<job dir>/running.lock``, held by the process that runs the job.

    The operating system drops it when that process dies, however it dies, so a later process can tell a job
    whose runner is gone from one that another live process (a command-line run beside the server) is running.
    """

    def __init__(self, job_dir: Path) -> None:
        self.path = Path(job_dir) / RUNNING_LOCK
        self._file: IO[bytes] | None = None

    def acquire(self) -> bool:
        """Take the lock without waiting; False if another process (or another JobLock) holds it."""
        if fcntl is None:
            return True
        f = open(self.path, "ab")  # noqa: SIM115 - held open for as long as the lock
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            return False
        self._file = f
        return True

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing drops the lock
            self._file = None

