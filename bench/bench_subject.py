"""Subject isolation benchmark (issue 20A): fangzhou_nature reconstructed with its mattes withheld.

The capture is given to the ``reconstruct`` job as a folder without its ``matte/`` (its other files linked), so
the job sees a plain phone capture: it models the whole room (``"contract"``) and finds the subject bounds
itself (where the cameras look, refined by the density). Then, on the views it held out (every 10th):

* **Subject alpha vs the real mattes.** The opacity of the subject-only render (the render job's frame renderer
  with the job's bounds) against the capture's own mattes at the training resolution, both thresholded at 0.5:
  IoU per view, mean and worst. Target: >= 0.90. For comparison, the IoU of the cameras' default box (what a
  failed detection falls back to) on the same model.
* **Held-out PSNR** of the whole scene (the job's own metric, full image), and of the same renders inside the
  real mattes.
* **Render throughput**: the ``render`` job itself (run in this process: frames rendered, encoded as PNG,
  written to the job folder and streamed as frame messages), a ``--frames``-frame swing turntable at
  ``--size``^2 in front of the head, subject alone (the default) and with ``include_background``. Frames per
  second from the first frame message to the last (the first frame warms up). Target: >= 30 fps subject-only
  at 512^2.
* **Baseline** (unless ``--skip-matted``): the same with the mattes (a ``"matte"`` reconstruction), for the
  frame rates a matted capture gets and the alpha the mattes themselves train.

Writes ``bench/results/subject_<gpu>_<date>.md`` (or ``--out``); ``--save-images DIR`` also writes, per
held-out view, the subject render, its alpha, the real matte and where they disagree.

Usage::

    python bench/bench_subject.py --train-s 60 --commit $(git rev-parse --short HEAD)
    python bench/bench_subject.py --smoke          # tiny sizes on the CPU, to check the script (under a minute)
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from backend.demo.turntable import orbit_from_cameras, orbit_poses  # noqa: E402
from backend.jobs.local import run_job_locally  # noqa: E402
from backend.jobs.subject import as_subject, detection_cameras, left_out_cells  # noqa: E402
from backend.nerf.capture_images import load_images  # noqa: E402
from backend.nerf.checkpoint import NeRFCheckpoint, load_checkpoint  # noqa: E402
from backend.nerf.evaluate import evaluate_psnr  # noqa: E402
from backend.nerf.frame_renderer import FrameRenderer  # noqa: E402
from backend.nerf.subject import SubjectBounds, default_subject_bounds, detect_subject_bounds  # noqa: E402
from bench.results_file import write_results  # noqa: E402
from captures import Cameras, load_capture  # noqa: E402
from captures.images import MATTE_DIR_NAMES  # noqa: E402
from protocol import Message  # noqa: E402

SCENE = "fangzhou_nature"
OPENCV_TO_BLENDER = np.diag([1.0, -1.0, -1.0, 1.0])  # camera axes: +Y down, +Z forward <-> +Y up, -Z forward


def find_data(given: Path | None) -> Path:
    """The shared data folder: ``--data``, else ``shared/data`` in or above the checkout."""
    if given is not None:
        return given
    for root in (REPO, REPO.parent, REPO.parent.parent):
        if (root / "shared" / "data" / SCENE).is_dir():
            return root / "shared" / "data"
    raise SystemExit(f"cannot find shared/data/{SCENE} near {REPO}; pass --data")


def without_mattes(capture_dir: Path, dest: Path) -> Path:
    """A view of a capture folder without its matte folder: every other entry linked (nothing is copied)."""
    dest.mkdir(parents=True)
    for entry in capture_dir.iterdir():
        if entry.name not in MATTE_DIR_NAMES:
            (dest / entry.name).symlink_to(entry.resolve(), target_is_directory=entry.is_dir())
    return dest


@dataclass
class Reconstruction:
    """A finished reconstruct job of the benchmark."""

    label: str
    job_id: str
    outputs: dict[str, Any]
    ckpt: NeRFCheckpoint
    wall_s: float
    detect_s: float
    stages: list[str] = field(default_factory=list)


def reconstruct(label: str, capture_path: Path, work: Path, device: str, params: dict[str, Any]) -> Reconstruction:
    """Run the reconstruct job; the time its subject detection took is read from its progress messages."""
    stamps: dict[tuple[str, int], float] = {}
    last_print = [0.0]

    def on_message(msg: Message) -> None:
        if msg.type != "progress":
            return
        c = msg.content
        stamps.setdefault((c["stage"], c["step"]), time.perf_counter())
        now = time.perf_counter()
        if c["stage"] != "training" or now - last_print[0] > 10.0:
            last_print[0] = now
            print(f"  [{label}] {c['stage']} {c['step']}/{c['total']} {c.get('metrics') or ''} {c['message']}",
                  flush=True)

    t0 = time.perf_counter()
    rec = run_job_locally("reconstruct", {"capture_path": str(capture_path), **params}, work, device, on_message)
    wall = time.perf_counter() - t0
    if rec.state != "done":
        raise RuntimeError(f"{label} reconstruction ended {rec.state}: {rec.error}")
    ckpt = load_checkpoint(work / "jobs" / rec.job_id / "outputs" / rec.outputs["checkpoint"], device)
    start, end = stamps.get(("finding the subject", 0)), stamps.get(("finding the subject", 1))
    detect = end - start if start is not None and end is not None else float("nan")
    return Reconstruction(label, rec.job_id, rec.outputs, ckpt, wall, detect)


def heldout(ckpt: NeRFCheckpoint, capture, scale: float, holdout_every: int) -> tuple[Cameras, np.ndarray]:
    """The checkpoint's held-out world cameras and the capture's RGBA (alpha = real matte) of the same views."""
    _, held_idx = capture.split(holdout_every)
    cams = ckpt.cameras.select(ckpt.heldout_indices)
    if list(cams.names) != [capture.cameras.names[i] for i in held_idx]:
        raise RuntimeError(f"the job's held-out views are not the capture's every {holdout_every}th view")
    return cams, load_images(capture, held_idx, scale=scale)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def disagreement(alpha: np.ndarray, matte: np.ndarray) -> tuple[float, float]:
    """``(extra, missing)``: pixels the subject holds outside the matte, and matte pixels it misses, each as a
    fraction of the matte's area (both masks boolean, same shape)."""
    area = max(1, int(matte.sum()))
    return float((alpha & ~matte).sum() / area), float((~alpha & matte).sum() / area)


