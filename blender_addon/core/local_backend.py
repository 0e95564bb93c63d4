"""Start and stop a backend process on this machine, without ever blocking (no bpy).

The add-on starts ``<python> <args>`` (``args`` is a template; ``{endpoint}`` is replaced) with its output in
a log file, checks on it from the timer, and stops it with terminate-then-kill so that GPU memory is released
("Stop" is the way to free VRAM for Cycles). Nothing here waits on the process.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import time
from pathlib import Path

DEFAULT_ARGS = "-m backend serve --endpoint {endpoint}"
KILL_AFTER_S = 5.0


def build_command(python: str, args_template: str, endpoint: str) -> list[str]:
    """The argument vector, with readable errors for a missing interpreter or a bad template.

    Raises:
        ValueError: naming what to fix in the preferences.
    """
    if not python:
        raise ValueError("set the backend's Python in the add-on preferences (the python of the environment "
                         "where the backend is installed)")
    exe = Path(os.path.expanduser(python))
    if not exe.is_file():
        raise ValueError(f"the backend Python {exe} does not exist; fix it in the add-on preferences")
    try:
        args = shlex.split(args_template.replace("{endpoint}", endpoint), posix=os.name != "nt")
    except ValueError as exc:
        raise ValueError(f"the backend arguments cannot be parsed ({exc}); fix them in the add-on preferences") \
            from None
    return [str(exe), *args]


class LocalBackend:
    """One backend child process."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.log_path: Path | None = None
        self.command: list[str] = []
        self._log = None
        self._stop_requested: float | None = None
        self.exit_message = ""

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def stopping(self) -> bool:
        return self.running and self._stop_requested is not None

    def start(self, command: list[str], cwd: str | Path | None, log_path: Path,
              env: dict[str, str] | None = None) -> None:
        """Launch ``command``; returns at once. Raises ``ValueError`` if it is already running or cannot start."""
        if self.running:
            raise ValueError(f"a local backend is already running (pid {self.proc.pid})")  # type: ignore[union-attr]
        if cwd is not None and not Path(cwd).is_dir():
            raise ValueError(f"the backend working folder {cwd} does not exist; fix it in the add-on preferences")
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._close_log()
        self._log = open(log_path, "ab")  # noqa: SIM115 - kept open for the child's lifetime
        self._log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(command)}\n".encode())
        self._log.flush()
        kwargs = {}
        if os.name == "nt":
            kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP  # type: ignore[attr-defined]
        else:
            kwargs["start_new_session"] = True  # Ctrl-C in Blender's terminal does not kill it mid-step
        try:
            self.proc = subprocess.Popen(command, cwd=cwd, stdout=self._log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env={**os.environ, **(env or {})}, **kwargs)
        except OSError as exc:
            self._close_log()
            raise ValueError(f"cannot start the backend ({exc.strerror or exc}): {shlex.join(command)}") from None
        self.log_path = log_path
        self.command = command
        self._stop_requested = None
        self.exit_message = ""

    def stop(self) -> None:
        """Ask the process to exit (terminate); :meth:`service` kills it if it has not after a grace period."""
        if not self.running:
            return
        self._stop_requested = time.monotonic()
        self.proc.terminate()  # type: ignore[union-attr]

    def stop_now(self, timeout_s: float = 3.0) -> None:
        """Stop and wait (only for unregister / quitting Blender, where waiting is expected)."""
        if self.running:
            self.proc.terminate()  # type: ignore[union-attr]
            try:
                self.proc.wait(timeout_s)  # type: ignore[union-attr]
            except subprocess.TimeoutExpired:
                self.proc.kill()  # type: ignore[union-attr]
                self.proc.wait(timeout_s)  # type: ignore[union-attr]
            self.exit_message = "local backend stopped"
        # Forget the process: a later service() (the add-on enabled again) must not report this exit as a crash.
        self.proc, self._stop_requested = None, None
        self._close_log()

    def service(self) -> str | None:
        """Check on the process (call from the timer). Returns a message once when it has exited."""
        if self.proc is None:
            return None
        code = self.proc.poll()
        if code is None:
            if self._stop_requested is not None and time.monotonic() - self._stop_requested > KILL_AFTER_S:
                self.proc.kill()
            return None
        requested = self._stop_requested is not None
        self.proc = None
        self._stop_requested = None
        self._close_log()
        if requested:
            self.exit_message = "local backend stopped"
        else:
            tail = self.log_tail(8)
            self.exit_message = (f"the local backend exited with code {code}"
                                 + (f"; last output:\n{tail}" if tail else ""))
        return self.exit_message

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of the log (for error boxes)."""
        if self.log_path is None or not self.log_path.is_file():
            return ""
        with open(self.log_path, "rb") as fh:
            fh.seek(0, 2)
            size = fh.tell()
            fh.seek(max(0, size - 16384))
            text = fh.read().decode("utf-8", "replace")
        return "\n".join(text.strip().splitlines()[-lines:])

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

