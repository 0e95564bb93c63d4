"""Rendering a NeRFModel: exact re-rendering of stored samples, deferred back-propagation, parameter groups."""

from __future__ import annotations

import pytest
import torch

from backend.nerf import NeRFModel, ReconstructConfig, render_rays, render_samples
from backend.nerf.rays import rays_for_image
from backend.nerf.synthetic import ring_cameras


def _model(seed: int = 0, scene: str = "matte", density_bias: float | None = None) -> NeRFModel:
    torch.manual_seed(seed)
    model = NeRFModel(ReconstructConfig.tiny().model_config(scene, separate_matte=False, pixel_footprint=None))
    if density_bias is not None:  # how opaque the ball is: from haze to surfaces that stop rays early
        model.field.config.density_bias = density_bias
    # A random table gives a field with structure (the ngp init is ~0 everywhere).
    with torch.no_grad():
        model.field.encoding.table.normal_(0.0, 0.5, generator=torch.Generator().manual_seed(seed))
    # Occupy a ball only (keeps the tests small; rendering must honour the grid).
    domain = model.domain
    model.occupancy.update(0, lambda u: (domain.from_unit_cube(u).norm(dim=-1) < 0.6).float(),
                           generator=torch.Generator().manual_seed(seed))
    return model


def _rays(n_views: int = 2, size: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    cams = ring_cameras(n_views, size)
    rays = [rays_for_image(cams, i) for i in range(n_views)]
    return torch.cat([r[0] for r in rays]), torch.cat([r[1] for r in rays])


def test_render_samples_reproduces_render_rays_exactly() -> None:
    model = _model()
    rays_o, rays_d = _rays()
    gen = torch.Generator().manual_seed(1)
    jitter = torch.rand(rays_o.shape[0], generator=gen)
    bg = torch.rand(rays_o.shape[0], 3, generator=gen)
    with torch.no_grad():
        out = render_rays(model, rays_o, rays_d, bg, jitter=jitter, return_samples=True)
    assert out.samples is not None and out.samples.n_samples > 100
    again = render_samples(model, out.samples, rays_d, bg)
    assert torch.equal(again.rgb, out.rgb) and torch.equal(again.opacity, out.opacity)
    assert torch.equal(again.weights, out.weights) and torch.equal(again.depth, out.depth)
    # Exposed for stylization: positions are the interval midpoints along the rays.
    s = out.samples
    mid = 0.5 * (s.t_starts + s.t_ends)
    torch.testing.assert_close(s.positions, rays_o[s.ray_indices] + rays_d[s.ray_indices] * mid[:, None])
    assert out.weights.shape == s.t_starts.shape and bool((s.t_ends > s.t_starts).all())


def test_deferred_backprop_equals_direct_backprop() -> None:
    model = _model(2)
    rays_o, rays_d = _rays()
    n = rays_o.shape[0]
    gen = torch.Generator().manual_seed(3)
    bg = torch.rand(n, 3, generator=gen)
    target = torch.rand(n, 3, generator=gen)

    def image_loss(rgb: torch.Tensor) -> torch.Tensor:
        # A loss that couples pixels (like CLIP losses do), not a per-pixel sum.
        return ((rgb - target) ** 2).mean() + rgb.mean(0).square().sum()

    chunks = [(0, 70), (70, 131), (131, n)]
    with torch.no_grad():
        passes = [render_rays(model, rays_o[a:b], rays_d[a:b], bg[a:b], return_samples=True) for a, b in chunks]
    image = torch.cat([p.rgb for p in passes]).requires_grad_(True)
    image_loss(image).backward()
    grad_image = image.grad
    model.zero_grad()
    for (a, b), p in zip(chunks, passes, strict=True):
        out = render_samples(model, p.samples, rays_d[a:b], bg[a:b])
        if p.samples.n_samples == 0:  # rays that miss everything: the image does not depend on the model
            assert not out.rgb.requires_grad
            continue
        out.rgb.backward(grad_image[a:b])
    deferred = {k: v.grad.clone() for k, v in model.named_parameters()}
    model.zero_grad()
    from backend.nerf import PackedSamples

    full = render_samples(model, PackedSamples.cat([p.samples for p in passes]), rays_d, bg)
    torch.testing.assert_close(full.rgb, image.detach())
    image_loss(full.rgb).backward()
    for k, v in model.named_parameters():
        torch.testing.assert_close(deferred[k], v.grad, rtol=1e-5, atol=1e-8, msg=k)
    assert deferred["field.encoding.table"].abs().sum() > 0


def test_ray_slice_selects_contiguous_rays() -> None:
    model = _model()
    rays_o, rays_d = _rays()
    with torch.no_grad():
        out = render_rays(model, rays_o, rays_d, return_samples=True)
    part = out.samples.ray_slice(50, 120)
    assert part.n_rays == 70
    again = render_samples(model, part, rays_d[50:120])
    torch.testing.assert_close(again.rgb, out.rgb[50:120])


def test_density_and_colour_parameters_are_separate() -> None:
    model = _model()
    field = model.field
    dens = {id(p) for p in field.density_parameters()}
    col = {id(p) for p in field.colour_parameters()}
    assert dens.isdisjoint(col)
    assert dens | col == {id(p) for p in field.parameters()}
    assert id(field.encoding.table) in dens
    x = torch.rand(64, 3) * 2 - 1
    d = torch.nn.functional.normalize(torch.randn(64, 3), dim=-1)
    model.density(x).sum().backward()
    assert all(p.grad is None for p in field.colour_parameters())
    model.zero_grad()
    # Freezing density leaves geometry fixed while colour still learns.
    for p in field.density_parameters():
        p.requires_grad_(False)
    rgb, sigma = model.radiance(x, d)
    assert not sigma.requires_grad
    rgb.sum().backward()
    assert all(p.grad is not None for p in field.colour_parameters())


def test_render_validates_inputs() -> None:
    model = _model()
    with pytest.raises(ValueError, match=r"\(n_rays, 3\).*\(4, 2\)"):
        render_rays(model, torch.zeros(4, 2), torch.zeros(4, 2))
    rays_o, rays_d = _rays(1, 4)
    with pytest.raises(ValueError, match=r"background.*\(7, 3\)"):
        render_rays(model, rays_o, rays_d, torch.zeros(7, 3))


def test_contracted_scene_renders() -> None:
    torch.manual_seed(0)
    model = NeRFModel(ReconstructConfig.tiny().model_config("contract", separate_matte=False))
    assert model.domain.kind == "contract" and model.settings.cone_angle > 0
    rays_o, rays_d = _rays(1, 4)
    with torch.no_grad():
        out = render_rays(model, rays_o, rays_d, torch.ones(3), return_samples=True)
    assert bool(torch.isfinite(out.rgb).all()) and out.samples.n_samples > 0
    # Contracted samples reach far beyond the unit ROI, and the far field is sampled coarsely.
    assert float(out.samples.positions.norm(dim=-1).max()) > 10.0
