"""Triton kernels for the hash encoding (forward gather, backward atomic scatter) as a torch custom op.

The pure-PyTorch twin is :func:`backend.nerf.hashgrid._hash_encode_torch`; ``tests/test_nerf_triton.py``
checks that both give the same features and table gradients. This module imports Triton, so it is only
imported on first use on a CUDA device (importing :mod:`backend.nerf` loads no kernels).

Why a kernel here: the PyTorch version materialises ``(N, L, 8)`` int64 indices and ``(N, L, 8, F)``
gathered features (about 0.5 GB at 2^18 points); the kernels keep them in registers, reading ``x`` once
and writing ``(N, L*F)`` once (forward), and reading ``grad`` once plus one atomic add per corner
(backward). Launch grid: (point blocks, levels), point blocks fastest, so one level's table (4 MB at
T = 2^19, F = 2) is hot in L2 while its blocks run.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

_PRIME_Y = tl.constexpr(2654435761)
_PRIME_Z = tl.constexpr(805459861)


@triton.jit
def _corner_rows(b0, b1, b2, f0, f1, f2, corner: tl.constexpr, stride, dense, size_mask, offset):
    # Row of the table and trilinear weight of one of the 8 corners (corner = x + 2y + 4z), int64 maths
    # so that the low bits equal the PyTorch twin's (and instant-ngp's uint32) hash.
    dx: tl.constexpr = corner & 1
    dy: tl.constexpr = (corner >> 1) & 1
    dz: tl.constexpr = (corner >> 2) & 1
    c0 = b0 + dx
    c1 = b1 + dy
    c2 = b2 + dz
    w0 = dx * f0 + (1 - dx) * (1.0 - f0)
    w1 = dy * f1 + (1 - dy) * (1.0 - f1)
    w2 = dz * f2 + (1 - dz) * (1.0 - f2)
    dense_index = c0 + c1 * stride + c2 * stride * stride
    hashed = (c0 ^ (c1 * _PRIME_Y) ^ (c2 * _PRIME_Z)) & size_mask
    row = tl.where(dense != 0, dense_index, hashed) + offset
    return row, w0 * w1 * w2


@triton.jit
def _level(res_ptr, offset_ptr, size_ptr, dense_ptr, level):
    # One level's resolution, first row, hash mask, dense flag and dense row stride.
    res = tl.load(res_ptr + level)
    return (res, tl.load(offset_ptr + level), tl.load(size_ptr + level) - 1, tl.load(dense_ptr + level),
            res.to(tl.int64) + 1)


@triton.jit
def _cell(x_ptr, offs, m, res):
    x0 = tl.minimum(tl.maximum(tl.load(x_ptr + offs * 3 + 0, mask=m, other=0.0), 0.0), 1.0)
    x1 = tl.minimum(tl.maximum(tl.load(x_ptr + offs * 3 + 1, mask=m, other=0.0), 0.0), 1.0)
    x2 = tl.minimum(tl.maximum(tl.load(x_ptr + offs * 3 + 2, mask=m, other=0.0), 0.0), 1.0)
    p0 = x0 * res
    p1 = x1 * res
    p2 = x2 * res
    fb0 = tl.minimum(tl.floor(p0), res - 1.0)
    fb1 = tl.minimum(tl.floor(p1), res - 1.0)
    fb2 = tl.minimum(tl.floor(p2), res - 1.0)
    return (fb0.to(tl.int64), fb1.to(tl.int64), fb2.to(tl.int64), p0 - fb0, p1 - fb1, p2 - fb2)


@triton.jit
def _hash_fwd_kernel(x_ptr, table_ptr, out_ptr, res_ptr, offset_ptr, size_ptr, dense_ptr, n_points,
                     N_LEVELS: tl.constexpr, F: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    level = tl.program_id(1)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n_points
    res, offset, size_mask, dense, stride = _level(res_ptr, offset_ptr, size_ptr, dense_ptr, level)
    b0, b1, b2, f0, f1, f2 = _cell(x_ptr, offs, m, res)
    fr = tl.arange(0, F)
    acc = tl.zeros((BLOCK, F), dtype=tl.float32)
    for corner in tl.static_range(8):
        row, w = _corner_rows(b0, b1, b2, f0, f1, f2, corner, stride, dense, size_mask, offset)
        v = tl.load(table_ptr + row[:, None] * F + fr[None, :], mask=m[:, None], other=0.0)
        acc += w[:, None] * v
    tl.store(out_ptr + offs[:, None] * (N_LEVELS * F) + level * F + fr[None, :], acc, mask=m[:, None])


@triton.jit
def _hash_bwd_kernel(x_ptr, grad_ptr, grad_table_ptr, res_ptr, offset_ptr, size_ptr, dense_ptr, n_points,
                     N_LEVELS: tl.constexpr, F: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    level = tl.program_id(1)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n_points
    res, offset, size_mask, dense, stride = _level(res_ptr, offset_ptr, size_ptr, dense_ptr, level)
    b0, b1, b2, f0, f1, f2 = _cell(x_ptr, offs, m, res)
    fr = tl.arange(0, F)
    g = tl.load(grad_ptr + offs[:, None] * (N_LEVELS * F) + level * F + fr[None, :], mask=m[:, None], other=0.0)
    for corner in tl.static_range(8):
        row, w = _corner_rows(b0, b1, b2, f0, f1, f2, corner, stride, dense, size_mask, offset)
        tl.atomic_add(grad_table_ptr + row[:, None] * F + fr[None, :], w[:, None] * g, mask=m[:, None],
                      sem="relaxed")


@triton.jit
def _segment_sum(start_a, sum_a, start_b, sum_b):
    # Segmented sum (b follows a): a run restarts where b starts one. Associative, as tl.associative_scan needs.
    return start_a | start_b, tl.where(start_b != 0, sum_b, sum_a + sum_b)


@triton.jit
def _hash_bwd_runs_kernel(x_ptr, grad_ptr, grad_table_ptr, res_ptr, offset_ptr, size_ptr, dense_ptr, n_points,
                          N_LEVELS: tl.constexpr, F: tl.constexpr, BLOCK: tl.constexpr):
    # _hash_bwd_kernel with one atomic add per run instead of one per point: samples come in ray order, and on a
    # coarse level consecutive samples of a ray fall in the same cell (the same 8 rows) for dozens of steps, so
    # their contributions are summed in registers (a segmented scan over the block) and the run's last point
    # adds the total. Fewer atomics on the rows every ray hits; on fine levels runs are one point long.
    pid = tl.program_id(0)
    level = tl.program_id(1)
    lane = tl.arange(0, BLOCK)
    offs = pid.to(tl.int64) * BLOCK + lane
    m = offs < n_points
    res, offset, size_mask, dense, stride = _level(res_ptr, offset_ptr, size_ptr, dense_ptr, level)
    b0, b1, b2, f0, f1, f2 = _cell(x_ptr, offs, m, res)
    # The neighbours' cells, to find where runs start and end (a block's first point starts one, its last or
    # the array's last ends one, whatever its neighbour).
    p0, p1, p2, pf0, pf1, pf2 = _cell(x_ptr, offs - 1, m & (lane > 0), res)
    n0, n1, n2, nf0, nf1, nf2 = _cell(x_ptr, offs + 1, (offs + 1 < n_points) & (lane < BLOCK - 1), res)
    first = (lane == 0)[:, None]
    last = ((lane == BLOCK - 1) | (offs + 1 >= n_points))[:, None]
    fr = tl.arange(0, F)
    g = tl.load(grad_ptr + offs[:, None] * (N_LEVELS * F) + level * F + fr[None, :], mask=m[:, None], other=0.0)
    for corner in tl.static_range(8):
        row, w = _corner_rows(b0, b1, b2, f0, f1, f2, corner, stride, dense, size_mask, offset)
        prev_row, _ = _corner_rows(p0, p1, p2, pf0, pf1, pf2, corner, stride, dense, size_mask, offset)
        next_row, _ = _corner_rows(n0, n1, n2, nf0, nf1, nf2, corner, stride, dense, size_mask, offset)
        starts = tl.broadcast_to(((row != prev_row)[:, None] | first).to(tl.int32), (BLOCK, F))
        ends = (row != next_row)[:, None] | last
        _, run_sum = tl.associative_scan((starts, w[:, None] * g), 0, _segment_sum)
        tl.atomic_add(grad_table_ptr + row[:, None] * F + fr[None, :], run_sum, mask=m[:, None] & ends,
                      sem="relaxed")


_BLOCK = 128


def _launch_grid(n: int, n_levels: int) -> tuple[int, int]:
    return (triton.cdiv(n, _BLOCK), n_levels)


@torch.library.custom_op("nerfart::hash_encode_fwd", mutates_args=())
def hash_encode_fwd(x: torch.Tensor, table: torch.Tensor, level_resolution: torch.Tensor,
                    level_offset: torch.Tensor, level_size: torch.Tensor, level_dense: torch.Tensor,
                    runs: bool = False) -> torch.Tensor:
    """``(N, 3)`` float32 in [0, 1] -> ``(N, L*F)`` float32 features (Triton). ``runs`` picks the backward's
    kernel (:func:`hash_encode_bwd`); the features are the same."""
    n, n_levels, f = x.shape[0], level_resolution.shape[0], table.shape[1]
    out = torch.empty(n, n_levels * f, device=x.device, dtype=torch.float32)
    if n > 0:
        _hash_fwd_kernel[_launch_grid(n, n_levels)](
            x, table, out, level_resolution, level_offset, level_size, level_dense, n,
            N_LEVELS=n_levels, F=f, BLOCK=_BLOCK,
        )
    return out


@hash_encode_fwd.register_fake
def _(x, table, level_resolution, level_offset, level_size, level_dense, runs=False):  # type: ignore[no-untyped-def]
    return x.new_empty(x.shape[0], level_resolution.shape[0] * table.shape[1])


@torch.library.custom_op("nerfart::hash_encode_bwd", mutates_args=())
def hash_encode_bwd(grad: torch.Tensor, x: torch.Tensor, n_rows: int, level_resolution: torch.Tensor,
                    level_offset: torch.Tensor, level_size: torch.Tensor, level_dense: torch.Tensor,
                    runs: bool = False) -> torch.Tensor:
    """Gradient of the table, ``(n_rows, F)``, from ``grad`` ``(N, L*F)`` (Triton atomic adds: one per point and
    corner, or with ``runs`` one per run of consecutive points on the same row, :func:`_hash_bwd_runs_kernel`)."""
    n, n_levels = x.shape[0], level_resolution.shape[0]
    f = grad.shape[1] // n_levels
    grad_table = torch.zeros(n_rows, f, device=x.device, dtype=torch.float32)
    if n > 0:
        kernel = _hash_bwd_runs_kernel if runs else _hash_bwd_kernel
        kernel[_launch_grid(n, n_levels)](
            x, grad.contiguous(), grad_table, level_resolution, level_offset, level_size, level_dense, n,
            N_LEVELS=n_levels, F=f, BLOCK=_BLOCK,
        )
    return grad_table


@hash_encode_bwd.register_fake
def _(grad, x, n_rows, level_resolution, level_offset, level_size, level_dense, runs=False):  # type: ignore[no-untyped-def]
    return grad.new_empty(n_rows, grad.shape[1] // level_resolution.shape[0])


def _setup_context(ctx, inputs, output):  # type: ignore[no-untyped-def]
    x, table, level_resolution, level_offset, level_size, level_dense, *runs = inputs
    ctx.save_for_backward(x, level_resolution, level_offset, level_size, level_dense)
    ctx.n_rows = table.shape[0]
    ctx.runs = bool(runs[0]) if runs else False


def _backward(ctx, grad):  # type: ignore[no-untyped-def]
    x, level_resolution, level_offset, level_size, level_dense = ctx.saved_tensors
    grad_table = None
    if ctx.needs_input_grad[1]:
        grad_table = hash_encode_bwd(grad, x, ctx.n_rows, level_resolution, level_offset, level_size, level_dense,
                                     ctx.runs)
    return None, grad_table, None, None, None, None, None


hash_encode_fwd.register_autograd(_backward, setup_context=_setup_context)
