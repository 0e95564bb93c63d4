"""Multiresolution hash encoding (instant-ngp, Müller et al. 2022), in plain PyTorch.

The encoding is written as one vectorised expression over (points, levels, corners) so that
``torch.compile`` fuses it into a couple of kernels on the GPU; on the CPU it runs eagerly (tests).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import torch
from torch import nn

# instant-ngp's spatial hash primes (the first is 1 so that the x coordinate is used as is).
HASH_PRIMES = (1, 2654435761, 805459861)


class _GatherRows(torch.autograd.Function):
    """``table[index]`` whose backward is one ``index_add_`` (2-5x faster than the generic index or
    embedding backward on the CPU; on the GPU both become atomic adds)."""

    @staticmethod
    def forward(ctx: Any, table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(index)
        ctx.n_rows = table.shape[0]
        return table[index]

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (index,) = ctx.saved_tensors
        n_features = grad.shape[-1]
        grad_table = torch.zeros(ctx.n_rows, n_features, device=grad.device, dtype=grad.dtype)
        grad_table.index_add_(0, index.reshape(-1), grad.reshape(-1, n_features))
        return grad_table, None


def level_resolutions(n_levels: int, base_resolution: int, max_resolution: int) -> list[int]:
    """Grid resolution of each level: a geometric series from ``base_resolution`` to ``max_resolution``."""
    if n_levels < 1:
        raise ValueError(f"n_levels must be >= 1, got {n_levels}")
    if n_levels == 1:
        return [base_resolution]
    growth = math.exp((math.log(max_resolution) - math.log(base_resolution)) / (n_levels - 1))
    return [math.floor(base_resolution * growth**level) for level in range(n_levels)]


class HashGridEncoding(nn.Module):
    """Trilinearly interpolated features from a stack of hashed (or dense, when small) voxel grids.

    Level ``l`` has resolution ``r_l``; a point ``x`` in ``[0, 1]^3`` sits at ``x * r_l`` in grid units and
    its feature is the trilinear blend of the ``F``-vectors stored at the 8 surrounding vertices. Levels
    with at most ``2^log2_table_size`` vertices index their table densely; finer levels hash the vertex
    coordinates with :data:`HASH_PRIMES` (collisions are resolved by training, as in instant-ngp).

    Args:
        n_levels: number of levels ``L``.
        n_features: features per level ``F``.
        log2_table_size: ``log2 T``, the maximum number of entries per level.
        base_resolution: resolution of the coarsest level.
        max_resolution: resolution of the finest level.
        device, dtype: of the table (float32 is what the optimizer expects). The device also picks the
            implementation (attribute ``impl``): built on CUDA with Triton importable, the Triton kernels;
            otherwise the PyTorch twin, which a module moved to CUDA later keeps unless ``impl`` is set.

    Shapes: ``forward(x)`` maps ``(N, 3)`` in ``[0, 1]`` to ``(N, L * F)``.
    """

    def __init__(
        self,
        n_levels: int = 16,
        n_features: int = 2,
        log2_table_size: int = 19,
        base_resolution: int = 16,
        max_resolution: int = 2048,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        self.n_levels = n_levels
        self.n_features = n_features
        self.log2_table_size = log2_table_size
        self.base_resolution = base_resolution
        self.max_resolution = max_resolution
        table_size = 2**log2_table_size
        resolutions = level_resolutions(n_levels, base_resolution, max_resolution)
        sizes, offsets, dense = [], [], []
        total = 0
        for res in resolutions:
            # A dense level needs (res + 1)^3 vertices (both ends of every cell).
            n_vertices = (res + 1) ** 3
            size = min(table_size, n_vertices)
            offsets.append(total)
            sizes.append(size)
            dense.append(n_vertices <= table_size)
            total += size
        self.resolutions = resolutions
        self.n_params_per_feature = total
        self.register_buffer("level_resolution", torch.tensor(resolutions, dtype=torch.float32, device=device),
                             persistent=False)
        self.register_buffer("level_offset", torch.tensor(offsets, dtype=torch.int64, device=device),
                             persistent=False)
        self.register_buffer("level_size", torch.tensor(sizes, dtype=torch.int64, device=device), persistent=False)
        self.register_buffer("level_dense", torch.tensor(dense, dtype=torch.bool, device=device), persistent=False)
        # "auto": the Triton kernels on CUDA when Triton is importable, the PyTorch twin otherwise. Decided
        # here, not per call, so that compiled forwards see a constant (build the module on its device).
        self.impl = "triton" if torch.device(device).type == "cuda" and has_triton() else "torch"
        # instant-ngp initialises the table uniformly in [-1e-4, 1e-4]: features start near zero so the
        # first density MLP outputs are smooth.
        self.table = nn.Parameter(
            torch.empty(total, n_features, device=device, dtype=dtype).uniform_(-1e-4, 1e-4)
        )

    @property
    def output_dim(self) -> int:
        return self.n_levels * self.n_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [N, 3] -> [N, L*F]
        """Encode points.

        Args:
            x: ``(N, 3)`` positions in ``[0, 1]^3`` (clamped to that cube).

        Returns:
            ``(N, L * F)`` features, level-major (level 0's F features first).
        """
        if x.ndim != 2 or x.shape[-1] != 3:
            raise ValueError(f"x must have shape (N, 3), got {tuple(x.shape)}")
        return hash_encode(x, self.table, self.level_resolution, self.level_offset, self.level_size,
                           self.level_dense, impl=self.impl)


@functools.cache
def has_triton() -> bool:
    """Whether the Triton hash-encoding kernels can be used (Triton importable; a CUDA device is needed too)."""
    try:
        from . import _triton_hashgrid  # noqa: F401  (registers torch.ops.nerfart.hash_encode_*)
    except ImportError:
        return False
    return True


def hash_encode(
    x: torch.Tensor,  # [N, 3]
    table: torch.Tensor,  # [sum_l size_l, F]
    level_resolution: torch.Tensor,  # [L] float32
    level_offset: torch.Tensor,  # [L] int64
    level_size: torch.Tensor,  # [L] int64
    level_dense: torch.Tensor,  # [L] bool
    impl: str = "auto",
) -> torch.Tensor:  # [N, L*F]
    """Hash-encode ``(N, 3)`` points in ``[0, 1]^3`` into ``(N, L*F)`` features.

    Args:
        impl: ``"torch"`` (the pure-PyTorch twin, any device), ``"triton"`` (CUDA kernels; gradient only
            for ``table``), ``"triton-runs"`` (the same, its backward adding one atomic per run of consecutive
            points on a row: for points in ray order) or ``"auto"`` (Triton for float32 CUDA inputs with ``F``
            a power of two).
    """
    if impl not in ("auto", "torch", "triton", "triton-runs"):
        raise ValueError(f"impl must be 'auto', 'torch', 'triton' or 'triton-runs', got {impl!r}")
    f = table.shape[-1]
    triton_ok = x.is_cuda and table.dtype == torch.float32 and f & (f - 1) == 0
    if impl.startswith("triton") and not triton_ok:
        raise ValueError(f"the Triton hash encoding needs float32 CUDA tensors and F a power of 2, got "
                         f"{x.device} {table.dtype} F={f}")
    if impl.startswith("triton") or (impl == "auto" and triton_ok and has_triton()):
        return torch.ops.nerfart.hash_encode_fwd(x.float().contiguous(), table, level_resolution, level_offset,
                                                 level_size, level_dense, impl == "triton-runs")
    return _hash_encode_torch(x, table, level_resolution, level_offset, level_size, level_dense)


def _hash_encode_torch(
    x: torch.Tensor,  # [N, 3]
    table: torch.Tensor,  # [sum_l size_l, F]
    level_resolution: torch.Tensor,  # [L] float
    level_offset: torch.Tensor,  # [L] int64
    level_size: torch.Tensor,  # [L] int64
    level_dense: torch.Tensor,  # [L] bool
) -> torch.Tensor:  # [N, L*F]
    """Pure-PyTorch hash encoding (the reference twin of the Triton kernels; see :class:`HashGridEncoding`).

    Per-axis terms (index contribution and interpolation weight of the lower and upper vertex) are built
    on ``(N, L, 3, 2)`` and combined into the 8 corners by broadcasting, so the corner expansion costs one
    add/xor and one multiply per corner instead of per corner and axis.
    """
    n = x.shape[0]
    n_levels = level_resolution.shape[0]
    x = x.clamp(0.0, 1.0)
    res = level_resolution[None, :, None]  # [1, L, 1]
    pos = x[:, None, :] * res  # [N, L, 3] in grid units
    # A point exactly at x = 1 sits on the last vertex; keep its cell inside the grid.
    base_f = torch.minimum(torch.floor(pos), res - 1.0)
    frac = pos - base_f
    base = base_f.long()
    coords = torch.stack([base, base + 1], dim=-1)  # [N, L, 3, 2]
    weights = torch.stack([1.0 - frac, frac], dim=-1)  # [N, L, 3, 2]
    stride = level_resolution.long() + 1  # [L]
    dense_mult = torch.stack([torch.ones_like(stride), stride, stride * stride], dim=-1)  # [L, 3]
    dense_terms = coords * dense_mult[None, :, :, None]
    primes = torch.tensor(HASH_PRIMES, dtype=torch.int64, device=x.device)
    # The products fit in int64; their low log2(T) bits equal those of instant-ngp's uint32 arithmetic.
    hash_terms = coords * primes[None, None, :, None]

    def corners(t: torch.Tensor, combine: str) -> torch.Tensor:  # [N, L, 3, 2] -> [N, L, 8], x fastest
        tx = t[:, :, 0, None, None, :]
        ty = t[:, :, 1, None, :, None]
        tz = t[:, :, 2, :, None, None]
        out = tx + ty + tz if combine == "add" else tx ^ ty ^ tz
        return out.reshape(n, n_levels, 8)

    dense_index = corners(dense_terms, "add")
    hashed = corners(hash_terms, "xor") & (level_size - 1)[None, :, None]
    index = torch.where(level_dense[None, :, None], dense_index, hashed) + level_offset[None, :, None]
    w = (weights[:, :, 0, None, None, :] * weights[:, :, 1, None, :, None]
         * weights[:, :, 2, :, None, None]).reshape(n, n_levels, 8)
    feats = _GatherRows.apply(table, index)  # [N, L, 8, F]
    out = (w[..., None] * feats.to(w.dtype)).sum(dim=2)  # [N, L, F]
    return out.reshape(n, n_levels * table.shape[-1])
