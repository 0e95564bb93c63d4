"""Where a stylization iteration spends its time (issue 12: the 400-iteration schedule must stay under 2 minutes).

Trains a fangzhou_nature reconstruction (``--train-s``), then for each encoder (the random-initialised ViT-B-32
CLIP, which has the real one's cost, and the analytic stand-in) runs the stylization loop's own steps one by one,
synchronising the GPU around each stage, for ``--iterations`` iterations after ``--warmup``:

* ``source view``: one ``I_src`` render (:func:`~backend.nerf.rendering.render_rays_chunked`, as the loop);
* ``pass 1``: :func:`~backend.stylize.deferred.render_view_pass1`;
* ``loss fwd`` / ``loss bwd``: :func:`~backend.stylize.losses.total_image_loss` and its gradient to the image;
* ``pass 2``: :func:`~backend.stylize.deferred.backward_pass2`;
* ``adam``: the optimizer step;

with float32 matrix products as IEEE float32 and as TensorFloat-32 (``--tf32``; the loop's default, CUDA only),
and each image encoder call alone (forward and backward): CLIP on ``P_dir`` (1 image), on ``P_con`` (1 image), on
the 12 crops, and LPIPS. A ``torch.profiler`` table of the top CUDA kernels over three iterations goes to
``--out-dir``. Timing only: the iterations update a copy of the model as the loop does, but nothing is evaluated.

Usage::

    python bench/profile_stylize.py --out-dir $OUT --commit $(git rev-parse --short HEAD)   # GPU, ~2.5 minutes
    python bench/profile_stylize.py --smoke --out-dir /tmp/prof                            # CPU, checks the script
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import math
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from backend.nerf import ReconstructConfig, train_reconstruction  # noqa: E402
from backend.nerf.rays import rays_for_image  # noqa: E402
from backend.nerf.rendering import render_rays_chunked  # noqa: E402
from backend.stylize.clip_model import crops_from_images  # noqa: E402
from backend.stylize.deferred import backward_pass2, image_from_rays, rays_from_image, render_view_pass1  # noqa: E402
from backend.stylize.loop import StylizeConfig, copy_model, matmul_precision  # noqa: E402
from backend.stylize.losses import StyleLossConfig, total_image_loss  # noqa: E402
from backend.stylize.negatives import build_negative_pool, draw_negatives  # noqa: E402
from backend.stylize.perceptual import load_perceptual  # noqa: E402
from backend.stylize.views import stylization_views  # noqa: E402
from bench.bench_stylize import RED_FACE, VAN_GOGH, load_encoder  # noqa: E402
from bench.results_file import write_results  # noqa: E402
from captures import load_capture  # noqa: E402


class StageTimer:
    """Wall time of synchronised stages: ``with timer("name"): ...`` appends seconds to ``times[name]``."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.times: dict[str, list[float]] = {}
        self.enabled = True

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def __call__(self, name: str) -> _Stage:
        return _Stage(self, name)


class _Stage:
    def __init__(self, timer: StageTimer, name: str) -> None:
        self.timer, self.name = timer, name

    def __enter__(self) -> None:
        self.timer.sync()
        self.t0 = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.timer.sync()
        if self.timer.enabled:
            self.timer.times.setdefault(self.name, []).append(time.perf_counter() - self.t0)


def profile_encoder(args: argparse.Namespace, rec: Any, encoder: str, tf32: bool,
                    device: torch.device, hash_backward: str = "atomic") -> dict[str, Any]:
    name = f"{encoder}{' tf32' if tf32 else ''}{' runs' if hash_backward == 'runs' else ''}"
    with matmul_precision("high" if tf32 else "highest"):
        result = _profile_encoder(args, rec, encoder, name, device, hash_backward)
    return result


