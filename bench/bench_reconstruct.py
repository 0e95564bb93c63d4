"""Reconstruction benchmark: time to a PSNR target and PSNR at 30/60/120 s of training, on one GPU.

Scenes (read from ``--data``, default ``../shared/data`` next to the repository):

* ``lego_half_res``: NeRF-synthetic lego at 400x400, 50 train views in, the 20 test views scored on a white
  background (full image). Target: test PSNR >= 32 dB.
* ``fangzhou_nature``: the NeRF-Art selfie capture at half resolution (270x480), every 10th view held out,
  PSNR inside the matte (alpha >= 0.5). Target: held-out foreground PSNR >= 28 dB.

Each scene is trained once per time budget (``--budgets``, default 60 and 120 s), because the learning-rate
schedule follows the budget. Held-out PSNR is evaluated every ``--eval-every`` training seconds (evaluation
time is not counted as training time); "time to target" is the first evaluation at or above the target, so
it is resolved to that cadence. Compilation and data loading happen before the clock starts and are
reported as set-up time.

Usage::

    python bench/bench_reconstruct.py                       # both scenes, 60 s and 120 s budgets
    python bench/bench_reconstruct.py --scenes lego_half_res --budgets 30 --breakdown 50
    python bench/bench_reconstruct.py --micro               # hash-grid micro-benchmark only

Writes ``bench/results/reconstruct_<gpu>_<date>.md`` (``--out``) and, with ``--log-dir``, one JSON log
per run with every progress report.
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import hashlib
import itertools
import json
import math
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from backend.nerf import NeRFModel, ReconstructConfig, TrainProgress, train_reconstruction  # noqa: E402
from bench.results_file import results_path  # noqa: E402
from captures import Capture, load_capture  # noqa: E402

SCENES: dict[str, dict[str, Any]] = {
    "lego_half_res": {
        "target": 32.0,
        "metric": "test views, full image on white",
        "load": lambda root: (load_capture(root / "lego_half_res", split="train"),
                              load_capture(root / "lego_half_res", split="test")),
        "config": {"resolution_scale": 1.0, "eval_background": "white", "heldout_metric": "full"},
    },
    "fangzhou_nature": {
        "target": 28.0,
        "metric": "every 10th view, 270x480, inside the matte",
        "load": lambda root: (load_capture(root / "fangzhou_nature"), None),
        "config": {"resolution_scale": 0.5, "holdout_every": 10, "heldout_metric": "matte",
                   "eval_background": "white"},
    },
}


def _parse_overrides(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, _, value = item.partition("=")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _psnr_at(evals: list[tuple[float, float]], t: float) -> float | None:
    """PSNR of the first evaluation at or after ``t`` training seconds (None if training ended before)."""
    for elapsed, psnr in evals:
        if elapsed >= t - 0.25:
            return psnr
    return None


def run_scene(name: str, budget: float, root: Path, device: torch.device, eval_every: float,
              overrides: dict[str, Any], log_dir: Path | None, tag: str = "") -> dict[str, Any]:
    spec = SCENES[name]
    capture, heldout = spec["load"](root)
    config = ReconstructConfig(**{"steps": 10**7, "time_budget_s": budget, "eval_every_s": eval_every,
                                  **spec["config"], **overrides})
    events: list[TrainProgress] = []
    last_print = [0.0]

    def on_progress(p: TrainProgress) -> None:
        events.append(p)
        now = time.perf_counter()
        if p.evaluated or p.done or now - last_print[0] > 5.0:
            last_print[0] = now
            held = "" if p.heldout_psnr is None else f" heldout {p.heldout_psnr:6.2f}"
            print(f"  [{name} {budget:.0f}s] step {p.step:6d} t {p.elapsed_s:6.1f}s train {p.psnr:6.2f}{held} "
                  f"rays {p.n_rays:6d} samples {p.n_samples:7d} "
                  f"peak {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB", flush=True)

    torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    ckpt = train_reconstruction(capture, config, device, on_progress, heldout=heldout)
    wall = time.perf_counter() - t0
    peak_gib = torch.cuda.max_memory_allocated(device) / 2**30
    evals = [(p.elapsed_s, p.heldout_psnr) for p in events if p.evaluated and p.heldout_psnr is not None]
    target = spec["target"]
    reached = next((e for e, v in evals if v >= target), None)
    steps = int(ckpt.metrics["steps"])
    elapsed = ckpt.metrics["elapsed_s"]
    result = {
        "scene": name, "budget_s": budget, "target_db": target, "time_to_target_s": reached,
        "psnr_30": _psnr_at(evals, 30.0), "psnr_60": _psnr_at(evals, 60.0), "psnr_120": _psnr_at(evals, 120.0),
        "final_psnr": ckpt.metrics.get("heldout_psnr"), "steps": steps, "elapsed_s": elapsed,
        "steps_per_s": steps / max(elapsed, 1e-9), "setup_s": ckpt.metrics["setup_s"], "wall_s": wall,
        "peak_gib": peak_gib, "mean_samples": sum(p.n_samples for p in events) / max(len(events), 1),
        "mean_rays": sum(p.n_rays for p in events) / max(len(events), 1), "evals": evals,
        "config": config.to_dict(),
    }
    if log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)
        with open(log_dir / f"{name}_{int(budget)}s{'_' + tag if tag else ''}.json", "w") as f:
            json.dump({**result, "events": [asdict(p) for p in events]}, f, indent=1)
    result["_model"] = ckpt.model
    result["_capture"] = (capture, heldout, config)
    return result


def _timed(fn: Callable[[], Any], device: torch.device, repeat: int = 20) -> float:
    """Median milliseconds of ``fn`` over ``repeat`` runs after two warm-ups (CUDA events)."""
    for _ in range(2):
        fn()
    times = []
    for _ in range(repeat):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize(device)
        times.append(start.elapsed_time(end))
    times.sort()
    return times[len(times) // 2]


def micro(device: torch.device) -> list[str]:
    """Hash grid (L=16, F=2, T=2^19) and field forward+backward at 2^18 points: variants, and the Triton
    kernels checked against the PyTorch twin."""
    from backend.nerf import FieldConfig, HashNeRFField, SceneDomain
    from backend.nerf.hashgrid import HashGridEncoding

    lines = ["| op (2^18 points, fwd+bwd) | ms (median of 20) |", "|---|---|"]
    n = 2**18
    enc = HashGridEncoding(device=device)
    field = HashNeRFField(FieldConfig(), SceneDomain("bounded", 1.0), device=device)
    x = torch.rand(n, 3, device=device)
    d = torch.nn.functional.normalize(torch.randn(n, 3, device=device), dim=-1)
    g = torch.randn(n, 32, device=device)

    def enc_step(f: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[], None]:
        def run() -> None:
            enc.table.grad = None
            f(x).backward(g)
        return run

    def field_step(f: Callable[..., Any]) -> Callable[[], None]:
        def run() -> None:
            field.zero_grad(set_to_none=True)
            rgb, sigma = f(x * 2 - 1, d)
            (rgb.sum() + sigma.sum()).backward()
        return run

    for impl in ("torch", "triton"):
        enc.impl = impl
        lines.append(f"| hash grid, {impl}, eager | {_timed(enc_step(enc.forward), device):.2f} |")
        lines.append(f"| hash grid, {impl}, compiled | "
                     f"{_timed(enc_step(torch.compile(enc.forward, dynamic=True)), device):.2f} |")
    # Agreement of the kernels with the twin (features and table gradient), relative L2 error.
    enc.impl = "torch"
    enc.table.grad = None
    ref = enc(x)
    ref.backward(g)
    ref_grad = enc.table.grad.clone()
    enc.impl = "triton"
    enc.table.grad = None
    out = enc(x)
    out.backward(g)
    err_f = ((out - ref).norm() / ref.norm()).item()
    err_g = ((enc.table.grad - ref_grad).norm() / ref_grad.norm()).item()
    lines.append(f"| check: triton vs torch rel. error, features {err_f:.1e}, table grad {err_g:.1e} | |")
    for impl in ("torch", "triton"):
        field.encoding.impl = impl
        for dtype in (None, torch.bfloat16):
            field.mlp_dtype = dtype
            name = f"field, grid {impl}, MLP {'bf16' if dtype else 'fp32'}"
            lines.append(f"| {name}, eager | {_timed(field_step(field.forward), device):.2f} |")
            lines.append(f"| {name}, compiled | "
                         f"{_timed(field_step(torch.compile(field.forward, dynamic=True)), device):.2f} |")
    return lines


def breakdown(model: NeRFModel, capture: Capture, config: ReconstructConfig, device: torch.device,
              steps: int) -> list[str]:
    """Per-phase GPU time of training steps on a trained model (CUDA events; medians)."""
    from backend.nerf.capture_images import load_images
    from backend.nerf.marching import march_rays, occupied_steps, ray_interval
    from backend.nerf.rendering import render_samples
    from backend.nerf.train import _RayBank

    idx, _ = capture.split(config.holdout_every) if config.holdout_every else (list(range(len(capture))), [])
    cams = capture.normalization.cameras_to_model(capture.cameras.select(idx).scaled(config.resolution_scale))
    bank = _RayBank(cams, load_images(capture, idx, scale=config.resolution_scale), device)
    gen = torch.Generator(device=device)
    gen.manual_seed(1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, betas=(0.9, 0.99), eps=1e-15, fused=True)
    n_rays = config.batch_rays
    phases: dict[str, list[float]] = {k: [] for k in ("occupancy", "march+cull", "field+composite fwd",
                                                          "backward", "adam", "total", "occupied steps alone",
                                                          "dense mask alone (PyTorch twin)")}
    stat_sums: dict[str, float] = {}
    counts: list[tuple[int, int]] = []
    for step in range(steps):
        ev = [torch.cuda.Event(enable_timing=True) for _ in range(6)]
        ev[0].record()
        if step % config.occ_update_every == 0:
            model.update_occupancy(10**6, gen)
        ev[1].record()
        rays_o, rays_d, rgba = bank.batch(n_rays, gen)
        bg = torch.rand(n_rays, 3, device=device, generator=gen)
        jitter = torch.rand(n_rays, device=device, generator=gen)
        stats: dict[str, int] = {}
        samples = march_rays(rays_o, rays_d, model.occupancy, model.domain, model.settings, jitter=jitter,
                             sigma_fn=model.density, early_stop_eps=config.early_stop_eps, mask_fn=model._mask_fn,
                             first_round=config.cull_first_round, stats=stats)
        for k, v in stats.items():
            stat_sums[k] = stat_sums.get(k, 0.0) + v / steps
        ev[2].record()
        out = render_samples(model, samples, rays_d, bg)
        target = rgba[:, :3] * rgba[:, 3:] + bg * (1 - rgba[:, 3:])
        loss = torch.nn.functional.mse_loss(out.rgb, target)
        ev[3].record()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        ev[4].record()
        opt.step()
        ev[5].record()
        torch.cuda.synchronize(device)
        n_s = samples.n_samples
        counts.append((n_rays, n_s))
        n_rays = min(max(int(n_rays * config.target_samples / max(n_s, 1)), config.min_batch_rays),
                     config.max_batch_rays)
        if step >= 5:
            for k, (a, b) in zip(list(phases)[:5], itertools.pairwise(ev), strict=True):
                phases[k].append(a.elapsed_time(b))
            phases["total"].append(ev[0].elapsed_time(ev[5]))
            t_min, t_max = ray_interval(rays_o, rays_d, model.domain, model.settings)
            st = model.settings
            mask_call = functools.partial(
                model._mask_fn, rays_o, rays_d, t_min, t_max, model.occupancy.binary, model.domain.kind,
                float(model.domain.bound), st.dt_min, st.cone_angle, st.dt_max, st.max_steps)
            phases["dense mask alone (PyTorch twin)"].append(_timed(mask_call, device, repeat=3))
            occ_call = functools.partial(occupied_steps, rays_o, rays_d, t_min, t_max, model.occupancy, model.domain,
                                         model.settings)
            phases["occupied steps alone"].append(_timed(occ_call, device, repeat=3))
    lines = ["| phase | median ms | mean ms |", "|---|---|---|"]
    for k, v in phases.items():
        v = sorted(v)
        lines.append(f"| {k} | {v[len(v) // 2]:.2f} | {sum(v) / len(v):.2f} |")
    rays = sum(c[0] for c in counts) / len(counts)
    samples = sum(c[1] for c in counts) / len(counts)
    lines.append(f"\nmean rays/step {rays:.0f}, mean samples/step {samples:.0f}; per step: "
                 + ", ".join(f"{k} {v:.0f}" for k, v in stat_sums.items()))
    return lines


def _source_digest() -> str:
    """Identifies the code that ran when the checkout has no commit to name (first 16 hex digits)."""
    h = hashlib.sha256()
    files = sorted((REPO / "backend" / "nerf").glob("*.py")) + sorted((REPO / "captures").glob("*.py"))
    for path in [*files, Path(__file__).resolve()]:
        h.update(path.relative_to(REPO).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def _fmt(v: float | None, unit: str = "", digits: int = 2) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}{unit}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--scenes", default="lego_half_res,fangzhou_nature")
    parser.add_argument("--budgets", default="60,120", help="training-time budgets in seconds, comma-separated")
    parser.add_argument("--eval-every", type=float, default=5.0)
    parser.add_argument("--set", nargs="*", default=[], help="ReconstructConfig overrides key=value (JSON values)")
    parser.add_argument("--variants", default=None,
                        help='JSON {"name": {config overrides}, ...}: run every scene and budget once per variant')
    parser.add_argument("--out", type=Path, default=None, help="results markdown (default bench/results/...)")
    parser.add_argument("--log-dir", type=Path, default=None)
    parser.add_argument("--commit", default=None, help="git commit to record (default: git rev-parse HEAD)")
    parser.add_argument("--micro", action="store_true", help="run the hash-grid micro-benchmark")
    parser.add_argument("--breakdown", type=int, default=0, help="after each scene, time N steps by phase")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()

    if not torch.cuda.is_available():
        sys.exit("bench_reconstruct needs a CUDA GPU")
    device = torch.device("cuda")
    gpu = torch.cuda.get_device_name(device)
    commit = args.commit
    if commit is None:
        try:
            commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                                    check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            commit = "unknown"
    now = dt.datetime.now(dt.UTC)
    header = [
        "# Hash-grid NeRF reconstruction benchmark",
        "",
        f"- GPU: {gpu} ({torch.cuda.get_device_properties(device).total_memory / 2**30:.0f} GiB)",
        f"- Date: {now:%Y-%m-%d %H:%M} UTC",
        f"- Commit: {commit}",
        f"- Source digest (sha256 of backend/nerf/*.py, captures/*.py and this script): {_source_digest()}",
        f"- torch {torch.__version__}, CUDA {torch.version.cuda}",
        f"- Command: `python bench/bench_reconstruct.py {' '.join(sys.argv[1:])}`",
        "",
    ]
    sections: list[str] = []
    if args.micro:
        sections += ["## Micro-benchmark", "", *micro(device), ""]
        print("\n".join(sections), flush=True)

    overrides = _parse_overrides(args.set)
    variants: dict[str, dict[str, Any]] = json.loads(args.variants) if args.variants else {"": {}}
    budgets = [float(b) for b in args.budgets.split(",") if b]
    rows = []
    for name, budget, (variant, extra) in itertools.product(
            [s for s in args.scenes.split(",") if s], budgets, variants.items()):
        if name not in SCENES:
            sys.exit(f"unknown scene {name!r}; known: {', '.join(SCENES)}")
        print(f"== {name}, budget {budget:.0f} s {variant}", flush=True)
        r = run_scene(name, budget, args.data, device, args.eval_every, {**overrides, **extra}, args.log_dir,
                      tag=variant)
        r["variant"] = variant
        rows.append(r)
        print(f"== {name} {budget:.0f}s: final {_fmt(r['final_psnr'])} dB, steps {r['steps']}, "
              f"{r['steps_per_s']:.1f} steps/s, peak {r['peak_gib']:.2f} GiB, set-up {r['setup_s']:.1f} s",
              flush=True)
        if args.breakdown:
            capture, _, config = r["_capture"]
            if name == "lego_half_res":
                config = ReconstructConfig(**{**config.to_dict(), "holdout_every": 0})
            lines = breakdown(r["_model"], capture, config, device, args.breakdown)
            sections += [f"## Step breakdown: {name} after {budget:.0f} s", "", *lines, ""]
            print("\n".join(lines), flush=True)
        del r["_model"], r["_capture"]
        torch.cuda.empty_cache()

    if rows:
        table = [
            "| scene | held-out metric | target | budget | time to target | PSNR @30 s | PSNR @60 s | PSNR @120 s "
            "| steps | steps/s | rays/step | samples/step | peak GPU mem | set-up |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            label = r["scene"] + (f" ({r['variant']})" if r["variant"] else "")
            table.append(
                f"| {label} | {SCENES[r['scene']]['metric']} | {r['target_db']:.0f} dB | {r['budget_s']:.0f} s "
                f"| {_fmt(r['time_to_target_s'], ' s', 0) if r['time_to_target_s'] is not None else 'not reached'} "
                f"| {_fmt(r['psnr_30'])} | {_fmt(r['psnr_60'])} | {_fmt(r['psnr_120'])} | {r['steps']} "
                f"| {r['steps_per_s']:.1f} | {r['mean_rays']:.0f} | {r['mean_samples']:.0f} "
                f"| {r['peak_gib']:.2f} GiB | {r['setup_s']:.0f} s |"
            )
        notes = [
            "",
            "PSNR in dB on the held-out views, evaluated every "
            f"{args.eval_every:.0f} training seconds (evaluation excluded from training time); time to target "
            "is the first such evaluation at or above the target. Each budget is a separate run whose "
            "learning-rate schedule ends at the budget. Set-up = data loading, ray generation and "
            "torch.compile warm-up, before the clock starts.",
        ]
        sections = ["## Results", "", *table, *notes, "", *sections]
        print("\n".join(table), flush=True)
    text = "\n".join(header + sections) + "\n"
    if not args.no_write:
        out = args.out or results_path("reconstruct", gpu, f"{now:%Y-%m-%d}")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        print(f"wrote {out}", flush=True)


if __name__ == "__main__":
    main()
