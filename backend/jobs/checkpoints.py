"""Finding checkpoints: of a finished job that another job builds on, and a job's own one to resume from."""

from __future__ import annotations

from typing import Any

from backend.jobstore.context import JobContext, JobFailed
from backend.jobstore.record import JobRecord

FRESH_START = "starting again from the beginning"


def load_source_checkpoint(ctx: JobContext, kinds: tuple[str, ...] = ("reconstruct", "stylize")) -> Any:
    """The :class:`~backend.nerf.checkpoint.NeRFCheckpoint` of ``params.source_job``, on the job's device."""
    return load_job_checkpoint(ctx, ctx.source_job(ctx.params["source_job"], kinds))


def load_job_checkpoint(ctx: JobContext, source: JobRecord) -> Any:
    """The checkpoint of the finished job ``source``, on the job's device.

    Raises:
        JobFailed: the job's checkpoint file is missing.
    """
    from backend.nerf.checkpoint import load_checkpoint

    name = source.outputs.get("checkpoint")
    path = ctx.store.job_dir(source.job_id) / "outputs" / str(name)
    if not name or not path.is_file():
        raise JobFailed(f"source job {source.job_id} has no checkpoint file ({path} is missing)")
    return load_checkpoint(path, ctx.device)


def resume_checkpoint(ctx: JobContext, file_name: str, kind: str) -> tuple[Any, str]:
    """A resumed job's own latest checkpoint (``outputs/<file_name>``), and a note for the user if there is none.

    Returns:
        ``(checkpoint, "")`` to continue from: with a ``train_state`` of ``kind`` when training was still under
        way, or without one when training had finished before the interruption (nothing to redo). ``(None,
        note)`` when there is nothing usable; the note says why and that the job starts from the beginning.
    """
    from backend.nerf.checkpoint import load_checkpoint

    path = ctx.outputs_dir / file_name
    if not path.is_file():
        return None, f"no checkpoint had been saved before the interruption: {FRESH_START}"
    try:
        ckpt = load_checkpoint(path, ctx.device)
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        # Never half-written (saves are atomic), but it may come from another backend version.
        return None, f"the checkpoint {file_name} could not be read ({exc}): {FRESH_START}"
    state = ckpt.train_state
    if state is not None and state.get("kind") != kind:
        return None, f"the checkpoint {file_name} holds {state.get('kind')} state, not {kind}: {FRESH_START}"
    return ckpt, ""
