"""What a stylization did: geometry kept, haze outside the head, and the move toward the prompt.

Used by the benchmarks and the tests (issue 12), on views rendered from ``F_rec`` and ``F_sty`` with the same
cameras:

* :func:`geometry_change` — alpha IoU (alpha >= 0.5), mean |depth difference| inside ``F_rec``'s alpha relative to
  the ROI radius, and the mean opacity *outside* ``F_rec``'s silhouette dilated by a few pixels ("haze").
* :func:`prompt_scores` — cosine of the renders' embeddings (``P_con`` as the global loss sees them) with the
  template-averaged target text, with each negative, and with the source text, through any :class:`ClipModel`
  (the analytic stand-in gives these a known meaning; random CLIP gives numbers without one).
* :func:`redness` — mean ``r - (g + b) / 2`` inside a mask: what "a red face" should raise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from backend.nerf.checkpoint import NeRFCheckpoint
from backend.nerf.evaluate import render_image
from captures import Cameras

from .clip_model import ClipModel, Template
from .losses import normalize_safe

__all__ = ["ViewRenders", "dilate_mask", "geometry_change", "prompt_scores", "redness", "render_views"]


@dataclass
class ViewRenders:
    """Renders of one model from a set of cameras.

    Attributes:
        rgb: ``(n, H, W, 3)`` colour over ``background``.
        alpha: ``(n, H, W)`` opacity.
        depth: ``(n, H, W)`` expected depth in world units (0 where nothing was hit).
    """

    rgb: Tensor
    alpha: Tensor
    depth: Tensor


@torch.no_grad()
def render_views(ckpt: NeRFCheckpoint, cameras: Cameras,
                 background: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> ViewRenders:
    """Render every camera of ``cameras`` (world coordinates) over a plain ``background``."""
    rgb, alpha, depth = [], [], []
    for i in range(len(cameras)):
        rgba, d = render_image(ckpt, cameras, i, background=background)
        rgb.append(rgba[..., :3])
        alpha.append(rgba[..., 3])
        depth.append(d)
    return ViewRenders(torch.stack(rgb), torch.stack(alpha), torch.stack(depth))


def dilate_mask(mask: Tensor, pixels: int) -> Tensor:  # [n, H, W] bool -> [n, H, W] bool
    """Grow a boolean mask by ``pixels`` in every direction (a square structuring element)."""
    if pixels <= 0:
        return mask
    k = 2 * pixels + 1
    return F.max_pool2d(mask[:, None].float(), k, stride=1, padding=pixels)[:, 0] > 0.5


def geometry_change(rec: ViewRenders, sty: ViewRenders, radius: float, haze_margin_px: int = 3) -> dict[str, float]:
    """How far ``F_sty``'s shape moved from ``F_rec``'s, over the same views.

    Returns:
        ``alpha_iou``: mean over views of IoU(alpha_rec >= 0.5, alpha_sty >= 0.5);
        ``depth_err_rel``: mean |depth_sty - depth_rec| over pixels inside ``F_rec``'s alpha, / ``radius``;
        ``haze``: mean alpha of ``F_sty`` over pixels outside ``F_rec``'s silhouette dilated by
        ``haze_margin_px``; ``haze_rec``: the same for ``F_rec`` itself (its own faint floaters, for reference);
        ``haze_max``: the largest per-view value of ``haze``.
    """
    mask_r, mask_s = rec.alpha >= 0.5, sty.alpha >= 0.5
    inter = (mask_r & mask_s).flatten(1).sum(1).double()
    union = (mask_r | mask_s).flatten(1).sum(1).double()
    iou = torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))
    depth_err = (sty.depth - rec.depth).abs()[mask_r]
    outside = ~dilate_mask(mask_r, haze_margin_px)
    n_out = outside.flatten(1).sum(1).clamp_min(1).double()
    haze_views = (sty.alpha * outside).flatten(1).sum(1).double() / n_out
    haze_rec = float((rec.alpha * outside).sum() / outside.sum().clamp_min(1))
    return {"alpha_iou": float(iou.mean()),
            "depth_err_rel": float(depth_err.mean()) / radius if depth_err.numel() else math.nan,
            "haze": float((sty.alpha * outside).sum() / outside.sum().clamp_min(1)), "haze_rec": haze_rec,
            "haze_max": float(haze_views.max())}


def redness(rgb: Tensor, mask: Tensor) -> float:
    """Mean ``r - (g + b) / 2`` of ``(n, H, W, 3)`` colours over the ``(n, H, W)`` mask."""
    r = rgb[..., 0] - 0.5 * (rgb[..., 1] + rgb[..., 2])
    return float(r[mask].mean()) if bool(mask.any()) else math.nan


@torch.no_grad()
def prompt_scores(clip: ClipModel, rgb: Tensor, target: str, source: str, negatives: Sequence[str],
                  templates: Sequence[Template]) -> dict[str, float]:
    """Mean cosine of the renders' ``E_I(P_con(.))`` with the target, the source text and the negatives.

    Args:
        rgb: ``(n, H, W, 3)`` renders in [0, 1].

    Returns:
        ``target``, ``source``, ``negatives`` (mean over negatives and views), ``margin`` (target minus the
        hardest negative, mean over views).
    """
    images = rgb.permute(0, 3, 1, 2).contiguous().to(clip.device)
    v = normalize_safe(clip.embed_center(images).float())  # (n, D)
    texts = clip.text_embeddings_averaged([target, source, *negatives], templates)
    sims = v @ texts.T  # (n, 2 + J)
    neg = sims[:, 2:]
    return {"target": float(sims[:, 0].mean()), "source": float(sims[:, 1].mean()),
            "negatives": float(neg.mean()) if neg.numel() else math.nan,
            "margin": float((sims[:, 0] - neg.max(dim=1).values).mean()) if neg.numel() else math.nan}

