"""Hash grid, volume rendering, packed samples, step schedule, contraction, occupancy and marching (CPU)."""

from __future__ import annotations

import math

import pytest
import torch

from backend.nerf import (
    MarchSettings,
    OccupancyGrid,
    SceneDomain,
    accumulate_along_rays,
    contract_to_ball,
    march_rays,
    packed_info_from_ray_indices,
    render_weight_from_density,
    step_boundaries,
    uncontract_from_ball,
)
from backend.nerf.hashgrid import HASH_PRIMES, HashGridEncoding, _hash_encode_torch
from backend.nerf.marching import _occupied_steps_torch, ray_aabb_intersect, ray_interval


def _naive_hash_encode(x: torch.Tensor, enc: HashGridEncoding, table: torch.Tensor) -> torch.Tensor:
    """instant-ngp's definition written out per point, level and corner, with uint32 hash arithmetic."""
    t = 2**enc.log2_table_size
    offsets = enc.level_offset.tolist()
    out = torch.zeros(x.shape[0], enc.n_levels * enc.n_features, dtype=torch.float64)
    for n in range(x.shape[0]):
        p = [min(max(float(c), 0.0), 1.0) for c in x[n]]
        for level, res in enumerate(enc.resolutions):
            pos = [c * res for c in p]
            base = [min(math.floor(c), res - 1) for c in pos]
            frac = [c - b for c, b in zip(pos, base, strict=True)]
            for corner in range(8):
                d = [(corner >> a) & 1 for a in range(3)]
                v = [b + di for b, di in zip(base, d, strict=True)]
                w = math.prod(f if di else 1.0 - f for f, di in zip(frac, d, strict=True))
                if (res + 1) ** 3 <= t:
                    idx = v[0] + v[1] * (res + 1) + v[2] * (res + 1) ** 2
                else:
                    h = 0
                    for vi, prime in zip(v, HASH_PRIMES, strict=True):
                        h ^= (vi * prime) % 2**32
                    idx = h % t
                row = offsets[level] + idx
                out[n, level * enc.n_features:(level + 1) * enc.n_features] += w * table[row].double()
    return out


def test_hash_encoding_matches_naive_reference() -> None:
    gen = torch.Generator().manual_seed(0)
    # Levels 0-1 dense, 2-3 hashed (T = 2^10 < (res + 1)^3).
    enc = HashGridEncoding(n_levels=4, n_features=2, log2_table_size=10, base_resolution=4, max_resolution=40)
    assert enc.level_dense.tolist()[:1] == [True] and enc.level_dense.tolist()[-1] is False
    with torch.no_grad():
        enc.table.copy_(torch.randn(enc.table.shape, generator=gen))
    x = torch.rand(40, 3, generator=gen, dtype=torch.float64)
    x[0] = torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64)  # cube faces: last cell
    x[1] = torch.tensor([-0.5, 1.5, 0.5], dtype=torch.float64)  # clamped into the cube
    table = enc.table.detach().double()
    got = _hash_encode_torch(x, table, enc.level_resolution.double(), enc.level_offset, enc.level_size,
                             enc.level_dense)
    torch.testing.assert_close(got, _naive_hash_encode(x, enc, table), rtol=1e-12, atol=1e-12)


