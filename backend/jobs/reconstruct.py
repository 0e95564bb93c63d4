"""The ``reconstruct`` job: a capture in, a trained hash-grid NeRF checkpoint out.

While it trains, a resumable checkpoint (model, optimizer, step, random state) replaces ``checkpoint.pt`` every
:data:`CHECKPOINT_EVERY_S` seconds of training (every second for the ``tiny`` preset), so a crash loses at most
that much. A resumed job (``ctx.resuming``) continues from it to the same total step count; the finished
``checkpoint.pt`` holds no training state.

After training the job decides the subject bounds (:mod:`backend.jobs.subject`): ``params.subject_bounds`` if
given (checked before training starts), else found from the trained density around where the cameras look. The
checkpoint keeps them in model coordinates and the outputs give them in capture-world coordinates
(``subject_bounds``), with ``subject_found`` and ``subject_source`` saying how they were decided. A detection also
keeps what around the person is not the person (``subject_air``): the air its cameras saw through and the haze
that looks like the wall behind it (``backend/nerf/subject_key.py``), which the whole scene renders and the subject
leaves out (``subject_air_cells`` counts its occupied cells).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from backend.jobstore.context import JobContext, JobFailed
from backend.outputs.images import encode_png

from .checkpoints import resume_checkpoint
from .subject import bounds_from_params, bounds_to_world, decide_reconstruction_subject
from .uploads import extract_capture_zip

CHECKPOINT = "checkpoint.pt"

# Training-time presets. "default" is the product's promise: a usable head in about a minute on one GPU.
PRESET_TIME_BUDGET_S = {"fast": 30.0, "default": 60.0, "quality": 300.0}

# Seconds of training between resumable checkpoints. A default-preset checkpoint with its Adam state is about
# 200 MB (a fraction of a second to write on a GPU machine's disk), so every 30 s costs about 1% of training
# time and a crash loses at most half a minute. The tiny preset (CPU tests) writes a small one every second.
CHECKPOINT_EVERY_S = 30.0
TINY_CHECKPOINT_EVERY_S = 1.0


def capture_path(ctx: JobContext) -> Path:
    """The capture to read: ``params.capture_path`` on this machine, or the uploaded ``capture`` zip."""
    if "capture" in ctx.record.inputs:
        return extract_capture_zip(ctx.inputs_dir / ctx.record.inputs["capture"], ctx.job_dir / "capture",
                                   max_bytes=ctx.store.disk.room())
    path = ctx.params.get("capture_path")
    if not path:
        raise JobFailed("a reconstruct job needs params.capture_path (a folder on the backend's machine) or an "
                        "uploaded 'capture' zip")
    return Path(path).expanduser()


def config_from_params(params: dict[str, Any]) -> Any:
    """The training configuration for a job's parameters (preset first, then explicit overrides)."""
    from backend.nerf.config import ReconstructConfig

    preset = params.get("preset", "default")
    if preset == "tiny":
        config = ReconstructConfig.tiny()
    else:
        config = ReconstructConfig(time_budget_s=PRESET_TIME_BUDGET_S[preset])
    overrides = {"steps": params.get("steps"), "time_budget_s": params.get("time_budget_s"),
                 "resolution_scale": params.get("scale"), "holdout_every": params.get("holdout_every"),
                 "background": params.get("background"), "seed": params.get("seed")}
    return replace(config, **{k: v for k, v in overrides.items() if v is not None})


def preview_png(rgba: np.ndarray, max_side: int = 256) -> bytes:
    """A small PNG of a premultiplied ``(H, W, 4)`` render, on a neutral grey, for the add-on's preview."""
    step = max(1, int(np.ceil(max(rgba.shape[:2]) / max_side)))
    small = rgba[::step, ::step]
    rgb = small[..., :3] + (1.0 - small[..., 3:]) * 0.5
    return encode_png(np.concatenate([rgb, np.ones_like(small[..., 3:])], axis=-1))


