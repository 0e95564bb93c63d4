"""Volume rendering on packed or padded samples (functional, nerfacc's ``volrend`` names).

.. math::

    \\alpha_i = 1 - e^{-\\sigma_i \\delta_i}, \\qquad
    T_i = \\exp\\Big(-\\sum_{j<i} \\sigma_j \\delta_j\\Big), \\qquad w_i = T_i \\alpha_i,

with :math:`\\delta_i = t_{end,i} - t_{start,i}` and the sum running over the samples of the same ray.
"""

from __future__ import annotations

import torch


def exclusive_sum_packed(
    values: torch.Tensor,  # [all_samples]
    ray_indices: torch.Tensor,  # [all_samples]
    packed_info: torch.Tensor,  # [n_rays, 2]
) -> torch.Tensor:  # [all_samples]
    """Per-ray exclusive prefix sum of packed values.

    One global cumulative sum in float64 and a subtraction of each ray's starting value: float64 keeps the
    difference exact to ~1e-12 relative even when the global running sum reaches millions (a float32 global
    sum would lose the per-ray values), and it is differentiable as written.

    Args:
        values: ``(all_samples,)``.
        ray_indices: ``(all_samples,)`` int64, sorted.
        packed_info: ``(n_rays, 2)`` int64 ``[start, count]``.

    Returns:
        ``(all_samples,)`` in ``values.dtype``: sum of the earlier samples of the same ray.
    """
    v = values.double()
    exclusive = torch.cumsum(v, 0) - v
    first = packed_info[:, 0][ray_indices]
    return (exclusive - exclusive[first]).to(values.dtype)


def render_transmittance_from_density(
    t_starts: torch.Tensor,  # [all_samples] or [n_rays, n_samples]
    t_ends: torch.Tensor,  # [all_samples] or [n_rays, n_samples]
    sigmas: torch.Tensor,  # [all_samples] or [n_rays, n_samples]
    ray_indices: torch.Tensor | None = None,  # [all_samples]
    packed_info: torch.Tensor | None = None,  # [n_rays, 2]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Transmittance and alpha of each sample.

    Packed input (1-D tensors) needs ``ray_indices`` and ``packed_info``; padded input ``(n_rays, n_samples)``
    treats each row as one ray (pad with ``t_starts == t_ends`` or ``sigmas == 0``).

    Returns:
        ``transmittance`` and ``alphas``, both shaped like ``sigmas``.
    """
    if not (t_starts.shape == t_ends.shape == sigmas.shape):
        raise ValueError(
            f"t_starts, t_ends, sigmas must share a shape, got {tuple(t_starts.shape)}, "
            f"{tuple(t_ends.shape)}, {tuple(sigmas.shape)}"
        )
    sigmas_delta = sigmas * (t_ends - t_starts)
    if sigmas.ndim == 1:
        if ray_indices is None or packed_info is None:
            raise ValueError("packed (1-D) samples need ray_indices and packed_info")
        if ray_indices.shape != sigmas.shape:
            raise ValueError(f"ray_indices must have shape {tuple(sigmas.shape)}, got {tuple(ray_indices.shape)}")
        tau = exclusive_sum_packed(sigmas_delta, ray_indices, packed_info)
    elif sigmas.ndim == 2:
        tau = torch.cumsum(sigmas_delta, dim=-1) - sigmas_delta
    else:
        raise ValueError(f"samples must be (all_samples,) or (n_rays, n_samples), got {tuple(sigmas.shape)}")
    return torch.exp(-tau), 1.0 - torch.exp(-sigmas_delta)


def render_weight_from_density(
    t_starts: torch.Tensor,  # [all_samples] or [n_rays, n_samples]
    t_ends: torch.Tensor,  # [all_samples] or [n_rays, n_samples]
    sigmas: torch.Tensor,  # [all_samples] or [n_rays, n_samples]
    ray_indices: torch.Tensor | None = None,  # [all_samples]
    packed_info: torch.Tensor | None = None,  # [n_rays, 2]
) -> torch.Tensor:
    """Volume-rendering weights ``w_i = T_i * alpha_i`` (see the module docstring).

    Example:
        >>> t = torch.tensor([0.0, 1.0, 0.0]); ri = torch.tensor([0, 0, 1])
        >>> info = torch.tensor([[0, 2], [2, 1]])
        >>> w = render_weight_from_density(t, t + 1, torch.ones(3), ri, info)   # (3,)
    """
    trans, alphas = render_transmittance_from_density(t_starts, t_ends, sigmas, ray_indices, packed_info)
    return trans * alphas


def accumulate_along_rays(
    weights: torch.Tensor,  # [all_samples]
    values: torch.Tensor | None,  # [all_samples, C] or None
    ray_indices: torch.Tensor,  # [all_samples]
    n_rays: int,
) -> torch.Tensor:  # [n_rays, C] or [n_rays, 1]
    """Sum ``weights * values`` over the samples of each ray (``values=None`` sums the weights).

    Returns:
        ``(n_rays, C)`` (``(n_rays, 1)`` when ``values`` is None).
    """
    if weights.ndim != 1 or ray_indices.shape != weights.shape:
        raise ValueError(
            f"weights and ray_indices must be (all_samples,), got {tuple(weights.shape)} and {tuple(ray_indices.shape)}"
        )
    src = weights[:, None] if values is None else weights[:, None] * values
    out = torch.zeros(n_rays, src.shape[-1], device=weights.device, dtype=src.dtype)
    return out.index_add(0, ray_indices, src)
