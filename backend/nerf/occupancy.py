"""Occupancy grid for empty-space skipping (instant-ngp / nerfacc ``OccGridEstimator`` update rule).

The grid lives in the unit cube of the scene domain (:mod:`backend.nerf.contraction`). It keeps an
exponential moving maximum of ``density * step_size`` per cell and a binary mask of cells whose value
exceeds ``min(threshold, mean)``. Updates are explicit (:meth:`OccupancyGrid.update`); nothing changes
between two calls, so deferred back-propagation can rely on identical marching between its two passes.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .contraction import SceneDomain


class OccupancyGrid(nn.Module):
    """A ``resolution^3`` occupancy grid over the unit cube.

    Buffers (saved in checkpoints):
        occs: ``(R^3,)`` float32 running value of ``density * step_size`` per cell, flat index
            ``ix * R^2 + iy * R + iz`` (see :meth:`cell_index`).
        binary: ``(R, R, R)`` bool, indexed ``[ix, iy, iz]``.

    Args:
        resolution: cells per axis ``R``.
        device: of the buffers.
    """

    def __init__(self, resolution: int = 128, device: torch.device | str = "cpu") -> None:
        super().__init__()
        if resolution < 1:
            raise ValueError(f"resolution must be >= 1, got {resolution}")
        self.resolution = resolution
        self.register_buffer("occs", torch.zeros(resolution**3, device=device))
        # Everything is occupied until the first update, so early training can find the object.
        self.register_buffer("binary", torch.ones(resolution, resolution, resolution, dtype=torch.bool, device=device))
        r = torch.arange(resolution, device=device)
        grid = torch.stack(torch.meshgrid(r, r, r, indexing="ij"), dim=-1).reshape(-1, 3)
        self.register_buffer("cell_coords", grid.to(torch.int32), persistent=False)

    def cell_index(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Flat cell index of unit-cube points and whether they are inside the cube.

        Args:
            u: ``(..., 3)`` points in unit-cube coordinates.

        Returns:
            ``index`` ``(...,)`` int64 into ``binary.view(-1)`` (clamped; only meaningful where ``inside``)
            and ``inside`` ``(...,)`` bool.
        """
        r = self.resolution
        inside = ((u >= 0.0) & (u <= 1.0)).all(dim=-1)
        ijk = (u * r).long().clamp(0, r - 1)
        return ijk[..., 0] * (r * r) + ijk[..., 1] * r + ijk[..., 2], inside

    def query(self, u: torch.Tensor) -> torch.Tensor:  # [..., 3] -> [...]
        """Occupied (True) or empty for unit-cube points; points outside the cube are empty."""
        index, inside = self.cell_index(u)
        return self.binary.view(-1)[index] & inside

    @torch.no_grad()
    def update(
        self,
        step: int,
        occ_eval_fn: Callable[[torch.Tensor], torch.Tensor],
        generator: torch.Generator | None = None,
        threshold: float = 0.01,
        ema_decay: float = 0.95,
        warmup_steps: int = 256,
        max_points: int = 2**21,
    ) -> None:
        """One update of the grid (call every n training steps).

        During warm-up every cell is re-evaluated; afterwards a quarter of the cells uniformly at random
        plus as many occupied cells (nerfacc's rule), each at a random point inside the cell.

        Args:
            step: the training step (selects warm-up or sparse updates).
            occ_eval_fn: maps ``(n, 3)`` unit-cube points to ``(n,)`` opacity proxies (``density * step``).
            generator: random source for cell selection and jitter (on the grid's device).
            threshold: opacity proxy above which a cell is occupied (capped by the grid mean).
            ema_decay: decay of the running value of re-evaluated cells.
            warmup_steps: steps during which every cell is re-evaluated.
            max_points: evaluate in chunks of this many points (bounds memory).
        """
        device = self.occs.device
        n_cells = self.resolution**3
        if step < warmup_steps:
            indices = torch.arange(n_cells, device=device)
        else:
            n = n_cells // 4
            uniform = torch.randint(0, n_cells, (n,), device=device, generator=generator)
            occupied = torch.nonzero(self.binary.view(-1)).squeeze(-1)
            if occupied.numel() > n:
                pick = torch.randint(0, occupied.numel(), (n,), device=device, generator=generator)
                occupied = occupied[pick]
            indices = torch.cat([uniform, occupied])
        jitter = torch.rand(indices.shape[0], 3, device=device, generator=generator)
        u = (self.cell_coords[indices].to(jitter.dtype) + jitter) / self.resolution
        occ = torch.cat([occ_eval_fn(u[i : i + max_points]) for i in range(0, u.shape[0], max_points)])
        # Cells picked twice get the maximum of their new values (scatter_reduce amax is order-independent).
        new = torch.full_like(self.occs, -1.0).scatter_reduce(0, indices, occ.to(self.occs.dtype), reduce="amax")
        visited = new >= 0.0
        self.occs.copy_(torch.where(visited, torch.maximum(self.occs * ema_decay, new), self.occs))
        self.binary.copy_(self.measured(threshold))

    def measured(self, threshold: float = 0.01) -> torch.Tensor:  # -> [R, R, R] bool
        """The cells whose running value passes ``min(threshold, mean)``: what :meth:`update` and :meth:`refresh`
        mark occupied, whatever was taken out of :attr:`binary` since (a subject's haze cut from its march keeps
        its density, and this still finds it)."""
        return (self.occs > torch.clamp(self.occs.mean(), max=threshold)).view(self.binary.shape)

    def dilated(self, cells: int) -> torch.Tensor:  # -> [R, R, R] bool
        """The occupied cells grown by ``cells`` in every direction (a cube of side ``2 cells + 1``).

        Stylization marches through this region (issue 12): shape may form up to ``cells`` cells beyond the
        reconstruction's occupied cells, and nowhere else.
        """
        if cells < 0:
            raise ValueError(f"cells must be >= 0, got {cells}")
        if cells == 0:
            return self.binary.clone()
        k = 2 * cells + 1
        grown = F.max_pool3d(self.binary[None, None].float(), k, stride=1, padding=cells)
        return grown[0, 0] > 0.5

    @torch.no_grad()
    def within_distance(self, distance: float, domain: SceneDomain) -> torch.Tensor:  # -> [R, R, R] bool
        """The occupied cells and every cell whose centre lies within ``distance`` (model units) of one.

        Distances are Euclidean over cell centres, counted in cells and converted to model units with the cell
        size at the candidate cell (:func:`cell_size_model`): exact where cells have one size (a "bounded"
        domain, and a "contract" domain's unit ball, where the contraction is the identity), and never further
        than ``distance`` where contracted cells grow outwards (a path out of the ball crosses cells no larger
        than the candidate's). ``distance`` 0 gives the occupied cells themselves.

        Stylization marches this region (``shape_freedom``, :mod:`backend.stylize.loop`).
        """
        return cells_within_distance(self.binary, distance, domain)

    @torch.no_grad()
    def refresh(
        self,
        occ_eval_fn: Callable[[torch.Tensor], torch.Tensor],
        generator: torch.Generator | None = None,
        threshold: float = 0.01,
        points_per_cell: int = 4,
        allowed: torch.Tensor | None = None,
        max_points: int = 2**21,
    ) -> None:
        """Re-measure every cell from scratch (no running maximum): the grid of the field as it is now.

        Each cell's value becomes the largest opacity proxy at ``points_per_cell`` random points inside it; the
        mask is ``value > min(threshold, mean)`` as in :meth:`update`, restricted to ``allowed`` when given. Used
        after stylization, whose field moved away from the grid its reconstruction left (a stale grid would make
        renders march through cells that emptied).

        Args:
            occ_eval_fn: ``(n, 3)`` unit-cube points -> ``(n,)`` opacity proxies.
            allowed: ``(R, R, R)`` bool: cells that may be occupied at all.
        """
        if points_per_cell < 1:
            raise ValueError(f"points_per_cell must be >= 1, got {points_per_cell}")
        r = self.resolution
        if allowed is not None and allowed.shape != (r, r, r):
            raise ValueError(f"allowed must have shape ({r}, {r}, {r}), got {tuple(allowed.shape)}")
        device = self.occs.device
        best = torch.zeros_like(self.occs)
        for _ in range(points_per_cell):
            jitter = torch.rand(self.cell_coords.shape[0], 3, device=device, generator=generator)
            u = (self.cell_coords.to(jitter.dtype) + jitter) / r
            occ = torch.cat([occ_eval_fn(u[i : i + max_points]) for i in range(0, u.shape[0], max_points)])
            best = torch.maximum(best, occ.to(best.dtype))
        self.occs.copy_(best)
        binary = self.measured(threshold)
        self.binary.copy_(binary if allowed is None else binary & allowed)


