"""The NeRF-Art loss formulas (backend.stylize.losses) against float64 references written from the spec.

No CLIP model here: the pure functions are checked on random embeddings and packed samples.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from backend.stylize.losses import (
    DEFAULT_ITERATIONS,
    DIR_EPS,
    LossWeights,
    StyleLossConfig,
    directional_from_embeddings,
    distortion_from_samples,
    distortion_loss,
    distortion_random_pair_from_samples,
    infonce_from_embeddings,
    iterations_for_strength,
    local_contrastive_from_embeddings,
    margin_contrastive_from_embeddings,
    normalize_safe,
    opacity_binarization,
    strength_value,
    weights_for_strength,
)

# ----------------------------------------------------------------------------------------------------------------
# Float64 references, straight from the spec formulas (loops on purpose).


def ref_n(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    return x / max(float(np.linalg.norm(x)), eps)


def ref_directional(e_tgt: np.ndarray, e_src: np.ndarray, dt: np.ndarray, eps: float) -> list[float]:
    out = []
    for b in range(e_tgt.shape[0]):
        delta = ref_n(ref_n(e_tgt[b]) - ref_n(e_src[b]), eps)
        out.append(1.0 - float(np.dot(delta, dt)))
    return out


def ref_infonce(v_raw: np.ndarray, pos: np.ndarray, negs: np.ndarray, tau: float) -> list[float]:
    out = []
    for b in range(v_raw.shape[0]):
        v = ref_n(v_raw[b])
        total = 0.0
        for k in range(pos.shape[0]):
            num = math.exp(float(np.dot(v, ref_n(pos[k]))) / tau)
            den = num + sum(math.exp(float(np.dot(v, ref_n(negs[j, k]))) / tau) for j in range(negs.shape[0]))
            total += -math.log(num / den)
        out.append(total / pos.shape[0])
    return out


def ref_margin(v_raw: np.ndarray, src_raw: np.ndarray, pos: np.ndarray, neg: np.ndarray, m: float) -> list[float]:
    out = []
    for b in range(v_raw.shape[0]):
        v, vs = ref_n(v_raw[b]), ref_n(src_raw[b])
        total = 0.0
        for k in range(pos.shape[0]):
            d_pos = np.linalg.norm(v - ref_n(pos[k]))
            d_neg = np.linalg.norm(v - ref_n(neg[k]))
            d_img = np.linalg.norm(v - vs)
            total += d_pos**2 + max(0.0, m - d_neg) ** 2 + max(0.0, m - d_img) ** 2
        out.append(total / pos.shape[0])
    return out


def ref_distortion(w: np.ndarray, t0: np.ndarray, t1: np.ndarray, near: np.ndarray, far: np.ndarray,
                   counts: list[int]) -> list[float]:
    """O(n^2) full mip-NeRF 360 distortion per ray (spec Section 3.4), in float64."""
    out = []
    start = 0
    for r, c in enumerate(counts):
        s0 = (t0[start:start + c] - near[r]) / (far[r] - near[r])
        s1 = (t1[start:start + c] - near[r]) / (far[r] - near[r])
        ww = w[start:start + c]
        total = 0.0
        for i in range(c):
            for j in range(c):
                total += ww[i] * ww[j] * abs((s0[i] + s1[i]) / 2 - (s0[j] + s1[j]) / 2)
            total += ww[i] ** 2 * (s1[i] - s0[i]) / 3
        out.append(total)
        start += c
    return out


def random_packed(counts: list[int], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Sorted, non-overlapping intervals per ray inside [near, far], weights summing to <= 1 per ray."""
    n_rays = len(counts)
    near = rng.uniform(0.0, 1.0, n_rays)
    far = near + rng.uniform(0.5, 3.0, n_rays)
    t0, t1, w = [], [], []
    for r, c in enumerate(counts):
        edges = np.sort(rng.uniform(near[r], far[r], 2 * c))
        t0.extend(edges[0::2])
        t1.extend(edges[1::2])
        ww = rng.uniform(0.0, 1.0, c)
        w.extend(ww / max(ww.sum(), 1e-9) * rng.uniform(0.2, 1.0))
    return {"w": np.array(w), "t0": np.array(t0), "t1": np.array(t1), "near": near, "far": far}


