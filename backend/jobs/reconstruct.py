"""The ``reconstruct`` job: a capture in, a trained hash-grid NeRF checkpoint out."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from backend.outputs.images import encode_png
from backend.server.jobs import JobContext, JobFailed

from .uploads import extract_capture_zip

CHECKPOINT = "checkpoint.pt"

# Training-time presets. "default" is the product's promise: a usable head in about a minute on one GPU.
PRESET_TIME_BUDGET_S = {"fast": 30.0, "default": 60.0, "quality": 300.0}


def capture_path(ctx: JobContext) -> Path:
    """The capture to read: ``params.capture_path`` on this machine, or the uploaded ``capture`` zip."""
    if "capture" in ctx.record.inputs:
        return extract_capture_zip(ctx.inputs_dir / ctx.record.inputs["capture"], ctx.job_dir / "capture")
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

    from backend.captures import load_capture
    from backend.nerf import evaluate, train
    from backend.nerf.checkpoint import save_checkpoint

    ctx.progress("loading capture", 0, 1)
    capture = load_capture(capture_path(ctx), format=ctx.params.get("capture_format"))
    config = config_from_params(ctx.params)
    ctx.progress("loading capture", 1, 1, message=f"{len(capture.cameras)} views ({capture.source_format})")

    def on_progress(p: train.TrainProgress) -> None:
        metrics = {"psnr": p.psnr}
        if p.heldout_psnr is not None:
            metrics["heldout_psnr"] = p.heldout_psnr
        ctx.progress("training", p.step, p.total_steps, eta_s=p.eta_s, losses={"mse": p.loss}, metrics=metrics)

    ckpt = train.train_reconstruction(capture, config, torch.device(ctx.device), on_progress,
                                      should_stop=lambda: ctx.cancelled)
    # Saved even when cancelled: a stopped reconstruction is still a usable (if rough) model.
    save_checkpoint(ckpt, ctx.outputs_dir / CHECKPOINT)
    ctx.check_cancel()
    view = ckpt.heldout_indices[0] if ckpt.heldout_indices else 0
    rgba, _ = evaluate.render_image(ckpt, ckpt.cameras, view)
    ctx.progress("done", 1, 1, metrics=ckpt.metrics, preview_png=preview_png(rgba.cpu().numpy()))
    return {**{k: float(v) for k, v in ckpt.metrics.items()}, "checkpoint": CHECKPOINT, "steps": ckpt.step,
            "background": ckpt.background, "views": len(capture.cameras)}