def cell_size_model(domain: SceneDomain, resolution: int,
                    device: torch.device | str = "cpu") -> torch.Tensor:  # -> [R, R, R]
    """The largest extent of each occupancy cell in model units, at its centre (indexed as ``binary``).

    A "bounded" domain's cells are all ``2 bound / R``. A "contract" domain's are ``4 / R`` inside the unit ball
    (the contraction is the identity there) and stretched by the inverse contraction's largest derivative outside
    it: radially ``|x|^2`` at model radius ``|x|`` (tangentially less), infinite at the ball's rim of radius 2.
    """
    r = int(resolution)
    if domain.kind == "bounded":
        return torch.full((r, r, r), 2.0 * domain.bound / r, device=device)
    ticks = (torch.arange(r, dtype=torch.float32, device=device) + 0.5) / r
    u = torch.stack(torch.meshgrid(ticks, ticks, ticks, indexing="ij"), dim=-1)  # [R, R, R, 3]
    c = (u * 4.0 - 2.0).norm(dim=-1)  # contracted radius; |x| = 1 / (2 - |c|) outside the unit ball
    x = torch.where(c <= 1.0, torch.ones_like(c), 1.0 / (2.0 - c).clamp_min(1e-6))
    stretch = torch.where(c < 2.0, x.square(), torch.full_like(c, float("inf")))
    return (4.0 / r) * stretch


