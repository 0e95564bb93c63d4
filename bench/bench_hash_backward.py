"""The hash grid's backward (issue 22): one atomic add per point and corner, or one per run of points on a row.

The stylize profile of 2026-12-08 put the hash grid's backward at 26.5 % of an iteration's GPU time. Its kernel adds
each point's contribution to the 8 corner rows of every level with an atomic; samples come in ray order, so on a
coarse level dozens of consecutive samples fall in the same cell and their atomics queue on the same rows. The
``runs`` kernel (:func:`backend.nerf._triton_hashgrid._hash_bwd_runs_kernel`) sums each run in registers first.

For point layouts of ``--points`` samples (random points; rays in ray order at the steps a masked model marches,
0.005, and a cone-stepped one, about 0.014), with the reconstruction's default grid (16 levels, 2^19 rows, 2
features), this prints and writes: atomics issued per point and level by each kernel (counted in PyTorch, exact
and device-independent) and, on a GPU, each kernel's milliseconds (median of ``--repeats``) with the largest
difference between their table gradients.

Usage::

    python bench/bench_hash_backward.py                 # GPU: counts and times
    python bench/bench_hash_backward.py --points 65536  # CPU: counts only

Writes ``bench/results/hash-backward_<gpu>_<date>.md`` (``--out``); a CPU run writes only with ``--out``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from backend.nerf.hashgrid import HASH_PRIMES, HashGridEncoding  # noqa: E402
from bench.profile_render import timed  # noqa: E402
from bench.results_file import write_results  # noqa: E402


def ray_points(n: int, step: float, steps_per_ray: int, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    """``(n, 3)`` points in ray order: rays through the middle of the unit cube, ``step`` apart along each."""
    n_rays = -(-n // steps_per_ray)
    origins = torch.rand(n_rays, 1, 3, generator=gen, device=device) * 0.4 + 0.3
    dirs = torch.nn.functional.normalize(torch.randn(n_rays, 1, 3, generator=gen, device=device), dim=-1)
    t = (torch.arange(steps_per_ray, device=device, dtype=torch.float32) - steps_per_ray / 2)[None, :, None] * step
    return (origins + dirs * t).reshape(-1, 3)[:n].clamp(0.0, 1.0).contiguous()


def corner_rows(x: torch.Tensor, enc: HashGridEncoding, level: int) -> torch.Tensor:
    """``(n, 8)`` table rows of each point's corners on ``level`` (the kernels' hash, in PyTorch)."""
    res = float(enc.level_resolution[level])
    p = x.double() * res
    base = torch.minimum(torch.floor(p), torch.full_like(p, res - 1.0)).long()
    stride = int(res) + 1
    rows = []
    for corner in range(8):
        c = base + torch.tensor([corner & 1, (corner >> 1) & 1, (corner >> 2) & 1], device=x.device)
        if bool(enc.level_dense[level]):
            row = c[:, 0] + c[:, 1] * stride + c[:, 2] * stride * stride
        else:
            row = (c[:, 0] ^ (c[:, 1] * HASH_PRIMES[1]) ^ (c[:, 2] * HASH_PRIMES[2])) & (int(enc.level_size[level]) - 1)
        rows.append(row + int(enc.level_offset[level]))
    return torch.stack(rows, dim=1)


def atomics_per_point(x: torch.Tensor, enc: HashGridEncoding, block: int) -> list[float]:
    """Per level: atomics of the runs kernel per point and corner (the per-point kernel issues 1)."""
    n = x.shape[0]
    lane = torch.arange(n, device=x.device) % block
    last = (lane == block - 1) | (torch.arange(n, device=x.device) == n - 1)
    out = []
    for level in range(enc.n_levels):
        rows = corner_rows(x, enc, level)
        ends = torch.ones_like(rows, dtype=torch.bool)
        ends[:-1] = rows[:-1] != rows[1:]
        ends |= last[:, None]
        out.append(float(ends.float().mean()))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", type=int, default=1 << 23, help="samples per backward (a 480x270 view: ~14 M)")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--commit", default=os.environ.get("NERFART_COMMIT", "unknown"))
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    enc = HashGridEncoding(device=device)
    levels = (enc.level_resolution, enc.level_offset, enc.level_size, enc.level_dense)
    gen = torch.Generator(device=device).manual_seed(0)
    layouts = {"random points": torch.rand(args.points, 3, generator=gen, device=device),
               "rays, step 0.005": ray_points(args.points, 0.005 / 3.0, 400, gen, device),
               "rays, step 0.014": ray_points(args.points, 0.014 / 3.0, 150, gen, device)}
    from backend.nerf import _triton_hashgrid as kernels

    lines = [f"# Hash-grid backward: one atomic per point or per run (issue 22), {gpu}", "",
             f"- date {dt.date.today()}, commit {args.commit}, torch {torch.__version__}; grid: 16 levels, 2^19 rows, "
             f"2 features (the reconstruction's default); {args.points} points per backward; steps in model units "
             "(a head box of side 3 maps to the unit cube)",
             "- atomics: the runs kernel's per point and corner (the per-point kernel: 1), by level, coarse to fine",
             "", "| layout | atomics per level (runs kernel) | mean | per-point kernel ms | runs kernel ms | "
             "max abs diff |", "| --- | --- | --- | --- | --- | --- |"]
    for name, x in layouts.items():
        counts = atomics_per_point(x, enc, kernels._BLOCK)
        timing = "n/a | n/a | n/a"
        if device.type == "cuda":
            grad = torch.randn(x.shape[0], enc.output_dim, generator=gen, device=device)
            rows = enc.table.shape[0]
            # Both kernels once (their compilation and the difference), then timed.
            diff = (kernels.hash_encode_bwd(grad, x, rows, *levels, True)
                    - kernels.hash_encode_bwd(grad, x, rows, *levels, False)).abs().max()
            one = timed(lambda x=x, grad=grad, rows=rows: kernels.hash_encode_bwd(grad, x, rows, *levels, False),
                        args.repeats)
            run = timed(lambda x=x, grad=grad, rows=rows: kernels.hash_encode_bwd(grad, x, rows, *levels, True),
                        args.repeats)
            timing = f"{one:.2f} | {run:.2f} | {float(diff):.1e}"
        lines.append(f"| {name} | {' '.join(f'{c:.2f}' for c in counts)} | {statistics.mean(counts):.3f} | "
                     f"{timing} |")
        print(lines[-1], flush=True)
    write_results("\n".join(lines) + "\n", args.out, "hash-backward", gpu, dt.date.today().isoformat(),
                  smoke=device.type != "cuda")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
