"""CPU study behind issue 12's fixes: what holds a stylized NeRF's geometry, on a small analytic scene.

Three coloured spheres (:mod:`backend.nerf.synthetic`) are reconstructed at 48x48 from 16 ring views (400 steps of
the tiny configuration), then stylized toward "a red face" with the analytic stand-in encoder (a test instrument
with known semantics: "red" raises the mean red of the render), 60 iterations at the views' size, 4 templates,
4 crops, 4 negatives, random-trunk LPIPS. Each variant changes one setting from the defaults; every row reports the
alpha IoU and depth error against the reconstruction, the opacity outside its silhouette (dilated 3 px), the
redness inside it and the stand-in's cosine with the target, on 8 views. A last table gives each loss term's share
of the parameter gradient for the defaults and the former weights.

Usage::

    python bench/study_stylize_cpu.py            # ~5 min on 2 cores; writes bench/results/stylize_cpu_study.md
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from backend.nerf.checkpoint import NeRFCheckpoint  # noqa: E402
from backend.nerf.config import ReconstructConfig  # noqa: E402
from backend.nerf.synthetic import render_spheres, ring_cameras  # noqa: E402
from backend.nerf.train import train_on_images  # noqa: E402
from backend.stylize.evaluation import geometry_change, prompt_scores, redness, render_views  # noqa: E402
from backend.stylize.loop import StylizeProgress, preset_config, stylize  # noqa: E402
from backend.stylize.losses import LossWeights, StyleLossConfig  # noqa: E402
from backend.stylize.perceptual import load_lpips  # noqa: E402
from backend.stylize.standin_encoder import load_standin_clip  # noqa: E402

PROMPT = "a red face"
SIZE = 48
NEGATIVES = ["human face", "pencil sketch", "zombie", "anime character"]
# The settings before issue 12: grid and every MLP at 1e-3, local contrastive summed over crops (0.1 x 4 crops
# here), λ_reg 0.1 (then in box-chord units, here in ROI radii), the grid updated every iteration (not reproduced:
# the fixed region replaced it).
FORMER_WEIGHTS = LossWeights(local_contrastive=0.4, regularization=0.1)
FORMER_LR = {"lr_grid": 1e-3, "lr_density_mlp": 1e-3}
VARIANTS: list[tuple[str, dict[str, Any]]] = [
    ("defaults (grid and density MLP 1e-4, colour MLP 1e-3, λ_reg 0, growth 0)", {}),
    ("former learning rates (grid, density MLP 1e-3)", FORMER_LR),
    ("former learning rates and former weights", {**FORMER_LR, "weights": FORMER_WEIGHTS}),
    ("grid 1e-3 only", {"lr_grid": 1e-3, "lr_density_mlp": 1e-4}),
    ("density MLP 1e-3 only", {"lr_density_mlp": 1e-3}),
    ("former learning rates, λ_reg 100", {**FORMER_LR, "weights": LossWeights(regularization=100.0)}),
    ("former learning rates, Adam eps 1e-4", {**FORMER_LR, "adam_eps": 1e-4}),
    ("λ_reg 0.1", {"weights": LossWeights(regularization=0.1)}),
    ("λ_reg 1", {"weights": LossWeights(regularization=1.0)}),
    ("shape_freedom 0.1", {"shape_freedom": 0.1}),
    ("shape_freedom 0.25", {"shape_freedom": 0.25}),
    ("colour_only", {"colour_only": True}),
]


def commit() -> str:
    """The checkout's short commit, with "+changes" when the working tree differs from it."""
    import subprocess

    def git(*a: str) -> str:
        return subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True).stdout.strip()

    return (git("rev-parse", "--short", "HEAD") or "unknown") + ("+changes" if git("status", "--porcelain") else "")


def reconstruction() -> NeRFCheckpoint:
    cams = ring_cameras(16, SIZE)
    return train_on_images(cams, render_spheres(cams), ReconstructConfig.tiny(steps=400, seed=3),
                           torch.device("cpu"), background="matte")


