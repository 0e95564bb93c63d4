"""Deferred back-propagation (backend.stylize.deferred) against direct back-propagation through the full image.

A tiny NeRF of the analytic spheres is trained for a few dozen steps on the CPU; then, for one view, the parameter
gradient of ``L_img(image) + λ_reg · L_reg`` accumulated chunk by chunk must equal the gradient of the same loss
with the whole image rendered with grad at once on the same samples (relative error < 1e-4 in float32).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from backend.nerf.checkpoint import NeRFCheckpoint, load_checkpoint, save_checkpoint
from backend.nerf.config import ReconstructConfig
from backend.nerf.rays import rays_for_image
from backend.nerf.synthetic import render_spheres, ring_cameras
from backend.nerf.train import train_on_images
from backend.stylize.deferred import (
    DeferredAborted,
    deferred_backward,
    deferred_gradient_error,
    distortion_bounds,
    image_from_rays,
    parameter_gradient,
    rays_from_image,
    render_view_pass1,
)

SIZE = 24
LAMBDA_REG = 0.5


def tiny_reconstruction(tmp_path_factory: pytest.TempPathFactory) -> NeRFCheckpoint:
    """A NeRF of the spheres trained for 40 steps (a few seconds), shared by the stylize test modules.

    Saved once under the session's base temp folder and loaded by later modules, so the training runs once per
    test session.
    """
    path = tmp_path_factory.getbasetemp() / "stylize_tiny_reconstruction.pt"
    if not path.is_file():
        cams = ring_cameras(8, SIZE)
        ckpt = train_on_images(cams, render_spheres(cams), ReconstructConfig.tiny(steps=40, seed=3),
                               torch.device("cpu"), background="matte")
        save_checkpoint(ckpt, path)
    return load_checkpoint(path, "cpu")



@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> NeRFCheckpoint:
    return tiny_reconstruction(tmp_path_factory)


def view_rays(ckpt: NeRFCheckpoint, i: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    assert ckpt.cameras is not None
    cams = ckpt.cameras if ckpt.normalization is None else ckpt.normalization.cameras_to_model(ckpt.cameras)
    return rays_for_image(cams, i, device="cpu", dtype=torch.float32)


def grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def mse_to_noise(seed: int) -> Callable[[torch.Tensor], tuple[torch.Tensor, dict[str, torch.Tensor]]]:
    """An image loss for the exactness checks: the mean squared distance to a fixed random image."""
    target = torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))

    def loss_fn(image: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        mse = ((image - target) ** 2).mean()
        return mse, {"mse": mse}

    return loss_fn


def assert_exact(err: dict[str, float], rtol: float = 1e-4) -> None:
    """Deferred and direct gradients agree on every parameter tensor (and the losses agree)."""
    assert err["max"] < rtol and err["grid"] < rtol and err["mlp"] < rtol, err
    assert err["loss_rel"] < 1e-5, err


def test_image_layout_round_trip() -> None:
    rgb = torch.arange(SIZE * 10 * 3, dtype=torch.float32).reshape(SIZE * 10, 3)
    image = image_from_rays(rgb, 10, SIZE)
    # Raster order: ray h*W + w is pixel (h, w).
    assert torch.equal(image[0, :, 3, 5], rgb[3 * SIZE + 5])
    assert torch.equal(rays_from_image(image), rgb)
    with pytest.raises(ValueError, match=r"\(240, 3\)"):
        image_from_rays(rgb[:-1], 10, SIZE)


def test_deferred_equals_direct_backprop_mse_and_distortion(ckpt: NeRFCheckpoint) -> None:
    model = ckpt.model
    rays_o, rays_d = view_rays(ckpt, 1)
    bg = torch.ones(3)
    loss_fn = mse_to_noise(0)

    # Odd chunk sizes: chunks split the image mid-row, and pass 1 and pass 2 chunk differently.
    err = deferred_gradient_error(model, rays_o, rays_d, SIZE, SIZE, loss_fn, bg, reg_weight=LAMBDA_REG,
                                  chunk_render=100, chunk_grad=37)
    assert err["samples"] > SIZE * SIZE, "the model has density: most rays carry several samples"
    assert err["compiled"] == 0.0 and err["triton"] == 0.0, "the CPU checks the eager path"
    assert_exact(err)
    model.zero_grad(set_to_none=True)
    step = deferred_backward(model, rays_o, rays_d, SIZE, SIZE, loss_fn, bg, reg_weight=LAMBDA_REG,
                             chunk_render=100, chunk_grad=37)
    g_def = grads(model)
    # Pass 1 renders what one all-rays pass renders (up to float32 rounding of per-chunk transmittance sums).
    whole = render_view_pass1(model, rays_o, rays_d, bg, chunk=SIZE * SIZE)
    torch.testing.assert_close(step.image, image_from_rays(whole.rgb, SIZE, SIZE), rtol=0, atol=1e-6)
    assert step.regularization > 0 and "mse" in step.terms

    # The distortion term really contributes: without it the density gradients change.
    model.zero_grad(set_to_none=True)
    deferred_backward(model, rays_o, rays_d, SIZE, SIZE, loss_fn, bg, reg_weight=0.0, chunk_render=100,
                      chunk_grad=37)
    g_noreg = grads(model)
    table = "field.encoding.table"
    assert float((g_noreg[table] - g_def[table]).norm()) > 1e-3 * float(g_def[table].norm())
    model.zero_grad(set_to_none=True)


def test_deferred_equals_direct_with_the_opacity_prior(ckpt: NeRFCheckpoint) -> None:
    """Issue 20B: the opacity prior (λ_opa L_opa, beside λ_reg L_reg) goes through pass 2 chunk by chunk and still
    equals direct back-propagation; it really moves the density gradient, and its value is reported."""
    model = ckpt.model
    rays_o, rays_d = view_rays(ckpt, 2)
    bg = torch.ones(3)
    loss_fn = mse_to_noise(5)

    err = deferred_gradient_error(model, rays_o, rays_d, SIZE, SIZE, loss_fn, bg, reg_weight=LAMBDA_REG,
                                  opacity_weight=3.0, chunk_render=100, chunk_grad=37)
    assert_exact(err)
    model.zero_grad(set_to_none=True)
    step = deferred_backward(model, rays_o, rays_d, SIZE, SIZE, loss_fn, bg, reg_weight=LAMBDA_REG,
                             opacity_weight=3.0, chunk_render=100, chunk_grad=37)
    with_prior = grads(model)
    a = step.opacity.reshape(-1).double()
    assert step.opacity_loss == pytest.approx(float((4 * a * (1 - a)).clamp_min(0).mean()), rel=1e-4, abs=1e-7)
    assert step.opacity_loss > 0 and step.total == pytest.approx(
        step.image_loss + LAMBDA_REG * step.regularization + 3.0 * step.opacity_loss)
    model.zero_grad(set_to_none=True)
    deferred_backward(model, rays_o, rays_d, SIZE, SIZE, loss_fn, bg, reg_weight=LAMBDA_REG, chunk_render=100,
                      chunk_grad=37)
    table = "field.encoding.table"
    assert float((grads(model)[table] - with_prior[table]).norm()) > 1e-3 * float(with_prior[table].norm())
    model.zero_grad(set_to_none=True)


def test_deferred_equals_direct_within_subject_bounds(ckpt: NeRFCheckpoint) -> None:
    """Issue 20: with subject bounds (here around the red sphere alone) pass 1 samples only inside them, and the
    deferred gradient still equals direct back-propagation through the same subject-only image."""
    import numpy as np

    from backend.nerf.subject import SubjectBounds

    m = np.diag([0.45, 0.45, 0.45, 1.0])
    m[:3, 3] = (0.3, 0.0, 0.0)
    bounds = SubjectBounds("box", m)
    model = ckpt.model
    rays_o, rays_d = view_rays(ckpt, 1)
    bg = torch.ones(3)
    loss_fn = mse_to_noise(2)

    err = deferred_gradient_error(model, rays_o, rays_d, SIZE, SIZE, loss_fn, bg, reg_weight=LAMBDA_REG,
                                  chunk_render=100, chunk_grad=37, subject=bounds)
    assert_exact(err)
    view = render_view_pass1(model, rays_o, rays_d, bg, chunk=100, subject=bounds)
    whole = render_view_pass1(model, rays_o, rays_d, bg, chunk=100)
    assert 0 < view.samples.n_samples < whole.samples.n_samples
    assert err["samples"] == view.samples.n_samples, "the check ran on the subject's samples"
    grown = SubjectBounds("box", np.diag([1.001, 1.001, 1.001, 1.0]) @ m)  # float32 midpoints on the boundary
    assert bool(grown.contains(view.samples.positions).all())
    t_min, t_max = bounds.ray_interval(rays_o, rays_d)
    miss = t_max <= t_min
    assert bool(miss.any()) and bool((~miss).any())
    assert float(view.opacity[miss].abs().max()) == 0.0 and bool((view.rgb[miss] == 1.0).all())
    # The other spheres are cut away: fewer opaque pixels than the whole view.
    assert int((view.opacity > 0.5).sum()) < int((whole.opacity > 0.5).sum())
    model.zero_grad(set_to_none=True)


def test_deferred_equals_direct_with_the_real_image_loss(ckpt: NeRFCheckpoint) -> None:
    """The same with ``total_image_loss`` (random ViT-S-32 CLIP, random-trunk LPIPS, 1 template)."""
    from backend.stylize.clip_model import imagenet_templates, load_clip
    from backend.stylize.losses import LossWeights, StyleLossConfig, total_image_loss
    from backend.stylize.perceptual import load_lpips

    clip = load_clip("ViT-S-32", pretrained=None, random_init=True, device="cpu")
    lpips = load_lpips("cpu", random_init=True)
    model = ckpt.model
    rays_o, rays_d = view_rays(ckpt, 2)
    bg = torch.ones(3)
    with torch.no_grad():
        src = image_from_rays(render_view_pass1(model, rays_o, rays_d, bg).rgb, SIZE, SIZE)
        # A source that differs from the render, so that the perceptual and directional terms have gradients.
        src = (0.8 * src + 0.1).contiguous()
    config = StyleLossConfig(n_crops=2, n_negatives=2)
    templates = imagenet_templates()[:1]

    def loss_fn(image: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        # A fresh generator per call: both computations draw the same crops.
        return total_image_loss(image, src, clip=clip, target="a marble statue", negatives=["photo", "human face"],
                                generator=torch.Generator().manual_seed(7), perceptual=lpips,
                                weights=LossWeights(), config=config, templates=templates)

    assert_exact(deferred_gradient_error(model, rays_o, rays_d, SIZE, SIZE, loss_fn, bg, reg_weight=LAMBDA_REG,
                                         chunk_render=256, chunk_grad=200))
    model.zero_grad(set_to_none=True)
    step = deferred_backward(model, rays_o, rays_d, SIZE, SIZE, loss_fn, bg, reg_weight=LAMBDA_REG,
                             chunk_render=256, chunk_grad=200)
    assert set(step.terms) == {"directional", "global_contrastive", "local_contrastive", "perceptual"}
    model.zero_grad(set_to_none=True)


def test_frozen_density_gets_no_gradient_and_colour_does(ckpt: NeRFCheckpoint) -> None:
    model = ckpt.model
    rays_o, rays_d = view_rays(ckpt, 0)
    density = model.field.density_parameters()
    for p in density:
        p.requires_grad_(False)
    try:
        model.zero_grad(set_to_none=True)
        deferred_backward(model, rays_o, rays_d, SIZE, SIZE, lambda im: (((im - 0.5) ** 2).mean(), {}),
                          torch.ones(3), reg_weight=0.0)
        assert all(p.grad is None for p in density)
        assert all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in model.field.colour_parameters())
    finally:
        for p in density:
            p.requires_grad_(True)
        model.zero_grad(set_to_none=True)


def test_distortion_bounds_are_per_ray_and_positive(ckpt: NeRFCheckpoint) -> None:
    model = ckpt.model
    rays_o, rays_d = view_rays(ckpt, 0)
    view = render_view_pass1(model, rays_o, rays_d, torch.ones(3), chunk=50)
    assert view.t_near.shape == view.t_far.shape == (SIZE * SIZE,)
    assert bool((view.t_far > view.t_near).all())
    s = view.samples
    # Every sample starts after its ray's box entry t_near; the span is one ROI radius (model unit) on every ray.
    assert bool((s.t_starts >= view.t_near[s.ray_indices] - 1e-5).all())
    torch.testing.assert_close(view.t_far - view.t_near, torch.ones_like(view.t_near))
    # The same bounds whatever the chunking of pass 1.
    t_near, t_far = distortion_bounds(model, rays_o, rays_d, s)
    assert torch.equal(t_near, view.t_near) and torch.equal(t_far, view.t_far)


def test_shape_errors_and_abort(ckpt: NeRFCheckpoint) -> None:
    model = ckpt.model
    rays_o, rays_d = view_rays(ckpt, 0)
    with pytest.raises(ValueError, match=r"rays_d must have shape \(400, 3\)"):
        deferred_backward(model, rays_o, rays_d, 20, 20, lambda im: (im.mean(), {}))
    with pytest.raises(ValueError, match=r"background must have shape \(3,\) or \(576, 3\)"):
        render_view_pass1(model, rays_o, rays_d, torch.ones(4))
    view = render_view_pass1(model, rays_o, rays_d)
    from backend.stylize.deferred import backward_pass2

    with pytest.raises(ValueError, match=r"grad_rgb must have shape \(576, 3\)"):
        backward_pass2(model, view, torch.zeros(575, 3))
    calls = []

    def stop_on_third() -> bool:
        calls.append(1)
        return len(calls) >= 3

    with pytest.raises(DeferredAborted):
        deferred_backward(model, rays_o, rays_d, SIZE, SIZE, lambda im: (im.mean(), {}), chunk_render=100,
                          should_stop=stop_on_third)
    model.zero_grad(set_to_none=True)



def test_gradient_shares_add_up_and_leave_the_step_unchanged(ckpt: NeRFCheckpoint) -> None:
    """Each term's gradient alone (the report of issue 12) sums to the full gradient, and measuring it does not
    change what the optimizer gets."""
    model = ckpt.model
    rays_o, rays_d = view_rays(ckpt, 3)
    bg = torch.ones(3)
    target = torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))

    def loss_fn(image: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        mse = ((image - target) ** 2).mean()
        l1 = (image - 0.5).abs().mean()
        return 2.0 * mse + 0.5 * l1, {"mse": mse, "l1": l1}

    weights = {"mse": 2.0, "l1": 0.5}
    model.zero_grad(set_to_none=True)
    plain = deferred_backward(model, rays_o, rays_d, SIZE, SIZE, loss_fn, bg, reg_weight=LAMBDA_REG, chunk_grad=100)
    g_plain = grads(model)
    model.zero_grad(set_to_none=True)
    measured = deferred_backward(model, rays_o, rays_d, SIZE, SIZE, loss_fn, bg, reg_weight=LAMBDA_REG,
                                 chunk_grad=100, term_weights=weights)
    g_measured = grads(model)
    assert plain.gradient_norms is None
    for name, g in g_plain.items():
        torch.testing.assert_close(g_measured[name], g, rtol=1e-6, atol=1e-12)
    norms = measured.gradient_norms
    assert norms is not None and set(norms) == {"mse", "l1", "regularization"}
    assert all(n["grid"] > 0 and n["mlp"] > 0 for n in norms.values())
    # Linearity: the terms' gradients add up to the whole one.
    view = render_view_pass1(model, rays_o, rays_d, bg)
    image = image_from_rays(view.rgb, SIZE, SIZE).detach().requires_grad_(True)
    _, terms = loss_fn(image)
    parts = []
    for name, w in weights.items():
        (g,) = torch.autograd.grad(w * terms[name], image)
        parts.append(parameter_gradient(model, view, rays_from_image(g).contiguous()))
    parts.append(parameter_gradient(model, view, torch.zeros(SIZE * SIZE, 3), reg_weight=LAMBDA_REG))
    table = sum(p["grid"][0] for p in parts)  # the hash table: the grid group's only tensor
    torch.testing.assert_close(table, g_plain["field.encoding.table"], rtol=1e-4, atol=1e-9)
    model.zero_grad(set_to_none=True)
