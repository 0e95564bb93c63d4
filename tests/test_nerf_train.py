"""Training on a tiny analytic scene (CPU): overfitting floor, alpha, progress, cancel, checkpoints, config."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from backend.nerf import (
    NeRFCheckpoint,
    ReconstructConfig,
    TrainProgress,
    evaluate_psnr,
    load_checkpoint,
    render_image,
    render_rays,
    save_checkpoint,
    train_on_images,
)
from backend.nerf.synthetic import render_spheres, ring_cameras
from captures.normalize import Normalization

# Small enough for ~5 s of training on one CPU core, large enough that a broken renderer, field or
# optimiser cannot reach the PSNR floor (a correct one reaches ~28 dB; a constant image ~10 dB).
CPU_CONFIG = ReconstructConfig.tiny(
    steps=150, target_samples=2**12, lr=3e-2, lr_final_factor=0.3, n_levels=4, log2_table_size=12,
    base_resolution=4, max_resolution=32, hidden_dim=16, render_steps=64, occupancy_resolution=16, batch_rays=256,
    min_batch_rays=64, max_batch_rays=2048, occ_warmup_steps=16, occ_update_every=8, eval_every_steps=75,
)
PSNR_FLOOR = 25.0
NORM = Normalization(center=np.array([0.5, -1.0, 2.0]), radius=3.0)



@pytest.fixture(scope="module")
def scene() -> tuple:
    cams_model = ring_cameras(10, 20)
    images = render_spheres(cams_model)
    return NORM.cameras_to_world(cams_model), images


@pytest.fixture(scope="module")
def trained(scene: tuple) -> tuple[NeRFCheckpoint, list[TrainProgress]]:
    cams, images = scene
    reports: list[TrainProgress] = []
    ckpt = train_on_images(cams.select(range(8)), images[:8], CPU_CONFIG, torch.device("cpu"), background="matte",
                           normalization=NORM, heldout_cameras=cams.select([8, 9]), heldout_images=images[8:],
                           on_progress=reports.append)
    return ckpt, reports


def test_tiny_scene_overfits_to_psnr_floor(trained: tuple, scene: tuple) -> None:
    ckpt, _ = trained
    cams, images = scene
    psnr, per_view = evaluate_psnr(ckpt, cams.select(range(8)), images[:8], background="white")
    assert psnr >= PSNR_FLOOR, per_view
    assert ckpt.step == CPU_CONFIG.steps and ckpt.metrics["train_psnr"] > 20.0


def test_matte_mode_reconstructs_alpha(trained: tuple, scene: tuple) -> None:
    ckpt, _ = trained
    cams, images = scene
    rgba, depth = render_image(ckpt, cams, 1)
    alpha_gt = torch.as_tensor(images[1][..., 3])
    assert float((rgba[..., 3] - alpha_gt).abs().mean()) < 0.05
    assert float(rgba[..., 3][alpha_gt == 0].mean()) < 0.1
    assert float(rgba[..., 3][alpha_gt == 1].mean()) > 0.9
    # RGB is premultiplied without a background: ~0 where nothing was hit.
    assert float(rgba[..., :3][alpha_gt == 0].abs().max()) < 0.5
    # Depth is in world units: the spheres sit ~3 model units (= 9 world units) from the cameras.
    hit_depth = depth[alpha_gt == 1]
    assert 4.5 < float(hit_depth.median()) < 9.5


def test_progress_reports_and_heldout_evaluation(trained: tuple) -> None:
    _, reports = trained
    assert reports[-1].done and reports[-1].step == CPU_CONFIG.steps and reports[-1].eta_s == 0.0
    steps = [r.step for r in reports]
    assert steps == sorted(steps)
    evaluated = [r for r in reports if r.evaluated]
    assert [r.step for r in evaluated][:1] == [75] and all(r.heldout_psnr is not None for r in evaluated)
    assert all(math.isfinite(r.loss) and r.elapsed_s >= 0 for r in reports[1:])


def test_checkpoint_round_trip(trained: tuple, scene: tuple, tmp_path: Path) -> None:
    ckpt, _ = trained
    cams, _ = scene
    path = tmp_path / "model.pt"
    save_checkpoint(ckpt, path)
    loaded = load_checkpoint(path, "cpu")
    assert loaded.config == ckpt.config and loaded.background == "matte" and loaded.step == ckpt.step
    assert loaded.normalization.to_dict() == NORM.to_dict()
    assert loaded.cameras is not None and np.allclose(loaded.cameras.c2w, ckpt.cameras.c2w)
    assert loaded.train_indices == list(range(8)) and loaded.heldout_indices == [8, 9]
    assert torch.equal(loaded.model.occupancy.binary, ckpt.model.occupancy.binary)
    a, da = render_image(ckpt, cams, 3)
    b, db = render_image(loaded, cams, 3)
    assert torch.equal(a, b) and torch.equal(da, db)
    with pytest.raises(ValueError, match="not a nerfart-nerf checkpoint"):
        torch.save({"format": "other"}, tmp_path / "bad.pt")
        load_checkpoint(tmp_path / "bad.pt", "cpu")


def test_cancel_and_time_budget(scene: tuple) -> None:
    cams, images = scene
    polls = []

    def stop() -> bool:
        polls.append(1)
        return len(polls) > 3

    cfg = replace(CPU_CONFIG, steps=1000, eval_every_steps=None)
    ckpt = train_on_images(cams, images, cfg, torch.device("cpu"), background="matte", normalization=NORM,
                           should_stop=stop)
    assert ckpt.step == 3 and ckpt.metrics["cancelled"] == 1.0
    cfg = replace(CPU_CONFIG, steps=10**6, time_budget_s=0.3, eval_every_steps=None)
    ckpt = train_on_images(cams, images, cfg, torch.device("cpu"), background="matte", normalization=NORM)
    assert ckpt.metrics["elapsed_s"] >= 0.3 and 0 < ckpt.step < 10**6  # stopped by the budget, not the steps


def test_contract_mode_models_the_background(scene: tuple) -> None:
    cams, images = scene
    cfg = replace(CPU_CONFIG, steps=8, far=20.0, cone_angle=0.05, eval_every_steps=None)
    ckpt = train_on_images(cams, images, cfg, torch.device("cpu"), background="contract", normalization=NORM)
    assert ckpt.background == "contract" and ckpt.model.domain.kind == "contract"
    cams_model = NORM.cameras_to_model(cams)
    o = torch.as_tensor(cams_model.c2w[:1, :3, 3], dtype=torch.float32).expand(16, 3)
    d = torch.nn.functional.normalize(torch.randn(16, 3), dim=-1)
    with torch.no_grad():
        out = render_rays(ckpt.model, o, d, torch.zeros(3))
    assert bool(torch.isfinite(out.rgb).all())


def test_config_validation_and_round_trip() -> None:
    with pytest.raises(ValueError, match="background"):
        ReconstructConfig(background="sky")
    with pytest.raises(ValueError, match="resolution_scale"):
        ReconstructConfig(resolution_scale=1.5)
    with pytest.raises(ValueError, match="holdout_every"):
        ReconstructConfig(holdout_every=1)
    cfg = ReconstructConfig(time_budget_s=60.0, seed=3)
    assert ReconstructConfig.from_dict({**cfg.to_dict(), "unknown_future_key": 1}) == cfg
    assert cfg.resolved_background(True) == "matte" and cfg.resolved_background(False) == "contract"
    # Auto resolution: about two cells per pixel footprint across the box (lego half-res: 1024).
    assert ReconstructConfig.auto_max_resolution(2.46 / 555.6, "bounded", 1.0) == 1024


def test_train_validates_images(scene: tuple) -> None:
    cams, images = scene
    with pytest.raises(ValueError, match=r"\(n, H, W, 4\)"):
        train_on_images(cams, images[..., :3], CPU_CONFIG, torch.device("cpu"), background="matte")
    with pytest.raises(ValueError, match="camera 0 is 20x20"):
        train_on_images(cams, images[:, :10], CPU_CONFIG, torch.device("cpu"), background="matte")