def run(rec: NeRFCheckpoint, iterations: int, gradients_every: int = 0, **overrides: Any) -> tuple[dict, dict]:
    clip = load_standin_clip()
    config = preset_config("tiny", PROMPT, iterations=iterations, max_side=SIZE, n_templates=4,
                           loss=StyleLossConfig(n_crops=4, n_negatives=4), preview_every=10**6, checkpoint_every=0,
                           report_gradients_every=gradients_every, **overrides)
    grads: dict[str, list[float]] = {}

    def on_progress(p: StylizeProgress) -> None:
        for k, v in p.metrics.items():
            if k.startswith("grad_"):
                grads.setdefault(k, []).append(v)

    t0 = time.perf_counter()
    sty = stylize(rec, config, "cpu", on_progress, clip=clip, perceptual=load_lpips("cpu", random_init=True))
    seconds = time.perf_counter() - t0
    assert rec.cameras is not None
    cams = rec.cameras.select(list(range(1, len(rec.cameras), 2)))
    before, after = render_views(rec, cams), render_views(sty, cams)
    head = before.alpha >= 0.5
    row = {**geometry_change(before, after, 1.0), "seconds": seconds,
           "red0": redness(before.rgb, head), "red1": redness(after.rgb, head),
           "tgt0": prompt_scores(clip, before.rgb, PROMPT, "photo", NEGATIVES, config.templates())["target"],
           "tgt1": prompt_scores(clip, after.rgb, PROMPT, "photo", NEGATIVES, config.templates())["target"]}
    return row, {k: float(np.mean(v)) for k, v in grads.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=60)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "stylize_cpu_study.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rec = reconstruction()
    lines = ["# Stylization study on the CPU: what holds the geometry (issue 12)", "",
             f"- date: {dt.date.today().isoformat()}, commit {commit()}, torch {torch.__version__}, CPU, one thread",
             f"- scene: three analytic spheres, 16 ring views at {SIZE}x{SIZE}, tiny reconstruction (400 steps, "
             f"train PSNR {rec.metrics.get('train_psnr', float('nan')):.1f} dB); `python bench/study_stylize_cpu.py`",
             f"- stylization: analytic stand-in encoder (test instrument), \"{PROMPT}\", {args.iterations} iterations, "
             "4 templates, 4 crops, 4 negatives, random-trunk LPIPS; 8 views measured", "",
             "| variant | alpha IoU | depth error / ROI | opacity outside silhouette | redness before → after | "
             "stand-in target cosine before → after | seconds |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, overrides in VARIANTS:
        row, _ = run(rec, args.iterations, **overrides)
        lines.append(f"| {name} | {row['alpha_iou']:.4f} | {100 * row['depth_err_rel']:.2f} % | "
                     f"{100 * row['haze']:.2f} % | {row['red0']:.3f} → {row['red1']:.3f} | "
                     f"{row['tgt0']:.4f} → {row['tgt1']:.4f} | {row['seconds']:.0f} |")
        print(lines[-1], flush=True)
    terms = ("directional", "global_contrastive", "local_contrastive", "perceptual", "regularization")
    lines += ["", "Each term's share of the parameter gradient (norm of the gradient it alone gives; mean over "
              "iterations 5, 10, 15, 20):", "",
              "| weights | group | " + " | ".join(terms) + " |", "| --- | --- | " + " | ".join("---" for _ in terms) + " |"]
    for name, overrides in (("defaults, λ_reg 0.1", {"weights": LossWeights(regularization=0.1)}),
                            ("former (λ_reg 0.1, local 0.1 x 4 crops)", {"weights": FORMER_WEIGHTS})):
        _, grads = run(rec, 20, gradients_every=5, **overrides)
        for group in ("grid", "mlp"):
            norms = [grads.get(f"grad_{t}_{group}", 0.0) for t in terms]
            total = sum(norms) or 1.0
            lines.append(f"| {name} | {group} | " + " | ".join(f"{n:.2e} ({100 * n / total:.1f} %)" for n in norms)
                         + " |")
        print(lines[-2:], flush=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