@torch.no_grad()
def subject_alpha_iou(ckpt: NeRFCheckpoint, bounds: SubjectBounds, cams: Cameras, images: np.ndarray,
                      save_dir: Path | None = None, tag: str = "", errors: list[tuple[float, float]] | None = None,
                      **renderer_options: Any) -> list[float]:
    """IoU of the subject-only render's opacity (> 0.5) with the real matte (> 0.5), per held-out view.

    ``errors``, when given, receives each view's :func:`disagreement`. ``renderer_options`` go to the
    :class:`FrameRenderer` (smaller ``max_rays``/``max_samples`` on the CPU)."""
    renderer = FrameRenderer(ckpt, subject=bounds, **renderer_options)
    scores = []
    for i in range(len(cams)):
        rgba, _ = renderer.render(cams, i)
        alpha = rgba[..., 3].float().cpu().numpy()
        matte = images[i, ..., 3]
        scores.append(iou(alpha > 0.5, matte > 0.5))
        if errors is not None:
            errors.append(disagreement(alpha > 0.5, matte > 0.5))
        if save_dir is not None:
            save_dir.mkdir(parents=True, exist_ok=True)
            rgb = rgba[..., :3].cpu().numpy() + (1.0 - alpha[..., None]) * 0.5  # over grey
            diff = np.zeros((*alpha.shape, 3), np.float32)
            diff[(alpha > 0.5) & ~(matte > 0.5)] = (1.0, 0.2, 0.2)  # subject where the matte says background
            diff[~(alpha > 0.5) & (matte > 0.5)] = (0.2, 0.4, 1.0)  # the matte's subject that is missing
            row = np.concatenate([rgb, np.repeat(alpha[..., None], 3, -1), np.repeat(matte[..., None], 3, -1), diff],
                                 axis=1)
            Image.fromarray((np.clip(row, 0, 1) * 255).astype(np.uint8)).save(
                save_dir / f"{tag.replace(' ', '_')}_{cams.names[i]}.png")
    return scores


