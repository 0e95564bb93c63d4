"""Running a job in this process, for the command line: the same runners, checks and job folders as the server."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from backend.jobstore.execute import execute_job, prepare_resume
from backend.jobstore.record import JobRecord
from backend.jobstore.store import JobStore
from protocol import ErrorCode, Message, ProtocolError, validate_params


def run_job_locally(kind: str, params: dict[str, Any], work_dir: Path, device: str,
                    on_message: Callable[[Message], None], runners: dict[str, Any] | None = None) -> JobRecord:
    """Run one job to a final state and return its record; Ctrl-C cancels it at its next step.

    Args:
        kind, params: as in a ``submit`` message (checked against the protocol schema the same way).
        work_dir: the job folder goes under ``<work_dir>/jobs/<job_id>``.
        device: ``"cuda"`` or ``"cpu"``.
        on_message: receives every ``progress``, ``frame``, ``mesh`` and ``result`` message.
        runners: kind -> runner (default: :func:`backend.jobs.default_runners`).

    Raises:
        ProtocolError: invalid parameters, named the same way the server names them.
    """
    from backend.jobs import default_runners

    validate_params(kind, params)
    runner = (runners if runners is not None else default_runners()).get(kind)
    store = JobStore(work_dir)
    rec = store.create(kind, params, owner="cli")
    _execute_with_sigint(rec, store, runner, on_message, device)
    return rec


def resume_job_locally(job_id: str, work_dir: Path, device: str, on_message: Callable[[Message], None],
                       runners: dict[str, Any] | None = None) -> JobRecord:
    """Resume an interrupted job of ``work_dir`` in this process (from its latest checkpoint) and return its record.

    A job that was running when its process died is found interrupted here (see :class:`JobStore`), whichever
    process ran it: a server or a command-line run.

    Raises:
        ProtocolError: ``unknown_job``, or ``bad_state`` for a job that is not interrupted.
    """
    from backend.jobs import default_runners

    store = JobStore(work_dir)
    rec = store.get(job_id)
    if rec is None:
        raise ProtocolError(ErrorCode.UNKNOWN_JOB, f"no job {job_id!r} in {store.jobs_dir}", "job_id")
    prepare_resume(rec, store)
    runner = (runners if runners is not None else default_runners()).get(rec.kind)
    _execute_with_sigint(rec, store, runner, on_message, device)
    return rec


def _execute_with_sigint(rec: JobRecord, store: JobStore, runner: Any, on_message: Callable[[Message], None],
                         device: str) -> None:
    cancel = threading.Event()
    previous = signal.getsignal(signal.SIGINT)

    def on_sigint(_signum: int, _frame: Any) -> None:
        cancel.set()  # the runner sees it at its next step boundary and the job ends as 'cancelled'

    signal.signal(signal.SIGINT, on_sigint)
    try:
        execute_job(rec, store, runner, on_message, cancel, device)
    finally:
        signal.signal(signal.SIGINT, previous)
