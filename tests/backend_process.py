"""Real backend processes for the crash, restart and soak tests: start ``python -m backend serve``, kill it.

The server runs in a child process exactly as a user starts it (same command line, own interpreter, one torch
thread), logging to a file rather than a pipe: a pipe nobody reads fills up and would block the server.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from waits import HANG_S, wait_until

from protocol import Client, Message

LISTENING = re.compile(r"NeRF-Art backend \S+ listening on (tcp://\S+)")

ROOT = Path(__file__).resolve().parents[1]


def listening_endpoint(log_path: Path, offset: int, proc: subprocess.Popen) -> str:
    """The endpoint that a ``serve --endpoint tcp://HOST:*`` process bound, read from its log past byte
    ``offset``.

    The process binds port 0 itself and says which port it got. Picking a free port here and passing it on
    races: between this process closing its probe socket and the backend binding, any other socket on the
    machine (an outgoing connection of the add-on lane running beside this one) may take that port.
    """
    found: list[str] = []

    def listening() -> bool:
        with open(log_path, "rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
        assert proc.poll() is None, f"the backend exited with {proc.returncode}:\n{text[-3000:]}"
        found.extend(m.group(1) for m in LISTENING.finditer(text))
        return bool(found)

    wait_until(listening, "'listening on' in the backend's log", poll_s=0.05)
    return found[0]


class BackendProcess:
    """``python -m backend serve`` on a free loopback port, on ``work_dir``, on the CPU.

    Args:
        args: more ``serve`` options, e.g. ``("--hmac-key-file", path)``.
        hmac_key: the key in that file, for :meth:`wait_ready`.

    Attributes:
        endpoint: where it listens.
        proc: the child process.
        log_path: its combined stdout and stderr.
    """

    def __init__(self, work_dir: Path, log_path: Path, args: tuple[str, ...] = (), hmac_key: bytes | None = None
                 ) -> None:
        self.work_dir = Path(work_dir)
        self.log_path = Path(log_path)
        self._endpoint: str | None = None
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - open for the life of the process
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "backend", "serve", "--endpoint", "tcp://127.0.0.1:*", "--work-dir",
             str(self.work_dir), "--device", "cpu", *args], cwd=self.work_dir.parent, env=env, stdout=self._log,
            stderr=subprocess.STDOUT)
        self.hmac_key = hmac_key

    @property
    def endpoint(self) -> str:
        """Where it listens (waits until it does: the port is the one the OS gave it)."""
        if self._endpoint is None:
            self._endpoint = listening_endpoint(self.log_path, self._log_offset, self.proc)
        return self._endpoint

    def wait_ready(self, timeout_s: float = HANG_S) -> dict[str, Any]:
        """Block until it answers ``hello``; returns its ``hello_reply`` content."""
        with Client(self.endpoint, client_name="pytest-wait-ready", hmac_key=self.hmac_key) as client:
            try:
                return client.handshake(timeout_s=timeout_s)
            except TimeoutError:
                raise AssertionError(f"the backend did not start; its log:\n{self.log()[-3000:]}") from None

    def kill9(self) -> None:
        """``kill -9``: no handler runs, nothing is flushed or finished."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(HANG_S)
        self._log.close()

    def terminate(self, timeout_s: float = HANG_S) -> int:
        """SIGTERM (the clean shutdown) and wait; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(HANG_S)
        self._log.close()
        return int(self.proc.returncode)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def job_dir(work_dir: Path, job_id: str) -> Path:
    return Path(work_dir) / "jobs" / job_id


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str, poll_s: float = 0.02) -> None:
    """Poll ``condition`` until it holds; AssertionError naming ``what`` after ``timeout_s`` or :data:`HANG_S`,
    whichever is longer (a hang guard: see tests/waits.py)."""
    wait_until(condition, what, max(timeout_s, HANG_S), poll_s)


def job_record(work_dir: Path, job_id: str) -> dict[str, Any]:
    """The job's ``job.json`` as the disk holds it."""
    return json.loads((job_dir(work_dir, job_id) / "job.json").read_text())


def submit(client: Client, kind: str, params: dict[str, Any]) -> str:
    return client.request(Message("submit", {"kind": kind, "params": params}), timeout_s=HANG_S).content["job_id"]
