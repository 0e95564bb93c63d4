"""The Triton hash-grid kernels against their PyTorch twin on the CPU, through Triton's interpreter.

``tests/test_nerf_triton.py`` checks the kernels on a CUDA device, which CI has not. ``TRITON_INTERPRET=1`` runs a
kernel's program instances with numpy instead, the same source and masks, so the kernels' arithmetic (the hash,
the corner weights, the backward's atomic adds and the segmented sums of ``runs``) is checked on every CI run.
The interpreter is chosen when Triton is imported, so the check runs in a child process.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

REPO = Path(__file__).resolve().parents[1]

CHECK = r"""
import torch
from backend.nerf import _triton_hashgrid  # noqa: F401  (registers the ops, interpreted)
from backend.nerf.hashgrid import HashGridEncoding, _hash_encode_torch

torch.manual_seed(0)
enc = HashGridEncoding(n_levels=3, n_features=2, log2_table_size=9, base_resolution=4, max_resolution=48)
levels = (enc.level_resolution, enc.level_offset, enc.level_size, enc.level_dense)
rays_o = torch.rand(3, 1, 3) * 0.2 + 0.1
rays_d = torch.nn.functional.normalize(torch.rand(3, 1, 3) + 0.1, dim=-1)
layouts = {
    "random": torch.rand(300, 3),
    # Samples in ray order, as a renderer packs them: long runs on the coarse levels' rows.
    "rays": (rays_o + rays_d * torch.linspace(0.0, 0.8, 100)[None, :, None]).reshape(-1, 3).clamp(0.0, 1.0),
}
for name, points in layouts.items():
    for n in (points.shape[0], 203):  # a multiple of the block and not
        x = points[:n].contiguous()
        grad = torch.randn(n, 6)
        table = enc.table.detach().clone().requires_grad_(True)
        ref = _hash_encode_torch(x, table, *levels)
        ref.backward(grad)
        for runs in (False, True):
            mine = enc.table.detach().clone().requires_grad_(True)
            out = torch.ops.nerfart.hash_encode_fwd(x, mine, *levels, runs)
            out.backward(grad)
            scale = float(table.grad.abs().max())
            assert float((out - ref).detach().abs().max()) < 1e-5, (name, n, runs, "features")
            err = float((mine.grad - table.grad).abs().max())
            assert err < 1e-5 * scale, (name, n, runs, err, scale)
print("ok")
"""


def test_hash_grid_kernels_match_the_twin_in_the_interpreter() -> None:
    """Features and table gradients of both backward kernels (one atomic per point, one per run) equal the
    PyTorch twin's on random points and on points in ray order, for sizes on and off the block size."""
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", CHECK], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]