@torch.no_grad()
def cells_within_distance(cells: torch.Tensor, distance: float, domain: SceneDomain) -> torch.Tensor:
    """``cells`` (``(R, R, R)`` bool over the domain's unit cube) and every cell whose centre lies within
    ``distance`` model units of one of them (:meth:`OccupancyGrid.within_distance` of any set of cells)."""
    if not (math.isfinite(distance) and distance >= 0):
        raise ValueError(f"distance must be a finite number >= 0, got {distance!r}")
    if cells.dim() != 3 or len(set(cells.shape)) != 1:
        raise ValueError(f"cells must be an (R, R, R) grid, got shape {tuple(cells.shape)}")
    r = int(cells.shape[0])
    cells = cells.bool()
    size = cell_size_model(domain, r, cells.device)  # [R, R, R] model units per cell
    reach = math.floor(distance / float(size.min()) + 1e-9)  # the most cells any candidate may be away
    if reach == 0:
        return cells.clone()
    # Squared Euclidean distance (in cells) to the nearest given cell, up to `reach` per axis: the squared
    # distance transform is separable, one windowed min-plus pass per axis.
    inf = float("inf")
    d2 = torch.where(cells, 0.0, inf).to(torch.float32)
    for axis in range(3):
        padded = F.pad(d2.movedim(axis, -1).contiguous(), (reach, reach), value=inf)
        best = padded[..., reach:reach + r].clone()
        for k in range(1, reach + 1):
            best = torch.minimum(best, torch.minimum(padded[..., reach - k:reach - k + r],
                                                     padded[..., reach + k:reach + k + r]) + float(k * k))
        d2 = best.movedim(-1, axis)
    allowed_cells = distance / size  # [R, R, R] cells each candidate may be away
    return cells | (d2 <= allowed_cells.square() + 1e-6)