def to_t(x: np.ndarray, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.tensor(x, dtype=dtype)


# ----------------------------------------------------------------------------------------------------------------
# Directional.


@pytest.mark.parametrize("scale", [1.0, 0.01])  # 0.01: target embedding near the source, ||ΔI|| < DIR_EPS
def test_directional_matches_float64_reference(scale: float) -> None:
    rng = np.random.default_rng(0)
    src = rng.normal(size=(4, 16))
    tgt = src + scale * rng.normal(size=(4, 16))
    dt = ref_n(rng.normal(size=16))
    got = directional_from_embeddings(to_t(tgt), to_t(src), to_t(dt), eps=DIR_EPS)
    np.testing.assert_allclose(got.numpy(), ref_directional(tgt, src, dt, DIR_EPS), rtol=1e-12, atol=1e-12)


def test_directional_zero_safe_at_identical_images() -> None:
    torch.manual_seed(0)
    e = torch.randn(2, 512)
    dt = normalize_safe(torch.randn(512))
    e_tgt = e.clone().requires_grad_(True)
    loss = directional_from_embeddings(e_tgt, e, dt)
    assert torch.equal(loss, torch.ones(2))
    loss.sum().backward()
    assert torch.isfinite(e_tgt.grad).all()
    # The gradient pushes the target along Δt (projected on the sphere's tangent), bounded by 1/eps · 1/||e||.
    g = e_tgt.grad[0]
    assert float(g.norm()) > 0
    assert float(g.norm()) <= 1.0 / DIR_EPS / float(e[0].norm()) * (1 + 1e-5)
    tangent = dt - (dt @ normalize_safe(e[0])) * normalize_safe(e[0])
    cos = float(torch.nn.functional.cosine_similarity(-g, tangent, dim=0))
    assert cos > 0.999


def test_directional_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match=r"\(3, 8\)"):
        directional_from_embeddings(torch.zeros(3, 8), torch.zeros(2, 8), torch.zeros(8))
    with pytest.raises(ValueError, match=r"\(B, D\).*\(8,\)"):
        directional_from_embeddings(torch.zeros(8), torch.zeros(8), torch.zeros(8))


# ----------------------------------------------------------------------------------------------------------------
# Contrastive.


def test_infonce_matches_float64_reference() -> None:
    rng = np.random.default_rng(1)
    v = rng.normal(size=(3, 8))
    pos = np.stack([ref_n(x) for x in rng.normal(size=(5, 8))])
    negs = np.stack([[ref_n(x) for x in row] for row in rng.normal(size=(4, 5, 8))])
    got = infonce_from_embeddings(to_t(v), to_t(pos), to_t(negs), tau=0.07)
    np.testing.assert_allclose(got.numpy(), ref_infonce(v, pos, negs, 0.07), rtol=1e-10)


def test_local_contrastive_averages_over_crops() -> None:
    rng = np.random.default_rng(2)
    crops = rng.normal(size=(2, 6, 8))
    pos = np.stack([ref_n(x) for x in rng.normal(size=(3, 8))])
    negs = np.stack([[ref_n(x) for x in row] for row in rng.normal(size=(8, 3, 8))])
    got = local_contrastive_from_embeddings(to_t(crops), to_t(pos), to_t(negs), tau=0.07)
    expected = [np.mean(ref_infonce(crops[b], pos, negs, 0.07)) for b in range(2)]
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10)


def test_infonce_rejects_mismatched_negatives() -> None:
    with pytest.raises(ValueError, match=r"\(2, 4, 8\)"):
        infonce_from_embeddings(torch.zeros(1, 8), torch.zeros(3, 8), torch.zeros(2, 4, 8))


