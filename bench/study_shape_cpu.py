"""CPU study behind issue 20B's defaults: how free geometry, its learning rate and λ_reg trade shape for haze.

Three coloured spheres (:mod:`backend.nerf.synthetic`) are reconstructed at 48x48 from 16 ring views (400 steps of
the tiny configuration, as ``bench/study_stylize_cpu.py``), given subject bounds (a sphere of radius 1 around
them), then stylized with the analytic stand-in encoder (a test instrument) with its shape axes centred on the
reconstruction's renders (``shape_reference``): a shape prompt ("a big hat") and a colour prompt ("a red face"),
for each setting of (shape_freedom, shape learning rate, λ_reg). Every row reports the silhouette change, the haze
in front of the spheres, the opacity outside their silhouette, new cells outside the bounds, and the alpha IoU
and depth error against the reconstruction (:mod:`bench.shape_eval`), on 8 views.

CPU + stand-in: the numbers are PROVISIONAL until ``bench/sweep_shape.py`` has run on a real capture.

Usage::

    python bench/study_shape_cpu.py            # ~10 min on one core; writes bench/results/shape_cpu_study.md
    python bench/study_shape_cpu.py --quick    # 4 settings, 20 iterations: checks the script
"""

from __future__ import annotations

import argparse
import dataclasses
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
from backend.nerf.subject import SubjectBounds  # noqa: E402
from backend.nerf.synthetic import render_spheres, ring_cameras  # noqa: E402
from backend.nerf.train import train_on_images  # noqa: E402
from backend.stylize.loop import (  # noqa: E402
    LAMBDA_REG_SHAPE,
    SHAPE_LR_ITERATIONS,
    preset_config,
    shape_learning_rate,
    stylize,
)
from backend.stylize.losses import StyleLossConfig, weights_for_strength  # noqa: E402
from backend.stylize.perceptual import load_lpips  # noqa: E402
from backend.stylize.standin_encoder import load_standin_clip, shape_reference  # noqa: E402
from bench.shape_eval import COLUMNS, format_metrics, shape_metrics, shape_source_images  # noqa: E402
from bench.study_stylize_cpu import commit  # noqa: E402

SIZE = 48
SHAPE_PROMPT = "a big hat"
COLOUR_PROMPT = "a red face"
BOUNDS = SubjectBounds("ellipsoid", np.diag([1.0, 1.0, 1.0, 1.0]))
# (shape_freedom, shape learning rate for a 400-iteration run (None: the loop's default for the freedom), λ_reg):
# the former default, then the free regime. A run of n iterations trains at lr x 400 / n, as the loop does
# (shape_learning_rate), so the rows stand for the default 400-iteration schedule's drift.
SETTINGS: list[tuple[float, float | None, float]] = [
    (0.0, None, 0.0),
    (0.25, None, LAMBDA_REG_SHAPE),
    (0.5, 2.5e-4, LAMBDA_REG_SHAPE),
    (0.5, 5e-4, 0.0),
    (0.5, 5e-4, 1.0),
    (0.5, 5e-4, 10.0),
    (0.5, 1e-3, LAMBDA_REG_SHAPE),
]
QUICK: list[tuple[float, float | None, float]] = [(0.0, None, 0.0), (0.5, None, LAMBDA_REG_SHAPE)]


def reconstruction(steps: int = 400, **overrides: Any) -> NeRFCheckpoint:
    """The three spheres reconstructed by the tiny configuration (``overrides`` change its grid or MLP), with
    their subject bounds."""
    cams = ring_cameras(16, SIZE)
    rec = train_on_images(cams, render_spheres(cams), ReconstructConfig.tiny(steps=steps, seed=3, **overrides),
                          torch.device("cpu"), background="matte")
    return dataclasses.replace(rec, subject=BOUNDS)


def run(rec: NeRFCheckpoint, prompt: str, iterations: int, freedom: float, lr400: float | None, reg: float,
        seed: int = 0) -> tuple[dict[str, float], float, float]:
    """One stylization and its metrics on every other training view, with the shape rate it trained at and the
    seconds it took."""
    assert rec.cameras is not None
    lr = shape_learning_rate(freedom, iterations) if lr400 is None else lr400 * SHAPE_LR_ITERATIONS / iterations
    clip = load_standin_clip(shape_reference=shape_reference(shape_source_images(rec, rec.cameras)))
    config = preset_config("tiny", prompt, iterations=iterations, max_side=SIZE, n_templates=4,
                           loss=StyleLossConfig(n_crops=4, n_negatives=4), preview_every=10**6, checkpoint_every=0,
                           shape_freedom=freedom, lr_grid=lr,
                           weights=dataclasses.replace(weights_for_strength(0.5), regularization=reg), seed=seed)
    t0 = time.perf_counter()
    sty = stylize(rec, config, "cpu", clip=clip, perceptual=load_lpips("cpu", random_init=True))
    seconds = time.perf_counter() - t0
    cams = rec.cameras.select(list(range(1, len(rec.cameras), 2)))
    return shape_metrics(rec, sty, cams), lr, seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=40)
    parser.add_argument("--quick", action="store_true", help="4 settings, 20 iterations, nothing written")
    parser.add_argument("--seeds", type=int, default=1, help="stylization seeds per setting (shape prompt only)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "shape_cpu_study.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    settings, iterations = (QUICK, 10) if args.quick else (SETTINGS, args.iterations)
    rec = reconstruction()
    header = "| prompt | shape_freedom | shape lr (400 it) | shape lr (run) | λ_reg | seed | " + " | ".join(h for _, h in COLUMNS) + " | seconds |"
    lines = ["# Shape freedom study on the CPU (issue 20B): PROVISIONAL, CPU + analytic stand-in encoder", "",
             f"- date: {dt.date.today().isoformat()}, commit {commit()}, torch {torch.__version__}, CPU, one thread",
             f"- scene: three analytic spheres in subject bounds of radius 1, 16 ring views at {SIZE}x{SIZE}, tiny "
             f"reconstruction (400 steps, occupancy 32^3 over a box of half-size 1.5: a cell is 0.094 head radii); "
             "`python bench/study_shape_cpu.py`",
             f"- stylization: stand-in encoder centred on F_rec's renders (shape_reference), {iterations} iterations, "
             "4 templates, 4 crops, 4 negatives, random-trunk LPIPS, colour MLP 1e-3; grid and density MLP at the "
             "shape lr, given for 400 iterations and scaled by 400 / iterations as the loop does; 8 views measured",
             "- haze: semi-transparent opacity added in front of F_rec's surface (haze_change); opacity outside "
             "silhouette: F_sty's mean alpha outside F_rec's silhouette dilated 3 px (the growth itself for a shape "
             "prompt, damage for a colour prompt)", "",
             header, "|" + " --- |" * (header.count("|") - 1)]
    print("\n".join(lines), flush=True)
    for freedom, lr400, reg in settings:
        for prompt in (SHAPE_PROMPT, COLOUR_PROMPT):
            seeds = range(args.seeds) if prompt == SHAPE_PROMPT else range(1)
            for seed in seeds:
                m, lr, seconds = run(rec, prompt, iterations, freedom, lr400, reg, seed)
                lr400_used = lr * iterations / SHAPE_LR_ITERATIONS if freedom > 0 else lr
                lines.append(f"| {prompt} | {freedom:g} | {lr400_used:.2g} | {lr:.2g} | {reg:g} | {seed} | "
                             + " | ".join(format_metrics(m)) + f" | {seconds:.0f} |")
                print(lines[-1], flush=True)
    if not args.quick:
        args.out.write_text("\n".join(lines) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