def test_hash_encoding_table_gradient() -> None:
    enc = HashGridEncoding(n_levels=2, n_features=2, log2_table_size=6, base_resolution=2, max_resolution=5)
    x = torch.rand(7, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    table = torch.randn(enc.table.shape, dtype=torch.float64, requires_grad=True)
    bufs = (enc.level_resolution.double(), enc.level_offset, enc.level_size, enc.level_dense)
    assert torch.autograd.gradcheck(lambda t: _hash_encode_torch(x, t, *bufs), (table,))


def test_hash_encoding_rejects_bad_shapes() -> None:
    enc = HashGridEncoding(n_levels=2, log2_table_size=6, base_resolution=2, max_resolution=4)
    with pytest.raises(ValueError, match=r"\(N, 3\).*\(5, 2\)"):
        enc(torch.rand(5, 2))


def _random_packed(n_rays: int, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
    counts = torch.randint(0, 7, (n_rays,), generator=gen)
    ray_indices = torch.repeat_interleave(torch.arange(n_rays), counts)
    n = int(counts.sum())
    deltas = torch.rand(n, generator=gen, dtype=torch.float64) * 0.3 + 0.01
    t_starts = torch.zeros(n, dtype=torch.float64)
    info = packed_info_from_ray_indices(ray_indices, n_rays)
    for r in range(n_rays):
        s, c = info[r].tolist()
        t_starts[s:s + c] = 1.0 + torch.cumsum(deltas[s:s + c], 0) - deltas[s:s + c]
    sigmas = torch.rand(n, generator=gen, dtype=torch.float64) * 5.0
    return ray_indices, info, t_starts, t_starts + deltas, sigmas


def test_weights_match_direct_float64_formula() -> None:
    gen = torch.Generator().manual_seed(2)
    ray_indices, info, t0, t1, sigmas = _random_packed(30, gen)
    weights = render_weight_from_density(t0.float(), t1.float(), sigmas.float(), ray_indices, info)
    expected = torch.zeros_like(sigmas)
    for r in range(info.shape[0]):
        s, c = info[r].tolist()
        trans = 1.0
        for i in range(s, s + c):
            alpha = 1.0 - math.exp(-float(sigmas[i]) * float(t1[i] - t0[i]))
            expected[i] = trans * alpha
            trans *= 1.0 - alpha
    torch.testing.assert_close(weights.double(), expected, rtol=1e-5, atol=1e-6)


def test_packed_and_padded_rendering_agree() -> None:
    gen = torch.Generator().manual_seed(3)
    ray_indices, info, t0, t1, sigmas = _random_packed(25, gen)
    n_rays, width = info.shape[0], int(info[:, 1].max())
    colours = torch.rand(sigmas.shape[0], 3, generator=gen, dtype=torch.float64)
    pad_t0 = torch.zeros(n_rays, width, dtype=torch.float64)
    pad_t1, pad_sig = pad_t0.clone(), pad_t0.clone()
    pad_col = torch.zeros(n_rays, width, 3, dtype=torch.float64)
    for r in range(n_rays):
        s, c = info[r].tolist()
        pad_t0[r, :c], pad_t1[r, :c], pad_sig[r, :c], pad_col[r, :c] = t0[s:s + c], t1[s:s + c], sigmas[s:s + c], \
            colours[s:s + c]
    sig_packed = sigmas.clone().requires_grad_(True)
    sig_padded = pad_sig.clone().requires_grad_(True)
    w_packed = render_weight_from_density(t0, t1, sig_packed, ray_indices, info)
    w_padded = render_weight_from_density(pad_t0, pad_t1, sig_padded)
    rgb_packed = accumulate_along_rays(w_packed, colours, ray_indices, n_rays)
    rgb_padded = (w_padded[..., None] * pad_col).sum(1)
    torch.testing.assert_close(rgb_packed, rgb_padded)
    cot = torch.randn(n_rays, 3, generator=gen, dtype=torch.float64)
    (g_packed,) = torch.autograd.grad(rgb_packed, sig_packed, cot)
    (g_padded,) = torch.autograd.grad(rgb_padded, sig_padded, cot)
    for r in range(n_rays):
        s, c = info[r].tolist()
        torch.testing.assert_close(g_packed[s:s + c], g_padded[r, :c])


def test_weight_validation_names_shapes() -> None:
    with pytest.raises(ValueError, match=r"\(4,\).*\(3,\)"):
        render_weight_from_density(torch.zeros(4), torch.zeros(3), torch.zeros(4))


@pytest.mark.parametrize("cone", [0.0, 0.01, 0.2])
def test_step_schedule_closed_form_matches_recursion(cone: float) -> None:
    dt_min, dt_max = 0.01, 0.5
    for s0 in (0.05, 0.7, 3.0, 40.0):
        s = s0
        for k in range(600):
            got = float(step_boundaries(torch.tensor(s0, dtype=torch.float64), torch.tensor(k), dt_min, cone, dt_max))
            assert got == pytest.approx(s, rel=1e-9), (s0, k)
            s += min(max(s * cone, dt_min), dt_max)


def test_contraction_round_trip_and_range() -> None:
    x = torch.randn(1000, 3, dtype=torch.float64) * torch.logspace(-1, 2, 1000, dtype=torch.float64)[:, None]
    c = contract_to_ball(x)
    assert bool((c.norm(dim=-1) < 2.0).all())
    inner = x.norm(dim=-1) <= 1.0
    torch.testing.assert_close(c[inner], x[inner])
    torch.testing.assert_close(uncontract_from_ball(c), x, rtol=1e-6, atol=1e-9)


def test_ray_aabb_intersect() -> None:
    o = torch.tensor([[-3.0, 0.0, 0.0], [-3.0, 5.0, 0.0], [0.0, 0.0, 0.0]])
    d = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    t_min, t_max = ray_aabb_intersect(o, d, 1.0)
    assert t_min[0] == pytest.approx(2.0) and t_max[0] == pytest.approx(4.0)
    assert t_max[1] <= t_min[1]  # misses
    assert t_min[2] == pytest.approx(-1.0) and t_max[2] == pytest.approx(1.0)  # starts inside


def _sphere_grid(res: int, radius: float, bound: float) -> OccupancyGrid:
    """Occupancy grid of an opaque ball, built through the update rule from its density."""
    grid = OccupancyGrid(res)
    domain = SceneDomain("bounded", bound)

    def occ(u: torch.Tensor) -> torch.Tensor:
        return (domain.from_unit_cube(u).norm(dim=-1) < radius).float() * 100.0

    grid.update(0, occ, generator=torch.Generator().manual_seed(0))
    return grid


def test_occupancy_grid_marks_only_the_object() -> None:
    grid = _sphere_grid(32, 0.5, 1.0)
    centres = (grid.cell_coords.float() + 0.5) / 32 * 2.0 - 1.0
    r = centres.norm(dim=-1)
    occupied = grid.binary.view(-1)
    cell_diag = math.sqrt(3) * 2.0 / 32
    assert bool(occupied[r < 0.5 - cell_diag].all())
    assert not bool(occupied[r > 0.5 + cell_diag].any())


def test_occupancy_dilation_grows_by_whole_cells() -> None:
    grid = OccupancyGrid(9)
    grid.binary.zero_()
    grid.binary[4, 4, 4] = True
    grid.binary[0, 8, 0] = True  # a corner cell: growth is clipped at the grid's border
    assert torch.equal(grid.dilated(0), grid.binary) and grid.dilated(0) is not grid.binary
    one = grid.dilated(1)
    assert int(one.sum()) == 27 + 8
    assert bool(one[3:6, 3:6, 3:6].all()) and not bool(one[2, 4, 4]) and bool(one[1, 7, 1])
    assert int(grid.dilated(2).sum()) == 125 + 27 - 1  # the two cubes share the cell (2, 6, 2)
    with pytest.raises(ValueError, match="cells"):
        grid.dilated(-1)


def test_occupancy_refresh_measures_the_field_as_it_is_now() -> None:
    """After stylization the grid is measured afresh: cells that emptied are dropped (no running maximum), and
    nothing outside the allowed region is marked."""
    grid = _sphere_grid(16, 0.5, 1.0)
    domain = SceneDomain("bounded", 1.0)
    before = grid.binary.clone()

    def smaller_ball(u: torch.Tensor) -> torch.Tensor:
        return (domain.from_unit_cube(u).norm(dim=-1) < 0.3).float() * 100.0

    allowed = torch.zeros_like(grid.binary)
    allowed[:8] = True  # half the box
    grid.refresh(smaller_ball, torch.Generator().manual_seed(1), allowed=allowed)
    centres = (grid.cell_coords.float() + 0.5) / 16 * 2.0 - 1.0
    r = centres.norm(dim=-1).view(16, 16, 16)
    diag = math.sqrt(3) * 2.0 / 16
    assert bool(grid.binary[:8][r[:8] < 0.3 - diag].all()), "the smaller ball's cells are occupied"
    assert not bool(grid.binary[r > 0.3 + diag].any()), "the cells that emptied are free again"
    assert not bool(grid.binary[8:].any()), "nothing outside the allowed region"
    assert int(grid.binary.sum()) < int(before.sum())
    with pytest.raises(ValueError, match="allowed"):
        grid.refresh(smaller_ball, allowed=torch.ones(4, 4, 4, dtype=torch.bool))


def test_marching_skips_empty_space() -> None:
    bound = 1.0
    grid = _sphere_grid(32, 0.5, bound)
    domain = SceneDomain("bounded", bound)
    settings = MarchSettings(dt_min=2 * math.sqrt(3) * bound / 256, max_steps=257)
    gen = torch.Generator().manual_seed(4)
    n = 300
    rays_o = torch.tensor([0.0, 0.0, -3.0]).expand(n, 3).clone()
    target = torch.rand(n, 3, generator=gen) * 1.6 - 0.8
    rays_d = torch.nn.functional.normalize(target - rays_o, dim=-1)
    samples = march_rays(rays_o, rays_d, grid, domain, settings, sigma_fn=None)
    cell = 2.0 * bound / 32
    assert bool((samples.positions.norm(dim=-1) < 0.5 + math.sqrt(3) * cell).all())
    # Rays that pass the ball farther than a cell diagonal get no samples at all.
    closest = (rays_o + rays_d * (-(rays_o * rays_d).sum(-1, keepdim=True))).norm(dim=-1)
    counts = samples.packed_info[:, 1]
    assert bool((counts[closest > 0.5 + math.sqrt(3) * cell] == 0).all())
    assert bool((counts[closest < 0.3] > 0).all())
    # Far fewer samples than the dense march of the box.
    t_min, t_max = ray_interval(rays_o, rays_d, domain, settings)
    dense = ((t_max - t_min).clamp_min(0) / settings.dt_min).sum()
    assert samples.n_samples < 0.5 * float(dense)
    # Sorted, consistent packed layout.
    assert bool((samples.ray_indices[1:] >= samples.ray_indices[:-1]).all())
    torch.testing.assert_close(samples.packed_info, packed_info_from_ray_indices(samples.ray_indices, n))


def test_early_termination_drops_samples_behind_opaque_surface() -> None:
    grid = _sphere_grid(32, 0.5, 1.0)
    domain = SceneDomain("bounded", 1.0)
    settings = MarchSettings(dt_min=2 * math.sqrt(3) / 256, max_steps=257)
    rays_o = torch.tensor([[0.0, 0.0, -3.0]])
    rays_d = torch.tensor([[0.0, 0.0, 1.0]])
    all_occ = march_rays(rays_o, rays_d, grid, domain, settings, sigma_fn=None)

    def sigma(x: torch.Tensor) -> torch.Tensor:
        return (x.norm(dim=-1) < 0.5).float() * 1000.0

    culled = march_rays(rays_o, rays_d, grid, domain, settings, sigma_fn=sigma, early_stop_eps=1e-4, first_round=4)
    assert 0 < culled.n_samples < all_occ.n_samples // 4
    # The kept samples are exactly the first ones of the occupied list (nothing visible was dropped).
    torch.testing.assert_close(culled.t_starts, all_occ.t_starts[:culled.n_samples])
    assert float(culled.t_starts.max()) < 2.5 + 0.05


def test_dense_march_twin_matches_brute_force() -> None:
    gen = torch.Generator().manual_seed(5)
    binary = torch.rand(8, 8, 8, generator=gen) < 0.4
    settings = MarchSettings(dt_min=0.07, cone_angle=0.05, dt_max=0.3, max_steps=60)
    rays_o = torch.randn(20, 3, generator=gen) * 0.2 + torch.tensor([0.0, 0.0, -2.0])
    rays_d = torch.nn.functional.normalize(torch.randn(20, 3, generator=gen) * 0.2 + torch.tensor([0, 0, 1.0]), dim=-1)
    domain = SceneDomain("bounded", 1.0)
    t_min, t_max = ray_interval(rays_o, rays_d, domain, settings)
    rays, steps = _occupied_steps_torch(rays_o, rays_d, t_min, t_max, binary, "bounded", 1.0, settings)
    expected = []
    for r in range(20):
        s = float(t_min[r])
        for k in range(settings.max_steps):
            nxt = s + min(max(s * settings.cone_angle, settings.dt_min), settings.dt_max)
            if s >= float(t_max[r]):
                break
            mid = 0.5 * (s + min(nxt, float(t_max[r])))
            u = (rays_o[r] + rays_d[r] * mid + 1.0) / 2.0
            if bool(((u >= 0) & (u <= 1)).all()):
                i, j, kk = (min(int(c * 8), 7) for c in u.tolist())
                if bool(binary[i, j, kk]):
                    expected.append((r, k))
            s = nxt
    assert list(zip(rays.tolist(), steps.tolist(), strict=True)) == expected