def test_margin_matches_float64_reference() -> None:
    rng = np.random.default_rng(3)
    v, src = rng.normal(size=(3, 8)), rng.normal(size=(3, 8))
    pos = np.stack([ref_n(x) for x in rng.normal(size=(5, 8))])
    neg = np.stack([ref_n(x) for x in rng.normal(size=(5, 8))])
    got = margin_contrastive_from_embeddings(to_t(v), to_t(src), to_t(pos), to_t(neg), margin=2.0)
    np.testing.assert_allclose(got.numpy(), ref_margin(v, src, pos, neg, 2.0), rtol=1e-10)


def test_margin_zero_safe_when_target_equals_source() -> None:
    torch.manual_seed(0)
    e = torch.randn(1, 32)
    pos, neg = normalize_safe(torch.randn(4, 32)), normalize_safe(torch.randn(4, 32))
    v = e.clone().requires_grad_(True)
    loss = margin_contrastive_from_embeddings(v, e, pos, neg).sum()
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(v.grad).all()


# ----------------------------------------------------------------------------------------------------------------
# Distortion (weight regularization).


COUNTS = [3, 0, 1, 5, 2, 0, 7, 1]


@pytest.mark.parametrize("layout", ["ray_indices", "packed_info", "both"])
def test_distortion_packed_matches_double_sum(layout: str) -> None:
    rng = np.random.default_rng(4)
    d = random_packed(COUNTS, rng)
    counts = torch.tensor(COUNTS)
    ray_indices = torch.repeat_interleave(torch.arange(len(COUNTS)), counts)
    packed_info = torch.stack([torch.cumsum(counts, 0) - counts, counts], dim=1)
    kwargs = {"ray_indices": ray_indices if layout != "packed_info" else None,
              "packed_info": packed_info if layout != "ray_indices" else None}
    got = distortion_from_samples(to_t(d["w"]), to_t(d["t0"]), to_t(d["t1"]), to_t(d["near"]), to_t(d["far"]),
                                  **kwargs)
    expected = ref_distortion(d["w"], d["t0"], d["t1"], d["near"], d["far"], COUNTS)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12, atol=1e-15)
    assert got[1] == 0 and got[5] == 0  # empty rays
    # One sample: only the width term (1/3) w^2 d survives.
    assert got[2] > 0


def test_distortion_gradient_matches_double_sum() -> None:
    rng = np.random.default_rng(5)
    d = random_packed(COUNTS, rng)
    ray_indices = torch.repeat_interleave(torch.arange(len(COUNTS)), torch.tensor(COUNTS))
    w1 = to_t(d["w"]).requires_grad_(True)
    got = distortion_from_samples(w1, to_t(d["t0"]), to_t(d["t1"]), to_t(d["near"]), to_t(d["far"]),
                                  ray_indices=ray_indices)
    # Direct O(n^2) in torch for the reference gradient.
    w2 = to_t(d["w"]).requires_grad_(True)
    near, far = to_t(d["near"])[ray_indices], to_t(d["far"])[ray_indices]
    s0, s1 = (to_t(d["t0"]) - near) / (far - near), (to_t(d["t1"]) - near) / (far - near)
    m, width = (s0 + s1) / 2, s1 - s0
    same = ray_indices[:, None] == ray_indices[None, :]
    pair = (w2[:, None] * w2[None, :] * (m[:, None] - m[None, :]).abs() * same).sum(dim=1)
    per_sample = pair + w2 * w2 * width / 3
    ref = torch.zeros(len(COUNTS), dtype=torch.float64).index_add(0, ray_indices, per_sample)
    cot = torch.randn(len(COUNTS), dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    (g1,) = torch.autograd.grad(got, w1, cot)
    (g2,) = torch.autograd.grad(ref, w2, cot)
    torch.testing.assert_close(g1, g2, rtol=1e-12, atol=1e-14)


@settings(max_examples=20, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=6), min_size=1, max_size=6), st.integers(0, 2**31 - 1))
def test_distortion_property_random_layouts(counts: list[int], seed: int) -> None:
    d = random_packed(counts, np.random.default_rng(seed))
    packed = torch.stack([torch.cumsum(torch.tensor(counts), 0) - torch.tensor(counts), torch.tensor(counts)], 1)
    got = distortion_from_samples(to_t(d["w"]), to_t(d["t0"]), to_t(d["t1"]), to_t(d["near"]), to_t(d["far"]),
                                  packed_info=packed)
    np.testing.assert_allclose(got.numpy(), ref_distortion(d["w"], d["t0"], d["t1"], d["near"], d["far"], counts),
                               rtol=1e-10, atol=1e-14)


