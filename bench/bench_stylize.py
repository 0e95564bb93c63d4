"""Stylization benchmark: seconds per iteration, schedule time, peak memory and geometry kept, on one GPU.

A fangzhou_nature reconstruction is trained first (``--train-s`` seconds at full resolution, 540x960), or
``--checkpoint`` is loaded. CLIP is a **random-initialised** ViT-B-32 and LPIPS a random-trunk VGG, requested
explicitly (``random_init=True``): the cost is that of the pretrained networks, but the result is not a style,
so this measures speed and how much geometry moves, never quality.

For each stylization scale (``--scales``, default 0.5 = the paper's 270x480 and 1.0 = 540x960) and for
``λ_reg`` = default and 0, :func:`backend.stylize.loop.stylize` runs with the spec's settings (80 templates,
12 crops, 8 negatives, LPIPS):

* **Seconds per iteration**: median over the timed iterations after ``--warmup`` warm-up iterations (the first
  ones compile kernels); the loop synchronises CUDA before each progress report, so report-to-report times are
  iteration times.
* **Schedule time**: sources (rendering and embedding ``I_src`` for every view) plus 400 iterations at the
  median, extrapolated; with ``--full`` the 400-iteration schedule really runs and its wall time is reported.
* **Peak GPU memory**: ``torch.cuda.max_memory_allocated`` per run (reset before it; CLIP and LPIPS included).
* **Geometry kept**: on the held-out views at scale 0.5, ``F_rec`` vs ``F_sty``: mean |depth difference| inside
  ``F_rec``'s alpha (>= 0.5), relative to the ROI radius, and the IoU of the alpha masks (>= 0.5). Measured after
  the run's iterations (the whole schedule only with ``--full``).

Text encoding of the whole negative pool (80 templates per text) is timed once, apart: it is paid once per job.

Usage::

    python bench/bench_stylize.py --commit $(git rev-parse --short HEAD)        # GPU; extrapolated schedule
    python bench/bench_stylize.py --full --commit abc1234                       # also run 400 iterations
    python bench/bench_stylize.py --smoke                                        # tiny, CPU, checks the script

Writes ``bench/results/stylize_<gpu>_<date>.md`` (``--out``). The commit comes from ``--commit`` or the
``NERFART_COMMIT`` environment variable (a device copy of the tree may have no ``.git``).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import math
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from backend.nerf import ReconstructConfig, train_reconstruction  # noqa: E402
from backend.nerf.checkpoint import NeRFCheckpoint, load_checkpoint  # noqa: E402
from backend.nerf.evaluate import render_image  # noqa: E402
from backend.stylize.clip_model import load_clip  # noqa: E402
from backend.stylize.loop import StylizeConfig, StylizeProgress, stylize  # noqa: E402
from backend.stylize.losses import DEFAULT_ITERATIONS, StyleLossConfig  # noqa: E402
from backend.stylize.negatives import build_negative_pool  # noqa: E402
from backend.stylize.perceptual import load_perceptual  # noqa: E402
from bench.results_file import write_results  # noqa: E402
from captures import load_capture  # noqa: E402

PROMPT = "painting, oil on canvas, Vincent van gogh self-portrait style"  # the released config's prompt


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_gib(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else math.nan


@torch.no_grad()
def geometry_kept(rec: NeRFCheckpoint, sty: NeRFCheckpoint, scale: float, max_views: int) -> dict[str, float]:
    """Depth error inside F_rec's alpha (relative to the ROI radius) and alpha IoU, on held-out views."""
    assert rec.cameras is not None
    views = rec.heldout_indices or rec.train_indices
    views = views[:: max(1, math.ceil(len(views) / max_views))]
    cams = rec.cameras.select(views).scaled(scale / rec.config.resolution_scale)
    radius = float(rec.normalization.radius) if rec.normalization is not None else 1.0
    depth_err, ious = [], []
    for i in range(len(cams)):
        rgba_r, depth_r = render_image(rec, cams, i)
        rgba_s, depth_s = render_image(sty, cams, i)
        mask_r, mask_s = rgba_r[..., 3] >= 0.5, rgba_s[..., 3] >= 0.5
        union = int((mask_r | mask_s).sum())
        ious.append(int((mask_r & mask_s).sum()) / union if union else 1.0)
        if bool(mask_r.any()):
            depth_err.append(float((depth_s - depth_r).abs()[mask_r].mean()) / radius)
    return {"depth_err_rel": float(np.mean(depth_err)) if depth_err else math.nan, "alpha_iou": float(np.mean(ious)),
            "views": float(len(cams))}


