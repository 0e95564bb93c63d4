"""The subject alone, and the subject put back into its scene (issue 20).

With subject bounds (:class:`~backend.nerf.subject.SubjectBounds`) a stylization changes only what lies inside
them: every render it makes marches rays inside the bounds alone and composites them over a plain colour, so its
losses see the subject on a plain ground whether the reconstruction modelled its room ("contract") or not
("matte"). The background keeps its reconstructed look because it is never rendered from ``F_sty``: a frame with
the background takes ``F_sty`` inside the bounds and ``F_rec`` outside them.

* :func:`render_image_in_subject` — one camera of a checkpoint, the subject alone with its alpha.
* :func:`subject_cells` — the occupancy cells that touch the bounds (where a stylization may grow shape).
* :func:`render_rays_with_background` / :func:`render_image_with_background` — one field inside the bounds and
  another outside, composited along each ray in depth order (``F_sty`` in its scene).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from backend.nerf.checkpoint import NeRFCheckpoint
from backend.nerf.contraction import SceneDomain
from backend.nerf.marching import march_rays
from backend.nerf.model import NeRFModel
from backend.nerf.occupancy import OccupancyGrid
from backend.nerf.rays import rays_for_image
from backend.nerf.rendering import RenderOutput, _check_rays, render_rays_chunked, render_samples
from backend.nerf.subject import SubjectBounds
from backend.nerf.volrend import accumulate_along_rays, render_weight_from_density
from captures.cameras import Cameras

__all__ = [
    "render_image_in_subject",
    "render_image_with_background",
    "render_rays_with_background",
    "subject_cells",
]


def _model_cameras(ckpt: NeRFCheckpoint, cameras: Cameras) -> Cameras:
    return cameras if ckpt.normalization is None else ckpt.normalization.cameras_to_model(cameras)


@torch.no_grad()
def render_image_in_subject(
    ckpt: NeRFCheckpoint,
    cameras: Cameras,
    i: int,
    *,
    subject: SubjectBounds | None,
    background: tuple[float, float, float] | None = None,
    chunk: int = 2**15,
) -> Tensor:  # [H, W, 4]
    """Camera ``i`` of ``cameras`` (world coordinates) rendered inside ``subject`` only.

    Args:
        ckpt: the model with its normalization.
        cameras: world cameras.
        i: which camera.
        subject: the bounds (model coordinates), or None for the whole scene.
        background: RGB behind the subject; None gives premultiplied colour (over black).
        chunk: rays per rendering chunk.

    Returns:
        ``(H, W, 4)`` float32 RGBA (RGB premultiplied unless a background was given; A = opacity).
    """
    if not 0 <= i < len(cameras):
        raise ValueError(f"camera index {i} out of range for {len(cameras)} cameras")
    model = ckpt.model
    rays_o, rays_d = rays_for_image(_model_cameras(ckpt, cameras), i, device=model.device, dtype=torch.float32)
    bg = None if background is None else torch.tensor(background, dtype=torch.float32, device=model.device)
    rgb, opacity, _ = render_rays_chunked(model, rays_o, rays_d, bg, chunk=chunk,
                                          early_stop_eps=float(ckpt.config.early_stop_eps), subject=subject)
    h, w = int(cameras.height[i]), int(cameras.width[i])
    return torch.cat([rgb, opacity[:, None]], dim=-1).reshape(h, w, 4)


def _same_normalization(a: NeRFCheckpoint, b: NeRFCheckpoint) -> bool:
    na, nb = a.normalization, b.normalization
    if na is None or nb is None:
        return na is None and nb is None
    return bool(np.allclose(na.center, nb.center) and np.isclose(na.radius, nb.radius))


@torch.no_grad()
def subject_cells(subject: SubjectBounds, resolution: int, domain: SceneDomain,
                  device: torch.device | str = "cpu") -> Tensor:  # [R, R, R] bool
    """The occupancy cells (``resolution^3`` over the domain's unit cube) that touch the subject bounds.

    A cell touches them when one of its eight corners or its centre lies inside (in model coordinates, through
    the domain's contraction). Cells the bounds only graze between those points are left out: the bounds carry
    a margin around the person, so nothing of the subject lives there.

    Args:
        subject: the bounds (model coordinates).
        resolution: cells per axis ``R``.
        domain: the scene domain of the occupancy grid.
        device: of the result.

    Returns:
        ``(R, R, R)`` bool, indexed ``[ix, iy, iz]`` as :class:`~backend.nerf.occupancy.OccupancyGrid.binary`.
    """
    r = int(resolution)
    if r < 1:
        raise ValueError(f"resolution must be >= 1, got {r}")

    def inside(ticks: Tensor) -> Tensor:  # [n] unit-cube ticks -> [n, n, n] bool
        u = torch.stack(torch.meshgrid(ticks, ticks, ticks, indexing="ij"), dim=-1).reshape(-1, 3)
        x = domain.from_unit_cube(u)
        n = ticks.shape[0]
        return subject.contains(x).reshape(n, n, n)

    corners = torch.arange(r + 1, dtype=torch.float64, device=device) / r
    centres = (torch.arange(r, dtype=torch.float64, device=device) + 0.5) / r
    # A cell touches the bounds when any of its 2x2x2 corners does: a max over each 2x2x2 window of the lattice.
    by_corner = F.max_pool3d(inside(corners)[None, None].float(), 2, stride=1)[0, 0] > 0.5
    return by_corner | inside(centres)


def union_occupancy(a: NeRFModel, b: NeRFModel) -> OccupancyGrid:
    """An occupancy grid marking the cells either model occupies (``a``'s own grid when they agree)."""
    if a.occupancy.resolution != b.occupancy.resolution:
        raise ValueError(f"the models' occupancy grids differ in resolution ({a.occupancy.resolution} and "
                         f"{b.occupancy.resolution})")
    if torch.equal(a.occupancy.binary, b.occupancy.binary):
        return a.occupancy
    grid = OccupancyGrid(a.occupancy.resolution, device=a.device)
    grid.binary.copy_(a.occupancy.binary | b.occupancy.binary.to(a.device))
    return grid


def _split_by(mask: Tensor, x: Tensor, fn_in: Callable[[Tensor], Tensor],
              fn_out: Callable[[Tensor], Tensor]) -> Tensor:
    """``fn_in`` on the rows of ``x`` where ``mask`` holds, ``fn_out`` on the others, as one ``(n,)`` tensor."""
    out = torch.zeros(x.shape[0], dtype=torch.float32, device=x.device)
    if bool(mask.any()):
        out[mask] = fn_in(x[mask]).float()
    if not bool(mask.all()):
        out[~mask] = fn_out(x[~mask]).float()
    return out


@torch.no_grad()
def render_rays_with_background(
    inside: NeRFModel,
    outside: NeRFModel,
    subject: SubjectBounds | None,
    rays_o: Tensor,  # [n_rays, 3]
    rays_d: Tensor,  # [n_rays, 3]
    background: Tensor | None = None,  # [3] or [n_rays, 3]
    *,
    early_stop_eps: float = 1e-4,
    occupancy: OccupancyGrid | None = None,
) -> RenderOutput:
    """Volume-render ``inside`` within the subject bounds and ``outside`` everywhere else, along the same rays.

    One march over both models' occupied cells (:func:`union_occupancy`; the same cells for a stylization of
    this project, whose grid keeps ``F_rec``'s cells and grows only inside the bounds) gives samples in depth
    order; each sample is evaluated by the model on its side (its midpoint decides: ``inside`` where it lies in
    the bounds and in one of ``inside``'s cells, ``outside`` elsewhere) and all are
    composited together, so the background in front of the subject occludes it and the subject occludes what
    lies behind it. Early termination uses the composite density. A ray that never meets the bounds is exactly
    ``outside``'s own render (same samples, same field).

    Args:
        inside: the field inside the bounds (``F_sty``).
        outside: the field outside them (``F_rec``); same scene domain and step schedule as ``inside``.
        subject: the bounds (model coordinates); None renders ``inside`` everywhere.
        rays_o, rays_d: ``(n_rays, 3)`` model coordinates, unit directions.
        background: ``(3,)`` or ``(n_rays, 3)`` colour behind everything, or None (premultiplied).
        early_stop_eps: drop samples with transmittance below this.
        occupancy: the grid to march (default: :func:`union_occupancy` of the two models); pass it when
            rendering many chunks.

    Returns:
        :class:`~backend.nerf.rendering.RenderOutput` (``weights`` per sample; ``samples`` set).
    """
    _check_rays(rays_o, rays_d)
    if inside.domain != outside.domain or inside.settings != outside.settings:
        raise ValueError("the inside and outside models must share their scene domain and step schedule "
                         f"({inside.domain} / {outside.domain})")
    grid = occupancy if occupancy is not None else union_occupancy(outside, inside)

    def side(x: Tensor) -> Tensor:  # [n, 3] -> [n] bool: True where ``inside`` holds the field
        if subject is None:
            return torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        # Inside the bounds and in one of ``inside``'s cells: a stylization that let the shape grow leaves the
        # room's cells between the subject and its grown bounds out of its grid, and they stay ``outside``'s.
        return subject.contains(x) & inside.occupied(x)

    def sigma_fn(x: Tensor) -> Tensor:
        return _split_by(side(x), x, inside.density, outside.density)

    samples = march_rays(rays_o, rays_d, grid, outside.domain, outside.settings, sigma_fn=sigma_fn,
                         early_stop_eps=early_stop_eps, mask_fn=outside._mask_fn)
    n_rays = rays_o.shape[0]
    if samples.n_samples == 0:
        return render_samples(outside, samples, rays_d, background)
    ri = samples.ray_indices
    dirs = rays_d[ri]
    m = side(samples.positions)
    rgbs = torch.zeros(samples.n_samples, 3, dtype=torch.float32, device=rays_d.device)
    sigmas = torch.zeros(samples.n_samples, dtype=torch.float32, device=rays_d.device)
    for model, sel in ((inside, m), (outside, ~m)):
        if bool(sel.any()):
            rgb_s, sigma_s = model.radiance(samples.positions[sel], dirs[sel])
            rgbs[sel] = rgb_s.float()
            sigmas[sel] = sigma_s.float()
    weights = render_weight_from_density(samples.t_starts, samples.t_ends, sigmas, ri, samples.packed_info)
    rgb = accumulate_along_rays(weights, rgbs, ri, n_rays)
    opacity = accumulate_along_rays(weights, None, ri, n_rays)[:, 0]
    t_mid = 0.5 * (samples.t_starts + samples.t_ends)
    depth = accumulate_along_rays(weights, t_mid[:, None], ri, n_rays)[:, 0] / opacity.clamp_min(1e-10)
    if background is not None:
        bg = background.to(rgb.device, rgb.dtype)
        rgb = rgb + (1.0 - opacity)[:, None] * (bg if bg.ndim == 2 else bg.expand(n_rays, 3))
    return RenderOutput(rgb=rgb, opacity=opacity, depth=depth, weights=weights, samples=samples)


@torch.no_grad()
def render_image_with_background(
    ckpt_sty: NeRFCheckpoint,
    ckpt_rec: NeRFCheckpoint,
    cameras: Cameras,
    i: int,
    *,
    subject: SubjectBounds | None = None,
    background: tuple[float, float, float] | None = None,
    chunk: int = 2**15,
) -> Tensor:  # [H, W, 4]
    """A stylized model in its scene: ``ckpt_sty`` inside the subject bounds, ``ckpt_rec`` outside them.

    Args:
        ckpt_sty: the stylization (``F_sty``); its ``subject`` is the default bounds.
        ckpt_rec: the reconstruction it was stylized from (``F_rec``, the stylize job's ``params.source_job``);
            same normalization.
        cameras: world cameras.
        i: which camera.
        subject: bounds to use instead of ``ckpt_sty.subject`` (model coordinates); when both are None the
            whole frame is ``F_sty`` (a stylization made without bounds).
        background: RGB behind everything; None gives premultiplied colour (a "contract" scene is opaque).
        chunk: rays per rendering chunk.

    Returns:
        ``(H, W, 4)`` float32 RGBA (RGB premultiplied unless a background was given; A = opacity).
    """
    if not 0 <= i < len(cameras):
        raise ValueError(f"camera index {i} out of range for {len(cameras)} cameras")
    bounds = subject if subject is not None else ckpt_sty.subject
    model = ckpt_sty.model
    rec = ckpt_rec.model
    if rec.device != model.device:
        raise ValueError(f"the models are on different devices ({model.device} and {rec.device})")
    if not _same_normalization(ckpt_sty, ckpt_rec):
        raise ValueError("the stylized model and the reconstruction have different normalizations: the "
                         "reconstruction must be the one the stylization started from")
    rays_o, rays_d = rays_for_image(_model_cameras(ckpt_sty, cameras), i, device=model.device, dtype=torch.float32)
    bg = None if background is None else torch.tensor(background, dtype=torch.float32, device=model.device)
    grid = union_occupancy(rec, model)
    rgb, opacity = [], []
    for c0 in range(0, rays_o.shape[0], chunk):
        out = render_rays_with_background(model, rec, bounds, rays_o[c0:c0 + chunk], rays_d[c0:c0 + chunk], bg,
                                          early_stop_eps=float(ckpt_rec.config.early_stop_eps), occupancy=grid)
        rgb.append(out.rgb)
        opacity.append(out.opacity)
    h, w = int(cameras.height[i]), int(cameras.width[i])
    return torch.cat([torch.cat(rgb), torch.cat(opacity)[:, None]], dim=-1).reshape(h, w, 4)