def _dense_reference(w: np.ndarray, m: np.ndarray, width: np.ndarray, counts: np.ndarray,
                     rays: np.ndarray) -> np.ndarray:
    """Float64 O(n^2) distortion for the selected rays, vectorised over padded chunks of rays."""
    cmax = int(counts.max())
    starts = (np.cumsum(counts) - counts)[rays]
    cnt = counts[rays]
    out = np.zeros(len(rays))
    for lo in range(0, len(rays), 250):
        hi = min(lo + 250, len(rays))
        valid = np.arange(cmax)[None, :] < cnt[lo:hi, None]
        idx = np.where(valid, starts[lo:hi, None] + np.arange(cmax)[None, :], 0)
        ww = np.where(valid, w[idx], 0.0)
        mm = m[idx]
        pair = (ww[:, :, None] * ww[:, None, :] * np.abs(mm[:, :, None] - mm[:, None, :])).sum(axis=(1, 2))
        out[lo:hi] = pair + (ww * ww * np.where(valid, width[idx], 0.0)).sum(axis=1) / 3
    return out


def test_distortion_float32_precision_million_samples() -> None:
    rng = np.random.default_rng(6)
    counts = rng.integers(50, 151, size=10_000)
    n = int(counts.sum())
    assert n > 900_000
    ray = np.repeat(np.arange(len(counts)), counts)
    # Per ray: near 0, far 1, sorted uniform edges; weights normalised so each ray sums to ~1.
    pos = np.arange(n) - np.repeat(np.cumsum(counts) - counts, counts)
    t0 = (pos + rng.uniform(0.0, 0.4, n)) / np.repeat(counts, counts)
    t1 = (pos + 0.5 + rng.uniform(0.0, 0.4, n)) / np.repeat(counts, counts)
    w_raw = rng.uniform(0.0, 1.0, n) ** 4
    w = w_raw / np.repeat(np.bincount(ray, weights=w_raw), counts)
    w32, t0_32, t1_32 = w.astype(np.float32), t0.astype(np.float32), t1.astype(np.float32)
    near, far = np.zeros(len(counts), np.float32), np.ones(len(counts), np.float32)
    got = distortion_from_samples(torch.from_numpy(w32), torch.from_numpy(t0_32), torch.from_numpy(t1_32),
                                  torch.from_numpy(near), torch.from_numpy(far),
                                  ray_indices=torch.from_numpy(ray).long())
    assert got.dtype == torch.float32
    # Reference on the same float32 inputs, computed exactly in float64.
    m = (t0_32.astype(np.float64) + t1_32.astype(np.float64)) / 2
    width = t1_32.astype(np.float64) - t0_32.astype(np.float64)
    # Check the last 500 rays (largest running sums, where a float32 scan is worst) and 500 random others.
    rays = np.concatenate([np.arange(len(counts) - 500, len(counts)), rng.choice(len(counts) - 500, 500, False)])
    ref = _dense_reference(w32.astype(np.float64), m, width, counts, rays)
    rel = np.abs(got.numpy()[rays].astype(np.float64) - ref) / ref
    assert rel.max() < 1e-5, rel.max()
    # The failure mode this guards against: a float32 global scan minus per-ray offsets is far off.
    wt, mt = torch.from_numpy(w32), torch.from_numpy(m.astype(np.float32))
    cw = torch.cumsum(wt, 0) - wt
    cwm = torch.cumsum(wt * mt, 0) - wt * mt
    first = torch.from_numpy(np.repeat(np.cumsum(counts) - counts, counts))
    naive_ps = 2 * wt * (mt * (cw - cw[first]) - (cwm - cwm[first])) + wt * wt * torch.from_numpy(
        width.astype(np.float32)) / 3
    naive = torch.zeros(len(counts)).index_add(0, torch.from_numpy(ray).long(), naive_ps).numpy()[rays]
    assert (np.abs(naive - ref) / ref).max() > 100 * rel.max()
    print(f"max relative error: packed {rel.max():.2e}, naive float32 scan {(np.abs(naive - ref) / ref).max():.2e}")


