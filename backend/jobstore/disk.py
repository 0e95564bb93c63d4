"""The work dir's disk: a quota on what the backend keeps there, space left free for the system, and errors
that say what to free when either runs out.

Everything the backend writes (uploads, extracted captures, checkpoints, frames, meshes, job records) goes
under the work dir, so one :class:`DiskBudget` guards it all:

* the *quota* bounds the work dir's total size (None: no quota);
* ``min_free_bytes`` is kept free on its disk, so that a full work dir never takes the rest of the machine
  (nor the backend's own job records) with it.

``room()`` is what may still be written. Callers check before they write (:meth:`DiskBudget.check`), and what
they wrote is charged at once, so that two uploads in a row cannot both squeeze into the same room. The work
dir's size is measured by walking it, at most every :data:`RESCAN_S` seconds (only when there is a quota).
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from protocol import ErrorCode, ProtocolError

log = logging.getLogger("nerfart.disk")

DEFAULT_MIN_FREE_BYTES = 256 * 2**20
RESCAN_S = 5.0
LARGEST_SHOWN = 3  # job folders named in a disk_full message, largest first


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` is the operating system saying the disk (or the user's disk quota) is full."""
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def format_bytes(n: float) -> str:
    """``1.5 GiB``, ``12.0 MiB``, ``300 bytes``."""
    if abs(n) < 1024:
        return f"{int(n)} bytes"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        n /= 1024
        if abs(n) < 1024 or unit == "TiB":
            break
    return f"{n:.1f} {unit}"


def parse_size(text: str) -> int:
    """``"200G"``, ``"512M"``, ``"1.5T"`` or a plain number of bytes, as bytes.

    Raises:
        ValueError: not a size.
    """
    units = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    raw = text.strip().upper().removesuffix("IB").removesuffix("B")
    number, unit = (raw[:-1], raw[-1]) if raw[-1:] in units else (raw, "")
    try:
        value = float(number) * units[unit]
    except ValueError:
        raise ValueError(f"{text!r} is not a size; write e.g. 200G, 512M or a number of bytes") from None
    if not value >= 0:
        raise ValueError(f"a size must be positive, got {text!r}")
    return int(value)


class DiskBudget:
    """The room left for the backend's files under ``work_dir``.

    Args:
        work_dir: the backend's work dir.
        quota_bytes: the most the work dir may hold, or None for no quota.
        min_free_bytes: free space always left on the work dir's disk.
        free_bytes_fn: the disk's free bytes (for tests; default: ``shutil.disk_usage``).
        rescan_s: how long a measurement of the work dir's size is reused.
    """

    def __init__(self, work_dir: Path, quota_bytes: int | None = None,
                 min_free_bytes: int = DEFAULT_MIN_FREE_BYTES,
                 free_bytes_fn: Callable[[], int] | None = None, rescan_s: float = RESCAN_S) -> None:
        self.work_dir = Path(work_dir)
        self.quota_bytes = quota_bytes
        self.min_free_bytes = min_free_bytes
        self._free_bytes_fn = free_bytes_fn or (lambda: shutil.disk_usage(self.work_dir).free)
        self._lock = threading.Lock()
        self._used = 0
        self._by_job: dict[str, int] = {}
        self._rescan_s = rescan_s
        self._scanned = -float("inf")

    def free_bytes(self) -> int:
        try:
            return int(self._free_bytes_fn())
        except OSError:
            return 0

    def used_bytes(self) -> int:
        """The work dir's size (walked at most every ``rescan_s``, plus what was charged since)."""
        with self._lock:
            if time.monotonic() - self._scanned >= self._rescan_s:
                self._used, self._by_job = _scan(self.work_dir)
                self._scanned = time.monotonic()
            return self._used

    def charge(self, n_bytes: int) -> None:
        """Count ``n_bytes`` just written (until the next walk measures them)."""
        with self._lock:
            self._used += int(n_bytes)

    def room(self) -> int:
        """Bytes that may still be written: within the quota and leaving ``min_free_bytes`` free."""
        room = self.free_bytes() - self.min_free_bytes
        if self.quota_bytes is not None:
            room = min(room, self.quota_bytes - self.used_bytes())
        return max(0, room)

    def check(self, n_bytes: int, what: str) -> None:
        """Refuse to write ``n_bytes`` for ``what`` unless they fit (and some room is left at all).

        Raises:
            ProtocolError: ``disk_full``, saying how much to free and where.
        """
        room = self.room()
        if room <= 0 or n_bytes > room:
            raise ProtocolError(ErrorCode.DISK_FULL, self.shortage(what, n_bytes))

    def shortage(self, what: str, n_bytes: int = 0) -> str:
        """A sentence for the user: what does not fit, why, and what to delete."""
        free = self.free_bytes()
        reasons = []
        if self.quota_bytes is not None:
            reasons.append(f"the work dir {self.work_dir} holds {format_bytes(self.used_bytes())} of its quota "
                           f"of {format_bytes(self.quota_bytes)}")
        reasons.append(f"its disk has {format_bytes(free)} free and the backend keeps "
                       f"{format_bytes(self.min_free_bytes)} free for the system")
        need = f" ({format_bytes(n_bytes)})" if n_bytes else ""
        return (f"no room on the backend's disk for {what}{need}: {'; '.join(reasons)}. Free space by deleting "
                f"folders of finished jobs you no longer need under {self.work_dir / 'jobs'}{self._largest()}"
                + (", or start the backend with a larger --work-dir-quota" if self.quota_bytes is not None else ""))

    def _largest(self) -> str:
        self.used_bytes()
        with self._lock:
            largest = sorted(self._by_job.items(), key=lambda kv: -kv[1])[:LARGEST_SHOWN]
        if not largest:
            return ""
        return " (largest: " + ", ".join(f"{job} {format_bytes(size)}" for job, size in largest) + ")"

    def limits(self) -> dict[str, Any]:
        """The ``hello_reply.limits`` entries about the disk."""
        # The work dir is walked to measure it only when a quota needs the figure (a walk of a large one is slow).
        used = self.used_bytes() if self.quota_bytes is not None else None
        return {"work_dir_quota_bytes": self.quota_bytes, "work_dir_used_bytes": used,
                "disk_free_bytes": self.free_bytes(), "min_free_bytes": self.min_free_bytes,
                "writable": self.room() > 0}


def _scan(work_dir: Path) -> tuple[int, dict[str, int]]:
    """Total bytes of the files under ``work_dir``, and per job folder (``jobs/<job id>``)."""
    total = 0
    by_job: dict[str, int] = {}
    jobs_dir = work_dir / "jobs"
    for root, _dirs, files in os.walk(work_dir):
        size = 0
        for name in files:
            try:
                size += os.lstat(os.path.join(root, name)).st_size
            except OSError:  # removed while walking
                continue
        total += size
        rel = Path(root).relative_to(jobs_dir).parts if Path(root).is_relative_to(jobs_dir) else ()
        if rel:
            by_job[rel[0]] = by_job.get(rel[0], 0) + size
    return total, by_job
