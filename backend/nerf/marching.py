"""Ray marching through the occupancy grid, with transmittance-based early termination.

Marching is written for a GPU without custom kernels: every ray takes the same ``max_steps`` candidate
steps as one dense ``(n_rays, max_steps)`` array (one fused kernel under ``torch.compile``), the occupancy
grid masks them, and ``nonzero`` compacts the survivors into the packed layout. Early termination then
evaluates the density of the occupied samples (no gradients) in rounds of increasing depth rank, so that
samples behind an opaque surface are neither evaluated nor kept.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .contraction import SceneDomain
from .occupancy import OccupancyGrid
from .packed import PackedSamples, packed_info_from_ray_indices
from .subject import SubjectBounds
from .volrend import exclusive_sum_packed


@dataclass(frozen=True)
class MarchSettings:
    """Step schedule along rays (model units).

    The step at distance ``t`` is ``clamp(t * cone_angle, dt_min, dt_max)`` (instant-ngp's cone stepping;
    ``cone_angle = 0`` gives uniform steps of ``dt_min``).

    Attributes:
        dt_min: smallest step.
        cone_angle: step growth per unit distance.
        dt_max: largest step.
        near: no sample starts before this distance from the ray origin.
        far: no sample ends after this distance (``"contract"`` scenes; bounded scenes stop at the box).
        max_steps: candidate steps per ray (the dense march width).
    """

    dt_min: float
    cone_angle: float = 0.0
    dt_max: float = 1e10
    near: float = 0.0
    far: float = 1e10
    max_steps: int = 1024

    def __post_init__(self) -> None:
        if not (self.dt_min > 0 and self.dt_max >= self.dt_min and self.cone_angle >= 0):
            raise ValueError(f"bad step schedule: dt_min={self.dt_min} dt_max={self.dt_max} cone={self.cone_angle}")
        if not (0 <= self.near < self.far):
            raise ValueError(f"need 0 <= near < far, got near={self.near} far={self.far}")
        if self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {self.max_steps}")


def steps_to_cover(t0: float, t1: float, dt_min: float, cone_angle: float, dt_max: float) -> int:
    """Number of steps the schedule needs to go from ``t0`` to ``t1`` (sizes ``max_steps``)."""
    s = torch.tensor([t0], dtype=torch.float64)
    lo, hi = 1, 1
    while float(step_boundaries(s, torch.tensor([hi], dtype=torch.float64), dt_min, cone_angle, dt_max)[0]) < t1:
        lo, hi = hi, hi * 2
    while lo < hi:
        mid = (lo + hi) // 2
        if float(step_boundaries(s, torch.tensor([mid], dtype=torch.float64), dt_min, cone_angle, dt_max)[0]) < t1:
            lo = mid + 1
        else:
            hi = mid
    return hi


def step_boundaries(
    s0: torch.Tensor,  # [...] broadcastable
    k: torch.Tensor,  # [...] broadcastable, step numbers (any real dtype)
    dt_min: float,
    cone_angle: float,
    dt_max: float,
) -> torch.Tensor:
    """Distance of boundary ``k`` of the step schedule starting at ``s0``, in closed form.

    The recursion ``s_{k+1} = s_k + clamp(s_k * c, dt_min, dt_max)`` has three phases: linear with
    ``dt_min`` until ``s >= dt_min / c``, geometric with ratio ``1 + c`` until ``s >= dt_max / c``, then
    linear with ``dt_max``. Writing it in closed form lets every (ray, step) pair be computed in parallel.
    """
    dtype = torch.promote_types(s0.dtype, torch.float32)
    s0 = s0.to(dtype)
    kf = k.to(dtype)
    if cone_angle <= 0.0:
        return s0 + kf * dt_min
    a = dt_min / cone_angle
    b = dt_max / cone_angle
    g = math.log1p(cone_angle)
    k_a = torch.ceil(((a - s0) / dt_min).clamp_min(0.0))
    s_a = s0 + k_a * dt_min
    k_b = torch.ceil((torch.log(b / s_a) / g).clamp_min(0.0))
    s_b = s_a * torch.exp(k_b * g)
    linear = s0 + kf * dt_min
    geometric = s_a * torch.exp((kf - k_a) * g)
    linear_far = s_b + (kf - k_a - k_b) * dt_max
    return torch.where(kf <= k_a, linear, torch.where(kf - k_a <= k_b, geometric, linear_far))


def ray_aabb_intersect(
    rays_o: torch.Tensor,  # [n_rays, 3]
    rays_d: torch.Tensor,  # [n_rays, 3]
    bound: float,
) -> tuple[torch.Tensor, torch.Tensor]:  # [n_rays], [n_rays]
    """Entry and exit distances of rays through the box ``[-bound, bound]^3`` (slab test).

    Returns:
        ``t_min`` and ``t_max`` ``(n_rays,)``; rays that miss have ``t_max <= t_min``.
    """
    inv_d = 1.0 / torch.where(rays_d.abs() < 1e-12, torch.full_like(rays_d, 1e-12), rays_d)
    t0 = (-bound - rays_o) * inv_d
    t1 = (bound - rays_o) * inv_d
    t_min = torch.minimum(t0, t1).amax(dim=-1)
    t_max = torch.maximum(t0, t1).amin(dim=-1)
    return t_min, t_max


def ray_interval(
    rays_o: torch.Tensor,  # [n_rays, 3]
    rays_d: torch.Tensor,  # [n_rays, 3]
    domain: SceneDomain,
    settings: MarchSettings,
    subject: SubjectBounds | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:  # [n_rays], [n_rays]
    """The ``[t_min, t_max]`` range each ray is marched over (the box, or ``[near, far]`` when contracted),
    cut to the subject bounds when given: then only the subject is sampled (rays that miss it get
    ``t_max <= t_min`` and no samples)."""
    if domain.kind == "bounded":
        t_min, t_max = ray_aabb_intersect(rays_o, rays_d, domain.bound)
        t_min = t_min.clamp_min(settings.near)
        t_max = torch.minimum(t_max, torch.full_like(t_max, settings.far))
    else:
        t_min = torch.full_like(rays_o[:, 0], settings.near)
        t_max = torch.full_like(rays_o[:, 0], settings.far)
    if subject is not None:
        s_min, s_max = subject.ray_interval(rays_o, rays_d)
        t_min = torch.maximum(t_min, s_min)
        t_max = torch.minimum(t_max, s_max)
    return t_min, t_max


def dense_occupied_mask(
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
) -> torch.Tensor:  # [n_rays, max_steps] bool
    """Which of the ``max_steps`` candidate steps of each ray lie in an occupied cell (before ``t_max``).

    Step ``k`` covers ``[s_k, min(s_{k+1}, t_max)]`` with ``s_k`` from :func:`step_boundaries`; it is
    tested at its midpoint. Pure tensor code with Python-constant settings, written to be compiled.
    """
    k = torch.arange(max_steps + 1, device=rays_o.device, dtype=rays_o.dtype)
    s = step_boundaries(s0[:, None], k[None, :], dt_min, cone_angle, dt_max)
    s_lo = s[:, :-1]
    s_hi = torch.minimum(s[:, 1:], t_max[:, None])
    valid = s_lo < t_max[:, None]
    mid = 0.5 * (s_lo + s_hi)
    x = rays_o[:, None, :] + rays_d[:, None, :] * mid[..., None]
    u = SceneDomain(kind, bound).to_unit_cube(x)
    r = binary.shape[0]
    inside = ((u >= 0.0) & (u <= 1.0)).all(dim=-1)
    ijk = (u * r).long().clamp(0, r - 1)
    occupied = binary.view(-1)[ijk[..., 0] * (r * r) + ijk[..., 1] * r + ijk[..., 2]]
    return valid & inside & occupied


MaskFn = Callable[..., torch.Tensor]


@functools.cache
def has_triton_march() -> bool:
    """Whether the Triton marching kernels can be used (Triton importable; a CUDA device is needed too)."""
    try:
        from . import _triton_march  # noqa: F401
    except ImportError:
        return False
    return True


def _occupied_steps_torch(
    rays_o: torch.Tensor,  # [n_rays, 3]
    rays_d: torch.Tensor,  # [n_rays, 3]
    s0: torch.Tensor,  # [n_rays]
    t_max: torch.Tensor,  # [n_rays]
    binary: torch.Tensor,  # [R, R, R] bool
    kind: str,
    bound: float,
    settings: MarchSettings,
    mask_fn: MaskFn | None = None,
    max_cells: int = 2**24,
) -> tuple[torch.Tensor, torch.Tensor]:  # [n_occupied], [n_occupied]
    """Occupied steps of every ray, packed ``(ray_indices, steps)`` int64 and sorted (pure-PyTorch twin
    of the Triton kernels): a dense ``(n_rays, max_steps)`` mask per chunk of rays, compacted by ``nonzero``."""
    mask_fn = mask_fn or dense_occupied_mask
    n_rays = rays_o.shape[0]
    chunk = max(1, max_cells // settings.max_steps)
    rays, steps = [], []
    for c0 in range(0, n_rays, chunk):
        c1 = min(n_rays, c0 + chunk)
        # Compiled code specialises sizes 0 and 1 (see NeRFModel.density); run such chunks eagerly.
        fn = dense_occupied_mask if c1 - c0 < 2 else mask_fn
        mask = fn(rays_o[c0:c1], rays_d[c0:c1], s0[c0:c1], t_max[c0:c1], binary, kind, float(bound),
                  settings.dt_min, settings.cone_angle, settings.dt_max, settings.max_steps)
        nz = torch.nonzero(mask)
        rays.append(nz[:, 0] + c0)
        steps.append(nz[:, 1])
    if not rays:
        empty = torch.zeros(0, dtype=torch.int64, device=rays_o.device)
        return empty, empty
    return torch.cat(rays), torch.cat(steps)


def occupied_steps(
    rays_o: torch.Tensor,  # [n_rays, 3]
    rays_d: torch.Tensor,  # [n_rays, 3]
    s0: torch.Tensor,  # [n_rays]
    t_max: torch.Tensor,  # [n_rays]
    occupancy: OccupancyGrid,
    domain: SceneDomain,
    settings: MarchSettings,
    impl: str = "auto",
    mask_fn: MaskFn | None = None,
    max_cells: int = 2**24,
) -> tuple[torch.Tensor, torch.Tensor]:  # [n_occupied], [n_occupied]
    """Occupied steps of every ray (step ``k`` covers ``[s_k, min(s_{k+1}, t_max)]``, tested at its midpoint).

    Args:
        rays_o, rays_d: ``(n_rays, 3)`` origins and unit directions.
        s0: ``(n_rays,)`` distance of each ray's first step boundary.
        t_max: ``(n_rays,)`` end of each ray's interval.
        occupancy, domain, settings: grid, scene domain and step schedule.
        impl: ``"triton"`` (CUDA kernels), ``"torch"`` (dense mask + ``nonzero``) or ``"auto"``.
        mask_fn: replacement for :func:`dense_occupied_mask` on the PyTorch path (its compiled version).
        max_cells: bound on ``n_rays * max_steps`` per dense chunk on the PyTorch path.

    Returns:
        ``ray_indices`` and ``steps``, ``(n_occupied,)`` int64, sorted by ray then step.
    """
    if impl not in ("auto", "torch", "triton"):
        raise ValueError(f"impl must be 'auto', 'torch' or 'triton', got {impl!r}")
    if impl == "triton" or (impl == "auto" and rays_o.is_cuda and has_triton_march()):
        from ._triton_march import occupied_steps_triton

        return occupied_steps_triton(rays_o, rays_d, s0, t_max, occupancy.binary, domain.kind, float(domain.bound),
                                     settings.dt_min, settings.cone_angle, settings.dt_max, settings.max_steps)
    return _occupied_steps_torch(rays_o, rays_d, s0, t_max, occupancy.binary, domain.kind, domain.bound, settings,
                                 mask_fn=mask_fn, max_cells=max_cells)


def _intervals(
    rays_o: torch.Tensor, rays_d: torch.Tensor, s0: torch.Tensor, t_max: torch.Tensor,
    ray: torch.Tensor, step: torch.Tensor, settings: MarchSettings,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    s_r = s0[ray]
    lo = step_boundaries(s_r, step, settings.dt_min, settings.cone_angle, settings.dt_max)
    hi = step_boundaries(s_r, step + 1, settings.dt_min, settings.cone_angle, settings.dt_max)
    hi = torch.minimum(hi, t_max[ray])
    pos = rays_o[ray] + rays_d[ray] * (0.5 * (lo + hi))[:, None]
    return lo, hi, pos


@torch.no_grad()
def march_rays(
    rays_o: torch.Tensor,  # [n_rays, 3]
    rays_d: torch.Tensor,  # [n_rays, 3]
    occupancy: OccupancyGrid,
    domain: SceneDomain,
    settings: MarchSettings,
    jitter: torch.Tensor | None = None,  # [n_rays]
    sigma_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
    early_stop_eps: float = 1e-4,
    alpha_thre: float = 0.0,
    first_round: int = 32,
    max_cells: int = 2**24,
    mask_fn: MaskFn | None = None,
    impl: str = "auto",
    stats: dict[str, int] | None = None,
    subject: SubjectBounds | None = None,
) -> PackedSamples:
    """Samples of each ray that lie in occupied space and are visible (transmittance >= ``early_stop_eps``).

    Args:
        rays_o: ``(n_rays, 3)`` model-coordinate origins.
        rays_d: ``(n_rays, 3)`` unit directions.
        occupancy: the occupancy grid (over the domain's unit cube).
        domain: the scene domain.
        settings: step schedule.
        jitter: ``(n_rays,)`` in ``[0, 1)``: each ray's schedule starts ``jitter * dt_min`` past ``t_min``
            (stratified sampling while training); None starts at ``t_min`` exactly.
        sigma_fn: maps ``(m, 3)`` positions to ``(m,)`` densities; needed for early termination and the
            alpha threshold. None keeps every occupied sample.
        early_stop_eps: drop samples whose transmittance is below this.
        alpha_thre: drop samples whose alpha is below this.
        first_round: occupied samples per ray whose density the first early-termination round evaluates;
            each later round takes 16x more, for the rays still visible. Small values evaluate fewer
            samples behind surfaces but cost more rounds (one host sync each).
        max_cells: bound on ``n_rays * max_steps`` per dense march (PyTorch path; memory).
        mask_fn: replacement for :func:`dense_occupied_mask` (its compiled version), same signature.
        impl: marching implementation, see :func:`occupied_steps`.
        stats: if given, filled with ``n_occupied`` (occupied steps), ``n_evaluated`` (density evaluations
            for culling), ``rounds`` and ``n_samples`` (for benchmarks).
        subject: march only inside these bounds (the subject alone); None marches the whole domain.

    Returns:
        :class:`PackedSamples` sorted by ray and distance.
    """
    if rays_o.ndim != 2 or rays_o.shape[-1] != 3 or rays_d.shape != rays_o.shape:
        raise ValueError(
            f"rays_o and rays_d must both be (n_rays, 3), got {tuple(rays_o.shape)} and {tuple(rays_d.shape)}"
        )
    n_rays = rays_o.shape[0]
    device = rays_o.device
    if jitter is not None and jitter.shape != (n_rays,):
        raise ValueError(f"jitter must have shape ({n_rays},), got {tuple(jitter.shape)}")
    t_min, t_max = ray_interval(rays_o, rays_d, domain, settings, subject)
    s0 = t_min if jitter is None else t_min + jitter.to(t_min.dtype) * settings.dt_min
    occ_rays, occ_steps = occupied_steps(rays_o, rays_d, s0, t_max, occupancy, domain, settings, impl=impl,
                                         mask_fn=mask_fn, max_cells=max_cells)
    cull = sigma_fn is not None and (early_stop_eps > 0.0 or alpha_thre > 0.0) and occ_rays.numel() > 0
    n_evaluated, rounds, n_occupied = 0, 0, int(occ_rays.shape[0])
    if cull:
        tau_stop = -math.log(early_stop_eps) if early_stop_eps > 0.0 else math.inf
        occ_info = packed_info_from_ray_indices(occ_rays, n_rays)
        starts, counts = occ_info[:, 0], occ_info[:, 1]
        rank = torch.arange(occ_rays.shape[0], device=device) - starts[occ_rays]
        tau_ray = torch.zeros(n_rays, device=device, dtype=torch.float32)
        alive = counts > 0
        lo, hi = 0, max(1, first_round)
        parts: list[torch.Tensor] = []
        while True:
            sel = torch.nonzero((rank >= lo) & (rank < hi) & alive[occ_rays]).squeeze(-1)
            if sel.shape[0] == 0:
                break
            ray, step = occ_rays[sel], occ_steps[sel]
            n_evaluated += int(sel.shape[0])
            rounds += 1
            lo_t, hi_t, pos = _intervals(rays_o, rays_d, s0, t_max, ray, step, settings)
            sd = sigma_fn(pos).float() * (hi_t - lo_t)
            info = packed_info_from_ray_indices(ray, n_rays)
            tau = exclusive_sum_packed(sd, ray, info) + tau_ray[ray]
            keep = (tau <= tau_stop) & ((1.0 - torch.exp(-sd)) >= alpha_thre)
            parts.append(sel[keep])
            tau_ray = tau_ray.index_add(0, ray, sd)
            alive = alive & (tau_ray <= tau_stop) & (counts > hi)
            if hi >= settings.max_steps:
                break
            # Few rays are still visible after the first round: give them everything else at once (a
            # round costs a host sync and ~50 small launches, so rounds are worth more than evaluations).
            lo, hi = hi, hi * 16
        kept = torch.cat(parts) if parts else occ_rays[:0]
        if len(parts) > 1:
            # Later rounds append deeper samples of the same rays; indices into the sorted list restore order.
            kept = torch.sort(kept).values
        occ_rays, occ_steps = occ_rays[kept], occ_steps[kept]
    if stats is not None:
        stats.update(n_occupied=n_occupied, n_evaluated=n_evaluated, rounds=rounds, n_samples=int(occ_rays.shape[0]))
    t_starts, t_ends, positions = _intervals(rays_o, rays_d, s0, t_max, occ_rays, occ_steps, settings)
    return PackedSamples(
        ray_indices=occ_rays,
        t_starts=t_starts.to(rays_o.dtype),
        t_ends=t_ends.to(rays_o.dtype),
        packed_info=packed_info_from_ray_indices(occ_rays, n_rays),
        positions=positions.to(rays_o.dtype),
    )