def test_distortion_mean_reduction_counts_empty_rays() -> None:
    d = random_packed(COUNTS, np.random.default_rng(7))
    ri = torch.repeat_interleave(torch.arange(len(COUNTS)), torch.tensor(COUNTS))
    args = (to_t(d["w"]), to_t(d["t0"]), to_t(d["t1"]), to_t(d["near"]), to_t(d["far"]))
    per_ray = distortion_loss(*args, ray_indices=ri, reduction="none")
    assert torch.allclose(distortion_loss(*args, ray_indices=ri), per_ray.sum() / len(COUNTS))
    assert torch.allclose(distortion_loss(*args, ray_indices=ri, reduction="sum"), per_ray.sum())


def test_distortion_rejects_unsorted_and_bad_shapes() -> None:
    w = torch.tensor([0.5, 0.5])
    near, far = torch.zeros(2), torch.ones(2)
    with pytest.raises(ValueError, match="sorted by ray"):
        distortion_from_samples(w, torch.tensor([0.0, 0.5]), torch.tensor([0.5, 1.0]), near, far,
                                ray_indices=torch.tensor([1, 0]))
    with pytest.raises(ValueError, match="sorted along each ray"):
        distortion_from_samples(w, torch.tensor([0.5, 0.0]), torch.tensor([1.0, 0.5]), near[:1], far[:1],
                                ray_indices=torch.tensor([0, 0]))
    with pytest.raises(ValueError, match=r"\(2, 1\)"):
        distortion_from_samples(w[:, None], torch.zeros(2), torch.ones(2), near, far, ray_indices=torch.zeros(2).long())
    with pytest.raises(ValueError, match="packed_info"):
        distortion_from_samples(w, torch.zeros(2), torch.ones(2), near, far, packed_info=torch.tensor([[0, 1], [0, 1]]))


def test_random_pair_estimator() -> None:
    # Two-sample rays: the pair is forced, the value exact. Empty and one-sample rays give 0.
    counts = [2, 0, 1, 5]
    d = random_packed(counts, np.random.default_rng(8))
    ri = torch.repeat_interleave(torch.arange(4), torch.tensor(counts))
    args = (to_t(d["w"]), to_t(d["t0"]), to_t(d["t1"]), to_t(d["near"]), to_t(d["far"]))
    got = distortion_random_pair_from_samples(*args, ray_indices=ri, generator=torch.Generator().manual_seed(0))
    s = (np.stack([d["t0"][:2], d["t1"][:2]]) - d["near"][0]) / (d["far"][0] - d["near"][0])
    m = s.mean(axis=0)
    assert got[0].item() == pytest.approx(d["w"][0] * d["w"][1] * (m[1] - m[0]), rel=1e-12)
    assert got[1] == 0 and got[2] == 0 and got[3] >= 0
    # Expectation over many independent draws (one ray replicated): sum_{i != j} w_i w_j |m_i - m_j| / (n(n-1)).
    reps, n = 20_000, 5
    sl = slice(3, 8)
    w5, t0, t1 = np.tile(d["w"][sl], reps), np.tile(d["t0"][sl], reps), np.tile(d["t1"][sl], reps)
    near, far = np.full(reps, d["near"][3]), np.full(reps, d["far"][3])
    ri = torch.repeat_interleave(torch.arange(reps), n)
    draws = distortion_random_pair_from_samples(to_t(w5), to_t(t0), to_t(t1), to_t(near), to_t(far), ray_indices=ri,
                                                generator=torch.Generator().manual_seed(1)).numpy()
    mm = ((d["t0"][sl] + d["t1"][sl]) / 2 - d["near"][3]) / (d["far"][3] - d["near"][3])
    exact = sum(d["w"][3 + i] * d["w"][3 + j] * abs(mm[i] - mm[j]) for i in range(n) for j in range(n)) / (n * (n - 1))
    assert abs(draws.mean() - exact) < 4 * draws.std() / math.sqrt(reps)


