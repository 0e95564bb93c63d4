"""One runner per job kind: ``run(ctx: JobContext) -> outputs``.

:func:`default_runners` is what ``python -m backend serve`` registers. A kind appears here once its runner
exists; submitting any other kind is answered with an ``unknown_kind`` error naming the kinds that run.
"""

from __future__ import annotations

from backend.jobstore.context import RunnerFn

# Advertised in hello_reply for the add-on's model menu. The stylize job takes any open_clip model name;
# these are the ones the method has been run with (ViT-B-32 is the paper's and the default).
CLIP_MODELS = ("ViT-B-32", "ViT-B-16", "ViT-L-14")


def default_runners() -> dict[str, RunnerFn]:
    """Job kind -> runner, for every kind this backend version implements."""
    from .extract_mesh import run_extract_mesh
    from .reconstruct import run_reconstruct
    from .render import run_render
    from .stylize import run_stylize

    return {"reconstruct": run_reconstruct, "stylize": run_stylize, "render": run_render,
            "extract_mesh": run_extract_mesh}
