"""The Triton hash-encoding kernels against their pure-PyTorch twin (CUDA only)."""

from __future__ import annotations

import pytest
import torch

from backend.nerf.hashgrid import HashGridEncoding, _hash_encode_torch, has_triton

pytestmark = pytest.mark.skipif(not (torch.cuda.is_available() and has_triton()),
                                reason="needs a CUDA GPU and Triton")


@pytest.mark.parametrize("n", [1, 129, 2**16 + 3])
@pytest.mark.parametrize("levels,log2_t,base,finest", [(16, 19, 16, 2048), (6, 12, 4, 300)])
def test_triton_hash_encoding_matches_torch_twin(n: int, levels: int, log2_t: int, base: int, finest: int) -> None:
    device = torch.device("cuda")
    gen = torch.Generator(device=device).manual_seed(n)
    enc = HashGridEncoding(n_levels=levels, log2_table_size=log2_t, base_resolution=base,
                           max_resolution=finest, device=device)
    with torch.no_grad():
        enc.table.normal_(generator=gen)
    x = torch.rand(n, 3, device=device, generator=gen)
    x[0] = 1.0  # the upper face of the cube is a special case (last cell)
    buffers = (enc.level_resolution, enc.level_offset, enc.level_size, enc.level_dense)
    table_ref = enc.table.detach().double().requires_grad_(True)
    ref = _hash_encode_torch(x.double(), table_ref, *buffers)
    table = enc.table.detach().clone().requires_grad_(True)
    out = torch.ops.nerfart.hash_encode_fwd(x, table, *buffers)
    out_f32_twin = _hash_encode_torch(x, enc.table.detach(), *buffers)
    # Positions are float32 (x * res ~ 2048 carries ~1e-4 of rounding) and the kernel may fuse the multiply
    # into the fraction (FMA), so both float32 versions sit within ~1e-4 * |table| of the float64 result;
    # a wrong corner or hash would be off by O(|table|) = O(1).
    torch.testing.assert_close(out.double(), ref, rtol=1e-3, atol=2e-3)
    torch.testing.assert_close(out, out_f32_twin, rtol=1e-3, atol=2e-3)
    err_kernel = (out.double() - ref).norm()
    err_twin = (out_f32_twin.double() - ref).norm()
    assert err_kernel <= 1.5 * err_twin + 1e-6 * ref.norm()
    cot = torch.randn(out.shape, device=device, generator=gen)
    (g_ref,) = torch.autograd.grad(ref, table_ref, cot.double())
    (g,) = torch.autograd.grad(out, table, cot)
    torch.testing.assert_close(g.double(), g_ref, rtol=1e-3, atol=2e-3)


@pytest.mark.parametrize("n_rays,steps", [(1, 1), (300, 200), (4096, 333)])
def test_runs_backward_matches_the_atomic_one_on_ray_ordered_points(n_rays: int, steps: int) -> None:
    """The backward that adds one atomic per run of consecutive points on a row (``runs``) gives the table
    gradient of the one that adds one per point, on samples packed in ray order (runs of dozens of points on
    the coarse levels, split across blocks) as on random ones."""
    device = torch.device("cuda")
    gen = torch.Generator(device=device).manual_seed(steps)
    enc = HashGridEncoding(device=device)
    buffers = (enc.level_resolution, enc.level_offset, enc.level_size, enc.level_dense)
    origins = torch.rand(n_rays, 1, 3, device=device, generator=gen) * 0.5 + 0.25
    dirs = torch.nn.functional.normalize(torch.randn(n_rays, 1, 3, device=device, generator=gen), dim=-1)
    t = torch.arange(steps, device=device, dtype=torch.float32)[None, :, None] * 0.005
    layouts = [(origins + dirs * t).reshape(-1, 3).clamp(0.0, 1.0), torch.rand(n_rays * steps, 3, device=device,
                                                                                generator=gen)]
    for x in layouts:
        grad = torch.randn(x.shape[0], enc.output_dim, device=device, generator=gen)
        atomic = torch.ops.nerfart.hash_encode_bwd(grad, x, enc.table.shape[0], *buffers, False)
        runs = torch.ops.nerfart.hash_encode_bwd(grad, x, enc.table.shape[0], *buffers, True)
        # float32 sums in another order: equal to rounding, relative to the largest row's gradient.
        torch.testing.assert_close(runs, atomic, rtol=0.0, atol=1e-5 * float(atomic.abs().max()) + 1e-6)


def test_auto_impl_uses_triton_on_cuda() -> None:
    enc = HashGridEncoding(n_levels=4, log2_table_size=12, base_resolution=4, max_resolution=64,
                           device=torch.device("cuda"))
    assert enc.impl == "triton"


@pytest.mark.parametrize("kind,cone", [("bounded", 0.0), ("bounded", 0.02), ("contract", 1.0 / 64)])
def test_triton_march_matches_torch_twin(kind: str, cone: float) -> None:
    import math

    from backend.nerf.contraction import SceneDomain
    from backend.nerf.marching import MarchSettings, _occupied_steps_torch, ray_interval

    device = torch.device("cuda")
    gen = torch.Generator(device=device).manual_seed(3)
    res, n = 32, 5000
    binary = torch.rand(res, res, res, device=device, generator=gen) < 0.3
    rays_o = torch.randn(n, 3, device=device, generator=gen) * 0.3 + torch.tensor([0.0, 0.0, -3.0], device=device)
    rays_d = torch.nn.functional.normalize(
        torch.randn(n, 3, device=device, generator=gen) * 0.3 + torch.tensor([0.0, 0.0, 1.0], device=device), dim=-1)
    domain = SceneDomain(kind, 1.0)
    settings = MarchSettings(dt_min=2 * math.sqrt(3) / 128, cone_angle=cone, near=0.05, far=50.0, max_steps=400)
    t_min, t_max = ray_interval(rays_o, rays_d, domain, settings)
    s0 = t_min + torch.rand(n, device=device, generator=gen) * settings.dt_min
    r_ref, k_ref = _occupied_steps_torch(rays_o, rays_d, s0, t_max, binary, kind, 1.0, settings)
    from backend.nerf._triton_march import occupied_steps_triton

    r, k = occupied_steps_triton(rays_o, rays_d, s0, t_max, binary, kind, 1.0, settings.dt_min, settings.cone_angle,
                                 settings.dt_max, settings.max_steps)
    # Midpoints are computed by the same formula, but fused multiply-adds may round differently, so a step
    # whose midpoint lies on a cell face can flip; allow a handful of such steps in ~10^5.
    ref = set(zip(r_ref.tolist(), k_ref.tolist(), strict=True))
    got = set(zip(r.tolist(), k.tolist(), strict=True))
    assert len(ref ^ got) <= max(2, len(ref) // 20000), (len(ref), len(got), len(ref ^ got))
    assert bool((r[1:] >= r[:-1]).all())
