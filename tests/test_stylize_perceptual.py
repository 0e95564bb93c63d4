"""Perceptual losses (backend.stylize.perceptual) against float64 references written from their definitions.

The VGG trunks are explicitly random-initialised (no ImageNet weights on test machines); LPIPS's linear layers are
the real ones shipped with the lpips package.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from backend.stylize.perceptual import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    LpipsLoss,
    _unit_channels,
    load_lpips,
    load_vgg_relu3_3,
)


@pytest.fixture(scope="module")
def lpips_loss() -> LpipsLoss:
    # The shared cache: test_stylize_clip.py asks for the same random LPIPS, so one session builds it once.
    return load_lpips(random_init=True)


def images(seed: int, shape: tuple[int, ...] = (2, 3, 40, 56)) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g), torch.rand(shape, generator=g)


def test_lpips_matches_float64_formula_and_package(lpips_loss: LpipsLoss) -> None:
    x, y = images(0)
    got = lpips_loss.per_image(x, y)
    # Float64 reference, written from the LPIPS definition with the same trunk and linear weights.
    m = copy.deepcopy(lpips_loss.lpips).double()
    shift = torch.tensor([-0.030, -0.088, -0.188], dtype=torch.float64).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450], dtype=torch.float64).view(1, 3, 1, 1)
    with torch.no_grad():
        f0 = m.net(((2 * x.double() - 1) - shift) / scale)
        f1 = m.net(((2 * y.double() - 1) - shift) / scale)
        ref = torch.zeros(2, dtype=torch.float64)
        for layer, (a, b) in enumerate(zip(f0, f1, strict=True)):
            a = a / (a.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            b = b / (b.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            w = m.lins[layer].model[-1].weight.view(1, -1, 1, 1)  # the 1x1 conv of the linear layer
            ref += ((a - b).pow(2) * w).sum(1).mean(dim=(1, 2))
        package = lpips_loss.lpips(x, y, normalize=True).view(-1)
    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(got, package, rtol=1e-5, atol=1e-7)
    assert lpips_loss(x, y).item() == pytest.approx(got.mean().item())


def test_lpips_gradient_flows_and_is_zero_safe(lpips_loss: LpipsLoss) -> None:
    x, y = images(1, (1, 3, 32, 32))
    xt = x.clone().requires_grad_(True)
    lpips_loss(xt, y).backward()
    assert torch.isfinite(xt.grad).all() and xt.grad.abs().sum() > 0
    # Channel normalisation at an all-zero feature vector (a pixel where every ReLU is off): finite gradient.
    f = torch.zeros(1, 8, 2, 2, requires_grad=True)
    (_unit_channels(f) - torch.ones(1, 8, 2, 2)).pow(2).sum().backward()
    assert torch.isfinite(f.grad).all()
    g = torch.zeros(1, 8, 2, 2, requires_grad=True)
    (g / (g.pow(2).sum(1, keepdim=True).sqrt() + 1e-10) - 1).pow(2).sum().backward()
    assert torch.isnan(g.grad).any()  # lpips.normalize_tensor's form: what _unit_channels guards against


def test_lpips_input_checks(lpips_loss: LpipsLoss) -> None:
    with pytest.raises(ValueError, match=r"\(1, 3, 8, 8\)"):
        lpips_loss(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8))
    with pytest.raises(ValueError, match=r"same shape"):
        lpips_loss(torch.rand(1, 3, 32, 32), torch.rand(2, 3, 32, 32))
    with pytest.raises(ValueError, match=r"\(2, 32, 32\)"):
        lpips_loss(torch.rand(2, 32, 32), torch.rand(2, 32, 32))


@pytest.mark.slow
def test_vgg_relu3_3_l1_matches_float64_reference() -> None:
    vgg = load_vgg_relu3_3(random_init=True, cache=None)
    assert all(not p.requires_grad for p in vgg.parameters()) and not vgg.training
    x, y = images(2, (1, 3, 60, 45))
    xt = x.clone().requires_grad_(True)
    got = vgg(xt, y)
    feats = copy.deepcopy(vgg.features).double()
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float64).view(1, 3, 1, 1)

    def phi(img: torch.Tensor) -> torch.Tensor:
        z = F.interpolate((img.double() - mean) / std, size=(224, 224), mode="bilinear", align_corners=False)
        for layer in feats:  # conv/relu/pool stack up to relu3_3
            z = layer(z)
        return z

    with torch.no_grad():
        ref = (phi(x) - phi(y)).abs().mean()
    assert got.item() == pytest.approx(ref.item(), rel=1e-5)
    got.backward()
    assert torch.isfinite(xt.grad).all() and xt.grad.abs().sum() > 0
    # Same seed, same random weights; the caller's RNG is not consumed.
    state = torch.random.get_rng_state()
    again = load_vgg_relu3_3(random_init=True, cache=None)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(again.features[0].weight, vgg.features[0].weight)
