"""Finding the checkpoint of a finished job that another job builds on."""

from __future__ import annotations

from typing import Any

from backend.server.jobs import JobContext, JobFailed


def load_source_checkpoint(ctx: JobContext, kinds: tuple[str, ...] = ("reconstruct", "stylize")) -> Any:
    """The :class:`~backend.nerf.checkpoint.NeRFCheckpoint` of ``params.source_job``, on the job's device."""
    from backend.nerf.checkpoint import load_checkpoint

    source = ctx.source_job(ctx.params["source_job"], kinds)
    name = source.outputs.get("checkpoint")
    path = ctx.store.job_dir(source.job_id) / "outputs" / str(name)
    if not name or not path.is_file():
        raise JobFailed(f"source job {source.job_id} has no checkpoint file ({path} is missing)")
    return load_checkpoint(path, ctx.device)