def _profile_encoder(args: argparse.Namespace, rec: Any, encoder: str, name: str,
                     device: torch.device, hash_backward: str = "atomic") -> dict[str, Any]:
    clip = load_encoder(encoder, device, args.smoke)
    perceptual = load_perceptual("lpips", device, random_init=True)
    prompt = RED_FACE if encoder == "standin" else VAN_GOGH
    loss_cfg = StyleLossConfig(n_crops=2, n_negatives=2) if args.smoke else StyleLossConfig()
    config = StylizeConfig(prompt=prompt, scale=args.scale, loss=loss_cfg, n_templates=1 if args.smoke else None,
                           compile="off" if args.smoke else "auto")
    weights, templates = config.resolved_weights(), config.templates()
    pool = build_negative_pool(prompt, ())
    clip.precompute_texts([prompt, config.source_text, *pool.prompts], templates)
    views = stylization_views(rec.cameras, rec.train_indices, resolution_scale=rec.config.resolution_scale,
                              scale=config.scale, novel_views=0)
    cams = views.cameras if rec.normalization is None else rec.normalization.cameras_to_model(views.cameras)
    model = copy_model(rec.model, device, compile=device.type == "cuda" and not args.smoke)
    if hash_backward == "runs" and model.field.encoding.impl == "triton":
        model.field.encoding.impl = "triton-runs"  # one atomic per run of samples on a row (bench_hash_backward)
    model.train()
    bg = torch.ones(3, device=device) if rec.background == "matte" else None
    eps = float(rec.config.early_stop_eps)
    gen = torch.Generator(device=device).manual_seed(0)
    timer = StageTimer(device)
    h, w = int(views.cameras.height[0]), int(views.cameras.width[0])

    # Sources: one I_src per view, as the loop renders them (the first calls compile the kernels).
    n_src = min(len(views), args.warmup + args.iterations)
    sources = []
    first = time.perf_counter()
    for i in range(n_src):
        timer.enabled = i >= args.warmup
        rays_o, rays_d = rays_for_image(cams, i, device=device, dtype=torch.float32)
        with timer("source view"):
            rgb, _, _ = render_rays_chunked(model, rays_o, rays_d, bg, chunk=config.chunk_render, early_stop_eps=eps)
            src = image_from_rays(rgb, h, w).contiguous()
            with torch.no_grad():
                emb = clip.embed_squash(src)
        sources.append((src, emb))
        if i == args.warmup - 1:
            warm_s = time.perf_counter() - first
    optimizer = torch.optim.Adam([{"params": model.field.colour_parameters(), "lr": 1e-3},
                                  {"params": list(model.field.density_mlp.parameters()), "lr": 1e-4},
                                  {"params": list(model.field.encoding.parameters()), "lr": 1e-4}],
                                 betas=(0.9, 0.99), eps=1e-15)
    n_samples: list[int] = []

    def iteration(it: int) -> None:
        v = it % n_src
        src, emb = sources[v]
        rays_o, rays_d = rays_for_image(cams, v, device=device, dtype=torch.float32)
        negatives = draw_negatives(pool, config.loss.n_negatives, gen)
        optimizer.zero_grad(set_to_none=True)
        with timer("pass 1"):
            view = render_view_pass1(model, rays_o, rays_d, bg, chunk=config.chunk_render, early_stop_eps=eps)
        image = image_from_rays(view.rgb, h, w).detach().requires_grad_(True)
        with timer("loss fwd"):
            loss, _ = total_image_loss(image, src, clip=clip, target=prompt, negatives=negatives, generator=gen,
                                       perceptual=perceptual, weights=weights, config=config.loss,
                                       templates=templates, embeds_src=emb)
        with timer("loss bwd"):
            (grad_image,) = torch.autograd.grad(loss, image)
        with timer("pass 2"):
            backward_pass2(model, view, rays_from_image(grad_image), chunk=config.chunk_grad)
        with timer("adam"):
            optimizer.step()
        n_samples.append(view.samples.n_samples)

    for it in range(args.warmup + args.iterations):
        timer.enabled = it >= args.warmup
        with timer("iteration"):
            iteration(it)

    # Each encoder call alone, forward + backward, on the last source image.
    image = sources[0][0].clone().requires_grad_(True)
    crops, _ = crops_from_images(image.detach(), config.loss.n_crops, config.loss.crop_frac, gen)
    calls: dict[str, Callable[[], torch.Tensor]] = {
        "clip P_dir (1 image)": lambda: clip.embed_squash(image).float().sum(),
        "clip P_con (1 image)": lambda: clip.embed_center(image).float().sum(),
        f"clip crops ({config.loss.n_crops})": lambda: clip.embed_crops(crops.requires_grad_(True)).float().sum(),
        "lpips": lambda: perceptual(image, sources[1 % n_src][0]),
    }
    for call, fn in calls.items():
        for k in range(args.warmup + args.iterations):
            timer.enabled = k >= args.warmup
            with timer(call):
                fn().backward()

    trace = ""
    if args.out_dir is not None:
        timer.enabled = False
        activities = [torch.profiler.ProfilerActivity.CPU] + (
            [torch.profiler.ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with torch.profiler.profile(activities=activities) as prof:
            for it in range(3):
                iteration(it)
            timer.sync()
        sort = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
        trace = prof.key_averages().table(sort_by=sort, row_limit=40, max_name_column_width=70)
        (args.out_dir / f"profile_{name.replace(' ', '_')}.txt").write_text(trace)
    median = {k: statistics.median(v) for k, v in timer.times.items()}
    return {"encoder": name, "median_s": median, "warmup_sources_s": warm_s, "n_sources": n_src,
            "samples": statistics.median(n_samples), "image": f"{h}x{w}",
            "peak_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else math.nan}


def report(args: argparse.Namespace, gpu: str, results: list[dict[str, Any]]) -> str:
    stages = ["iteration", "pass 1", "loss fwd", "loss bwd", "pass 2", "adam", "source view",
              "clip P_dir (1 image)", "clip P_con (1 image)"]
    stages += [k for k in results[0]["median_s"] if k.startswith("clip crops")] + ["lpips"]
    lines = ["# Stylization iteration profile (median wall time per stage, GPU synchronised around each)", "",
             f"- GPU: {gpu}", f"- date: {dt.date.today().isoformat()}", f"- commit: {args.commit}",
             f"- torch: {torch.__version__}",
             f"- reconstruction: fangzhou_nature, {args.train_s:.0f} s; stylization image {results[0]['image']}; "
             f"{args.iterations} iterations after {args.warmup} warm-up", "",
             "| stage (ms) | " + " | ".join(r["encoder"] for r in results) + " |",
             "| --- | " + " | ".join("---" for _ in results) + " |"]
    for s in stages:
        lines.append(f"| {s} | " + " | ".join(f"{1000 * r['median_s'].get(s, math.nan):.1f}" for r in results) + " |")
    lines.append("| samples per view | " + " | ".join(f"{r['samples']:.0f}" for r in results) + " |")
    lines.append("| first sources, with compile (s) | " + " | ".join(
        f"{r['warmup_sources_s']:.1f} ({args.warmup} views)" for r in results) + " |")
    lines.append("| peak GiB | " + " | ".join(f"{r['peak_gib']:.2f}" for r in results) + " |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--capture", type=Path, help="capture folder (default: <data>/fangzhou_nature)")
    parser.add_argument("--train-s", type=float, default=45.0)
    parser.add_argument("--scale", type=float, default=0.5)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--encoders", default="random,standin")
    parser.add_argument("--tf32", default="off,on", help="float32 products as IEEE (off), TensorFloat-32 (on) or both")
    parser.add_argument("--commit", default="unknown")
    parser.add_argument("--out", type=Path, help="results table (default bench/results/stylize-profile_<gpu>_<date>.md)")
    parser.add_argument("--out-dir", type=Path, help="profiler tables")
    parser.add_argument("--hash-backward", default="atomic",
                        help="the hash grid's backward on CUDA: atomic (one per point), runs (one per run) or both")
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.smoke:
        args.scale, args.iterations, args.warmup, args.train_s = 0.05, 2, 1, 0.0
        torch.set_num_threads(1)
    if args.out_dir is not None:
        args.out_dir.mkdir(parents=True, exist_ok=True)
    capture = load_capture(args.capture or args.data / "fangzhou_nature")
    rconf = (ReconstructConfig.tiny(steps=20, resolution_scale=0.1) if args.smoke else
             ReconstructConfig(time_budget_s=args.train_s, resolution_scale=1.0))
    rec = train_reconstruction(capture, rconf, device)
    if args.smoke:
        rec = dataclasses.replace(rec, train_indices=rec.train_indices[:4])
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    results = []
    for tf32 in args.tf32.split(","):
        for encoder in args.encoders.split(","):
            for hash_backward in args.hash_backward.split(","):
                results.append(profile_encoder(args, rec, encoder, tf32 == "on", device, hash_backward))
                print(results[-1], flush=True)
    text = report(args, gpu, results)
    print(text, flush=True)
    write_results(text, args.out, "stylize-profile", gpu, dt.date.today().isoformat(), args.smoke)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
