"""Progress bars for the add-on's blocking operators, and a quiet zone for Cycles' own log lines.

In background mode the add-on's operators wait for their job inside the operator and print one line,
``[nerfart] <status>``, each time the job's status changes. Those lines are the only thing that happens while
an operator blocks, so :class:`OperatorProgress` takes ``sys.stdout`` for the duration of one operator and, on
each such line, redraws a :class:`~backend.progress_bar.ProgressBar` from the job's structured state in the
add-on's session (stage, step of total, ETA, PSNR / loss). Other output passes through unchanged.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

from backend.progress_bar import ProgressBar

ADDON_LINE = "[nerfart] "
CAPTURE_LINE = re.compile(r"capture view (\d+)/(\d+)")
# Values worth a place on the bar (the add-on's session holds more: learning rate, sample counts...).
SHOWN_VALUES = ("psnr", "heldout_psnr", "mse", "total")


class OperatorProgress(io.TextIOBase):
    """Context manager: ``sys.stdout`` while one add-on operator blocks.

    Args:
        session: the add-on's :class:`~nerfart_blender.core.jobs.Session` (``connection.session``).
        stream: where the bar goes (the real stderr by default).
    """

    def __init__(self, session: Any = None, stream: TextIO | None = None) -> None:
        super().__init__()
        self.session = session
        self.bar = ProgressBar(stream=stream or sys.stderr)
        self._stdout: TextIO | None = None
        self._buffer = ""
        self._shown: tuple = ()
        # The last non-empty losses of each job: a job's final progress message may carry none.
        self.last_losses: dict[str, dict[str, float]] = {}

    def __enter__(self) -> OperatorProgress:
        self._stdout = sys.stdout
        sys.stdout = self  # type: ignore[assignment]
        return self

    def __exit__(self, *exc: object) -> None:
        self.flush()
        if self._buffer:
            self._line(self._buffer)
            self._buffer = ""
        sys.stdout = self._stdout  # type: ignore[assignment]
        self.bar.close()

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self._buffer += text
        while "\n" in self._buffer:
            line, self._buffer = self._buffer.split("\n", 1)
            self._line(line)
        return len(text)

    def _line(self, line: str) -> None:
        if not line.startswith(ADDON_LINE):
            assert self._stdout is not None
            self._stdout.write(line + "\n")
            return
        m = CAPTURE_LINE.search(line)
        if m is not None:  # the scene capture has no job: it reports views rendered
            self._show("capturing", int(m.group(1)), int(m.group(2)))
            return
        job = self._latest_job()
        if job is None or job.state in ("submitting", "queued"):
            return
        if job.losses:
            self.last_losses[job.job_id or ""] = dict(job.losses)
        if job.kind == "render" and job.frames_expected:
            step, total = job.frames_received, job.frames_expected
        else:
            step, total = job.step, job.total
        values = {k: v for k, v in {**job.losses, **job.metrics}.items() if k in SHOWN_VALUES}
        self._show(job.stage or job.state, step, total, job.eta_s, values)

    def _show(self, stage: str, step: int, total: int, eta_s: float | None = None,
              values: dict[str, float] | None = None) -> None:
        # The add-on prints a line per status change, and a finished stage is reported more than once.
        key = (stage, step, total, eta_s, tuple(sorted((values or {}).items())))
        if key != self._shown:
            self._shown = key
            self.bar.update(stage, step, total, eta_s, values)

    def _latest_job(self) -> Any:
        if self.session is None:
            return None
        jobs = [*self.session.pending.values(), *self.session.jobs.values()]
        return max(jobs, key=lambda j: j.updated) if jobs else None


@contextlib.contextmanager
def quiet_fds(log_path: Path) -> Iterator[Callable[[], TextIO]]:
    """Send whatever C code writes to stdout and stderr (Cycles' "Saved: ..." lines) to ``log_path``.

    Yields a function returning a text stream on the *original* stderr, for a progress bar that must stay
    visible while the file descriptors point at the log.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    terminal = os.fdopen(os.dup(saved[1]), "w", buffering=1, closefd=True)
    with open(log_path, "ab") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield lambda: terminal
        finally:
            with contextlib.suppress(ValueError, OSError):
                sys.stdout.flush()
                sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            terminal.close()
