"""What a stylization did: geometry kept or moved, haze, and the move toward the prompt.

Used by the benchmarks and the tests (issues 12 and 20), on views rendered from ``F_rec`` and ``F_sty`` with the same
cameras. None of it needs a matte: ``F_rec``'s own renders (its opacity and where its rays stop) are the reference.

* :func:`geometry_change` — alpha IoU (alpha >= 0.5), mean |depth difference| inside ``F_rec``'s alpha relative to
  the ROI radius, and the haze outside the head (:func:`outside_mask`: the one definition of "outside ``F_rec``'s
  silhouette" that :class:`HazeReport` uses too).
* :func:`haze_change` (:func:`render_front_opacity` then :func:`haze_from_front_opacity`) — the clouds a geometry
  stylization may form (issue 20): opacity ``F_sty`` puts *in front of* ``F_rec``'s surface, split into
  semi-transparent haze and new solid shape, and the opacity it puts outside ``F_rec``'s silhouette.
* :func:`silhouette_change` — how far the outline moved: area ratio and outline displacement in pixels and as a
  fraction of the head's height in the image.
* :func:`prompt_scores` — cosine of the renders' embeddings (``P_con`` as the global loss sees them) with the
  template-averaged target text, with each negative, and with the source text, through any :class:`ClipModel`
  (the analytic stand-in gives these a known meaning; random CLIP gives numbers without one).
* :func:`redness` — mean ``r - (g + b) / 2`` inside a mask: what "a red face" should raise.

Example (a benchmark or test of a stylization that may move the shape)::

    before, after = render_views(rec, cams), render_views(sty, cams)
    moved = silhouette_change(before.alpha, after.alpha)     # area_ratio, outline_growth_px, ...
    clouds = haze_change(rec, sty, cams)                     # haze, front_solid, outside_opacity, ...
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from backend.nerf.checkpoint import NeRFCheckpoint
from backend.nerf.evaluate import render_image
from backend.nerf.model import NeRFModel
from backend.nerf.rays import rays_for_image
from backend.nerf.rendering import render_rays
from backend.nerf.volrend import exclusive_sum_packed
from captures import Cameras

from .clip_model import ClipModel, Template
from .losses import normalize_safe

__all__ = [
    "FrontOpacity",
    "HazeReport",
    "SilhouetteChange",
    "ViewRenders",
    "dilate_mask",
    "geometry_change",
    "haze_change",
    "haze_from_front_opacity",
    "opacity_before_t",
    "outline_mask",
    "outside_mask",
    "prompt_scores",
    "redness",
    "render_front_opacity",
    "render_views",
    "silhouette_change",
    "surface_t_from_weights",
]


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


def outside_mask(alpha_rec: Tensor, margin_px: int = 3) -> Tensor:  # [n, H, W] -> [n, H, W] bool
    """Pixels outside ``F_rec``'s silhouette (``alpha_rec >= 0.5``) grown by ``margin_px``: where ``F_rec`` is
    transparent, away from its anti-aliased edge. The one definition of "outside" for the haze numbers of
    :func:`geometry_change` and :class:`HazeReport`.

    Args:
        alpha_rec: ``(n, H, W)`` opacity of ``F_rec``'s renders.
        margin_px: grow the silhouette by this many pixels first (a square structuring element).

    Returns:
        ``(n, H, W)`` bool.
    """
    if alpha_rec.ndim != 3:
        raise ValueError(f"alpha_rec must have shape (n, H, W), got {tuple(alpha_rec.shape)}")
    return ~dilate_mask(alpha_rec >= 0.5, margin_px)


def geometry_change(rec: ViewRenders, sty: ViewRenders, radius: float, haze_margin_px: int = 3) -> dict[str, float]:
    """How far ``F_sty``'s shape moved from ``F_rec``'s, over the same views.

    Returns:
        ``alpha_iou``: mean over views of IoU(alpha_rec >= 0.5, alpha_sty >= 0.5);
        ``depth_err_rel``: mean |depth_sty - depth_rec| over pixels inside ``F_rec``'s alpha, / ``radius``;
        ``haze``: mean alpha of ``F_sty`` over the pixels of :func:`outside_mask` (``F_rec``'s silhouette dilated
        by ``haze_margin_px``; :attr:`HazeReport.outside_opacity` is the same number); ``haze_rec``: the same for
        ``F_rec`` itself (its own faint floaters, for reference); ``haze_max``: the largest per-view value of
        ``haze``.
    """
    mask_r, mask_s = rec.alpha >= 0.5, sty.alpha >= 0.5
    inter = (mask_r & mask_s).flatten(1).sum(1).double()
    union = (mask_r | mask_s).flatten(1).sum(1).double()
    iou = torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))
    depth_err = (sty.depth - rec.depth).abs()[mask_r]
    outside = outside_mask(rec.alpha, haze_margin_px)
    n_out = outside.flatten(1).sum(1).clamp_min(1).double()
    haze_views = (sty.alpha * outside).flatten(1).sum(1).double() / n_out
    haze_rec = float((rec.alpha * outside).sum() / outside.sum().clamp_min(1))
    return {"alpha_iou": float(iou.mean()),
            "depth_err_rel": float(depth_err.mean()) / radius if depth_err.numel() else math.nan,
            "haze": float((sty.alpha * outside).sum() / outside.sum().clamp_min(1)), "haze_rec": haze_rec,
            "haze_max": float(haze_views.max())}


# -- haze in front of the surface (issue 20) --------------------------------------------------------------------


def surface_t_from_weights(
    weights: Tensor,  # [all_samples]
    t_starts: Tensor,  # [all_samples]
    ray_indices: Tensor,  # [all_samples]
    packed_info: Tensor,  # [n_rays, 2]
    level: float = 0.5,
) -> Tensor:  # [n_rays]
    """Where each ray meets the surface: the start of the sample at which its accumulated opacity reaches ``level``.

    The median termination distance (``level`` 0.5), not the expected depth: a faint floater far behind or in
    front of the surface pulls the mean but not the point where the ray is half stopped.

    .. math:: t_{surf} = t_{start,k}, \\quad k = \\min \\{ i : \\textstyle\\sum_{j \\le i} w_j \\ge level \\}

    Args:
        weights: ``(all_samples,)`` volume-rendering weights, packed and sorted by ray then ``t``.
        t_starts: ``(all_samples,)`` interval starts along each ray.
        ray_indices: ``(all_samples,)`` int64 ray of each sample.
        packed_info: ``(n_rays, 2)`` int64 ``[start, count]`` per ray.
        level: accumulated opacity that counts as "at the surface", in (0, 1].

    Returns:
        ``(n_rays,)`` in ``t_starts``' units and dtype; ``inf`` for rays that never reach ``level``.
    """
    if not 0.0 < level <= 1.0:
        raise ValueError(f"level must be in (0, 1], got {level}")
    if weights.ndim != 1 or t_starts.shape != weights.shape or ray_indices.shape != weights.shape:
        raise ValueError(f"weights, t_starts and ray_indices must be (all_samples,), got {tuple(weights.shape)}, "
                         f"{tuple(t_starts.shape)}, {tuple(ray_indices.shape)}")
    n_rays = packed_info.shape[0]
    out = torch.full((n_rays,), math.inf, dtype=t_starts.dtype, device=t_starts.device)
    if weights.numel() == 0:
        return out
    before = exclusive_sum_packed(weights, ray_indices, packed_info)
    # Accumulated opacity rises monotonically along a ray, so at most one sample per ray crosses the level.
    crossing = (before < level) & (before + weights >= level)
    return out.index_put_((ray_indices[crossing],), t_starts[crossing])


def opacity_before_t(
    weights: Tensor,  # [all_samples]
    t_ends: Tensor,  # [all_samples]
    ray_indices: Tensor,  # [all_samples]
    t_cut: Tensor,  # [n_rays]
) -> Tensor:  # [n_rays]
    """Opacity each ray accumulates over the samples that end before its ``t_cut``: ``sum_{i: t_end,i <= t_cut} w_i``.

    Args:
        weights: ``(all_samples,)`` volume-rendering weights, packed.
        t_ends: ``(all_samples,)`` interval ends along each ray.
        ray_indices: ``(all_samples,)`` int64 ray of each sample.
        t_cut: ``(n_rays,)`` per-ray distance, same units as ``t_ends`` (``inf``: the whole ray).

    Returns:
        ``(n_rays,)`` in [0, 1], ``weights``' dtype.
    """
    if t_cut.ndim != 1:
        raise ValueError(f"t_cut must have shape (n_rays,), got {tuple(t_cut.shape)}")
    keep = t_ends <= t_cut[ray_indices]
    out = torch.zeros(t_cut.shape[0], dtype=weights.dtype, device=weights.device)
    return out.index_add_(0, ray_indices, torch.where(keep, weights, torch.zeros_like(weights)))


@dataclass
class FrontOpacity:
    """Per-pixel opacities of ``F_rec`` and ``F_sty`` against ``F_rec``'s surface, from the same cameras.

    Attributes (all ``(n, H, W)`` float32 on ``F_rec``'s device):
        alpha_rec, alpha_sty: each model's whole opacity.
        t_surface: distance along the pixel's ray (world units) at which ``F_rec``'s accumulated opacity reaches
            0.5 (:func:`surface_t_from_weights`); ``inf`` where it never does (``F_rec`` transparent there).
        front_rec, front_sty: opacity each model accumulates before ``t_surface - margin``
            (:func:`opacity_before_t`); ``front_rec`` is below 0.5 by construction (it is ``F_rec``'s soft front).
        margin: the margin in world units (``margin_steps`` marching steps of ``F_rec``).
    """

    alpha_rec: Tensor
    alpha_sty: Tensor
    t_surface: Tensor
    front_rec: Tensor
    front_sty: Tensor
    margin: float


@dataclass(frozen=True)
class HazeReport:
    """Clouds and new shape a stylization formed, against ``F_rec``'s own renders (no matte needed).

    "Opaque" pixels are those ``F_rec`` covers (``alpha_rec >= 0.5``), "outside" those of :func:`outside_mask`.
    A pixel's front opacity ``a`` (``F_sty``'s, before ``F_rec``'s surface less a margin) is *solid* when ``a >=
    solid_alpha`` (a new surface in front: shape moved toward the camera, e.g. a hat brim over the forehead) and
    *haze* otherwise (semi-transparent matter in front of the face: the cloud L_reg is meant to stop).

    Attributes:
        haze: mean over opaque pixels of ``max(0, a_sty - a_rec)`` where ``a_sty < solid_alpha`` (else 0): the
            semi-transparent opacity ``F_sty`` added in front of the surface. 0 for identical models.
        haze_rec: mean over opaque pixels of ``a_rec``: ``F_rec``'s own soft front (how sharp its surface is).
        haze_max: the largest per-view value of ``haze``.
        front_solid: fraction of opaque pixels with ``a_sty >= solid_alpha``: new solid shape in front.
        outside_opacity: mean ``alpha_sty`` over outside pixels (the silhouette's growth, solid or not; the
            ``haze`` of :func:`geometry_change`).
        outside_haze: the same, counting only semi-transparent pixels (``alpha_sty < solid_alpha``).
        outside_opacity_rec: mean ``alpha_rec`` over outside pixels (``F_rec``'s own floaters, for reference).
        opaque_fraction: fraction of all pixels that are opaque (the support of ``haze``).
    """

    haze: float
    haze_rec: float
    haze_max: float
    front_solid: float
    outside_opacity: float
    outside_haze: float
    outside_opacity_rec: float
    opaque_fraction: float


def _model_and_cameras(ckpt: NeRFCheckpoint, cameras: Cameras) -> tuple[NeRFModel, Cameras, float]:
    """The model, the cameras in its coordinates, and its model-to-world length scale."""
    if ckpt.normalization is None:
        return ckpt.model, cameras, 1.0
    return ckpt.model, ckpt.normalization.cameras_to_model(cameras), float(ckpt.normalization.radius)


@torch.no_grad()
def render_front_opacity(ckpt_rec: NeRFCheckpoint, ckpt_sty: NeRFCheckpoint, cameras: Cameras, *,
                         margin_steps: float = 4.0, chunk: int = 2**14) -> FrontOpacity:
    """Render ``F_rec`` and ``F_sty`` from world ``cameras`` and measure each ray's opacity in front of ``F_rec``'s
    surface.

    Each ray is marched by both models (their own occupancy grids and normalizations; distances are compared in
    world units). ``F_rec``'s surface is where its accumulated opacity reaches 0.5; the cut is ``margin_steps`` of
    ``F_rec``'s smallest marching steps before it, so that the soft skin of a surface is not counted as haze.

    Args:
        ckpt_rec, ckpt_sty: the reconstruction and its stylization (any normalization each).
        cameras: ``n`` world cameras (all of the same size ``H x W``).
        margin_steps: the cut's distance before the surface, in ``F_rec``'s ``dt_min``.
        chunk: rays per rendering chunk (bounds memory: both models' samples of a chunk are held at once).

    Returns:
        :class:`FrontOpacity`, tensors ``(n, H, W)``.
    """
    if len(cameras) == 0:
        raise ValueError("no cameras to render")
    h, w = int(cameras.height[0]), int(cameras.width[0])
    if not (np.all(cameras.height == h) and np.all(cameras.width == w)):
        raise ValueError("all cameras must have the same size")
    if margin_steps < 0:
        raise ValueError(f"margin_steps must be >= 0, got {margin_steps}")
    model_r, cams_r, scale_r = _model_and_cameras(ckpt_rec, cameras)
    model_s, cams_s, scale_s = _model_and_cameras(ckpt_sty, cameras)
    eps_r, eps_s = float(ckpt_rec.config.early_stop_eps), float(ckpt_sty.config.early_stop_eps)
    margin = margin_steps * model_r.settings.dt_min * scale_r  # world units
    device = model_r.device
    keys = ("alpha_rec", "alpha_sty", "t_surface", "front_rec", "front_sty")
    views: dict[str, list[Tensor]] = {k: [] for k in keys}
    for i in range(len(cameras)):
        o_r, d_r = rays_for_image(cams_r, i, device=model_r.device, dtype=torch.float32)
        o_s, d_s = rays_for_image(cams_s, i, device=model_s.device, dtype=torch.float32)
        parts: dict[str, list[Tensor]] = {k: [] for k in keys}
        for c0 in range(0, o_r.shape[0], chunk):
            c1 = min(o_r.shape[0], c0 + chunk)
            rec = render_rays(model_r, o_r[c0:c1], d_r[c0:c1], early_stop_eps=eps_r, return_samples=True)
            sty = render_rays(model_s, o_s[c0:c1], d_s[c0:c1], early_stop_eps=eps_s, return_samples=True)
            assert rec.samples is not None and sty.samples is not None  # return_samples=True
            sr, ss = rec.samples, sty.samples
            t_surf = surface_t_from_weights(rec.weights, sr.t_starts, sr.ray_indices, sr.packed_info) * scale_r
            cut = t_surf - margin  # world units; inf where F_rec never becomes opaque
            parts["alpha_rec"].append(rec.opacity)
            parts["alpha_sty"].append(sty.opacity.to(device))
            parts["t_surface"].append(t_surf)
            parts["front_rec"].append(opacity_before_t(rec.weights, sr.t_ends, sr.ray_indices, cut / scale_r))
            parts["front_sty"].append(opacity_before_t(sty.weights, ss.t_ends, ss.ray_indices,
                                                       cut.to(model_s.device) / scale_s).to(device))
        for k in keys:
            views[k].append(torch.cat(parts[k]).reshape(h, w).float())
    return FrontOpacity(**{k: torch.stack(v) for k, v in views.items()}, margin=margin)


def haze_from_front_opacity(front: FrontOpacity, margin_px: int = 3, solid_alpha: float = 0.9) -> HazeReport:
    """The :class:`HazeReport` of measured front opacities (pure tensor arithmetic, no rendering).

    Args:
        front: from :func:`render_front_opacity`.
        margin_px: :func:`outside_mask`'s margin around ``F_rec``'s silhouette.
        solid_alpha: front opacity from which matter counts as a new solid surface rather than haze.
    """
    if not 0.0 < solid_alpha <= 1.0:
        raise ValueError(f"solid_alpha must be in (0, 1], got {solid_alpha}")
    opaque = front.alpha_rec >= 0.5  # (n, H, W)
    outside = outside_mask(front.alpha_rec, margin_px)
    zero = torch.zeros_like(front.front_sty)
    solid = front.front_sty >= solid_alpha
    added = torch.where(solid | ~opaque, zero, (front.front_sty - front.front_rec).clamp_min(0.0))
    n_opaque = opaque.flatten(1).sum(1).double()  # (n,)
    per_view = added.flatten(1).sum(1).double() / n_opaque.clamp_min(1)
    total_opaque = max(int(opaque.sum()), 1)
    total_out = max(int(outside.sum()), 1)
    semi = torch.where(front.alpha_sty < solid_alpha, front.alpha_sty, zero)
    return HazeReport(
        haze=float(added.sum()) / total_opaque,
        haze_rec=float((front.front_rec * opaque).sum()) / total_opaque,
        haze_max=float(per_view.max()),
        front_solid=float((solid & opaque).sum()) / total_opaque,
        outside_opacity=float((front.alpha_sty * outside).sum()) / total_out,
        outside_haze=float((semi * outside).sum()) / total_out,
        outside_opacity_rec=float((front.alpha_rec * outside).sum()) / total_out,
        opaque_fraction=float(opaque.float().mean()),
    )


def haze_change(ckpt_rec: NeRFCheckpoint, ckpt_sty: NeRFCheckpoint, cameras: Cameras, *, margin_steps: float = 4.0,
                margin_px: int = 3, solid_alpha: float = 0.9, chunk: int = 2**14) -> HazeReport:
    """Haze and new shape ``F_sty`` formed, from world ``cameras``: :func:`render_front_opacity` then
    :func:`haze_from_front_opacity` (see both for the arguments)."""
    front = render_front_opacity(ckpt_rec, ckpt_sty, cameras, margin_steps=margin_steps, chunk=chunk)
    return haze_from_front_opacity(front, margin_px=margin_px, solid_alpha=solid_alpha)


# -- silhouette change (issue 20) --------------------------------------------------------------------------------


@dataclass(frozen=True)
class SilhouetteChange:
    """How ``F_sty``'s outline differs from ``F_rec``'s, from their alphas over the same views (no matte needed).

    Silhouettes are ``alpha >= 0.5``; an *outline* is the silhouette's pixels next to a pixel outside it
    (:func:`outline_mask`; the frame's edge is not an outline). Distances are between pixel centres, in pixels.

    Attributes:
        area_ratio: ``F_sty``'s silhouette area over ``F_rec``'s, summed over the views (1: same size).
        outline_shift_px: mean over views of the symmetric mean distance between the two outlines (each outline
            pixel to the nearest pixel of the other outline, averaged both ways): how far the outline moved.
        outline_growth_px: mean over views of the signed mean distance of ``F_sty``'s outline pixels from
            ``F_rec``'s outline, positive outside ``F_rec``'s silhouette and negative inside it: > 0 grown,
            < 0 shrunk.
        outline_max_px: the largest distance of an ``F_sty`` outline pixel from ``F_rec``'s outline, over all
            views: a local growth such as a horn's tip, which the means dilute.
        head_height_px: mean over views of the rows ``F_rec``'s silhouette spans.
        outline_shift_rel, outline_growth_rel, outline_max_rel: the same three, each view's divided by that view's
            ``F_rec`` silhouette height (fractions of the head's image height; max: the largest).
        n_views: views in which both silhouettes have an outline (the others are left out of every number but
            ``area_ratio``).
    """

    area_ratio: float
    outline_shift_px: float
    outline_growth_px: float
    outline_max_px: float
    head_height_px: float
    outline_shift_rel: float
    outline_growth_rel: float
    outline_max_rel: float
    n_views: int


def outline_mask(mask: Tensor) -> Tensor:  # [n, H, W] bool -> [n, H, W] bool
    """Pixels of ``mask`` with a pixel outside ``mask`` among their 8 neighbours (outside the frame does not count:
    a silhouette that runs off the image has no outline there)."""
    if mask.ndim != 3:
        raise ValueError(f"mask must have shape (n, H, W), got {tuple(mask.shape)}")
    # max_pool2d pads with -inf, so the frame's edge never reads as "outside".
    outside_near = F.max_pool2d((~mask)[:, None].float(), 3, stride=1, padding=1)[:, 0] > 0.5
    return mask & outside_near


def _nearest_distance(points: Tensor, targets: Tensor, chunk: int = 4096) -> Tensor:  # [P, 2], [Q, 2] -> [P]
    """Distance of each point to the nearest target (exact, in chunks to bound the ``P x Q`` matrix)."""
    return torch.cat([torch.cdist(points[i:i + chunk], targets).min(dim=1).values
                      for i in range(0, points.shape[0], chunk)])


@torch.no_grad()
def silhouette_change(alpha_rec: Tensor, alpha_sty: Tensor) -> SilhouetteChange:
    """Area ratio and outline displacement of ``F_sty``'s silhouette against ``F_rec``'s.

    Args:
        alpha_rec: ``(n, H, W)`` opacity of ``F_rec``'s renders (e.g. :attr:`ViewRenders.alpha`).
        alpha_sty: ``(n, H, W)`` opacity of ``F_sty``'s renders from the same cameras.

    Returns:
        :class:`SilhouetteChange` (NaN outline numbers when no view has both outlines).
    """
    if alpha_rec.ndim != 3 or alpha_sty.shape != alpha_rec.shape:
        raise ValueError(f"alphas must both have shape (n, H, W), got {tuple(alpha_rec.shape)} and "
                         f"{tuple(alpha_sty.shape)}")
    # Pixel geometry is small and exact in float64 on the CPU.
    mask_r, mask_s = (alpha_rec >= 0.5).cpu(), (alpha_sty.to(alpha_rec.device) >= 0.5).cpu()
    area_r = int(mask_r.sum())
    area_ratio = int(mask_s.sum()) / area_r if area_r else math.nan
    out_r, out_s = outline_mask(mask_r), outline_mask(mask_s)
    shift, growth, far, height = [], [], [], []
    for v in range(mask_r.shape[0]):
        p_r = out_r[v].nonzero().double()  # (P, 2) row, column
        p_s = out_s[v].nonzero().double()
        if p_r.shape[0] == 0 or p_s.shape[0] == 0:
            continue
        d_s = _nearest_distance(p_s, p_r)  # F_sty's outline to F_rec's
        d_r = _nearest_distance(p_r, p_s)
        outside = ~mask_r[v][out_s[v]]  # same order as nonzero(): row-major
        rows = mask_r[v].any(dim=1).nonzero()[:, 0]
        shift.append(0.5 * (float(d_s.mean()) + float(d_r.mean())))
        growth.append(float(torch.where(outside, d_s, -d_s).mean()))
        far.append(float(d_s.max()))
        height.append(float(rows[-1] - rows[0] + 1))
    if not shift:
        nan = math.nan
        return SilhouetteChange(area_ratio, nan, nan, nan, nan, nan, nan, nan, 0)
    hs = np.asarray(height)
    return SilhouetteChange(
        area_ratio=area_ratio,
        outline_shift_px=float(np.mean(shift)),
        outline_growth_px=float(np.mean(growth)),
        outline_max_px=float(np.max(far)),
        head_height_px=float(hs.mean()),
        outline_shift_rel=float(np.mean(np.asarray(shift) / hs)),
        outline_growth_rel=float(np.mean(np.asarray(growth) / hs)),
        outline_max_rel=float(np.max(np.asarray(far) / hs)),
        n_views=len(shift),
    )


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

