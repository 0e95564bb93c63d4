"""Rendering the subject: frames cut to the subject bounds, and a stylized subject composited between the
reconstruction's background segments, checked against brute-force quadrature of the combined field."""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from backend.nerf.config import ReconstructConfig
from backend.nerf.frame_renderer import FrameRenderer, RayAccum, composite_segments
from backend.nerf.marching import ray_interval
from backend.nerf.model import NeRFModel
from backend.nerf.rays import rays_for_image
from backend.nerf.subject import SubjectBounds
from backend.nerf.synthetic import ring_cameras

REPO = Path(__file__).resolve().parents[1]


def field_model(seed: int, scene: str = "matte", density_bias: float = 0.0, render_steps: int = 2048) -> NeRFModel:
    """A random structured field filling the whole domain (every occupancy cell on), fine marching steps."""
    torch.manual_seed(seed)
    config = ReconstructConfig.tiny(render_steps=render_steps).model_config(scene, separate_matte=False,
                                                                             pixel_footprint=None)
    model = NeRFModel(config)
    model.field.config.density_bias = density_bias
    with torch.no_grad():
        model.field.encoding.table.normal_(0.0, 0.5, generator=torch.Generator().manual_seed(seed))
    model.occupancy.binary.fill_(True)
    return model


def stylized_like(model: NeRFModel, seed: int = 7) -> NeRFModel:
    """The same geometry with other colours: its colour MLP perturbed (what a colour-only stylization does)."""
    sty = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in sty.field.colour_mlp.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.8)
    return sty


def bounds_through_the_middle() -> SubjectBounds:
    """An ellipsoid inside the box that rays cross with field in front of it and behind it."""
    rot, _ = np.linalg.qr(np.random.default_rng(2).normal(size=(3, 3)))
    m = np.eye(4)
    m[:3, :3] = rot @ np.diag([0.45, 0.3, 0.38])
    m[:3, 3] = (0.1, -0.05, 0.05)
    return SubjectBounds("ellipsoid", m)


