"""Shape-freedom sweep on a real capture (issue 20B): how far a shape prompt moves the head, and at what haze.

On fangzhou_nature:

1. Train ``F_rec`` for ``--train-s`` seconds at full resolution with the capture's mattes ("matte"), or, with
   ``--no-mattes``, from the photos alone ("contract") and detect the subject bounds from it; or load
   ``--checkpoint``.
2. For each setting of the grid (``--grid``: ``shape_freedom:λ_reg:prompts``; λ_reg ``d`` is the loop's default
   for the freedom), stylize with the **analytic stand-in encoder** (a test instrument, not CLIP; its shape axes
   centred on ``F_rec``'s renders with ``shape_reference``; LPIPS with a random trunk) for ``--iterations``
   iterations (the shape rates scale by 400 / iterations in the loop, so a short run moves as far as the default
   schedule would): a shape prompt ("a big hat") and/or a colour prompt ("a red face").
3. On the held-out views at ``--scale``: silhouette area ratio and outline growth (head heights), haze in front
   of the face and new solid shape there (``haze_change``), opacity outside ``F_rec``'s silhouette, new cells
   outside the bounds, alpha IoU and depth error (:mod:`bench.shape_eval`), and seconds per run.

Each row is printed, and the results file rewritten, as soon as its run finishes, so a run cut off by a time limit
keeps its rows. The default grid (8 runs of 100 iterations at scale 0.5 plus a 60 s reconstruction) is sized for
about 8 minutes on an H100.

Usage::

    python bench/sweep_shape.py --commit $(git rev-parse --short HEAD)          # GPU, with mattes
    python bench/sweep_shape.py --no-mattes --commit $(git rev-parse --short HEAD)
    python bench/sweep_shape.py --smoke                                        # tiny, CPU, checks the script

Writes ``bench/results/sweep_shape_<gpu>_<date>.md`` (``--out``; smoke runs write nothing unless ``--out``).
With ``--no-mattes`` the renders measured are the subject alone (inside the bounds) for the silhouette, IoU and
depth, while haze is measured over the whole scene (room included).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from backend.jobs.subject import as_subject, detection_cameras, left_out_cells  # noqa: E402
from backend.nerf import ReconstructConfig, train_reconstruction  # noqa: E402
from backend.nerf.checkpoint import NeRFCheckpoint, load_checkpoint, save_checkpoint  # noqa: E402
from backend.nerf.subject import detect_subject_bounds  # noqa: E402
from backend.stylize.evaluation import (  # noqa: E402
    ViewRenders,
    geometry_change,
    haze_change,
    silhouette_change,
)
from backend.stylize.loop import StylizeConfig, stylize, view_zoom  # noqa: E402
from backend.stylize.losses import StyleLossConfig, weights_for_strength  # noqa: E402
from backend.stylize.perceptual import load_perceptual  # noqa: E402
from backend.stylize.standin_encoder import load_standin_clip, shape_reference  # noqa: E402
from backend.stylize.subject_render import render_image_in_subject, subject_cells  # noqa: E402
from backend.stylize.views import stylization_views, zoomed_out  # noqa: E402
from bench.results_file import write_results  # noqa: E402
from bench.shape_eval import COLUMNS, format_metrics  # noqa: E402
from captures import load_capture  # noqa: E402

SHAPE_PROMPT = "a big hat"
COLOUR_PROMPT = "a red face"
# shape_freedom:λ_reg:prompts (s = shape prompt, c = colour prompt; λ_reg d = the loop's default for the freedom).
DEFAULT_GRID = "0:d:sc,0.25:d:sc,0.5:0:s,0.5:d:sc,0.5:10:s"


def default_data() -> Path:
    """``shared/data`` beside the checkout (a clone, a worktree one level down, or a device copy holding it)."""
    candidates = [REPO / "shared" / "data", REPO.parent / "shared" / "data", REPO.parents[1] / "shared" / "data"]
    return next((c for c in candidates if (c / "fangzhou_nature").is_dir()), candidates[1])


def parse_grid(text: str) -> list[tuple[float, float | None, str]]:
    """``"0.5:d:sc,0.5:10:s"`` -> ``[(0.5, None, "sc"), (0.5, 10.0, "s")]``."""
    out = []
    for item in text.split(","):
        freedom, reg, prompts = item.split(":")
        if not prompts or set(prompts) - {"s", "c"}:
            raise ValueError(f"prompts must be 's', 'c' or 'sc', got {prompts!r}")
        out.append((float(freedom), None if reg == "d" else float(reg), prompts))
    return out


@torch.no_grad()
def renders(ckpt: NeRFCheckpoint, cameras, subject_only: bool) -> ViewRenders:
    """``(n, H, W, 3)`` rgb over white, ``(n, H, W)`` alpha and depth (depth 0 when rendered inside the bounds,
    which the subject renderer does not return)."""
    from backend.stylize.evaluation import render_views

    if not subject_only:
        return render_views(ckpt, cameras)
    rgba = torch.stack([render_image_in_subject(ckpt, cameras, i, subject=ckpt.subject, background=(1.0, 1.0, 1.0))
                        for i in range(len(cameras))])
    return ViewRenders(rgba[..., :3], rgba[..., 3], torch.zeros_like(rgba[..., 3]))


def model_cameras(ckpt: NeRFCheckpoint, cameras):
    return cameras if ckpt.normalization is None else ckpt.normalization.cameras_to_model(cameras)


def save_strip(before: ViewRenders, after: ViewRenders, path: Path, n_views: int = 3) -> None:
    """One JPEG: the first ``n_views`` measured views, F_rec above and F_sty below (over white)."""
    from PIL import Image

    rows = [torch.cat(list(r.rgb[:n_views]), dim=1) for r in (before, after)]  # each (H, k * W, 3)
    strip = (torch.cat(rows, dim=0).clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(strip).save(path, quality=90)


def measure(rec: NeRFCheckpoint, sty: NeRFCheckpoint, cams, subject_only: bool,
            image: Path | None = None) -> dict[str, float]:
    radius = 1.0 if rec.normalization is None else float(rec.normalization.radius)
    before, after = renders(rec, cams, subject_only), renders(sty, cams, subject_only)
    if image is not None:
        save_strip(before, after, image)
    geo = geometry_change(before, after, radius)
    sil = silhouette_change(before.alpha, after.alpha)
    hz = haze_change(rec, sty, cams)
    outside = 0
    if sty.subject is not None:
        # New cells outside the bounds the stylized model carries (the subject's, grown by the shape freedom).
        grid = rec.model.occupancy
        inside = subject_cells(sty.subject, grid.resolution, rec.model.domain, device=grid.binary.device)
        outside = int((sty.model.occupancy.binary & ~grid.binary & ~inside).sum())
    return {"area_ratio": sil.area_ratio, "outline_growth_rel": sil.outline_growth_rel,
            "outline_max_rel": sil.outline_max_rel, "haze": hz.haze, "front_solid": hz.front_solid,
            "outside_opacity": hz.outside_opacity, "cells_outside_bounds": float(outside),
            "alpha_iou": float(geo["alpha_iou"]),
            "depth_err_rel": math.nan if subject_only else float(geo["depth_err_rel"])}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=default_data())
    parser.add_argument("--checkpoint", type=Path, help="a reconstruction to stylize instead of training one")
    parser.add_argument("--train-s", type=float, default=60.0, help="reconstruction training budget (seconds)")
    parser.add_argument("--no-mattes", action="store_true", help="reconstruct from the photos alone, detect bounds")
    parser.add_argument("--iterations", type=int, default=100, help="stylization iterations per run")
    parser.add_argument("--scale", type=float, default=0.5, help="stylization and measurement size / capture size")
    parser.add_argument("--grid", default=DEFAULT_GRID, help=f"shape_freedom:λ_reg:prompts,... (default {DEFAULT_GRID})")
    parser.add_argument("--eval-views", type=int, default=6, help="held-out views measured (at most)")
    parser.add_argument("--commit", default=os.environ.get("NERFART_COMMIT", "unknown"))
    parser.add_argument("--out", type=Path)
    parser.add_argument("--save-checkpoint", type=Path, help="keep the trained reconstruction here")
    parser.add_argument("--save-images", type=Path, help="write each run's held-out views before and after here")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, 2 iterations, CPU-friendly")
    args = parser.parse_args()
    grid = parse_grid(args.grid)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.smoke:
        args.scale, args.iterations, args.eval_views = 0.05, 2, 2
        grid = [(0.0, None, "c"), (0.5, None, "sc")]
        torch.set_num_threads(2)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device {gpu}, torch {torch.__version__}", flush=True)

    capture = load_capture(args.data / "fangzhou_nature")
    if args.no_mattes:
        capture = dataclasses.replace(capture, matte_paths=None, has_alpha=False)
    background = "contract" if args.no_mattes else "matte"
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        if args.checkpoint:
            rec = load_checkpoint(args.checkpoint, device)
            for tensor in rec.model.state_dict().values():  # a checkpoint brought back in float16 (save_halved)
                if tensor.dtype == torch.float16:
                    tensor.data = tensor.data.float()
            source = f"checkpoint {args.checkpoint.name}"
        else:
            rconf = (ReconstructConfig.tiny(steps=20, resolution_scale=0.05, background=background, far=6.0,
                                            render_steps=64)
                     if args.smoke else ReconstructConfig(time_budget_s=args.train_s, resolution_scale=1.0,
                                                          background=background))
            rec = train_reconstruction(capture, rconf, device)
            source = f"trained {rec.metrics.get('elapsed_s', math.nan):.0f} s ({background})"
            save_checkpoint(rec, args.save_checkpoint or Path(tmp) / "rec.pt")
    train_s = time.perf_counter() - t0
    print(f"reconstruction ({source}) in {train_s:.1f} s", flush=True)
    assert rec.cameras is not None
    if args.smoke:
        rec = dataclasses.replace(rec, train_indices=rec.train_indices[:4])
    subject_only = rec.background == "contract"
    if subject_only and rec.subject is None:
        # Seen from the training views only, as the reconstruct job detects them: the held-out views are measured.
        det = detect_subject_bounds(rec.model.density, detection_cameras(rec), device,
                                    **({"resolution": 32} if args.smoke else {}))
        print(f"subject bounds: found {det.found} {det.reason}", flush=True)
        # The cells the reconstruct job leaves out of the subject: the air the cameras saw through and the haze
        # the difference key puts beside the person.
        rec = dataclasses.replace(rec, subject=det.bounds, subject_air=left_out_cells(rec, det) if det.found else None)
    if rec.subject is not None:
        # As the stylize job does: the subject without the haze around it, which the losses never see and shape
        # never grows back into.
        print(f"haze left out of the subject: {as_subject(rec)} cells", flush=True)
    held = rec.heldout_indices or list(range(len(rec.cameras)))
    held = held[:: max(1, math.ceil(len(held) / args.eval_views))]
    cams = rec.cameras.select(held).scaled(args.scale)
    # Every run is measured on the same held-out views, widened as a stylization at the grid's largest freedom
    # widens its own views: what grows above a head that fills the frame is seen.
    widest = max(f for f, _, _ in grid)
    eval_zoom = view_zoom(rec, StylizeConfig(prompt=SHAPE_PROMPT, shape_freedom=widest), model_cameras(rec, cams))
    cams = zoomed_out(cams, eval_zoom)
    print(f"held-out views widened x{eval_zoom.mean():.3f} (max x{eval_zoom.max():.3f})", flush=True)

    loss = StyleLossConfig(n_crops=2, n_negatives=2) if args.smoke else StyleLossConfig()
    extra = {"n_templates": 1, "precompute_negatives": False, "compile": "off"} if args.smoke else {}
    views = stylization_views(rec.cameras, rec.train_indices, resolution_scale=rec.config.resolution_scale,
                              scale=args.scale)
    references: dict[float, tuple[float, float, float]] = {}

    def reference_for(freedom: float) -> tuple[float, float, float]:
        """The stand-in's shape axes centred on F_rec's renders as the loop sees them at this freedom (its views
        widened for room to grow), so a run starts at 0 on them."""
        if freedom not in references:
            zoom = view_zoom(rec, StylizeConfig(prompt=SHAPE_PROMPT, shape_freedom=freedom),
                             model_cameras(rec, views.cameras))
            src = renders(rec, zoomed_out(views.cameras, zoom), subject_only).rgb.permute(0, 3, 1, 2)
            references[freedom] = shape_reference(src)  # [n, 3, H, W] over white
            print(f"freedom {freedom:g}: stylization views widened x{zoom.mean():.3f} (max x{zoom.max():.3f}), "
                  f"shape_reference {tuple(round(v, 3) for v in references[freedom])}", flush=True)
        return references[freedom]

    reference_for(0.0)
    header = ("| prompt | shape_freedom | λ_reg | shape lr | " + " | ".join(h for _, h in COLUMNS)
              + " | seconds |")
    rows: list[str] = []

    def text() -> str:
        return "\n".join([
            f"# Shape-freedom sweep on fangzhou_nature (issue 20B{', smoke' if args.smoke else ''})", "",
            f"- date {dt.date.today().isoformat()}, commit {args.commit}, {gpu}, torch {torch.__version__}",
            f"- F_rec: {source}, {rec.background}, subject bounds {'yes' if rec.subject is not None else 'no'}",
            "- stylization: analytic stand-in encoder (test instrument) centred on F_rec's renders "
            "(shape_reference per freedom as its widened views see it: "
            + ", ".join(f"{f:g}: {tuple(round(v, 3) for v in r)}" for f, r in sorted(references.items()))
            + f"), random-trunk LPIPS, {args.iterations} iterations at scale {args.scale}; measured on {len(held)} "
            f"held-out views widened x{eval_zoom.mean():.3f} on average (as a stylization at freedom {widest:g} widens "
            "its own)"
            + ("; silhouette and IoU from the subject alone, haze over the whole scene" if subject_only else ""),
            "", header, "|" + " --- |" * (header.count("|") - 1), *rows, ""])

    for freedom, reg, prompts in grid:
        for key in prompts:
            prompt = SHAPE_PROMPT if key == "s" else COLOUR_PROMPT
            weights = None if reg is None else dataclasses.replace(weights_for_strength(0.5), regularization=reg)
            config = StylizeConfig(prompt=prompt, iterations=args.iterations, scale=args.scale, loss=loss,
                                   shape_freedom=freedom, weights=weights, preview_every=10**9, checkpoint_every=0,
                                   **extra)
            clip = load_standin_clip(device, shape_reference=reference_for(freedom))
            perceptual = load_perceptual("lpips", device, random_init=True)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t1 = time.perf_counter()
            sty = stylize(rec, config, device, clip=clip, perceptual=perceptual)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds = time.perf_counter() - t1
            image = None
            if args.save_images is not None:
                name = f"shape_{prompt.replace(' ', '-')}_{freedom:g}_{'d' if reg is None else f'{reg:g}'}.jpg"
                image = args.save_images / name
            m = measure(rec, sty, cams, subject_only, image)
            rows.append(f"| {prompt} | {freedom:g} | {config.resolved_weights().regularization:g} | "
                        f"{config.resolved_lr_grid():.2g} | " + " | ".join(format_metrics(m)) + f" | {seconds:.0f} |")
            print(rows[-1], flush=True)
            del sty
            write_results(text(), args.out, "sweep_shape", gpu, dt.date.today().isoformat(), args.smoke)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