def save_halved(src: Path, dest: Path) -> None:
    """A copy of a checkpoint file with its float32 tensors over 4096 elements in float16 (load it with
    ``load_checkpoint``; widen them back to float32 before use)."""

    def halve(obj: Any) -> Any:
        if isinstance(obj, torch.Tensor) and obj.dtype == torch.float32 and obj.numel() > 4096:
            return obj.half()
        if isinstance(obj, dict):
            return {k: halve(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return type(obj)(halve(v) for v in obj)
        return obj

    dest.parent.mkdir(parents=True, exist_ok=True)
    torch.save(halve(torch.load(src, map_location="cpu", weights_only=True)), dest)


def swing(ckpt: NeRFCheckpoint, n: int, size: int) -> Cameras:
    """``n`` square world cameras swinging across the capture's azimuths in front of the head, at its camera
    distance, with its focal length (as the main job's turntable for a frontal capture)."""
    cams = ckpt.cameras
    orbit = orbit_from_cameras(cams.c2w @ OPENCV_TO_BLENDER)
    c2w = np.stack(orbit_poses(orbit, n)) @ OPENCV_TO_BLENDER
    f = float(np.median(cams.fy / cams.height)) * size
    return Cameras(c2w=c2w, fx=f, fy=f, cx=size / 2, cy=size / 2, width=size, height=size)


def render_fps(job_id: str, cams: Cameras, work: Path, device: str, include_background: bool) -> dict[str, Any]:
    """The render job end to end: fps over the frames after the first, mean alpha of the frames, and its
    outputs (field implementation, background model)."""
    stamps: list[float] = []
    alphas: list[float] = []

    def on_message(msg: Message) -> None:
        if msg.type == "frame":
            stamps.append(time.perf_counter())
            png = Image.open(io.BytesIO(bytes(msg.blob(msg.content["image"]))))
            alphas.append(float(np.asarray(png)[..., 3].mean() / 255.0))

    cameras = [{"name": f"swing_{i:03d}", "frame": i, "c2w": cams.c2w[i].tolist(), "fx": float(cams.fx[i]),
                "fy": float(cams.fy[i]), "cx": float(cams.cx[i]), "cy": float(cams.cy[i]),
                "width": int(cams.width[i]), "height": int(cams.height[i])} for i in range(len(cams))]
    params: dict[str, Any] = {"source_job": job_id, "cameras": cameras}
    if include_background:
        params["include_background"] = True
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    rec = run_job_locally("render", params, work, device, on_message)
    if rec.state != "done":
        raise RuntimeError(f"render job ended {rec.state}: {rec.error}")
    per_frame = (stamps[-1] - stamps[0]) / max(1, len(stamps) - 1)
    return {"fps": 1.0 / per_frame, "ms": 1e3 * per_frame, "frames": len(stamps) - 1,
            "mean_alpha": float(np.mean(alphas)), "field": rec.outputs["field"],
            "background_model": rec.outputs.get("background_model"),
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else 0.0}


def seen_through_only_cells(ckpt: NeRFCheckpoint, device: str) -> torch.Tensor:
    """``(R, R, R)`` bool: the occupancy cells the detection leaves out without the difference key (the air its
    cameras saw through, alone), on the same model, for comparison."""
    det = detect_subject_bounds(ckpt.model.density, detection_cameras(ckpt), device)
    cells = left_out_cells(ckpt, det, key=False) if det.found else None
    return torch.zeros_like(ckpt.model.occupancy.binary) if cells is None else cells


def measure(r: Reconstruction, capture, params: dict[str, Any], n_frames: int, size: int, work: Path, device: str,
            save_dir: Path | None) -> dict[str, Any]:
    ckpt = r.ckpt
    cams, images = heldout(ckpt, capture, params["scale"], params["holdout_every"])
    bounds = ckpt.subject
    if bounds is None:
        raise RuntimeError(f"the {r.label} reconstruction holds no subject bounds")
    # The whole scene first (the matte PSNR; the bounds with the seen air kept, as before), then the subject as
    # the jobs use it (its grid without the air its cameras saw through).
    model_cams = ckpt.normalization.cameras_to_model(ckpt.cameras)
    default_scores = subject_alpha_iou(ckpt, default_subject_bounds(model_cams), cams, images)
    matte_psnr, _ = evaluate_psnr(ckpt, cams, images, metric="matte", chunk=ckpt.config.eval_chunk)
    air_errors: list[tuple[float, float]] = []
    air_scores = subject_alpha_iou(ckpt, bounds, cams, images, errors=air_errors)
    # The subject without the seen air alone (the rule before the difference key also left out the haze beside the
    # person), on the same grid, which is then restored.
    grid = ckpt.model.occupancy.binary
    whole_grid = grid.clone()
    grid &= ~seen_through_only_cells(ckpt, device)
    through_errors: list[tuple[float, float]] = []
    through_scores = subject_alpha_iou(ckpt, bounds, cams, images, errors=through_errors)
    grid.copy_(whole_grid)
    air_cells = as_subject(ckpt)
    t0 = time.perf_counter()
    errors: list[tuple[float, float]] = []
    scores = subject_alpha_iou(ckpt, bounds, cams, images, save_dir, r.label, errors)
    iou_s = time.perf_counter() - t0
    turntable = swing(ckpt, n_frames + 1, size)
    # A short render first: kernels compile once per process, which is not the render job's cost.
    render_fps(r.job_id, swing(ckpt, 2, size), work, device, False)
    only = render_fps(r.job_id, turntable, work, device, False)
    print(f"  [{r.label}] subject only: {only}", flush=True)
    whole = render_fps(r.job_id, turntable, work, device, True)
    print(f"  [{r.label}] with background: {whole}", flush=True)
    lo, hi = bounds.aabb()
    return {"iou": scores, "errors": errors, "iou_air": air_scores, "errors_air": air_errors,
            "iou_through": through_scores, "errors_through": through_errors,
            "air_cells": air_cells, "iou_default": default_scores, "iou_s": iou_s, "matte_psnr": matte_psnr,
            "only": only, "whole": whole, "aabb": (lo, hi), "names": list(cams.names)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, help="folder holding fangzhou_nature (default: shared/data near the "
                        "checkout)")
    parser.add_argument("--train-s", type=float, default=60.0, help="training budget of each reconstruction")
    parser.add_argument("--scale", type=float, default=1.0, help="photo scale for training (1: 540x960, the add-on's "
                        "default; 0.5: 270x480)")
    parser.add_argument("--holdout-every", type=int, default=10, help="every k-th view is held out and scored")
    parser.add_argument("--frames", type=int, default=60, help="turntable frames timed (after one warm-up frame)")
    parser.add_argument("--size", type=int, default=512, help="turntable frame side in pixels")
    parser.add_argument("--skip-matted", action="store_true", help="no matted baseline reconstruction")
    parser.add_argument("--save-images", type=Path, help="write per-view subject / alpha / matte / error images")
    parser.add_argument("--save-checkpoint", type=Path, help="keep the unmatted reconstruction here (its large "
                        "float32 tensors in float16: small enough to bring back from the device)")
    parser.add_argument("--commit", default="unknown")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on any device (checks the script)")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    gpu = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    scene_dir = find_data(args.data) / SCENE
    capture = load_capture(scene_dir)
    if capture.matte_paths is None:
        raise SystemExit(f"{scene_dir} has no mattes to score against")
    # The smoke run checks the script: a few steps of the tiny preset on thumbnails, two held-out views, three
    # small frames (a briefly trained room is haze that every ray marches to the far plane on the CPU).
    n_frames, size = (2, 32) if args.smoke else (args.frames, args.size)
    params: dict[str, Any] = (
        {"preset": "tiny", "steps": 8, "scale": 0.04, "holdout_every": 50} if args.smoke else
        {"preset": "default", "steps": 1_000_000, "time_budget_s": args.train_s, "scale": args.scale,
         "holdout_every": args.holdout_every})

    rows: list[tuple[Reconstruction, dict[str, Any]]] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / "work"
        plain = without_mattes(scene_dir, Path(tmp) / f"{SCENE}_no_mattes")
        r = reconstruct("no mattes", plain, work, device, params)
        if r.ckpt.background != "contract":
            raise RuntimeError(f"without mattes the reconstruction should model the room, got {r.ckpt.background}")
        print(f"reconstructed without mattes in {r.wall_s:.0f} s: {r.outputs}", flush=True)
        rows.append((r, measure(r, capture, params, n_frames, size, work, device, args.save_images)))
        if args.save_checkpoint is not None:
            save_halved(work / "jobs" / r.job_id / "outputs" / r.outputs["checkpoint"], args.save_checkpoint)
        if not args.skip_matted:
            m = reconstruct("mattes", scene_dir, work, device, params)
            print(f"reconstructed with mattes in {m.wall_s:.0f} s: {m.outputs}", flush=True)
            rows.append((m, measure(m, capture, params, n_frames, size, work, device, args.save_images)))

    date = dt.date.today().isoformat()
    first = rows[0][0].ckpt
    h, w = int(first.cameras.height[0]), int(first.cameras.width[0])
    lines = [f"# Subject isolation: {SCENE} with its mattes withheld ({'smoke' if args.smoke else 'full'})", "",
             f"- GPU: {gpu}", f"- date: {date}", f"- commit: {args.commit}", f"- torch: {torch.__version__}",
             f"- command: `python bench/bench_subject.py {' '.join(sys.argv[1:])}`",
             f"- reconstruct job: preset {params['preset']}, "
             + (f"{args.train_s:.0f} s training budget" if not args.smoke else f"{params['steps']} steps")
             + f", photos at {w}x{h} (scale {params['scale']}), every {params['holdout_every']}th view held out "
             f"({len(rows[0][1]['iou'])} views)", "",
             "Subject alpha: opacity of the subject-only render (the job's bounds) vs the capture's real mattes at "
             "the training resolution, both > 0.5. 'Default box' is the cameras' default bounds (a failed "
             "detection's fallback) on the same model. PSNR: the job's held-out metric (full image for the "
             "unmatted model, inside the matte for the matted one) and the full render scored inside the real "
             "matte.", "",
             "The subject is what the jobs render: the bounds without the occupied cells that are not the person "
             "('air cells' counts them): those the cameras saw through (haze in the air around the head) and the "
             "haze the detection views' difference keys put beside the person (its colour is the background "
             "plate's, backend/nerf/subject_key.py). 'Seen-through only': without the key. 'Air kept': the bounds "
             "with all of those cells.", "",
             "| reconstruction | scene | training s (steps) | subject bounds | detection s | IoU mean | IoU worst "
             "(view) | air cells | IoU seen-through only mean / worst | IoU air kept mean / worst | IoU default box "
             "mean / worst | held-out PSNR (job) | PSNR inside matte | bounds aabb (model units) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r, m in rows:
        worst = int(np.argmin(m["iou"]))
        lo, hi = m["aabb"]
        source = r.outputs.get("subject_source")
        note = f" ({r.outputs['subject_note']})" if r.outputs.get("subject_note") else ""
        lines.append(
            f"| {r.label} | {r.ckpt.background} | {r.outputs.get('elapsed_s', float('nan')):.0f} "
            f"({r.outputs.get('steps')}) | {source}{note} | {r.detect_s:.2f} | {np.mean(m['iou']):.3f} | "
            f"{min(m['iou']):.3f} ({m['names'][worst]}) | {m['air_cells']} | {np.mean(m['iou_through']):.3f} / "
            f"{min(m['iou_through']):.3f} | {np.mean(m['iou_air']):.3f} / "
            f"{min(m['iou_air']):.3f} | {np.mean(m['iou_default']):.3f} / "
            f"{min(m['iou_default']):.3f} | {r.outputs.get('heldout_psnr', float('nan')):.2f} | "
            f"{m['matte_psnr']:.2f} | {np.round(lo, 2).tolist()} .. {np.round(hi, 2).tolist()} |")
    lines += ["", "Per-view IoU (held-out views in order): "
              + "; ".join(f"{r.label}: " + ", ".join(f"{v:.3f}" for v in m["iou"]) for r, m in rows), "",
              "Where they disagree, per view, as fractions of the matte's area: extra (the subject's alpha where the "
              "matte is background) / missing (matte the subject's alpha leaves out): "
              + "; ".join(f"{r.label}: " + ", ".join(f"{e:.3f}/{g:.3f}" for e, g in m["errors"]) for r, m in rows)
              + "; seen-through only: " + "; ".join(f"{r.label}: " + ", ".join(f"{e:.3f}/{g:.3f}" for e, g in
                                                                                m["errors_through"])
                                                   for r, m in rows)
              + "; air kept: " + "; ".join(f"{r.label}: " + ", ".join(f"{e:.3f}/{g:.3f}" for e, g in m["errors_air"])
                                          for r, m in rows),
              "",
              f"`render` job end to end (frames rendered, PNG-encoded on worker threads, written to the job folder "
              f"and streamed as frame messages), a {n_frames + 1}-frame swing in front of the head at "
              f"{size}x{size}; fps over the {n_frames} frames after the first. 'with background': "
              "include_background (the whole scene of the reconstruction).", "",
              "| reconstruction | subject only fps | ms/frame | mean alpha | with background fps | ms/frame | mean "
              "alpha | field | peak GiB |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r, m in rows:
        a, b = m["only"], m["whole"]
        lines.append(f"| {r.label} | {a['fps']:.1f} | {a['ms']:.1f} | {a['mean_alpha']:.3f} | {b['fps']:.1f} | "
                     f"{b['ms']:.1f} | {b['mean_alpha']:.3f} | {a['field']} | "
                     f"{max(a['peak_gib'], b['peak_gib']):.2f} |")
    write_results("\n".join(lines) + "\n", args.out, "subject", gpu, date, args.smoke)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
