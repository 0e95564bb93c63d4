"""Full-image rendering from cameras, and PSNR on held-out views."""

from __future__ import annotations

import math

import numpy as np
import torch

from captures.cameras import Cameras

from .checkpoint import NeRFCheckpoint
from .model import NeRFModel
from .rays import rays_for_image
from .rendering import render_rays_chunked

BACKGROUND_COLOURS = {"white": (1.0, 1.0, 1.0), "black": (0.0, 0.0, 0.0)}


def _resolve(target: NeRFCheckpoint | NeRFModel, cameras: Cameras) -> tuple[NeRFModel, Cameras, float]:
    """Model, model-coordinate cameras, and the model-to-world length scale."""
    if isinstance(target, NeRFCheckpoint):
        if target.normalization is None:
            return target.model, cameras, 1.0
        return target.model, target.normalization.cameras_to_model(cameras), float(target.normalization.radius)
    if isinstance(target, NeRFModel):
        return target, cameras, 1.0
    raise ValueError(f"expected a NeRFCheckpoint or NeRFModel, got {type(target).__name__}")


@torch.no_grad()
def render_image(
    target: NeRFCheckpoint | NeRFModel,
    cameras: Cameras,
    i: int,
    *,
    chunk: int = 2**15,
    background: tuple[float, float, float] | torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Render camera ``i`` of ``cameras``.

    Cameras are **world** coordinates when ``target`` is a :class:`NeRFCheckpoint` (its normalization is
    applied here) and **model** coordinates when it is a bare :class:`NeRFModel`.

    Args:
        target: checkpoint or model.
        cameras: camera set (lens distortion honoured).
        i: which camera.
        chunk: rays per rendering chunk (bounds memory).
        background: RGB colour behind the scene; None gives premultiplied colour (over black), which is
            what a compositor wants with the alpha channel.

    Returns:
        ``rgba`` ``(H, W, 4)`` float32 (RGB premultiplied unless a background was given; A = opacity) and
        ``depth`` ``(H, W)`` float32 expected distance along each pixel's ray (world units for a checkpoint
        with a normalization, model units otherwise; 0 where nothing was hit).
    """
    if not 0 <= i < len(cameras):
        raise ValueError(f"camera index {i} out of range for {len(cameras)} cameras")
    model, cams, scale = _resolve(target, cameras)
    device = model.device
    rays_o, rays_d = rays_for_image(cams, i, device=device, dtype=torch.float32)
    bg = None if background is None else torch.as_tensor(background, dtype=torch.float32, device=device)
    rgb, opacity, depth = render_rays_chunked(model, rays_o, rays_d, bg, chunk=chunk,
                                              early_stop_eps=target.config.early_stop_eps
                                              if isinstance(target, NeRFCheckpoint) else 1e-4)
    h, w = int(cameras.height[i]), int(cameras.width[i])
    rgba = torch.cat([rgb, opacity[:, None]], dim=-1).reshape(h, w, 4)
    return rgba, (depth * scale).reshape(h, w)


def psnr_from_mse(mse: float) -> float:
    """``-10 log10(mse)`` for images in [0, 1] (inf for a perfect match)."""
    return math.inf if mse <= 0 else -10.0 * math.log10(mse)


@torch.no_grad()
def evaluate_psnr(
    target: NeRFCheckpoint | NeRFModel,
    cameras: Cameras,
    images: np.ndarray | torch.Tensor,  # [n, H, W, 4]
    *,
    background: str = "white",
    metric: str = "full",
    chunk: int = 2**15,
) -> tuple[float, list[float]]:
    """Mean and per-view PSNR of renders against RGBA images.

    Both the render and the image are composited over ``background`` (straight-alpha images: ``rgb * a +
    bg * (1 - a)``). ``metric="matte"`` scores only pixels with image alpha >= 0.5 (inside the matte);
    ``"full"`` scores every pixel.

    Args:
        target: checkpoint (world cameras) or model (model cameras), as in :func:`render_image`.
        cameras: ``n`` cameras matching ``images``.
        images: ``(n, H, W, 4)`` float RGBA in [0, 1], straight alpha.
        background: ``"white"`` or ``"black"``.
        metric: ``"full"`` or ``"matte"``.
        chunk: rays per rendering chunk.

    Returns:
        ``(mean PSNR over views, [PSNR per view])``.
    """
    if images.ndim != 4 or images.shape[-1] != 4:
        raise ValueError(f"images must have shape (n, H, W, 4), got {tuple(images.shape)}")
    if images.shape[0] != len(cameras):
        raise ValueError(f"{images.shape[0]} images for {len(cameras)} cameras")
    if metric not in ("full", "matte"):
        raise ValueError(f"metric must be 'full' or 'matte', got {metric!r}")
    if background not in BACKGROUND_COLOURS:
        raise ValueError(f"background must be one of {tuple(BACKGROUND_COLOURS)}, got {background!r}")
    model, _, _ = _resolve(target, cameras)
    device = model.device
    bg = torch.tensor(BACKGROUND_COLOURS[background], device=device)
    scores = []
    for i in range(len(cameras)):
        gt = torch.as_tensor(images[i], device=device, dtype=torch.float32)
        if gt.shape[:2] != (int(cameras.height[i]), int(cameras.width[i])):
            raise ValueError(f"image {i} has shape {tuple(gt.shape)} but camera {i} is "
                             f"{int(cameras.width[i])}x{int(cameras.height[i])}")
        rgba, _ = render_image(target, cameras, i, chunk=chunk, background=bg)
        gt_rgb = gt[..., :3] * gt[..., 3:] + bg * (1.0 - gt[..., 3:])
        err = (rgba[..., :3] - gt_rgb) ** 2
        if metric == "matte":
            mask = gt[..., 3] >= 0.5
            if not bool(mask.any()):
                continue
            mse = float(err[mask].mean())
        else:
            mse = float(err.mean())
        scores.append(psnr_from_mse(mse))
    mean = float(np.mean(scores)) if scores else math.nan
    return mean, scores