# ----------------------------------------------------------------------------------------------------------------
# Weights and strength.


def test_strength_mapping() -> None:
    assert weights_for_strength(0.5) == LossWeights()
    assert weights_for_strength("medium") == LossWeights()
    assert iterations_for_strength(0.5) == DEFAULT_ITERATIONS
    assert [iterations_for_strength(s) for s in (0.0, 1.0)] == [200, 600]
    lo, hi = weights_for_strength("low"), weights_for_strength("high")
    assert lo.global_contrastive < hi.global_contrastive and lo.local_contrastive < hi.local_contrastive
    assert lo.perceptual > hi.perceptual
    assert lo.directional == hi.directional and lo.regularization == hi.regularization
    assert weights_for_strength(1.0).global_contrastive == pytest.approx(0.4)
    assert weights_for_strength(0.0).perceptual == pytest.approx(2.0)
    for bad in (-0.1, 1.5, "extreme"):
        with pytest.raises(ValueError, match="strength"):
            strength_value(bad)


def test_weights_and_config_validate() -> None:
    with pytest.raises(ValueError, match="perceptual"):
        LossWeights(perceptual=-1.0)
    with pytest.raises(ValueError, match="global_mode"):
        StyleLossConfig(global_mode="euclid")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="crop_frac"):
        StyleLossConfig(crop_frac=0.0)


def test_normalize_safe_zero() -> None:
    x = torch.zeros(3, 4, requires_grad=True)
    y = normalize_safe(x)
    y.sum().backward()
    assert torch.equal(y, torch.zeros(3, 4)) and torch.isfinite(x.grad).all()


def test_docstring_examples_run() -> None:
    import doctest

    import backend.stylize.losses as losses_mod

    result = doctest.testmod(losses_mod, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted >= 2 and result.failed == 0


def test_opacity_binarization_is_zero_on_empty_and_solid_rays_and_pushes_haze_away_from_half() -> None:
    """``L_opa = 4 a (1 - a)`` per ray, ``a`` the ray's opacity: 0 empty or solid, 1 at a half, and its gradient
    lowers faint opacity and raises dense opacity (towards empty or solid)."""
    # Four rays: empty, faint, half, solid.
    a = torch.tensor([0.0, 0.1, 0.5, 1.0], dtype=torch.float64, requires_grad=True)
    per_ray = torch.tensor([0.0, 4 * 0.1 * 0.9, 1.0, 0.0], dtype=torch.float64)
    total = opacity_binarization(a, reduction="sum")
    assert float(total.detach()) == pytest.approx(float(per_ray.sum()))
    assert float(opacity_binarization(a).detach()) == pytest.approx(float(per_ray.mean()))
    (g,) = torch.autograd.grad(total, a)
    assert float(g[1]) > 0, "faint: the loss falls as its opacity falls"
    assert float(g[2]) == pytest.approx(0.0), "at a half the gradient is 0"
    assert float(g[3]) < 0, "solid (a = 1): the loss falls as opacity rises"
    with pytest.raises(ValueError, match="one value per ray"):
        opacity_binarization(a[None])
    with pytest.raises(ValueError, match="reduction"):
        opacity_binarization(a, reduction="none")  # type: ignore[arg-type]
