"""A text progress bar for the command line, fed with the same progress the server streams to clients."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class ProgressBar:
    """One line per stage: redrawn in place on a terminal, printed every few seconds otherwise (logs, CI).

    Args:
        stream: where to write (stderr by default, so stdout stays clean for results).
        width: bar width in characters.
        log_interval_s: how often a non-terminal stream gets a line.
    """

    def __init__(self, stream: TextIO | None = None, width: int = 30, log_interval_s: float = 5.0) -> None:
        self.stream = stream or sys.stderr
        self.width = width
        self.log_interval_s = log_interval_s
        self._tty = self.stream.isatty()
        self._stage = ""
        self._last = 0.0

    def update(self, stage: str, step: int, total: int, eta_s: float | None = None,
               values: dict[str, float] | None = None) -> None:
        """Show ``step`` of ``total`` in ``stage`` with an ETA and named values (losses, PSNR)."""
        now = time.monotonic()
        new_stage = stage != self._stage
        done = total > 0 and step >= total
        if not (self._tty or new_stage or done or now - self._last >= self.log_interval_s):
            return
        if new_stage and self._stage and self._tty:
            self.stream.write("\n")
        self._stage, self._last = stage, now
        frac = min(1.0, step / total) if total > 0 else 0.0
        filled = round(frac * self.width)
        bar = "#" * filled + "-" * (self.width - filled)
        eta = f" ETA {format_seconds(eta_s)}" if eta_s is not None and not done else ""
        extra = "".join(f" {k} {v:.4g}" for k, v in (values or {}).items())
        line = f"{stage:<12} [{bar}] {step}/{total}{eta}{extra}"
        if self._tty:
            self.stream.write("\r" + line[:160].ljust(100))
            if done:
                self.stream.write("\n")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self._tty and self._stage:
            self.stream.write("\n")
            self.stream.flush()


def format_seconds(seconds: float) -> str:
    """``75`` -> ``1:15``; ``3725`` -> ``1:02:05``."""
    s = max(0, round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"
