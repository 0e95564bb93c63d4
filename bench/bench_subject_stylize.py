"""Subject-only stylization benchmark (issue 20, part A): a capture without mattes, "a red face", and the wall.

A frontal phone capture without mattes reconstructs the whole room ("contract"); before subject bounds, a stand-in
"a red face" stylization turned the wall behind the head as red as the face. This benchmark measures the fix on
fangzhou_nature with its mattes **withheld from every job**:

1. Train ``F_rec`` for ``--train-s`` seconds at full resolution (540x960) from the photos alone (the capture is
   loaded, then its mattes are dropped: the reconstruction is "contract"), or load ``--checkpoint``.
2. Detect the subject bounds from the reconstruction (:func:`backend.nerf.subject.detect_subject_bounds`).
3. Stylize with the **analytic stand-in encoder** (:mod:`backend.stylize.standin_encoder`, a test instrument with
   known semantics, not CLIP; LPIPS with a random VGG trunk) and the prompt "a red face", the project's defaults
   (400 iterations at ``--scale`` 0.5, the paper's 270x480), twice: ``bounds`` within the detected bounds, and
   ``none`` without bounds (the behaviour before issue 20, the baseline).
4. On the held-out views at the stylization scale, render ``F_rec`` and the stylized model *with its background*:
   for ``bounds``, ``F_sty`` inside the bounds and ``F_rec`` outside them, composited along each ray
   (:func:`backend.stylize.subject_render.render_image_with_background`, the function the render job's
   background composite can reuse); for ``none``, ``F_sty`` everywhere, as it rendered before.
5. Measure the change of redness (mean ``r - (g + b) / 2``, :func:`backend.stylize.evaluation.redness`) inside the
   capture's **real matte** (read only now, for the measurement) and outside it. The issue's target: +0.2 or more
   inside, +0.02 or less outside. Also: the largest colour change over pixels whose rays miss the bounds (should
   be 0: those pixels are ``F_rec``'s own render), and the time per iteration of both runs.

Usage::

    python bench/bench_subject_stylize.py --commit $(git rev-parse --short HEAD)     # GPU, 60 s reconstruction
    python bench/bench_subject_stylize.py --smoke                                   # tiny, CPU, checks the script

Writes ``bench/results/subject_stylize_<gpu>_<date>.md`` (``--out``) after each run, so a run stopped by a time limit
keeps what it measured; ``--runs bounds`` or ``--runs none`` runs one of the two, ``--save-checkpoint`` keeps the
reconstruction for a later ``--checkpoint``; ``--save-images DIR`` writes each measured view as ``F_rec | bounds |
none`` PNG strips. The commit comes from ``--commit`` or ``NERFART_COMMIT``.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime as dt
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from backend.jobs.subject import as_subject, detection_cameras, left_out_cells  # noqa: E402
from backend.nerf import ReconstructConfig, train_reconstruction  # noqa: E402
from backend.nerf.capture_images import load_images  # noqa: E402
from backend.nerf.checkpoint import NeRFCheckpoint, load_checkpoint, save_checkpoint  # noqa: E402
from backend.nerf.evaluate import render_image  # noqa: E402
from backend.nerf.subject import Detection, SubjectBounds, detect_subject_bounds  # noqa: E402
from backend.stylize.evaluation import redness  # noqa: E402
from backend.stylize.loop import StylizeConfig, StylizeProgress, stylize  # noqa: E402
from backend.stylize.losses import DEFAULT_ITERATIONS, StyleLossConfig  # noqa: E402
from backend.stylize.perceptual import load_perceptual  # noqa: E402
from backend.stylize.standin_encoder import load_standin_clip  # noqa: E402
from backend.stylize.subject_render import render_image_with_background  # noqa: E402
from bench.results_file import write_results  # noqa: E402
from captures import Capture, load_capture  # noqa: E402

RED_FACE = "a red face"
TARGET_INSIDE, TARGET_OUTSIDE = 0.2, 0.02  # the redness targets (change inside / outside the matte)


RUNS = ("bounds", "bounds_air", "none")


def default_data() -> Path:
    """``shared/data`` beside the checkout (a clone, a worktree one level down, or a device copy holding it)."""
    candidates = [REPO / "shared" / "data", REPO.parent / "shared" / "data", REPO.parents[1] / "shared" / "data"]
    return next((c for c in candidates if (c / "fangzhou_nature").is_dir()), candidates[1])


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def without_mattes(capture: Capture) -> Capture:
    """The capture as a phone gives it: the same photos and cameras, no mattes (nor image alpha)."""
    return dataclasses.replace(capture, matte_paths=None, has_alpha=False)


def stylize_config(args: argparse.Namespace) -> StylizeConfig:
    if args.smoke:
        return StylizeConfig(prompt=RED_FACE, iterations=2, scale=args.scale, loss=StyleLossConfig(n_crops=2, n_negatives=2),
                             n_templates=1, precompute_negatives=False, compile="off", preview_every=10**9,
                             checkpoint_every=0)
    return StylizeConfig(prompt=RED_FACE, iterations=args.iterations, scale=args.scale, preview_every=10**9,
                         checkpoint_every=0)


def run_stylize(rec: NeRFCheckpoint, subject: SubjectBounds | None, args: argparse.Namespace,
                device: torch.device) -> tuple[NeRFCheckpoint, dict[str, float]]:
    """One stand-in "a red face" stylization of ``rec`` within ``subject`` (None: the whole scene)."""
    clip = load_standin_clip(device)
    perceptual = load_perceptual("lpips", device, random_init=True)
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
            if p.step % 50 == 0 or p.step == p.total:
                print(f"    [{'bounds' if subject is not None else 'none'}] it {p.step}/{p.total}: "
                      f"{p.metrics['seconds_per_iteration']:.3f} s/it", flush=True)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    t0 = time.perf_counter()
    sty = stylize(dataclasses.replace(rec, subject=subject), stylize_config(args), device, on_progress, clip=clip,
                  perceptual=perceptual)
    sync(device)
    wall = time.perf_counter() - t0
    starts = [sources_done[0] if sources_done else t0, *stamps[:-1]]
    per_it = [b - a for a, b in zip(starts, stamps, strict=True)]
    return sty, {
        "s_per_it": statistics.median(per_it[3:] or per_it) if per_it else math.nan,
        "sources_s": (sources_done[0] - t0) if sources_done else math.nan, "wall_s": wall,
        "samples_per_view": float(np.median(samples)) if samples else math.nan,
        "peak_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else math.nan,
    }


def outside_projection(subject: SubjectBounds, ckpt: NeRFCheckpoint, cams: Any, i: int) -> torch.Tensor:  # [H, W]
    """Pixels of camera ``i`` whose ray misses the bounds (model coordinates through the checkpoint's normalization)."""
    from backend.nerf.rays import rays_for_image

    cams_model = cams if ckpt.normalization is None else ckpt.normalization.cameras_to_model(cams)
    o, d = rays_for_image(cams_model, i, dtype=torch.float64)
    t_min, t_max = subject.ray_interval(o, d)
    return (t_max <= t_min).reshape(int(cams.height[i]), int(cams.width[i]))


@dataclasses.dataclass
class Views:
    """The measured views: cameras (world), the real mattes, ``F_rec``'s renders, rays that miss the bounds.

    Attributes:
        cams: ``n`` world cameras at the measurement size.
        matte: ``(n, H, W)`` the capture's mattes (1 = the person), read only for the measurement.
        rec: ``(n, H, W, 3)`` ``F_rec``'s renders (opaque: the room is modelled).
        outside_bounds: ``(n, H, W)`` pixels whose ray misses the subject bounds.
    """

    cams: Any
    matte: torch.Tensor
    rec: torch.Tensor
    outside_bounds: torch.Tensor
    chunk: int  # rays per render call: a room's rays take thousands of samples each, too many for a CPU at 2^15


def prepare_views(rec: NeRFCheckpoint, subject: SubjectBounds, cams: Any, matte: torch.Tensor,
                  chunk: int = 2**15) -> Views:
    before = torch.stack([render_image(rec, cams, i, chunk=chunk)[0][..., :3].cpu() for i in range(len(cams))])
    outside = torch.stack([outside_projection(subject, rec, cams, i) for i in range(len(cams))])
    return Views(cams, matte, before, outside, chunk)


def redness_table(rgb: torch.Tensor, views: Views) -> dict[str, float]:
    """Redness of ``(n, H, W, 3)`` frames inside the matte, outside it, and outside it on rays through the bounds."""
    inside, outside = views.matte >= 0.5, views.matte < 0.5
    return {"inside": redness(rgb, inside), "outside": redness(rgb, outside),
            "outside_near": redness(rgb, outside & ~views.outside_bounds)}


def measure(rec: NeRFCheckpoint, sty: NeRFCheckpoint, views: Views) -> tuple[dict[str, float], torch.Tensor]:
    """Redness of a stylization rendered with its background, and its frames ``(n, H, W, 3)``.

    With bounds (``sty.subject``) a frame is ``F_sty`` inside them and ``F_rec`` outside
    (:func:`~backend.stylize.subject_render.render_image_with_background`); without, ``F_sty`` everywhere.
    """
    frames = []
    for i in range(len(views.cams)):
        if sty.subject is not None:
            img = render_image_with_background(sty, rec, views.cams, i, chunk=views.chunk)
        else:
            img = render_image(sty, views.cams, i, chunk=views.chunk)[0]
        frames.append(img[..., :3].cpu())
    rgb = torch.stack(frames)
    out = redness_table(rgb, views)
    far_diff = (rgb - views.rec).abs().amax(dim=-1)[views.outside_bounds]
    out["max_abs_outside_bounds"] = float(far_diff.max()) if far_diff.numel() else math.nan
    return out, rgb


def save_strips(folder: Path, views: Views, frames: dict[str, torch.Tensor]) -> None:
    """One PNG per view: ``F_rec`` then each stylization, side by side."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(len(views.cams)):
        strip = torch.cat([views.rec[i], *(f[i] for f in frames.values())], dim=1)
        Image.fromarray((strip.clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8)).save(folder / f"view{i:02d}.png")


def report(args: argparse.Namespace, rec: NeRFCheckpoint, source: str, gpu: str, det: Detection,
           runs: dict[str, dict[str, float]], red: dict[str, dict[str, float]], n_views: int, size: str) -> str:
    cfg = stylize_config(args)
    date = dt.date.today().isoformat()
    lo, hi = det.bounds.aabb()
    half = np.linalg.norm(det.bounds.matrix[:3, :3], axis=0)
    radius = float(rec.normalization.radius) if rec.normalization is not None else 1.0
    lines = [
        f"# Subject-only stylization on a capture without mattes (issue 20A{', smoke' if args.smoke else ''})", "",
        f"- GPU: {gpu}", f"- date: {date}", f"- commit: {args.commit}", f"- torch: {torch.__version__}",
        f"- reconstruction: fangzhou_nature with its mattes WITHHELD (background {rec.background}), {source}, "
        f"held-out PSNR (full frame) {rec.metrics.get('heldout_psnr', math.nan):.2f} dB",
        f"- subject bounds: {'detected' if det.found else 'NOT detected (' + det.reason + '): the cameras default'}"
        f", {det.bounds.shape}, {det.surface_voxels} seen-surface voxels; half-sizes along its own axes "
        f"{', '.join(f'{h:.3f}' for h in half)} model units ({', '.join(f'{h * radius:.3f}' for h in half)} world); "
        f"axis-aligned extent {np.round(lo, 3).tolist()} .. {np.round(hi, 3).tolist()}",
        f"- stylization: the analytic stand-in encoder (a TEST INSTRUMENT, not CLIP), prompt \"{RED_FACE}\", "
        f"{cfg.resolved_iterations()} iterations at scale {args.scale}, {len(cfg.templates())} templates, "
        f"{cfg.loss.n_crops} crops, {cfg.loss.n_negatives} negatives, LPIPS with a random VGG trunk; "
        f"shape_freedom {cfg.shape_freedom}; plain ground {cfg.background}",
        f"- measured on {n_views} held-out views at {size}; redness = mean r - (g+b)/2; inside / outside = the "
        "capture's real matte (>= 0.5 / < 0.5), read only for this measurement; `bounds` is rendered with its "
        "background (F_sty inside the bounds, F_rec outside, `render_image_with_background`), `none` as F_sty "
        "everywhere (before issue 20)",
        f"- pixels: {100 * red['pixels']['inside']:.1f} % inside the matte, "
        f"{100 * red['pixels']['outside_bounds']:.1f} % on rays that miss the bounds, "
        f"{100 * red['pixels']['outside_near']:.1f} % outside the matte but on rays through the bounds", "",
        "## Redness", "",
        "| model | inside matte | change | outside matte | change | outside matte, rays through the bounds | change "
        "| max abs colour change on rays missing the bounds |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    r0 = red["F_rec"]
    lines.append(f"| F_rec | {r0['inside']:.4f} | | {r0['outside']:.4f} | | {r0['outside_near']:.4f} | | |")
    for name in runs:
        r = red[name]
        lines.append(f"| F_sty `{name}` | {r['inside']:.4f} | {r['inside'] - r0['inside']:+.4f} | {r['outside']:.4f} | "
                     f"{r['outside'] - r0['outside']:+.4f} | {r['outside_near']:.4f} | "
                     f"{r['outside_near'] - r0['outside_near']:+.4f} | {r['max_abs_outside_bounds']:.2e} |")
    lines += ["", "`bounds`: the detected bounds without the cells the reconstruct job leaves out of the subject (the "
              "air the cameras saw through and the haze the difference key puts beside the person: "
              + ", ".join(f"{runs[n]['air_cells']:.0f}" for n in runs if n == "bounds") + " occupied cells), as the "
              "stylize job stylizes; `bounds_air`: the same bounds with those cells kept (before); `none`: no bounds.",
              "", "## Speed", "", "| run | s/iteration (median) | sources s | wall s | samples/view | peak GiB |",
              "| --- | --- | --- | --- | --- | --- |"]
    for name, t in runs.items():
        lines.append(f"| {name} | {t['s_per_it']:.3f} | {t['sources_s']:.1f} | {t['wall_s']:.1f} | "
                     f"{t['samples_per_view']:.0f} | {t['peak_gib']:.2f} |")
    lines += ["", "## Issue 20A targets (run `bounds`; `none` for comparison)", ""]
    for name in runs:
        r = red[name]
        d_in, d_out = r["inside"] - r0["inside"], r["outside"] - r0["outside"]
        lines.append(f"- `{name}`: redness inside the matte +{TARGET_INSIDE} or more: "
                     f"{'met' if d_in >= TARGET_INSIDE else 'NOT met'} ({d_in:+.4f}); outside +{TARGET_OUTSIDE} or "
                     f"less: {'met' if d_out <= TARGET_OUTSIDE else 'NOT met'} ({d_out:+.4f})")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=default_data())
    parser.add_argument("--checkpoint", type=Path, help="a reconstruction made WITHOUT mattes, instead of training one")
    parser.add_argument("--train-s", type=float, default=60.0, help="reconstruction training budget (seconds)")
    parser.add_argument("--scale", type=float, default=0.5, help="stylization and measurement size / capture size")
    parser.add_argument("--iterations", type=int, default=DEFAULT_ITERATIONS, help="stylization iterations")
    parser.add_argument("--eval-views", type=int, default=10, help="held-out views measured (at most)")
    parser.add_argument("--commit", default=os.environ.get("NERFART_COMMIT", "unknown"))
    parser.add_argument("--out", type=Path)
    parser.add_argument("--save-images", type=Path, help="write F_rec | bounds | none strips of each view here")
    parser.add_argument("--runs", default="bounds,none",
                        help="comma-separated: 'bounds' (within the detected bounds, without the cells the "
                        "reconstruct job leaves out of the subject, as the stylize job does), 'bounds_air' (the "
                        "bounds with those cells kept, as before), 'none' (no bounds: the baseline)")
    parser.add_argument("--save-checkpoint", type=Path, help="keep the trained reconstruction here (for --checkpoint)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, 2 iterations, any device")
    args = parser.parse_args()
    if not args.runs or any(r not in RUNS for r in args.runs.split(",")):
        parser.error(f"--runs takes {', '.join(RUNS)}, got {args.runs!r}")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.smoke:
        args.scale = 0.05
        args.eval_views = min(args.eval_views, 2)
        torch.set_num_threads(1)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device {gpu}, torch {torch.__version__}", flush=True)

    capture = load_capture(args.data / "fangzhou_nature")
    if capture.matte_paths is None:
        parser.error("fangzhou_nature has no mattes to measure with")
    photos = without_mattes(capture)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        if args.checkpoint:
            rec = load_checkpoint(args.checkpoint, device)
            source = f"checkpoint {args.checkpoint.name}"
            if rec.background != "contract":
                parser.error(f"{args.checkpoint} was reconstructed with mattes ({rec.background}); this benchmark "
                             "needs one made from the photos alone")
        else:
            # A near far plane and coarse steps keep the CPU smoke's modelled room cheap to march (its held-out
            # evaluation above all); the GPU run keeps the defaults.
            rconf = (ReconstructConfig.tiny(steps=20, resolution_scale=0.05, background="contract", far=6.0,
                                            render_steps=64)
                     if args.smoke else ReconstructConfig(time_budget_s=args.train_s, resolution_scale=1.0,
                                                          background="contract"))
            rec = train_reconstruction(photos, rconf, device)
            source = f"trained {rec.metrics.get('elapsed_s', math.nan):.0f} s at scale {rconf.resolution_scale}"
            save_checkpoint(rec, args.save_checkpoint or Path(tmp) / "rec.pt")
        print(f"reconstruction ({source}, {rec.background}) in {time.perf_counter() - t0:.1f} s: {rec.metrics}",
              flush=True)
        assert rec.cameras is not None
        if args.smoke:
            rec = dataclasses.replace(rec, train_indices=rec.train_indices[:4])

        t1 = time.perf_counter()
        # Seen from the training views only, as the reconstruct job detects them: the held-out views are measured.
        det = detect_subject_bounds(rec.model.density, detection_cameras(rec), device,
                                    **({"resolution": 32} if args.smoke else {}))
        print(f"subject bounds in {time.perf_counter() - t1:.1f} s: found {det.found} {det.reason} "
              f"({det.surface_voxels} voxels)", flush=True)

        # The held-out views in the capture's own order (the checkpoint lists its training views first).
        _, held = capture.split(rec.config.holdout_every)
        held = held or list(range(len(capture.cameras)))
        held = held[:: max(1, math.ceil(len(held) / args.eval_views))]
        cams = capture.cameras.select(held).scaled(args.scale)
        views = prepare_views(rec, det.bounds, cams, torch.from_numpy(load_images(capture, held, scale=args.scale)[..., 3]),
                              chunk=2**15 if device.type == "cuda" else 2**11)
        size = f"{int(cams.width[0])}x{int(cams.height[0])}"
        red: dict[str, dict[str, float]] = {"F_rec": redness_table(views.rec, views)}
        red["pixels"] = {"inside": float((views.matte >= 0.5).float().mean()),
                         "outside_bounds": float(views.outside_bounds.float().mean()),
                         "outside_near": float(((views.matte < 0.5) & ~views.outside_bounds).float().mean())}
        runs: dict[str, dict[str, float]] = {}
        frames: dict[str, torch.Tensor] = {}
        # The subject as the stylize job hands it to the loop: its grid without the cells the reconstruct job
        # leaves out of it (the air its cameras saw through and the haze the difference key puts beside the
        # person; a copy: F_rec itself stays whole, for the background and the other runs).
        left_out = left_out_cells(rec, det) if det.found else None
        subject_rec = dataclasses.replace(rec, model=copy.deepcopy(rec.model), subject_air=left_out)
        air_cells = as_subject(subject_rec)
        print(f"left out of the subject: {air_cells} occupied cells", flush=True)
        for name in args.runs.split(","):
            subject = None if name == "none" else det.bounds
            sty, runs[name] = run_stylize(subject_rec if name == "bounds" else rec, subject, args, device)
            runs[name]["air_cells"] = float(air_cells if name == "bounds" else 0)
            red[name], frames[name] = measure(rec, sty, views)
            print(f"  {name}: {runs[name]} {red[name]}", flush=True)
            del sty
            # After every run, so that a run stopped by a time limit still leaves what it measured.
            text = report(args, rec, source, gpu, det, runs, red, len(held), size)
            write_results(text, args.out, "subject_stylize", gpu, dt.date.today().isoformat(), args.smoke)
        if args.save_images is not None:
            save_strips(args.save_images, views, frames)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
