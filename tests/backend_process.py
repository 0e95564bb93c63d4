"""Real backend processes for the crash, restart and soak tests: start ``python -m backend serve``, kill it.

The server runs in a child process exactly as a user starts it (same command line, own interpreter, one torch
thread), logging to a file rather than a pipe: a pipe nobody reads fills up and would block the server.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from protocol import Client, Message

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
        self.endpoint = f"tcp://127.0.0.1:{free_port()}"
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - open for the life of the process
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "backend", "serve", "--endpoint", self.endpoint, "--work-dir",
             str(self.work_dir), "--device", "cpu", *args], cwd=self.work_dir.parent, env=env, stdout=self._log,
            stderr=subprocess.STDOUT)
        self.hmac_key = hmac_key

    def wait_ready(self, timeout_s: float = 60.0) -> dict[str, Any]:
        """Block until it answers ``hello``; returns its ``hello_reply`` content."""
        with Client(self.endpoint, client_name="pytest-wait-ready", hmac_key=self.hmac_key) as client:
            try:
                return client.handshake(timeout_s=timeout_s)
            except TimeoutError:
                raise AssertionError(f"the backend did not start; its log:\n{self.log()[-3000:]}") from None

    def kill9(self) -> None:
        """``kill -9``: no handler runs, nothing is flushed or finished."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self._log.close()

    def terminate(self, timeout_s: float = 30.0) -> int:
        """SIGTERM (the clean shutdown) and wait; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()
        return int(self.proc.returncode)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def job_dir(work_dir: Path, job_id: str) -> Path:
    return Path(work_dir) / "jobs" / job_id


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str, poll_s: float = 0.02) -> None:
    """Poll ``condition`` until it holds; AssertionError naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(poll_s)


def job_record(work_dir: Path, job_id: str) -> dict[str, Any]:
    """The job's ``job.json`` as the disk holds it."""
    return json.loads((job_dir(work_dir, job_id) / "job.json").read_text())


def submit(client: Client, kind: str, params: dict[str, Any]) -> str:
    return client.request(Message("submit", {"kind": kind, "params": params}), timeout_s=10).content["job_id"]
