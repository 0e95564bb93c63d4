"""Triton kernels for occupancy-grid ray marching: occupied steps of each ray, written packed.

The pure-PyTorch twin is :func:`backend.nerf.marching._occupied_steps_torch` (a dense ``(n_rays,
max_steps)`` mask compacted with ``nonzero``); ``tests/test_nerf_triton.py`` checks that both give the same
samples. Imported only on first use on a CUDA device.

Why a kernel here: the dense mask touches every (ray, candidate step) pair, ~30 M per training step on
lego, and the compiled PyTorch version spends ~0.35 ns on each (int64 index arithmetic over a dynamic
second dimension), 10 ms a step. The kernels walk each ray's steps in a loop (rays vectorised across a
block, the loop stopping once every ray of the block has left its interval), so the work is proportional
to the steps inside the scene and nothing of size ``n_rays * max_steps`` is written: pass 1 counts the
occupied steps of every ray, an exclusive sum gives offsets, pass 2 writes the step numbers.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl


@triton.jit
def _schedule_setup(s0, dt_min, dt_max, a, b, g, CONE: tl.constexpr):
    # Per-ray constants of the closed-form step schedule (see marching.step_boundaries).
    if CONE:
        k_a = tl.ceil(tl.maximum((a - s0) / dt_min, 0.0))
        s_a = s0 + k_a * dt_min
        k_b = tl.ceil(tl.maximum(tl.log(b / s_a) / g, 0.0))
        s_b = s_a * tl.exp(k_b * g)
    else:
        k_a = s0 * 0.0
        s_a = s0
        k_b = s0 * 0.0
        s_b = s0
    return k_a, s_a, k_b, s_b


@triton.jit
def _boundary(kf, s0, k_a, s_a, k_b, s_b, dt_min, dt_max, g, CONE: tl.constexpr):
    if CONE:
        linear = s0 + kf * dt_min
        geometric = s_a * tl.exp((kf - k_a) * g)
        linear_far = s_b + (kf - k_a - k_b) * dt_max
        s = tl.where(kf <= k_a, linear, tl.where(kf - k_a <= k_b, geometric, linear_far))
    else:
        s = s0 + kf * dt_min
    return s


@triton.jit
def unit_cube(x0, x1, x2, bound, CONTRACT: tl.constexpr):
    """Model coordinates to the grids' unit cube and whether the point is inside it
    (:meth:`~backend.nerf.contraction.SceneDomain.to_unit_cube`; shared with the fused field kernel)."""
    if CONTRACT:
        nrm = tl.maximum(tl.sqrt(x0 * x0 + x1 * x1 + x2 * x2), 1e-12)
        scale = tl.where(nrm <= 1.0, 1.0, (2.0 - 1.0 / nrm) / nrm)
        u0 = (x0 * scale + 2.0) / 4.0
        u1 = (x1 * scale + 2.0) / 4.0
        u2 = (x2 * scale + 2.0) / 4.0
    else:
        u0 = (x0 + bound) / (2.0 * bound)
        u1 = (x1 + bound) / (2.0 * bound)
        u2 = (x2 + bound) / (2.0 * bound)
    inside = (u0 >= 0.0) & (u0 <= 1.0) & (u1 >= 0.0) & (u1 <= 1.0) & (u2 >= 0.0) & (u2 <= 1.0)
    return u0, u1, u2, inside


@triton.jit
def _occupied(o0, o1, o2, d0, d1, d2, mid, binary_ptr, R: tl.constexpr, bound, CONTRACT: tl.constexpr):
    u0, u1, u2, inside = unit_cube(o0 + d0 * mid, o1 + d1 * mid, o2 + d2 * mid, bound, CONTRACT)
    i0 = tl.minimum(tl.maximum((u0 * R).to(tl.int32), 0), R - 1)
    i1 = tl.minimum(tl.maximum((u1 * R).to(tl.int32), 0), R - 1)
    i2 = tl.minimum(tl.maximum((u2 * R).to(tl.int32), 0), R - 1)
    cell = i0 * (R * R) + i1 * R + i2
    occ = tl.load(binary_ptr + cell, mask=inside, other=0)
    return inside & (occ != 0)


@triton.jit
def _march_kernel(rays_o_ptr, rays_d_ptr, s0_ptr, t_max_ptr, binary_ptr, counts_ptr, offsets_ptr, steps_out_ptr,
                  n_rays, max_steps, bound, dt_min, dt_max, a, b, g,
                  R: tl.constexpr, CONE: tl.constexpr, CONTRACT: tl.constexpr, WRITE: tl.constexpr,
                  BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    rays = pid * BLOCK + tl.arange(0, BLOCK)
    m = rays < n_rays
    o0 = tl.load(rays_o_ptr + rays * 3 + 0, mask=m, other=0.0)
    o1 = tl.load(rays_o_ptr + rays * 3 + 1, mask=m, other=0.0)
    o2 = tl.load(rays_o_ptr + rays * 3 + 2, mask=m, other=0.0)
    d0 = tl.load(rays_d_ptr + rays * 3 + 0, mask=m, other=0.0)
    d1 = tl.load(rays_d_ptr + rays * 3 + 1, mask=m, other=0.0)
    d2 = tl.load(rays_d_ptr + rays * 3 + 2, mask=m, other=0.0)
    s0 = tl.load(s0_ptr + rays, mask=m, other=0.0)
    t_max = tl.load(t_max_ptr + rays, mask=m, other=0.0)
    k_a, s_a, k_b, s_b = _schedule_setup(s0, dt_min, dt_max, a, b, g, CONE)
    if WRITE:
        base = tl.load(offsets_ptr + rays, mask=m, other=0)
    count = tl.zeros((BLOCK,), dtype=tl.int32)
    s_lo = _boundary(0.0, s0, k_a, s_a, k_b, s_b, dt_min, dt_max, g, CONE)
    active = m & (s_lo < t_max)
    k = 0
    while (k < max_steps) & (tl.max(active.to(tl.int32), axis=0) > 0):
        kf = k * 1.0
        s_hi = _boundary(kf + 1.0, s0, k_a, s_a, k_b, s_b, dt_min, dt_max, g, CONE)
        mid = 0.5 * (s_lo + tl.minimum(s_hi, t_max))
        occ = active & _occupied(o0, o1, o2, d0, d1, d2, mid, binary_ptr, R, bound, CONTRACT)
        if WRITE:
            tl.store(steps_out_ptr + base + count, count * 0 + k, mask=occ)
        count += occ.to(tl.int32)
        s_lo = s_hi
        k += 1
        active = active & (s_lo < t_max)
    if not WRITE:
        tl.store(counts_ptr + rays, count, mask=m)


# One warp per block of 32 rays: many small blocks keep enough loads in flight (each loop iteration waits
# on one occupancy-grid read) and let short rays finish early.
_BLOCK = 32
_WARPS = 1


def occupied_steps_triton(
    rays_o: torch.Tensor,  # [n_rays, 3]
    rays_d: torch.Tensor,  # [n_rays, 3]
    s0: torch.Tensor,  # [n_rays]
    t_max: torch.Tensor,  # [n_rays]
    binary: torch.Tensor,  # [R, R, R] bool
    kind: str,
    bound: float,
    dt_min: float,
    cone_angle: float,
    dt_max: float,
    max_steps: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Occupied steps of each ray, packed: ``(ray_indices, steps)`` int64 ``(n_occupied,)``, sorted.

    Same contract as :func:`backend.nerf.marching._occupied_steps_torch`.
    """
    n = rays_o.shape[0]
    device = rays_o.device
    if n == 0:
        empty = torch.zeros(0, dtype=torch.int64, device=device)
        return empty, empty
    rays_o = rays_o.float().contiguous()
    rays_d = rays_d.float().contiguous()
    s0 = s0.float().contiguous()
    t_max = t_max.float().contiguous()
    grid_u8 = binary.contiguous().view(torch.uint8)
    res = binary.shape[0]
    cone = cone_angle > 0.0
    a = dt_min / cone_angle if cone else 0.0
    b = dt_max / cone_angle if cone else 0.0
    g = math.log1p(cone_angle) if cone else 0.0
    counts = torch.empty(n, dtype=torch.int32, device=device)
    grid = (triton.cdiv(n, _BLOCK),)
    common = dict(R=res, CONE=cone, CONTRACT=kind == "contract", BLOCK=_BLOCK, num_warps=_WARPS)
    _march_kernel[grid](rays_o, rays_d, s0, t_max, grid_u8, counts, counts, counts, n, max_steps,
                        float(bound), float(dt_min), float(dt_max), a, b, g, WRITE=False, **common)
    counts64 = counts.long()
    offsets = torch.cumsum(counts64, 0) - counts64
    total = int(offsets[-1] + counts64[-1])
    steps = torch.empty(total, dtype=torch.int32, device=device)
    if total > 0:
        _march_kernel[grid](rays_o, rays_d, s0, t_max, grid_u8, counts, offsets, steps, n, max_steps,
                            float(bound), float(dt_min), float(dt_max), a, b, g, WRITE=True, **common)
    ray_indices = torch.repeat_interleave(torch.arange(n, device=device), counts64, output_size=total)
    return ray_indices, steps.long()
