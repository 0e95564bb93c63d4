"""Worker processes on the broker's own machine: ``serve --workers N`` starts them, restarts them, stops them.

Each is ``python -m backend worker --connect <broker> --device <device> --parent-pid <broker pid>``, with this
process's environment (its logs go to the same stderr as the broker's). A worker that exits is started again:
at once if it had run for a while, else after a delay that doubles up to :data:`RESTART_MAX_S` (a worker that
cannot start, e.g. on a GPU that is gone, must not spin). The broker kills a worker it declared dead
(:meth:`LocalWorkers.kill`), so that a hung process can never wake up and write the folder of a job that has
moved on.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import backend

log = logging.getLogger("nerfart.cluster")

RESTART_MIN_S = 1.0
RESTART_MAX_S = 32.0
STABLE_S = 30.0  # a worker that ran this long before it exited is restarted at once
PACKAGE_ROOT = Path(backend.__file__).resolve().parents[1]  # where 'python -m backend' finds the package


def devices_for(count: int, device: str, devices: Sequence[str] = ()) -> list[str]:
    """The device of each of ``count`` local workers: ``devices`` in turn (a GPU may be named twice), else one
    GPU each (``cuda:0``, ``cuda:1``, ... as many as there are, then again) for ``device`` ``cuda``, else
    ``device`` for all.

    Raises:
        ValueError: an empty name in ``devices``, or CUDA asked for where torch sees no GPU.
    """
    if devices:
        if any(not d.strip() for d in devices):
            raise ValueError(f"--devices {','.join(devices)!r} holds an empty name; write e.g. cuda:0,cuda:1")
        return [devices[i % len(devices)].strip() for i in range(count)]
    if device == "cuda":
        import torch

        n_gpus = torch.cuda.device_count()
        if n_gpus == 0:
            raise ValueError("--device cuda was asked for, but torch sees no CUDA GPU here")
        return [f"cuda:{i % n_gpus}" for i in range(count)]
    return [device] * count


def local_endpoint(bound: str) -> str:
    """The address a process on this machine connects to for ``bound`` (``tcp://0.0.0.0:5556`` -> loopback)."""
    scheme, _, rest = bound.partition("://")
    host, _, port = rest.rpartition(":")
    if scheme == "tcp" and host.strip("[]") in ("0.0.0.0", "*", "::", ""):
        return f"tcp://127.0.0.1:{port}"
    return bound


@dataclass
class _Slot:
    """One local worker: its device, its current process, and when to start it again once it exited."""

    device: str
    proc: subprocess.Popen | None = None
    started: float = 0.0
    restart_at: float | None = None
    delay_s: float = 0.0
    pids: list[int] = field(default_factory=list)


class LocalWorkers:
    """Worker processes on this machine, one per device entry.

    Args:
        devices: one device per worker (see :func:`devices_for`).
        work_dir: the broker's work dir (the workers' too).
        extra_args: more ``worker`` options (disk limits, ``-v``).
        extra_env: more environment variables (the CURVE keys of local workers).
    """

    def __init__(self, devices: Sequence[str], work_dir: Path, extra_args: Sequence[str] = (),
                 extra_env: dict[str, str] | None = None) -> None:
        self.slots = [_Slot(d) for d in devices]
        self.work_dir = Path(work_dir)
        self.extra_args = list(extra_args)
        self.extra_env = dict(extra_env or {})
        self.endpoint = ""
        self.stopping = False

    def start(self, bound_endpoint: str) -> None:
        """Start every worker, connecting to the broker bound at ``bound_endpoint``."""
        self.endpoint = local_endpoint(bound_endpoint)
        for slot in self.slots:
            self._spawn(slot)

    def _spawn(self, slot: _Slot) -> None:
        env = {**os.environ, **self.extra_env}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PACKAGE_ROOT), env.get("PYTHONPATH", "")) if p)
        command = [sys.executable, "-m", "backend", "worker", "--connect", self.endpoint, "--work-dir",
                   str(self.work_dir), "--device", slot.device, "--parent-pid", str(os.getpid()), *self.extra_args]
        slot.proc = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL)
        slot.started, slot.restart_at = time.monotonic(), None
        slot.pids.append(slot.proc.pid)
        log.info("started local worker %d on %s", slot.proc.pid, slot.device)

    def pids(self) -> list[int]:
        """Process ids of the workers running now."""
        return [s.proc.pid for s in self.slots if s.proc is not None and s.proc.poll() is None]

    def owns(self, pid: int) -> bool:
        """Whether ``pid`` is (or was) one of these workers."""
        return any(pid in s.pids for s in self.slots)

    def reap(self) -> list[int]:
        """Collect workers that exited (returns their pids) and start again those whose delay has passed."""
        exited = []
        now = time.monotonic()
        for slot in self.slots:
            if slot.proc is not None and slot.proc.poll() is not None:
                code, pid = slot.proc.returncode, slot.proc.pid
                exited.append(pid)
                slot.proc = None
                lived = now - slot.started
                slot.delay_s = 0.0 if lived >= STABLE_S else min(RESTART_MAX_S, max(RESTART_MIN_S, 2 * slot.delay_s))
                slot.restart_at = now + slot.delay_s
                if not self.stopping:
                    log.warning("local worker %d on %s exited (%s) after %.0f s; starting another %s", pid,
                                slot.device, _exit_text(code), lived,
                                f"in {slot.delay_s:.0f} s" if slot.delay_s else "now")
            if (slot.proc is None and slot.restart_at is not None and now >= slot.restart_at
                    and not self.stopping):
                self._spawn(slot)
        return exited

    def kill(self, pid: int) -> None:
        """SIGKILL worker ``pid`` if it is one of these (a stopped process dies too, and frees its job's lock)."""
        for slot in self.slots:
            if slot.proc is not None and slot.proc.pid == pid and slot.proc.poll() is None:
                log.warning("killing local worker %d", pid)
                slot.proc.kill()

    def terminate(self) -> None:
        """SIGTERM every worker (each interrupts its job at the next step, reports it and exits); none restarts."""
        self.stopping = True
        for slot in self.slots:
            if slot.proc is not None and slot.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    slot.proc.send_signal(signal.SIGTERM)

    def any_alive(self) -> bool:
        return bool(self.pids())

    def kill_all(self) -> None:
        """SIGKILL the workers still running and wait for them (the end of a stop that took too long)."""
        self.stopping = True
        for slot in self.slots:
            if slot.proc is not None:
                if slot.proc.poll() is None:
                    log.warning("local worker %d did not stop in time; killing it", slot.proc.pid)
                    slot.proc.kill()
                slot.proc.wait(10)


def _exit_text(code: int | None) -> str:
    if code is not None and code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
    return f"exit status {code}"
