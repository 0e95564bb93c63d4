"""The fused Triton field (rendering only) against the float32 PyTorch field.

Where there is no GPU the kernel runs in Triton's interpreter on the CPU (a subprocess, since the
interpreter is chosen when Triton compiles the kernels), so CI checks its arithmetic too.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from backend.nerf import NeRFModel, ReconstructConfig

REPO = Path(__file__).resolve().parents[1]
HAS_TRITON = importlib.util.find_spec("triton") is not None


def _model(scene: str, device: str, seed: int = 0) -> NeRFModel:
    """The default architecture with a random, structured field (weights scaled up so colours vary)."""
    torch.manual_seed(seed)
    model = NeRFModel(ReconstructConfig().model_config(scene, separate_matte=False, pixel_footprint=None),
                      device=device)
    with torch.no_grad():
        model.field.encoding.table.normal_(0.0, 0.5)
        for mlp in (model.field.density_mlp, model.field.colour_mlp):
            for p in mlp.parameters():
                p.mul_(3.0)
    return model


def field_errors(device: str, n: int) -> dict[str, float]:
    """Max abs colour error and relative density error of the fused field, for both scene kinds."""
    from backend.nerf._triton_field import FusedField

    out = {}
    for scene in ("matte", "contract"):
        model = _model(scene, device)
        gen = torch.Generator(device=device).manual_seed(1)
        x = (torch.rand(n, 3, device=device, generator=gen) * 2 - 1) * 1.7  # inside and outside the domain
        d = torch.nn.functional.normalize(torch.randn(n, 3, device=device, generator=gen), dim=-1)
        with torch.no_grad():
            rgb_ref, sigma_ref = model.field(x, d)
            rgb, sigma = FusedField(model.field)(x, d)
        out[f"{scene}_rgb_max_abs"] = float((rgb - rgb_ref).abs().max())
        out[f"{scene}_rgb_std"] = float(rgb_ref.std())
        out[f"{scene}_sigma_rel"] = float((sigma - sigma_ref).norm() / sigma_ref.norm())
        out[f"{scene}_outside_zero"] = float(sigma[(x.abs() > model.domain.bound).any(-1)].abs().max()) \
            if scene == "matte" else 0.0
        out.update({f"{scene}_{k}": v for k, v in _window_errors(model, device).items()})
    return out


def _window_errors(model: NeRFModel, device: str) -> dict[str, float]:
    """The frame renderer's kernel (samples as (ray, step) of the step schedule) against the PyTorch path."""
    from backend.nerf._triton_field import FusedField
    from backend.nerf.marching import _intervals, occupied_steps, ray_interval
    from backend.nerf.rays import rays_for_image
    from backend.nerf.synthetic import ring_cameras

    domain = model.domain
    model.occupancy.update(0, lambda u: (domain.from_unit_cube(u).norm(dim=-1) < 0.8).float())
    rays_o, rays_d = rays_for_image(ring_cameras(1, 8), 0, device=device)
    t_min, t_max = ray_interval(rays_o, rays_d, domain, model.settings)
    ray, step = occupied_steps(rays_o, rays_d, t_min, t_max, model.occupancy, domain, model.settings, impl="torch")
    with torch.no_grad():
        t0, t1, pos = _intervals(rays_o, rays_d, t_min, t_max, ray, step, model.settings)
        rgb_ref, sigma_ref = model.field(pos, rays_d[ray])
        rgb, sd, t_mid = FusedField(model.field).window(rays_o, rays_d, t_min, t_max, ray, step, model.settings)
    sd_ref = sigma_ref * (t1 - t0)
    return {"window_samples": float(ray.shape[0]), "window_rgb_max_abs": float((rgb - rgb_ref).abs().max()),
            "window_sd_rel": float((sd - sd_ref).norm() / sd_ref.norm()),
            "window_t_mid_max_abs": float((t_mid - 0.5 * (t0 + t1)).abs().max())}


def _check(errors: dict[str, float]) -> None:
    for scene in ("matte", "contract"):
        assert errors[f"{scene}_rgb_std"] > 0.05, "the test field must have varied colours"
        # float16 tables and weights with float32 accumulation: ~1e-3; a wrong weight layout or hash is O(0.1).
        assert errors[f"{scene}_rgb_max_abs"] < 5e-3
        assert errors[f"{scene}_sigma_rel"] < 5e-3
    assert errors["matte_outside_zero"] == 0.0
    for scene in ("matte", "contract"):
        assert errors[f"{scene}_window_samples"] > 100
        assert errors[f"{scene}_window_rgb_max_abs"] < 5e-3
        assert errors[f"{scene}_window_sd_rel"] < 5e-3
        assert errors[f"{scene}_window_t_mid_max_abs"] < 1e-4


@pytest.mark.slow
@pytest.mark.skipif(not HAS_TRITON, reason="Triton is not installed")
def test_fused_field_in_triton_interpreter() -> None:
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, __file__], capture_output=True, text=True, env=env, timeout=300,
                          cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _check(json.loads(proc.stdout.strip().splitlines()[-1]))


@pytest.mark.skipif(not (torch.cuda.is_available() and HAS_TRITON), reason="needs a CUDA GPU and Triton")
def test_fused_field_on_gpu() -> None:
    _check(field_errors("cuda", 2**16 + 5))


@pytest.mark.skipif(not (torch.cuda.is_available() and HAS_TRITON), reason="needs a CUDA GPU and Triton")
def test_frame_renderer_fused_matches_pytorch_field_on_gpu() -> None:
    from backend.nerf.frame_renderer import FrameRenderer
    from backend.nerf.rays import rays_for_image
    from backend.nerf.synthetic import ring_cameras

    model = _model("matte", "cuda")
    domain = model.domain
    model.occupancy.update(0, lambda u: (domain.from_unit_cube(u).norm(dim=-1) < 0.6).float())
    cams = ring_cameras(2, 64)
    rays_o, rays_d = rays_for_image(cams, 1, device="cuda")
    fused = FrameRenderer(model, fused="on")
    assert fused.field_impl == "fused-triton"
    rgb, opacity, _ = fused.render_rays(rays_o, rays_d)
    rgb_ref, opacity_ref, _ = FrameRenderer(model, fused="off").render_rays(rays_o, rays_d)
    assert float(opacity_ref.max()) > 0.5
    torch.testing.assert_close(opacity, opacity_ref, atol=5e-3, rtol=0)
    torch.testing.assert_close(rgb, rgb_ref, atol=5e-3, rtol=0)


if __name__ == "__main__":  # the interpreter run of test_fused_field_in_triton_interpreter
    print(json.dumps(field_errors("cpu", 300)))
