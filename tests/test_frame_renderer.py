"""The frame renderer (windowed marching, one field evaluation per sample) against the training renderer."""

from __future__ import annotations

import pytest
import torch
from test_nerf_render import _model  # a random structured field in an occupied ball

from backend.nerf import render_rays
from backend.nerf.frame_renderer import FrameRenderer
from backend.nerf.rays import rays_for_image
from backend.nerf.synthetic import ring_cameras


@pytest.mark.parametrize(("scene", "density_bias"), [("matte", 1.0), ("matte", 4.0), ("contract", 3.0)])
def test_frame_renderer_matches_training_renderer(scene: str, density_bias: float) -> None:
    model = _model(1, scene, density_bias)
    cams = ring_cameras(2, 12)
    rays = [rays_for_image(cams, i) for i in range(2)]
    rays_o, rays_d = torch.cat([r[0] for r in rays]), torch.cat([r[1] for r in rays])
    with torch.no_grad():
        ref = render_rays(model, rays_o, rays_d, early_stop_eps=1e-4)
    # Small windows and chunks: several rounds, rays split between sub-batches and chunks.
    renderer = FrameRenderer(model, early_stop_eps=1e-4, max_rays=100, max_samples=257, first_window=3)
    assert renderer.field_impl == "pytorch"
    rgb, opacity, depth = renderer.render_rays(rays_o, rays_d)
    assert float(ref.opacity.max()) > 0.5, "the test model must have opaque rays"
    # The training renderer drops samples past the stop point; the frame renderer keeps the rest of a
    # window, so they differ by at most the transmittance left at the stop (early_stop_eps).
    torch.testing.assert_close(opacity, ref.opacity, atol=2e-4, rtol=0)
    torch.testing.assert_close(rgb, ref.rgb, atol=2e-4, rtol=0)
    hit = ref.opacity > 0.05
    torch.testing.assert_close(depth[hit], ref.depth[hit], atol=2e-3, rtol=1e-3)
    assert bool((depth[ref.opacity == 0] == 0).all())


def test_frame_renderer_render_shapes_and_background() -> None:
    model = _model(2, "matte", 2.0)
    cams = ring_cameras(1, 9)
    renderer = FrameRenderer(model)
    rgba, depth = renderer.render(cams, 0)
    assert rgba.shape == (9, 9, 4) and depth.shape == (9, 9)
    over_white, _ = renderer.render(cams, 0, background=(1.0, 1.0, 1.0))
    alpha = rgba[..., 3:]
    torch.testing.assert_close(over_white[..., :3], rgba[..., :3] + (1 - alpha), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="out of range"):
        renderer.render(cams, 1)
    with pytest.raises(ValueError, match="fused='on'"):
        FrameRenderer(model, fused="on")  # CPU model: the fused kernel needs CUDA
    with pytest.raises(ValueError, match="early_stop_eps"):
        FrameRenderer(model, early_stop_eps=0.0)
