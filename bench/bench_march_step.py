"""Samples per ray against quality and speed (issue 22): step schedules of a reconstruction, trained and rendered.

The render profile of 2026-12-08 (``bench/results/render-profile_..._before.md``) put a 512^2 frame of fangzhou_nature
(with its mattes) at 142 occupied steps per ray, 135 kept after early termination, with the field kernel half of
the frame's time: the density of a 60 s model is soft, so rays cross most of the head before they turn opaque, and
every step costs. A matte capture marches uniform steps of ``dt_min`` (1024 across the box); a capture without
mattes grows them with the distance (``cone_angle`` 1/256, instant-ngp's rule). This benchmark trains one model per
variant (``ReconstructConfig`` overrides) for the same time and reports, per variant:

* held-out PSNR (the reconstruct job's figure) and training steps: fewer samples per ray train more steps in the
  same seconds, and may train a worse or a better field;
* occupied steps per ray and the steps kept after early termination, on a 512^2 turntable frame;
* the frame renderer's milliseconds per frame at 512^2 and 1920x1080 (the render job's renderer; median over
  ``--frames`` turntable frames; without PNG encoding and streaming, which the job hides behind rendering).

A variant is ``name:key=value;key=value`` with JSON values, e.g. ``uniform:cone_angle=0`` (the matte default) and
``cone256:cone_angle=0.00390625``.

Usage::

    python bench/bench_march_step.py --data DATA_PARENT --variants "uniform:cone_angle=0,cone256:cone_angle=0.00390625"
    python bench/bench_march_step.py --smoke      # tiny, CPU: checks the script (its figures are not results)

Writes ``bench/results/march-step_<gpu>_<date>.md`` (``--out``) after each variant.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from backend.nerf import ReconstructConfig, train_reconstruction  # noqa: E402
from backend.nerf.checkpoint import NeRFCheckpoint  # noqa: E402
from backend.nerf.frame_renderer import FrameRenderer  # noqa: E402
from backend.nerf.marching import march_rays  # noqa: E402
from backend.nerf.rays import rays_for_image  # noqa: E402
from bench.bench_outputs import turntable  # noqa: E402
from bench.results_file import write_results  # noqa: E402
from captures import load_capture  # noqa: E402


def parse_variants(text: str) -> list[tuple[str, dict[str, Any]]]:
    """``name:key=value;key=value,...`` -> ``[(name, {key: json value})]``."""
    out = []
    for spec in text.split(","):
        name, _, rest = spec.partition(":")
        overrides = {}
        for pair in filter(None, rest.split(";")):
            key, _, value = pair.partition("=")
            overrides[key.strip()] = json.loads(value)
        out.append((name.strip(), overrides))
    return out


def ms_per_frame(renderer: FrameRenderer, cams: Any, frames: int, device: torch.device) -> float:
    """Median milliseconds of ``renderer.render`` over ``frames`` of ``cams`` (after one warm-up frame)."""
    renderer.render(cams, 0)
    times = []
    for i in range(frames):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        renderer.render(cams, i % len(cams))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def steps_per_ray(ckpt: NeRFCheckpoint, cams: Any) -> tuple[float, float]:
    """Occupied steps per ray and steps kept after early termination, on frame 0 of ``cams`` (world cameras)."""
    model = ckpt.model
    cams_model = ckpt.normalization.cameras_to_model(cams) if ckpt.normalization is not None else cams
    rays_o, rays_d = rays_for_image(cams_model, 0, device=model.device)
    stats: dict[str, int] = {}
    with torch.no_grad():
        for o, d in zip(rays_o.float().split(1 << 16), rays_d.float().split(1 << 16), strict=True):
            part: dict[str, int] = {}
            march_rays(o, d, model.occupancy, model.domain, model.settings, sigma_fn=model.density,
                       early_stop_eps=ckpt.config.early_stop_eps, stats=part)
            for key, value in part.items():
                stats[key] = stats.get(key, 0) + value
    n = rays_o.shape[0]
    return stats["n_occupied"] / n, stats["n_samples"] / n


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--variants", default="uniform:cone_angle=0,cone256:cone_angle=0.00390625")
    parser.add_argument("--train-s", type=float, default=60.0, help="training seconds per variant")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--commit", default=os.environ.get("NERFART_COMMIT", "unknown"))
    parser.add_argument("--out", type=Path)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on any device (checks the script)")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    capture = load_capture(args.data / "fangzhou_nature")
    sizes = [(64, 64), (96, 54)] if args.smoke else [(512, 512), (1920, 1080)]
    rows = []
    header = [f"# Step schedules: samples per ray, quality and render speed (issue 22){', smoke' if args.smoke else ''}",
              "", f"- {gpu}, date {dt.date.today()}, commit {args.commit}, torch {torch.__version__}",
              f"- fangzhou_nature with its mattes, {args.train_s:g} s of training per variant at the job's default "
              "photo scale; held-out PSNR as the reconstruct job reports it; steps per ray on a "
              f"{sizes[0][0]}x{sizes[0][1]} turntable frame; ms per frame: the frame renderer, median of "
              f"{args.frames} turntable frames", "",
              "| variant | overrides | dt_min | cone | steps trained | held-out PSNR dB | occupied steps/ray | "
              f"kept/ray | ms {sizes[0][0]}x{sizes[0][1]} | fps | ms {sizes[1][0]}x{sizes[1][1]} | fps |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, overrides in parse_variants(args.variants):
        if args.smoke:
            config = ReconstructConfig.tiny(steps=30, resolution_scale=0.05, **overrides)
        else:
            config = dataclasses.replace(ReconstructConfig(time_budget_s=args.train_s), **overrides)
        ckpt = train_reconstruction(capture, config, device)
        model = ckpt.model
        model.eval()
        print(f"{name}: {ckpt.metrics}", flush=True)
        cams = {s: turntable(ckpt, max(args.frames, 1), *s) for s in sizes}
        occupied, kept = steps_per_ray(ckpt, cams[sizes[0]])
        renderer = FrameRenderer(ckpt)
        ms = [ms_per_frame(renderer, cams[s], args.frames, device) for s in sizes]
        psnr = ckpt.metrics.get("heldout_psnr")
        rows.append(f"| {name} | `{json.dumps(overrides)}` | {model.settings.dt_min:.4f} | "
                    f"{model.settings.cone_angle:.4f} | {int(ckpt.metrics.get('steps', 0))} | "
                    f"{'n/a' if psnr is None else f'{psnr:.2f}'} | {occupied:.1f} | {kept:.1f} | "
                    f"{ms[0]:.1f} | {1e3 / ms[0]:.1f} | {ms[1]:.1f} | {1e3 / ms[1]:.1f} |")
        print(rows[-1], flush=True)
        write_results("\n".join(header + rows) + "\n", args.out, "march-step", gpu, dt.date.today().isoformat(),
                      args.smoke)
        del ckpt, model, renderer
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
