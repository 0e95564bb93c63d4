"""Training a hash-grid NeRF from a capture, with progress reports, cancellation and held-out PSNR."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from captures.cameras import Cameras

from .checkpoint import NeRFCheckpoint
from .config import ReconstructConfig
from .evaluate import evaluate_psnr, psnr_from_mse
from .model import NeRFModel
from .rays import rays_for_image
from .rendering import render_rays

if TYPE_CHECKING:
    from captures import Capture


@dataclass
class TrainProgress:
    """One progress report.

    Attributes:
        step: optimizer steps done.
        total_steps: the step limit (training may stop earlier on its time budget).
        loss: training loss (MSE) of the last step.
        psnr: training PSNR of the last step (dB).
        heldout_psnr: the latest held-out PSNR (dB), or None before the first evaluation / without views.
        elapsed_s: training seconds so far (set-up and evaluations excluded).
        eta_s: estimated training seconds left.
        evaluated: True when this report carries a held-out evaluation made just now.
        n_rays: rays in the last batch.
        n_samples: samples that survived marching in the last batch.
        done: True for the final report.
    """

    step: int
    total_steps: int
    loss: float
    psnr: float
    heldout_psnr: float | None
    elapsed_s: float
    eta_s: float
    evaluated: bool = False
    n_rays: int = 0
    n_samples: int = 0
    done: bool = False


ProgressFn = Callable[[TrainProgress], None]
StopFn = Callable[[], bool]
CheckpointFn = Callable[[NeRFCheckpoint], None]

TRAIN_STATE_KIND = "reconstruct"


def _concat_cameras(parts: Sequence[Cameras]) -> Cameras:
    return Cameras(
        c2w=np.concatenate([c.c2w for c in parts]), fx=np.concatenate([c.fx for c in parts]),
        fy=np.concatenate([c.fy for c in parts]), cx=np.concatenate([c.cx for c in parts]),
        cy=np.concatenate([c.cy for c in parts]), width=np.concatenate([c.width for c in parts]),
        height=np.concatenate([c.height for c in parts]),
        distortion=np.concatenate([c.distortion for c in parts]),
        names=[n for c in parts for n in c.names],
    )


def train_reconstruction(
    capture: Capture,
    config: ReconstructConfig,
    device: torch.device,
    on_progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
    *,
    heldout: Capture | None = None,
    on_checkpoint: CheckpointFn | None = None,
    checkpoint_every_s: float | None = None,
    checkpoint_every_steps: int | None = None,
    resume: NeRFCheckpoint | None = None,
) -> NeRFCheckpoint:
    """Train a NeRF on a capture.

    Views are split with ``capture.split(config.holdout_every)`` unless ``heldout`` (a second capture,
    e.g. NeRF-synthetic's test split) supplies the held-out views. Images are loaded at
    ``config.resolution_scale``. With mattes or alpha the subject is reconstructed alone (``"matte"``);
    otherwise the background is modelled (``"contract"``); see :class:`ReconstructConfig`.

    Args:
        capture: the capture (world cameras, images, mattes, normalization).
        config: training settings.
        device: where to train.
        on_progress: called with a :class:`TrainProgress` about every ``config.progress_every_s`` seconds,
            after each held-out evaluation and at the end.
        should_stop: polled every step; returning True ends training within one step (the model so far
            is returned, with ``metrics["cancelled"] = 1``).
        heldout: optional capture whose views are all held out.
        on_checkpoint, checkpoint_every_s, checkpoint_every_steps, resume: periodic resumable checkpoints and
            resuming from one; see :func:`train_on_images`.

    Returns:
        The :class:`NeRFCheckpoint`.
    """
    from .capture_images import load_images

    scale = config.resolution_scale
    # has_matte covers both separate matte files and images with their own alpha.
    background = config.resolved_background(bool(capture.has_matte))
    separate_matte = capture.matte_paths is not None
    n_views = len(capture.cameras)
    if heldout is not None:
        train_idx, held_idx = list(range(n_views)), []
    else:
        train_idx, held_idx = capture.split(config.holdout_every)
    train_images = load_images(capture, train_idx, scale=scale)
    train_cams = capture.cameras.select(train_idx).scaled(scale)
    held_cams: Cameras | None = None
    held_images = None
    held_separate_matte = separate_matte
    if heldout is not None:
        held_images = load_images(heldout, list(range(len(heldout.cameras))), scale=scale)
        held_cams = heldout.cameras.scaled(scale)
        held_separate_matte = heldout.matte_paths is not None
    elif held_idx:
        held_images = load_images(capture, held_idx, scale=scale)
        held_cams = capture.cameras.select(held_idx).scaled(scale)
    metric = config.heldout_metric
    if metric == "auto":
        # Photos with mattes are scored inside the matte (their background is not modelled); renders with
        # their own alpha are scored on the full image composited on the evaluation background.
        metric = "matte" if held_separate_matte else "full"
    return train_on_images(
        train_cams, train_images, config, device, background=background, separate_matte=separate_matte,
        normalization=capture.normalization, heldout_cameras=held_cams, heldout_images=held_images,
        heldout_metric=metric, on_progress=on_progress, should_stop=should_stop, on_checkpoint=on_checkpoint,
        checkpoint_every_s=checkpoint_every_s, checkpoint_every_steps=checkpoint_every_steps, resume=resume,
    )


def _validate_images(cameras: Cameras, images: Any, what: str) -> None:
    if images.ndim != 4 or images.shape[-1] != 4:
        raise ValueError(f"{what} images must have shape (n, H, W, 4), got {tuple(images.shape)}")
    if images.shape[0] != len(cameras):
        raise ValueError(f"{images.shape[0]} {what} images for {len(cameras)} cameras")
    for i in range(len(cameras)):
        if (int(cameras.height[i]), int(cameras.width[i])) != tuple(images.shape[1:3]):
            raise ValueError(f"{what} camera {i} is {int(cameras.width[i])}x{int(cameras.height[i])} but the "
                             f"images are {images.shape[2]}x{images.shape[1]}")


class _RayBank:
    """Every training pixel's ray and RGBA on the device (origins per view, directions per pixel)."""

    def __init__(self, cameras_model: Cameras, images: Any, device: torch.device) -> None:
        self.origins = torch.as_tensor(cameras_model.c2w[:, :3, 3], dtype=torch.float32, device=device)
        dirs, views = [], []
        for i in range(len(cameras_model)):
            _, d = rays_for_image(cameras_model, i, device=device, dtype=torch.float32)
            dirs.append(d)
            views.append(torch.full((d.shape[0],), i, dtype=torch.int32, device=device))
        self.dirs = torch.cat(dirs)
        self.views = torch.cat(views)
        self.rgba = torch.as_tensor(np.asarray(images, dtype=np.float32).reshape(-1, 4), device=device)
        self.n = self.dirs.shape[0]

    def batch(self, n_rays: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        idx = torch.randint(0, self.n, (n_rays,), device=self.dirs.device, generator=generator)
        return self.origins[self.views[idx].long()], self.dirs[idx], self.rgba[idx]


def _pixel_footprint(cameras_model: Cameras) -> float:
    """Model units per pixel at the ROI centre: median camera distance over median focal length."""
    dist = np.linalg.norm(cameras_model.c2w[:, :3, 3], axis=1)
    focal = 0.5 * (cameras_model.fx + cameras_model.fy)
    return float(np.median(dist) / np.median(focal))


def _build_model(model_config: Any, seed: int, device: torch.device) -> NeRFModel:
    # Initialise from the seed without disturbing the caller's global RNG state.
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        return NeRFModel(model_config, device=device)


def _warm_up(model: NeRFModel, bank: _RayBank, config: ReconstructConfig, generator: torch.Generator) -> None:
    """Run the compiled paths once (train step without optimizer step, eval chunk, occupancy update)."""
    rays_o, rays_d, _ = bank.batch(config.batch_rays, generator)
    bg = torch.rand(rays_o.shape[0], 3, device=rays_o.device, generator=generator)
    jitter = torch.rand(rays_o.shape[0], device=rays_o.device, generator=generator)
    out = render_rays(model, rays_o, rays_d, bg, jitter=jitter, early_stop_eps=config.early_stop_eps,
                      alpha_thre=config.alpha_thre)
    if out.rgb.requires_grad:
        out.rgb.square().mean().backward()
    model.zero_grad(set_to_none=True)
    with torch.no_grad():
        rays_o, rays_d, _ = bank.batch(min(config.eval_chunk, bank.n), generator)
        render_rays(model, rays_o, rays_d, bg[0], early_stop_eps=config.early_stop_eps)
    if rays_o.device.type == "cuda":
        torch.cuda.synchronize(rays_o.device)


def train_on_images(
    train_cameras: Cameras,
    train_images: Any,  # [n, H, W, 4]
    config: ReconstructConfig,
    device: torch.device,
    *,
    background: str,
    separate_matte: bool = False,
    normalization: Any | None = None,
    heldout_cameras: Cameras | None = None,
    heldout_images: Any | None = None,  # [m, H, W, 4]
    heldout_metric: str = "full",
    on_progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
    on_checkpoint: CheckpointFn | None = None,
    checkpoint_every_s: float | None = None,
    checkpoint_every_steps: int | None = None,
    resume: NeRFCheckpoint | None = None,
) -> NeRFCheckpoint:
    """Train on in-memory images (the core of :func:`train_reconstruction`; also used by tests).

    Args:
        train_cameras: ``n`` world cameras (at the images' resolution).
        train_images: ``(n, H, W, 4)`` float32 RGBA in [0, 1], straight alpha (alpha = matte, or 1).
        config: training settings.
        device: where to train.
        background: ``"matte"`` or ``"contract"`` (resolved, not ``"auto"``).
        separate_matte: alpha comes from separate matte files (photos) rather than the images (renders).
        normalization: world -> model mapping (``Normalization``), or None if the cameras are already in
            model coordinates.
        heldout_cameras, heldout_images: optional held-out views, as above.
        heldout_metric: ``"full"`` or ``"matte"`` (see :func:`~backend.nerf.evaluate.evaluate_psnr`).
        on_progress, should_stop: as in :func:`train_reconstruction`.
        on_checkpoint: called with a resumable checkpoint (one with ``train_state``) every
            ``checkpoint_every_s`` seconds of training and/or every ``checkpoint_every_steps`` steps, whichever
            comes first (e.g. to save it, so that a crash loses at most that much work). The time it takes is
            not counted as training time.
        resume: a checkpoint with a ``"reconstruct"`` ``train_state`` from an earlier run of the same training
            (same images and config): the model, optimizer, step count, elapsed training time, random generator
            and batch size are restored, so training continues where it stopped, to the same total, and on the
            same device reproduces the uninterrupted run exactly.

    Returns:
        The :class:`NeRFCheckpoint`. When stopped by ``should_stop`` it carries a ``train_state`` (it can be
        resumed); a finished one does not.

    Raises:
        ValueError: bad images, or a ``resume`` checkpoint of other training (model or step limit differ).
    """
    device = torch.device(device)
    if background not in ("matte", "contract"):
        raise ValueError(f"background must be 'matte' or 'contract', got {background!r}")
    _validate_images(train_cameras, train_images, "training")
    if (heldout_cameras is None) != (heldout_images is None):
        raise ValueError("give both heldout_cameras and heldout_images, or neither")
    if heldout_cameras is not None:
        _validate_images(heldout_cameras, heldout_images, "held-out")
    t_setup = time.perf_counter()
    cams_model = train_cameras if normalization is None else normalization.cameras_to_model(train_cameras)
    bank = _RayBank(cams_model, train_images, device)
    generator = torch.Generator(device=device)
    generator.manual_seed(config.seed)
    model_config = config.model_config(background, separate_matte, pixel_footprint=_pixel_footprint(cams_model))
    model = _build_model(model_config, config.seed, device)
    use_compile = config.compile == "on" or (config.compile == "auto" and device.type == "cuda")
    if use_compile:
        model.compile_kernels()
        _warm_up(model, bank, config, generator)
    held_cams_model = None
    if heldout_cameras is not None:
        held_cams_model = heldout_cameras if normalization is None else normalization.cameras_to_model(heldout_cameras)
    setup_s = time.perf_counter() - t_setup

    fused = device.type == "cuda"
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, betas=(0.9, 0.99), eps=1e-15, fused=fused)
    n_rays = config.batch_rays
    step = 0
    elapsed = 0.0
    last_loss = math.nan
    heldout_psnr: float | None = None
    n_samples = 0
    cancelled = False
    next_eval_s = config.eval_every_s
    next_report = 0.0
    train_psnr = math.nan
    loss_t: torch.Tensor | None = None
    evals = 0
    if resume is not None:
        state = _check_resume(resume, model_config, config)
        model.load_state_dict(resume.model.state_dict())
        optimizer.load_state_dict(_optimizer_state_for(state["optimizer"], fused))
        _restore_generator(generator, state["generator"], config.seed + int(state["step"]))
        step, elapsed, n_rays = int(state["step"]), float(state["elapsed_s"]), int(state["n_rays"])
        last_loss, train_psnr = float(state.get("last_loss", math.nan)), float(state.get("train_psnr", math.nan))
        heldout_psnr = state.get("heldout_psnr")
        if next_eval_s is not None:
            while next_eval_s <= elapsed:
                next_eval_s += config.eval_every_s  # type: ignore[operator]

    def train_state() -> dict[str, Any]:
        # Everything the loop below carries from one step to the next, so a resumed run is the same run.
        return {"kind": TRAIN_STATE_KIND, "step": step, "total_steps": config.steps, "elapsed_s": elapsed,
                "n_rays": n_rays, "optimizer": optimizer.state_dict(), "generator": generator.get_state(),
                "last_loss": last_loss, "train_psnr": train_psnr, "heldout_psnr": heldout_psnr}

    def snapshot(resumable: bool, stopped: bool) -> NeRFCheckpoint:
        metrics: dict[str, float] = {"elapsed_s": elapsed, "setup_s": setup_s, "steps": float(step),
                                     "train_psnr": train_psnr, "cancelled": float(stopped)}
        if heldout_psnr is not None:
            metrics["heldout_psnr"] = heldout_psnr
        cams_all = train_cameras if heldout_cameras is None else _concat_cameras([train_cameras, heldout_cameras])
        n_train = len(train_cameras)
        held_idx = [] if heldout_cameras is None else list(range(n_train, n_train + len(heldout_cameras)))
        return NeRFCheckpoint(
            model=model, config=config, background=background, normalization=normalization, cameras=cams_all,
            train_indices=list(range(n_train)), heldout_indices=held_idx, step=step, metrics=metrics,
            train_state=train_state() if resumable else None,
        )

    last_checkpoint_step, last_checkpoint_s = step, elapsed

    def eta() -> float:
        per_step = elapsed / max(step, 1)
        left = (config.steps - step) * per_step
        if config.time_budget_s is not None:
            left = min(left, max(0.0, config.time_budget_s - elapsed))
        return left

    def run_eval(max_views: int | None) -> float:
        if held_cams_model is None or heldout_images is None:
            raise RuntimeError("evaluation without held-out views")
        n = len(held_cams_model)
        idx = list(range(n)) if max_views is None or max_views >= n else \
            [int(i) for i in np.linspace(0, n - 1, max_views).round()]
        model.eval()
        psnr, _ = evaluate_psnr(model, held_cams_model.select(idx), np.asarray(heldout_images)[idx],
                                background=config.eval_background, metric=heldout_metric, chunk=config.eval_chunk)
        model.train()
        return psnr

    def report(evaluated: bool = False, done: bool = False) -> None:
        if on_progress is not None:
            on_progress(TrainProgress(
                step=step, total_steps=config.steps, loss=last_loss, psnr=train_psnr, heldout_psnr=heldout_psnr,
                elapsed_s=elapsed, eta_s=0.0 if done else eta(), evaluated=evaluated, n_rays=n_rays,
                n_samples=n_samples, done=done,
            ))

    # Training time so far is carried over on resume: the time budget and ETA continue, not restart.
    t0 = time.perf_counter() - elapsed
    while step < config.steps:
        if should_stop is not None and should_stop():
            cancelled = True
            break
        elapsed = time.perf_counter() - t0
        if config.time_budget_s is not None and elapsed >= config.time_budget_s:
            break
        progress = step / config.steps
        if config.time_budget_s is not None:
            progress = max(progress, elapsed / config.time_budget_s)
        lr = config.learning_rate(step, progress)
        for group in optimizer.param_groups:
            group["lr"] = lr
        if step % config.occ_update_every == 0:
            model.update_occupancy(step, generator, threshold=config.occ_threshold, ema_decay=config.occ_ema_decay,
                                   warmup_steps=config.occ_warmup_steps)

        rays_o, rays_d, rgba = bank.batch(n_rays, generator)
        bg = torch.rand(n_rays, 3, device=device, generator=generator)
        jitter = torch.rand(n_rays, device=device, generator=generator)
        if background == "matte":
            target = rgba[:, :3] * rgba[:, 3:] + bg * (1.0 - rgba[:, 3:])
        else:
            # The background is part of the scene: every pixel should be fully opaque, and the random
            # colour behind the far plane pushes it there.
            target = rgba[:, :3]
        out = render_rays(model, rays_o, rays_d, bg, jitter=jitter, early_stop_eps=config.early_stop_eps,
                          alpha_thre=config.alpha_thre, first_round=config.cull_first_round)
        n_samples = int(out.weights.shape[0])
        if out.rgb.requires_grad:
            loss_t = torch.nn.functional.mse_loss(out.rgb, target)
            optimizer.zero_grad(set_to_none=True)
            loss_t.backward()
            optimizer.step()
        step += 1
        if config.target_samples > 0:
            # nerfacc's dynamic batch: keep the number of surviving samples near the target.
            n_rays = int(n_rays * config.target_samples / max(n_samples, 1))
            n_rays = min(max(n_rays, config.min_batch_rays), config.max_batch_rays)

        now = time.perf_counter()
        elapsed = now - t0
        due_eval = held_cams_model is not None and (
            (next_eval_s is not None and elapsed >= next_eval_s)
            or (config.eval_every_steps is not None and step % config.eval_every_steps == 0)
        )
        if now >= next_report or due_eval:
            if loss_t is not None:
                last_loss = float(loss_t.detach())
                train_psnr = psnr_from_mse(last_loss)
            next_report = now + config.progress_every_s
            if not due_eval:
                report()
        if due_eval:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            elapsed = time.perf_counter() - t0
            t_eval = time.perf_counter()
            heldout_psnr = run_eval(config.eval_max_views)
            evals += 1
            if next_eval_s is not None:
                while next_eval_s is not None and next_eval_s <= elapsed:
                    next_eval_s += config.eval_every_s  # type: ignore[operator]
            report(evaluated=True)
            # Evaluation time is not training time.
            t0 += time.perf_counter() - t_eval
        if on_checkpoint is not None and (
                (checkpoint_every_steps is not None and step - last_checkpoint_step >= checkpoint_every_steps)
                or (checkpoint_every_s is not None and elapsed - last_checkpoint_s >= checkpoint_every_s)):
            if loss_t is not None:
                last_loss = float(loss_t.detach())
                train_psnr = psnr_from_mse(last_loss)
            t_save = time.perf_counter()
            elapsed = t_save - t0
            on_checkpoint(snapshot(resumable=True, stopped=False))
            last_checkpoint_step, last_checkpoint_s = step, elapsed
            # Saving is not training time either (it must not eat into a time budget).
            t0 += time.perf_counter() - t_save

    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - t0
    if loss_t is not None:
        last_loss = float(loss_t.detach())
        train_psnr = psnr_from_mse(last_loss)
    final_eval = held_cams_model is not None and not cancelled
    if final_eval:
        heldout_psnr = run_eval(None)
        evals += 1
    report(evaluated=final_eval, done=True)
    model.eval()
    # Stopped early: the model so far, resumable. Finished (steps or time budget): a plain checkpoint.
    return snapshot(resumable=cancelled, stopped=cancelled)


def _check_resume(resume: NeRFCheckpoint, model_config: Any, config: ReconstructConfig) -> dict[str, Any]:
    """The ``train_state`` of a checkpoint to resume from, after checking that it is this training's.

    Raises:
        ValueError: no reconstruction state, another model, or another step limit.
    """
    state = resume.train_state
    if not state or state.get("kind") != TRAIN_STATE_KIND:
        raise ValueError("the checkpoint to resume from holds no reconstruction training state")
    if resume.model.config.to_dict() != model_config.to_dict():
        raise ValueError("the checkpoint to resume from has another model configuration than this training")
    if int(state.get("total_steps", config.steps)) != config.steps:
        raise ValueError(f"the checkpoint to resume from was trained towards {state.get('total_steps')} steps, "
                         f"this training towards {config.steps}")
    return state


def _optimizer_state_for(saved: dict[str, Any], fused: bool) -> dict[str, Any]:
    """A saved Adam state for an optimizer made with ``fused``: the flag is a device choice, not state.

    A state saved on a GPU (fused) is loaded on the CPU (not fused) or the other way round.
    """
    groups = [{**g, "fused": fused} if "fused" in g else g for g in saved["param_groups"]]
    return {**saved, "param_groups": groups}


def _restore_generator(generator: torch.Generator, state: torch.Tensor, fallback_seed: int) -> None:
    """Restore a generator's state; a state of another device type (CPU vs CUDA) cannot be, so reseed.

    Reseeding changes the random draws from here on, not the training's correctness.
    """
    try:
        generator.set_state(state)
    except (RuntimeError, TypeError, ValueError):
        generator.manual_seed(fallback_seed)
