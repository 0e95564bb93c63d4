"""A job's numbers in words, for the panels: PSNR and losses while it runs and when it is done, and the
warning an artist must not miss (a stylization that the prompt did not drive).

Reads what the backend sends (``progress.losses`` / ``progress.metrics``, ``result.outputs``: see
``backend/jobs/*.py``); :class:`.jobs.JobState` keeps the latest of each.
"""

from __future__ import annotations

from .advice import mesh_warning
from .jobs import JobState

NOT_PROMPT_DRIVEN = ("NOT prompt-driven: random CLIP weights were asked for (CLIP Weights 'random', a test "
                     "mode); the result does not follow the prompt")


def _number(*values) -> float | None:
    for v in values:
        if isinstance(v, int | float) and not isinstance(v, bool) and v == v:  # v == v: not NaN
            return float(v)
    return None


def result_text(job: JobState) -> str:
    """One line of the job's quality numbers (empty when there are none yet), e.g.
    ``PSNR 28.41 dB, held-out 26.10 dB`` or ``style loss 0.512 (image 0.401, directional 0.111)``."""
    out, m, losses = job.outputs, job.metrics, job.losses
    parts: list[str] = []
    if job.kind == "reconstruct":
        psnr = _number(out.get("train_psnr"), m.get("psnr"), m.get("train_psnr"))
        heldout = _number(out.get("heldout_psnr"), m.get("heldout_psnr"))
        if psnr is not None:
            parts.append(f"PSNR {psnr:.2f} dB")
        if heldout is not None:
            parts.append(f"held-out {heldout:.2f} dB")
        loss = _number(losses.get("mse"))
        if loss is not None and job.active:
            parts.append(f"loss {loss:.4g}")
    elif job.kind == "stylize":
        final = {k[len("loss_"):]: v for k, v in out.items() if k.startswith("loss_")}
        values = {k: v for k, v in (final or losses).items() if _number(v) is not None}
        total = values.pop("total", None)
        if total is not None:
            detail = ", ".join(f"{k} {float(v):.3g}" for k, v in sorted(values.items()))
            parts.append(f"style loss {float(total):.3g}" + (f" ({detail})" if detail else ""))
    elif job.kind == "render":
        count = out.get("count", job.frames_received)
        if count:
            parts.append(f"{count} frame(s)")
        fps = _number(out.get("frames_per_second"))
        if fps is not None:
            parts.append(f"{fps:.1f} frames/s")
    elif job.kind == "extract_mesh" and out.get("faces") is not None:
        parts.append(f"{out.get('vertices', 0)} vertices, {out['faces']} faces")
    return ", ".join(parts)


def result_warning(job: JobState) -> str:
    """What the artist must know about the result, or "": a stylization the prompt did not drive, a tiny or
    empty mesh."""
    if job.kind == "extract_mesh":
        count = _number(job.outputs.get("vertices"), job.meta.get("mesh_vertices"))
        if count is None:
            return ""
        return mesh_warning(int(count), int(job.params.get("resolution", 256)),
                            bool(job.params.get("keep_largest_only", True)), float(job.meta.get("decimate", 1.0)))
    if job.kind != "stylize":
        return ""
    if job.outputs.get("prompt_driven") is False or str(job.params.get("clip_pretrained", "")) == "random":
        note = str(job.outputs.get("note", "")).strip()  # the backend's own words, when it sent them
        return f"Not prompt-driven: {note}" if note else NOT_PROMPT_DRIVEN
    return ""