def camera_rays(size: int = 10, n_views: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Rays of cameras looking at the bounds, which fill about half of each image."""
    cams = ring_cameras(n_views, size, distance=2.6, focal=2.6 * size)
    rays = [rays_for_image(cams, i) for i in range(n_views)]
    return torch.cat([r[0] for r in rays]), torch.cat([r[1] for r in rays])


@torch.no_grad()
def brute_force(background: NeRFModel, subject_model: NeRFModel, bounds: SubjectBounds, rays_o: torch.Tensor,
                rays_d: torch.Tensor, n: int = 3000) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``rgb (n_rays, 3)``, ``opacity (n_rays,)`` and expected ``depth (n_rays,)`` of the combined field (the
    subject model's inside the bounds where its occupancy grid has the point's cell, the background model's
    everywhere else) by midpoint quadrature with ``n`` steps over each ray's whole interval: one pass, no
    segments. (The background model's grid is all occupied in these tests.)"""
    t_min, t_max = ray_interval(rays_o, rays_d, background.domain, background.settings)
    t_max = torch.maximum(t_max, t_min)
    edges = t_min[:, None] + (t_max - t_min)[:, None] * torch.linspace(0.0, 1.0, n + 1)[None, :]
    mid = 0.5 * (edges[:, 1:] + edges[:, :-1])
    x = (rays_o[:, None, :] + rays_d[:, None, :] * mid[..., None]).reshape(-1, 3)
    d = rays_d[:, None, :].expand(-1, n, -1).reshape(-1, 3)
    inside = bounds.contains(x) & subject_model.occupied(x)
    # Each point through the one model that owns it (the same values as evaluating both and choosing).
    rgb, sigma = torch.zeros(x.shape[0], 3), torch.zeros(x.shape[0])
    for model, sel in ((subject_model, inside), (background, ~inside)):
        if bool(sel.any()):
            rgb[sel], sigma[sel] = model.radiance(x[sel], d[sel])
    rgb, sigma = rgb.reshape(-1, n, 3), sigma.reshape(-1, n)
    sd = sigma * (edges[:, 1:] - edges[:, :-1])
    w = torch.exp(-(torch.cumsum(sd, -1) - sd)) * -torch.expm1(-sd)
    opacity = w.sum(-1)
    depth = (w * mid).sum(-1) / opacity.clamp_min(1e-10)
    return (w[..., None] * rgb).sum(1), opacity, depth


def test_composite_segments_is_the_one_pass_integral() -> None:
    # Three segments of one ray as separate accumulators, against the same samples composited in one pass.
    g = torch.Generator().manual_seed(0)
    n_rays, n = 5, 30
    sd = torch.rand(n_rays, n, generator=g) * 0.3
    rgb = torch.rand(n_rays, n, 3, generator=g)
    t = torch.cumsum(torch.rand(n_rays, n, generator=g), -1)
    nrm = torch.nn.functional.normalize(torch.randn(n_rays, n, 3, generator=g), dim=-1)

    def accumulate(a: int, b: int) -> RayAccum:
        s = sd[:, a:b]
        w = torch.exp(-(torch.cumsum(s, -1) - s)) * -torch.expm1(-s)
        return RayAccum((w[..., None] * rgb[:, a:b]).sum(1), w.sum(-1), (w * t[:, a:b]).sum(-1),
                        (w[..., None] * nrm[:, a:b]).sum(1))

    whole = accumulate(0, n)
    joined = composite_segments([accumulate(0, 9), accumulate(9, 20), accumulate(20, n)])
    for name in ("rgb", "opacity", "depth_sum", "normal_sum"):
        torch.testing.assert_close(getattr(joined, name), getattr(whole, name), atol=1e-6, rtol=1e-6)
    with pytest.raises(ValueError, match="at least one"):
        composite_segments([])


def test_subject_only_renders_nothing_outside_the_bounds_and_the_inside_as_it_is() -> None:
    model = field_model(1, density_bias=0.0)
    bounds = bounds_through_the_middle()
    rays_o, rays_d = camera_rays(10)
    whole = FrameRenderer(model, early_stop_eps=1e-4)
    only = FrameRenderer(model, subject=bounds, early_stop_eps=1e-4)
    rgb, opacity, depth = only.render_rays(rays_o, rays_d)
    s_min, s_max = bounds.ray_interval(rays_o, rays_d)
    miss = s_max <= s_min
    assert bool(miss.any()) and bool((~miss).any())
    assert bool((opacity[miss] == 0).all()) and bool((rgb[miss] == 0).all()) and bool((depth[miss] == 0).all())
    # Against the combined field whose background is empty (zero density outside the bounds).
    empty = field_model(1, density_bias=-60.0)
    ref_rgb, ref_opacity, ref_depth = brute_force(empty, model, bounds, rays_o, rays_d)
    assert float(ref_opacity.max()) > 0.3, "the bounds should hold visible field"
    torch.testing.assert_close(opacity, ref_opacity, atol=1e-3, rtol=0)
    torch.testing.assert_close(rgb, ref_rgb, atol=1e-3, rtol=0)
    hit = ref_opacity > 0.05
    torch.testing.assert_close(depth[hit], ref_depth[hit], atol=1e-3, rtol=0)
    # Less than the whole scene, which has field in front of and behind the bounds.
    _, whole_opacity, _ = whole.render_rays(rays_o, rays_d)
    assert float((whole_opacity - opacity).min()) > -1e-4 and float((whole_opacity - opacity).max()) > 0.2


@pytest.mark.slow
@pytest.mark.parametrize("density_bias", [-1.0, 0.5])
def test_background_composite_equals_brute_force_of_the_combined_field(density_bias: float) -> None:
    rec = field_model(3, density_bias=density_bias)
    sty = stylized_like(rec)
    bounds = bounds_through_the_middle()
    rays_o, rays_d = camera_rays(10)
    renderer = FrameRenderer(sty, subject=bounds, background=rec, early_stop_eps=1e-5, max_samples=4099,
                             first_window=5)
    assert renderer.has_background_model
    rgb, opacity, depth = renderer.render_rays(rays_o, rays_d)
    ref_rgb, ref_opacity, ref_depth = brute_force(rec, sty, bounds, rays_o, rays_d)
    s_min, s_max = bounds.ray_interval(rays_o, rays_d)
    assert bool((s_max > s_min).sum() > 20), "rays must cross the bounds"
    torch.testing.assert_close(opacity, ref_opacity, atol=1e-3, rtol=0)
    torch.testing.assert_close(rgb, ref_rgb, atol=1e-3, rtol=0)
    hit = ref_opacity > 0.05
    torch.testing.assert_close(depth[hit], ref_depth[hit], atol=1e-3, rtol=0)
    # The stylized colours show through: not the reconstruction's own render.
    rec_rgb, _, _ = FrameRenderer(rec, early_stop_eps=1e-5).render_rays(rays_o, rays_d)
    assert float((rec_rgb - rgb).abs().max()) > 0.05


def without_cells_beyond(model: NeRFModel, x_min: float) -> NeRFModel:
    """``model`` with the occupancy cells beyond unit-cube ``x >= x_min`` emptied: a stylization that left the
    room its grown bounds took in (cells of the reconstruction) out of its grid."""
    r = model.occupancy.resolution
    model.occupancy.binary[int(x_min * r):] = False
    return model


def test_the_room_the_subjects_grid_leaves_out_renders_as_the_background() -> None:
    rec = field_model(8, density_bias=0.0)
    sty = without_cells_beyond(stylized_like(rec), 0.55)  # model x >= 0.1 of every scene here
    bounds = bounds_through_the_middle()
    rays_o, rays_d = camera_rays(10, n_views=2)
    renderer = FrameRenderer(sty, subject=bounds, background=rec, early_stop_eps=1e-5, max_samples=4099,
                             first_window=5)
    rgb, opacity, depth = renderer.render_rays(rays_o, rays_d)
    ref_rgb, ref_opacity, ref_depth = brute_force(rec, sty, bounds, rays_o, rays_d)
    torch.testing.assert_close(opacity, ref_opacity, atol=1e-3, rtol=0)
    torch.testing.assert_close(rgb, ref_rgb, atol=1e-3, rtol=0)
    hit = ref_opacity > 0.05
    torch.testing.assert_close(depth[hit], ref_depth[hit], atol=1e-3, rtol=0)
    # The room shows: without it the bounds' empty cells would be a hole in the reconstruction's wall.
    hole = FrameRenderer(sty, subject=bounds, background=without_cells_beyond(copy.deepcopy(rec), 0.55),
                         early_stop_eps=1e-5).render_rays(rays_o, rays_d)
    assert float((hole[1] - opacity).abs().max()) > 0.05
    # Normals come from the density of whichever model owns the point's cell: finite, unit length x coverage.
    dense = field_model(6, density_bias=2.0, render_steps=512)
    renderer = FrameRenderer(without_cells_beyond(stylized_like(dense), 0.55), subject=bounds, background=dense)
    passes = renderer.render_passes(ring_cameras(1, 8, distance=2.6, focal=10.0), 0)
    assert passes.normal is not None and bool(torch.isfinite(passes.normal).all())
    torch.testing.assert_close(passes.normal.norm(dim=-1), passes.rgba[..., 3], atol=1e-4, rtol=0)


@pytest.mark.parametrize("scene", ["matte", "contract"])
def test_background_pixels_are_the_reconstructions_own_render(scene: str) -> None:
    rec = field_model(4, scene=scene, density_bias=-1.0, render_steps=256)
    sty = stylized_like(rec)
    bounds = bounds_through_the_middle()
    cams = ring_cameras(2, 12, distance=2.6, focal=16.0)
    with_room = FrameRenderer(sty, subject=bounds, background=rec)
    rec_only = FrameRenderer(rec)
    for i in range(2):
        rgba, depth = with_room.render(cams, i)
        ref, ref_depth = rec_only.render(cams, i)
        rays_o, rays_d = rays_for_image(cams, i)
        s_min, s_max = bounds.ray_interval(rays_o, rays_d)
        miss = (s_max <= s_min).reshape(12, 12)
        assert bool(miss.any()) and bool((~miss).any())
        torch.testing.assert_close(rgba[miss], ref[miss], atol=1e-5, rtol=0)
        torch.testing.assert_close(depth[miss], ref_depth[miss], atol=1e-4, rtol=1e-5)
        assert float((rgba[~miss] - ref[~miss]).abs().max()) > 0.02, "the subject is the stylized model's"


def test_background_composite_with_the_same_model_is_the_whole_scene() -> None:
    model = field_model(5, density_bias=0.0, render_steps=1024)
    bounds = bounds_through_the_middle()
    rays_o, rays_d = camera_rays(10, n_views=2)
    whole = FrameRenderer(model).render_rays(rays_o, rays_d)
    joined = FrameRenderer(model, subject=bounds, background=model).render_rays(rays_o, rays_d)
    # The segments restart the step schedule at the bounds: the same integral, other quadrature points.
    for a, b in zip(joined[:2], whole[:2], strict=True):
        torch.testing.assert_close(a, b, atol=1e-2, rtol=0)


def test_passes_of_the_background_composite() -> None:
    rec = field_model(6, density_bias=2.0, render_steps=512)
    sty = stylized_like(rec)
    cams = ring_cameras(1, 8, distance=2.6, focal=10.0)
    renderer = FrameRenderer(sty, subject=bounds_through_the_middle(), background=rec)
    passes = renderer.render_passes(cams, 0)
    rgba, _ = renderer.render(cams, 0)
    torch.testing.assert_close(passes.rgba, rgba)
    assert passes.normal is not None and bool(torch.isfinite(passes.normal).all())
    length = passes.normal.norm(dim=-1)
    torch.testing.assert_close(length, rgba[..., 3], atol=1e-4, rtol=0)  # unit normals times coverage


def test_a_background_model_needs_bounds_and_the_same_coordinates() -> None:
    from backend.nerf.checkpoint import NeRFCheckpoint
    from captures.normalize import Normalization

    rec = field_model(1)
    with pytest.raises(ValueError, match="give subject"):
        FrameRenderer(rec, background=rec)
    config = ReconstructConfig.tiny()
    a = NeRFCheckpoint(rec, config, "matte", normalization=Normalization(np.zeros(3), 2.0))
    b = NeRFCheckpoint(rec, config, "matte", normalization=Normalization(np.ones(3), 2.0))
    with pytest.raises(ValueError, match="normalization"):
        FrameRenderer(a, subject=bounds_through_the_middle(), background=b)


def fused_composite_errors(device: str, size: int, scenes: tuple[str, ...] = ("matte", "contract")
                           ) -> dict[str, float]:
    """The fused Triton field on both models of a background composite (and on the subject alone) against the
    PyTorch path: largest colour and opacity differences. On the CPU it runs in Triton's interpreter
    (``TRITON_INTERPRET=1``, in a process of its own)."""
    from test_fused_field import _model as random_field_model  # the default architecture, a random field

    from backend.nerf._triton_field import FusedField

    out: dict[str, float] = {}
    for scene in scenes:
        rec = random_field_model(scene, device)
        domain = rec.domain
        rec.occupancy.update(0, lambda u, d=domain: (d.from_unit_cube(u).norm(dim=-1) < 0.7).float())
        # The stylized model leaves part of the bounds to the reconstruction (the room of grown bounds).
        sty = without_cells_beyond(stylized_like(rec.cpu()), 0.55).to(device)
        rec = rec.to(device)
        bounds = bounds_through_the_middle()
        cams = ring_cameras(1, size, distance=2.6, focal=2.6 * size)
        for name, kwargs in (("subject", {}), ("composite", {"background": rec})):
            ref = FrameRenderer(sty, subject=bounds, fused="off", **kwargs)
            fused = FrameRenderer(sty, subject=bounds, fused="off", **kwargs)
            fused._fused = FusedField(sty.field)  # the fused path, also where it is not offered (CPU)
            if fused._background is not None:
                fused._background._fused = FusedField(rec.field)
            a, _ = ref.render(cams, 0)
            b, _ = fused.render(cams, 0)
            out[f"{scene}_{name}_max_abs"] = float((a - b).abs().max())
            out[f"{scene}_{name}_opacity_mean"] = float(a[..., 3].mean())
    return out


def _check_fused(errors: dict[str, float]) -> None:
    for key, value in errors.items():
        if key.endswith("_max_abs"):
            # float16 tables and weights in the fused kernel.
            assert value < 5e-3, errors
        else:
            assert value > 0.05, errors  # something was rendered


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (the fused Triton field)")
def test_fused_gpu_path_renders_the_subject_and_the_composite_as_the_pytorch_path() -> None:
    pytest.importorskip("triton")
    _check_fused(fused_composite_errors("cuda", 48))


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="Triton is not installed")
def test_fused_path_of_the_subject_in_the_triton_interpreter() -> None:
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=f"{REPO}{os.pathsep}{REPO / 'tests'}",
               OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, __file__], capture_output=True, text=True, env=env, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _check_fused(json.loads(proc.stdout.strip().splitlines()[-1]))


if __name__ == "__main__":  # the interpreter run of test_fused_path_of_the_subject_in_the_triton_interpreter
    # The room-modelling scene only: the interpreter runs the kernel one program at a time.
    print(json.dumps(fused_composite_errors("cpu", 12, ("contract",))))