def run_reconstruct(ctx: JobContext) -> dict[str, Any]:
    import torch

    from backend.nerf import evaluate, train
    from backend.nerf.checkpoint import save_checkpoint
    from captures import load_capture

    resume, note = resume_checkpoint(ctx, CHECKPOINT, train.TRAIN_STATE_KIND) if ctx.resuming else (None, "")
    ctx.progress("loading capture", 0, 1, message=note)
    # An upload's camera files were written by the sender: they may only name files inside the upload.
    uploaded = ctx.job_dir / "capture" if "capture" in ctx.record.inputs else None
    capture = load_capture(capture_path(ctx), format=ctx.params.get("capture_format"), confine_to=uploaded)
    config = config_from_params(ctx.params)
    # Bad bounds fail here, before any training time is spent.
    given_subject = bounds_from_params(ctx.params, capture.normalization)
    views = "; ".join([f"{len(capture.cameras)} views ({capture.source_format})", *capture.warnings])
    if resume is not None:
        views += f"; resuming from step {resume.step} of {config.steps}"
    ctx.progress("loading capture", 1, 1, message=note or views)

    def on_progress(p: train.TrainProgress) -> None:
        metrics = {"psnr": p.psnr}
        if p.heldout_psnr is not None:
            metrics["heldout_psnr"] = p.heldout_psnr
        ctx.progress("training", p.step, p.total_steps, eta_s=p.eta_s, losses={"mse": p.loss}, metrics=metrics)

    def on_checkpoint(ckpt: Any) -> None:
        # Replaces the last one atomically: a crash leaves the previous or this one, both complete.
        save_checkpoint(ckpt, ctx.outputs_dir / CHECKPOINT)
        ctx.checkpointed("training", ckpt.step, config.steps)

    tiny = ctx.params.get("preset") == "tiny"

    def decide_subject(ckpt: Any) -> Any:
        ctx.progress("finding the subject", 0, 1)
        decision = decide_reconstruction_subject(ckpt, given_subject, ctx.device, tiny=tiny)
        ckpt.subject = decision.bounds
        if decision.source != "checkpoint":  # a resumed job's checkpoint holds the air its detection saw
            ckpt.subject_air = decision.air
        ctx.progress("finding the subject", 1, 1, message=decision.note)
        return decision

    decision = None
    if resume is not None and resume.train_state is None:
        # Training had finished (its final checkpoint is saved) when the job was interrupted: keep it.
        ckpt = resume
        if ckpt.subject is None or given_subject is not None:
            decision = decide_subject(ckpt)
            save_checkpoint(ckpt, ctx.outputs_dir / CHECKPOINT)
    else:
        every_s = TINY_CHECKPOINT_EVERY_S if tiny else CHECKPOINT_EVERY_S
        try:
            ckpt = train.train_reconstruction(capture, config, torch.device(ctx.device), on_progress,
                                              should_stop=lambda: ctx.cancelled, on_checkpoint=on_checkpoint,
                                              checkpoint_every_s=every_s, resume=resume)
        except ValueError as exc:
            if resume is None:
                raise
            raise JobFailed(f"cannot resume from {CHECKPOINT}: {exc}") from exc
        if ckpt.train_state is None:  # finished: its subject is part of the final checkpoint
            decision = decide_subject(ckpt)
        # Saved even when cancelled (a stopped reconstruction is still a usable, if rough, model); then it keeps
        # its training state, so an interrupted job resumes from exactly here.
        save_checkpoint(ckpt, ctx.outputs_dir / CHECKPOINT)
        if ckpt.train_state is not None:
            ctx.checkpointed("training", ckpt.step, config.steps)
    ctx.check_cancel()
    if decision is None:  # a resumed job whose finished checkpoint already held its subject
        decision = decide_subject(ckpt)
    view = ckpt.heldout_indices[0] if ckpt.heldout_indices else 0
    rgba, _ = evaluate.render_image(ckpt, ckpt.cameras, view)
    ctx.progress("done", 1, 1, metrics=ckpt.metrics, preview_png=preview_png(rgba.cpu().numpy()))
    outputs = {**{k: float(v) for k, v in ckpt.metrics.items()}, "checkpoint": CHECKPOINT, "steps": ckpt.step,
               "background": ckpt.background, "views": len(capture.cameras),
               "subject_bounds": bounds_to_world(ckpt.subject, ckpt.normalization),
               "subject_found": decision.found, "subject_source": decision.source,
               # Occupied cells that are not the person (seen through, keyed out as the wall): the subject leaves them out.
               "subject_air_cells": 0 if ckpt.subject_air is None else
               int((ckpt.subject_air & ckpt.model.occupancy.binary).sum())}
    if decision.note:
        outputs["subject_note"] = decision.note
    if capture.warnings:
        outputs["capture_warnings"] = list(capture.warnings)
    if resume is not None:
        outputs["resumed_from_step"] = int(resume.step)
    if note:
        outputs["resume_note"] = note
    return outputs