def run_config(rec: NeRFCheckpoint, config: StylizeConfig, clip: Any, perceptual: Any, device: torch.device,
               warmup: int, full: bool, geometry_scale: float, geometry_views: int) -> dict[str, Any]:
    """One stylization run: per-iteration times, sources time, peak memory, geometry kept."""
    stamps: list[float] = []
    sources_done: list[float] = []
    samples: list[float] = []

    def on_progress(p: StylizeProgress) -> None:
        now = time.perf_counter()
        if p.stage == "sources" and p.step == p.total:
            sources_done.append(now)
        elif p.stage == "stylizing":
            stamps.append(now)
            samples.append(p.metrics.get("n_samples", math.nan))
            if p.step % 25 == 0 or p.step == p.total:
                print(f"    it {p.step}/{p.total}: {p.metrics['seconds_per_iteration']:.3f} s/it, "
                      f"total loss {p.losses.get('total', math.nan):.4f}", flush=True)

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    t0 = time.perf_counter()
    sty = stylize(rec, config, device, on_progress, clip=clip, perceptual=perceptual)
    sync(device)
    wall = time.perf_counter() - t0
    sources_s = sources_done[0] - t0 if sources_done else math.nan
    starts = [sources_done[0] if sources_done else t0, *stamps[:-1]]
    per_it = [b - a for a, b in zip(starts, stamps, strict=True)]
    timed = per_it[warmup:] or per_it
    median = statistics.median(timed)
    first_s = per_it[0] if per_it else math.nan
    out: dict[str, Any] = {
        "iterations": len(per_it), "timed": len(timed), "s_per_it": median, "first_it_s": first_s,
        "sources_s": sources_s, "est_schedule_min": (sources_s + first_s + median * (DEFAULT_ITERATIONS - 1)) / 60,
        "full_run_min": wall / 60 if full else math.nan, "peak_gib": peak_gib(device),
        "samples_per_view": float(np.median(samples)) if samples else math.nan,
    }
    out.update(geometry_kept(rec, sty, geometry_scale, geometry_views))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--checkpoint", type=Path, help="use this reconstruction instead of training one")
    parser.add_argument("--train-s", type=float, default=120.0, help="reconstruction training budget (seconds)")
    parser.add_argument("--scales", type=float, nargs="+", default=[0.5, 1.0])
    parser.add_argument("--warmup", type=int, default=3, help="iterations not timed (compilation, allocator)")
    parser.add_argument("--iterations", type=int, default=20, help="timed iterations per run (without --full)")
    parser.add_argument("--full", action="store_true", help=f"run the {DEFAULT_ITERATIONS}-iteration schedule")
    parser.add_argument("--geometry-views", type=int, default=5, help="held-out views for the geometry metrics")
    parser.add_argument("--views", type=int, help="stylize on the first n training views only (default: all)")
    parser.add_argument("--commit", default=os.environ.get("NERFART_COMMIT", "unknown"))
    parser.add_argument("--out", type=Path)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, 2 iterations, any device")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device {gpu}, torch {torch.__version__}", flush=True)

    t0 = time.perf_counter()
    if args.checkpoint:
        rec = load_checkpoint(args.checkpoint, device)
        source = f"checkpoint {args.checkpoint.name}"
    else:
        capture = load_capture(args.data / "fangzhou_nature")
        rconf = (ReconstructConfig.tiny(steps=20, resolution_scale=0.1) if args.smoke else
                 ReconstructConfig(time_budget_s=args.train_s, resolution_scale=1.0))
        rec = train_reconstruction(capture, rconf, device)
        source = f"trained {rec.metrics.get('elapsed_s', math.nan):.0f} s"
    print(f"reconstruction ({source}) in {time.perf_counter() - t0:.1f} s: {rec.metrics}", flush=True)

    # Random weights, explicitly: same architecture and cost as the pretrained ones (see the module docstring).
    t0 = time.perf_counter()
    clip = load_clip("ViT-B-32", pretrained=None, random_init=True, device=device)
    perceptual = load_perceptual("lpips", device, random_init=True)
    load_s = time.perf_counter() - t0

    if args.smoke:
        scales, warmup, n_timed = [0.05, 0.1], 1, 1
        loss = StyleLossConfig(n_crops=2, n_negatives=2)
        extra: dict[str, Any] = {"n_templates": 1, "precompute_negatives": False, "compile": "off"}
    else:
        scales, warmup, n_timed = args.scales, args.warmup, args.iterations
        loss = StyleLossConfig()
        extra = {}
    iterations = DEFAULT_ITERATIONS if args.full else warmup + n_timed
    base = StylizeConfig(prompt=PROMPT, iterations=iterations, loss=loss, preview_every=10**9,
                         checkpoint_every=0, **extra)

    # Text embeddings of the prompt, the source text and the whole negative pool: once per job.
    pool = build_negative_pool(PROMPT)
    texts = [PROMPT, base.source_text, *(pool.prompts if base.precompute_negatives else ())]
    sync(device)
    t0 = time.perf_counter()
    clip.precompute_texts(texts, base.templates())
    sync(device)
    text_s = time.perf_counter() - t0
    print(f"models loaded in {load_s:.1f} s; {len(texts)} texts x {len(base.templates())} templates encoded in "
          f"{text_s:.1f} s", flush=True)

    n_views = 4 if args.smoke and args.views is None else args.views
    if n_views is not None:
        # Fewer views only shorten the sources pass; an iteration renders one view either way.
        rec = dataclasses.replace(rec, train_indices=rec.train_indices[:n_views])
    reg_default = base.resolved_weights().regularization
    rows = []
    for scale in scales:
        for reg in (reg_default, 0.0):
            weights = dataclasses.replace(base.resolved_weights(), regularization=reg)
            config = dataclasses.replace(base, scale=scale, weights=weights)
            print(f"scale {scale}, lambda_reg {reg}: {iterations} iterations", flush=True)
            r = run_config(rec, config, clip, perceptual, device, warmup, args.full, geometry_scale=min(scales),
                           geometry_views=2 if args.smoke else args.geometry_views)
            assert rec.cameras is not None
            cam = rec.cameras.select([rec.train_indices[0]]).scaled(scale / rec.config.resolution_scale)
            r.update(scale=scale, reg=reg, size=f"{int(cam.width[0])}x{int(cam.height[0])}")
            rows.append(r)
            print(f"  {r}", flush=True)

    date = dt.date.today().isoformat()
    views = len(rec.train_indices)
    lines = [
        f"# Stylization benchmark ({'smoke' if args.smoke else 'full schedule' if args.full else 'extrapolated'})",
        "", f"- GPU: {gpu}", f"- date: {date}", f"- commit: {args.commit}", f"- torch: {torch.__version__}",
        f"- reconstruction: fangzhou_nature, {source}, held-out PSNR "
        f"{rec.metrics.get('heldout_psnr', math.nan):.2f} dB, background {rec.background}, {views} stylization "
        f"views", "- CLIP ViT-B-32 and LPIPS-VGG with **random weights** (explicitly requested: same cost, no style)",
        f"- losses: {len(base.templates())} templates, {loss.n_crops} crops, {loss.n_negatives} negatives per "
        f"iteration, lr {base.lr_grid:g} (grid) / {base.lr_mlp:g} (MLPs), compile {base.compile}",
        f"- text encoding once per job: {len(texts)} texts in {text_s:.1f} s; model loading {load_s:.1f} s",
        f"- timing: median of {n_timed if not args.full else iterations - warmup} iterations after {warmup} "
        f"warm-up; schedule = sources + first iteration + {DEFAULT_ITERATIONS - 1} x median", "",
        "| scale | image | λ_reg | s/iteration | first it s | sources s | 400-it schedule (min, est.) | "
        "400-it run (min) | peak GiB | samples/view |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(f"| {r['scale']} | {r['size']} | {r['reg']:g} | {r['s_per_it']:.3f} | {r['first_it_s']:.2f} | "
                     f"{r['sources_s']:.1f} | {r['est_schedule_min']:.1f} | {r['full_run_min']:.1f} | "
                     f"{r['peak_gib']:.2f} | {r['samples_per_view']:.0f} |")
    lines += ["", f"Geometry kept, held-out views at scale {min(scales)} (F_sty vs F_rec after each run's "
              f"{iterations} iterations):", "",
              "| scale | λ_reg | iterations | depth error / ROI radius (inside F_rec alpha) | alpha IoU | views |",
              "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['scale']} | {r['reg']:g} | {r['iterations']} | {r['depth_err_rel']:.4f} | "
                     f"{r['alpha_iou']:.4f} | {r['views']:.0f} |")
    write_results("\n".join(lines) + "\n", args.out, "stylize", gpu, date, args.smoke)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
