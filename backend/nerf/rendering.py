"""Rendering rays and images from a :class:`~backend.nerf.model.NeRFModel`.

Two entry points serve deferred back-propagation (NeRF-Art spec, Section 6, project form):

* :func:`render_rays` marches rays through the occupancy grid (no gradients), then composites with
  :func:`render_samples`; with ``return_samples=True`` it returns the :class:`PackedSamples` it used.
* :func:`render_samples` evaluates the field at exactly the given samples and composites them. It is
  differentiable with respect to the field's parameters, so pass 2 of deferred back-propagation calls it
  per chunk on the samples stored by pass 1 and gets the same image (bit-identical in eager mode; equal up
  to kernel rounding when the field is compiled) and the same parameter gradient as direct back-prop.

Example (deferred back-propagation of an image loss ``loss_fn``):

    >>> with torch.no_grad():
    ...     passes = [render_rays(model, o[c], d[c], bg[c], return_samples=True) for c in chunks]
    >>> image = torch.cat([p.rgb for p in passes]).requires_grad_(True)
    >>> loss_fn(image).backward()
    >>> for c, p in zip(chunks, passes):
    ...     out = render_samples(model, p.samples, d[c], bg[c])
    ...     out.rgb.backward(image.grad[c])
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .marching import march_rays
from .model import NeRFModel
from .packed import PackedSamples
from .subject import SubjectBounds


@dataclass
class RenderOutput:
    """What rendering returns for ``n_rays`` rays.

    Attributes:
        rgb: ``(n_rays, 3)`` colour; composited over ``background`` when one was given, otherwise
            premultiplied by ``opacity`` (i.e. over black).
        opacity: ``(n_rays,)`` accumulated weight (alpha of the pixel).
        depth: ``(n_rays,)`` expected termination distance given termination,
            ``sum(w t_mid) / max(opacity, 1e-10)``, in model units along unit directions (0 where empty).
        weights: ``(all_samples,)`` volume-rendering weight of each sample.
        samples: the :class:`PackedSamples` used (only when asked for; always set by :func:`render_samples`).
    """

    rgb: torch.Tensor
    opacity: torch.Tensor
    depth: torch.Tensor
    weights: torch.Tensor
    samples: PackedSamples | None = None


def _check_rays(rays_o: torch.Tensor | None, rays_d: torch.Tensor) -> None:
    if rays_d.ndim != 2 or rays_d.shape[-1] != 3:
        raise ValueError(f"rays_d must have shape (n_rays, 3), got {tuple(rays_d.shape)}")
    if rays_o is not None and rays_o.shape != rays_d.shape:
        raise ValueError(f"rays_o must have shape {tuple(rays_d.shape)}, got {tuple(rays_o.shape)}")


def _background(background: torch.Tensor | None, n_rays: int, ref: torch.Tensor) -> torch.Tensor | None:
    if background is None:
        return None
    bg = background.to(device=ref.device, dtype=ref.dtype)
    if bg.shape == (3,):
        return bg.expand(n_rays, 3)
    if bg.shape != (n_rays, 3):
        raise ValueError(f"background must have shape (3,) or ({n_rays}, 3), got {tuple(bg.shape)}")
    return bg


def render_samples(
    model: NeRFModel,
    samples: PackedSamples,
    rays_d: torch.Tensor,  # [n_rays, 3]
    background: torch.Tensor | None = None,  # [n_rays, 3] or [3]
) -> RenderOutput:
    """Evaluate the field at ``samples`` and composite (differentiable).

    Args:
        model: the NeRF.
        samples: packed samples of ``n_rays`` rays (e.g. from ``render_rays(..., return_samples=True)``).
        rays_d: ``(n_rays, 3)`` unit directions of the same rays (view directions of the colour MLP).
        background: ``(3,)`` or ``(n_rays, 3)`` colour behind the scene, or None (premultiplied output).

    Returns:
        :class:`RenderOutput` with ``samples`` set. When ``samples`` is empty the output is the background
        (or zeros) and does not depend on the model (``rgb.requires_grad`` is False): skip its backward.
    """
    _check_rays(None, rays_d)
    n_rays = rays_d.shape[0]
    if samples.n_rays != n_rays:
        raise ValueError(f"samples hold {samples.n_rays} rays but rays_d has shape {tuple(rays_d.shape)}")
    bg = _background(background, n_rays, rays_d)
    if samples.n_samples == 0:
        # Nothing occupied along any ray (avoids zero-size kernels, which compiled code specialises on).
        zeros = torch.zeros(n_rays, device=rays_d.device, dtype=rays_d.dtype)
        rgb = torch.zeros(n_rays, 3, device=rays_d.device, dtype=rays_d.dtype) if bg is None else bg.clone()
        return RenderOutput(rgb=rgb, opacity=zeros, depth=zeros.clone(), weights=samples.t_starts.clone(),
                            samples=samples)
    ri = samples.ray_indices
    rgb, opacity, depth, weights = model.composite(samples.positions, rays_d[ri], samples.t_starts, samples.t_ends,
                                                   ri, samples.packed_info, None if bg is None else bg.contiguous())
    return RenderOutput(rgb=rgb, opacity=opacity, depth=depth, weights=weights, samples=samples)


def render_rays(
    model: NeRFModel,
    rays_o: torch.Tensor,  # [n_rays, 3]
    rays_d: torch.Tensor,  # [n_rays, 3]
    background: torch.Tensor | None = None,  # [n_rays, 3] or [3]
    *,
    jitter: torch.Tensor | None = None,  # [n_rays]
    early_stop_eps: float = 1e-4,
    alpha_thre: float = 0.0,
    first_round: int = 32,
    return_samples: bool = False,
    subject: SubjectBounds | None = None,
) -> RenderOutput:
    """March rays through the occupancy grid and volume-render them.

    Marching and early termination run without gradients; compositing (:func:`render_samples`) is
    differentiable when grad mode is on.

    Args:
        model: the NeRF (model coordinates).
        rays_o: ``(n_rays, 3)`` origins, model coordinates.
        rays_d: ``(n_rays, 3)`` unit directions.
        background: ``(3,)`` or ``(n_rays, 3)`` background colour, or None (premultiplied output).
        jitter: ``(n_rays,)`` in ``[0, 1)``: stratified offset of each ray's steps (training); None for
            deterministic steps.
        early_stop_eps: drop samples with transmittance below this (0 keeps them all).
        alpha_thre: drop samples with alpha below this.
        first_round: occupied samples per ray whose density the first early-termination round evaluates
            (see :func:`~backend.nerf.marching.march_rays`).
        return_samples: keep the packed samples in the output (for deferred back-propagation, losses on
            weights, or inspection).
        subject: march only inside these bounds (the subject alone: a ray that misses them has no samples,
            opacity 0 and the background colour); None renders the whole scene.

    Returns:
        :class:`RenderOutput`; ``samples`` is None unless ``return_samples``.
    """
    _check_rays(rays_o, rays_d)
    samples = march_rays(
        rays_o, rays_d, model.occupancy, model.domain, model.settings, jitter=jitter,
        sigma_fn=model.density, early_stop_eps=early_stop_eps, alpha_thre=alpha_thre, first_round=first_round,
        mask_fn=model._mask_fn, subject=subject,
    )
    out = render_samples(model, samples, rays_d, background)
    if not return_samples:
        out.samples = None
    return out


@torch.no_grad()
def render_rays_chunked(
    model: NeRFModel,
    rays_o: torch.Tensor,  # [n_rays, 3]
    rays_d: torch.Tensor,  # [n_rays, 3]
    background: torch.Tensor | None = None,  # [n_rays, 3] or [3]
    chunk: int = 2**15,
    early_stop_eps: float = 1e-4,
    subject: SubjectBounds | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Render many rays without gradients, ``chunk`` at a time (inside ``subject`` only, when given).

    Returns:
        ``rgb`` ``(n_rays, 3)``, ``opacity`` ``(n_rays,)``, ``depth`` ``(n_rays,)``.
    """
    _check_rays(rays_o, rays_d)
    n = rays_o.shape[0]
    bg = _background(background, n, rays_d)
    rgb, opacity, depth = [], [], []
    for c0 in range(0, n, chunk):
        c1 = min(n, c0 + chunk)
        out = render_rays(model, rays_o[c0:c1], rays_d[c0:c1], None if bg is None else bg[c0:c1],
                          early_stop_eps=early_stop_eps, subject=subject)
        rgb.append(out.rgb)
        opacity.append(out.opacity)
        depth.append(out.depth)
    return torch.cat(rgb), torch.cat(opacity), torch.cat(depth)
