"""Subject detection on a saved reconstruction, scored on the CPU (issue 20A): held-out alpha IoU vs real mattes.

The GPU benchmark (``bench/bench_subject.py``) trains a reconstruction without mattes and scores its subject
bounds. This script takes such a reconstruction's checkpoint instead (no training, no GPU) and scores, on the
same held-out views (every ``--holdout-every``th) with the same rule (opacity of the subject-only render > 0.5
vs the capture's matte > 0.5, :func:`bench.bench_subject.subject_alpha_iou`), at ``--scale`` of the photos:

* **new**: the detection a reconstruct job runs now (:func:`backend.jobs.subject.decide_reconstruction_subject`),
  scored with what it leaves out (the seen air and the keyed haze, :func:`backend.jobs.subject.left_out_cells`),
  with the seen air alone (no key), and with nothing left out;
* **old** (with ``--old-rev``): ``detect_subject_bounds`` of ``backend/nerf/subject.py`` at that git revision,
  called as the job called it then (all cameras, default settings);
* **box** (with ``--box``): a box fitted to the same seen surface (``detect_subject_bounds(shape="box")``, the
  detection's shape before it fitted an ellipsoid);
* **default box**: the cameras' default bounds (a failed detection's fallback).

Usage::

    python bench/subject_iou_cpu.py --checkpoint ck.pt --data shared/data/fangzhou_nature --old-rev 33bf7c1 \\
        --out notes/detect_iou_cpu.txt
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import importlib.util
import subprocess
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
from backend.nerf.capture_images import load_images  # noqa: E402
from backend.nerf.checkpoint import load_checkpoint  # noqa: E402
from backend.nerf.subject import (  # noqa: E402
    SubjectBounds,
    capture_frame,
    default_subject_bounds,
    detect_subject_bounds,
)
from bench.bench_subject import subject_alpha_iou  # noqa: E402
from captures import load_capture  # noqa: E402

# Bounded work per renderer call: the FrameRenderer's GPU defaults hold gigabytes of samples on the CPU.
CPU_RENDER = {"max_rays": 4096, "max_samples": 1 << 20}


def old_detection(rev: str, density_fn: Any, cameras_model: Any) -> Any:
    """``detect_subject_bounds`` as it was at git revision ``rev`` (its module loaded from ``git show``)."""
    source = subprocess.run(["git", "show", f"{rev}:backend/nerf/subject.py"], cwd=REPO, check=True,
                            capture_output=True, text=True).stdout
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "old_subject.py"
        path.write_text(source)
        spec = importlib.util.spec_from_file_location("old_subject", path)
        module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
        sys.modules["old_subject"] = module  # its dataclasses look their module up there
        spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module.detect_subject_bounds(density_fn, cameras_model, "cpu")


def frame_box(bounds: SubjectBounds, frame: np.ndarray) -> str:
    """The bounds' extent along the capture frame's (side, up, front) axes, model units."""
    a = frame.T @ bounds.matrix[:3, :3]
    c = frame.T @ bounds.matrix[:3, 3]
    half = np.abs(a).sum(axis=1) if bounds.shape == "box" else np.linalg.norm(a, axis=1)
    return f"side/up/front lo {np.round(c - half, 2).tolist()} hi {np.round(c + half, 2).tolist()}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True, help="a reconstruction without mattes")
    parser.add_argument("--data", type=Path, required=True, help="the capture folder, with its matte/ folder")
    parser.add_argument("--scale", type=float, default=0.25, help="photo scale of the scored views")
    parser.add_argument("--holdout-every", type=int, default=10)
    parser.add_argument("--old-rev", help="also score the detection of this git revision")
    parser.add_argument("--box", action="store_true", help="also score a box fitted to the same seen surface")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="where to detect and render (cpu or cuda)")
    parser.add_argument("--out", type=Path, help="write the table here too")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    device = args.device
    ckpt = load_checkpoint(args.checkpoint, device)
    for tensor in ckpt.model.state_dict().values():  # a checkpoint brought back in float16 (save_halved)
        if tensor.dtype == torch.float16:
            tensor.data = tensor.data.float()
    capture = load_capture(args.data)
    if capture.matte_paths is None:
        raise SystemExit(f"{args.data} has no mattes to score against")
    if ckpt.subject is not None:
        print("the checkpoint holds subject bounds; they are ignored (detection runs afresh)", flush=True)
    _, held_idx = capture.split(args.holdout_every)
    cams = ckpt.cameras.select(ckpt.heldout_indices)
    if list(cams.names) != [capture.cameras.names[i] for i in held_idx]:
        raise SystemExit(f"the checkpoint's held-out views are not the capture's every {args.holdout_every}th view")
    images = load_images(capture, held_idx, scale=args.scale)  # [V, H, W, 4]
    # The checkpoint keeps its cameras at their own size; score at the images' size.
    cams = cams.scaled(images.shape[2] / float(cams.width[0]))
    if (int(cams.height[0]), int(cams.width[0])) != images.shape[1:3]:
        raise SystemExit(f"camera size {cams.width[0]}x{cams.height[0]} does not match the images")
    model_cams = ckpt.normalization.cameras_to_model(ckpt.cameras)
    frame = capture_frame(model_cams)

    candidates: list[tuple[str, SubjectBounds, str, Any]] = []
    t0 = time.perf_counter()
    # As a reconstruct job decides it (decide_reconstruction_subject), with what is left out scored both ways.
    detection = detect_subject_bounds(ckpt.model.density, detection_cameras(ckpt), device)
    detect_s = time.perf_counter() - t0
    if not detection.found:
        raise SystemExit(f"no subject found: {detection.reason}")
    t0 = time.perf_counter()
    keyed_air = left_out_cells(ckpt, detection)
    key_s = time.perf_counter() - t0
    seen_air = left_out_cells(ckpt, detection, key=False)
    how = f"detection {detect_s:.1f} s, key {key_s:.1f} s on {device}"
    for name, air in (("the jobs' subject: seen air and keyed haze left out", keyed_air),
                      ("seen air left out, no key", seen_air)):
        # What the jobs render: the subject without what is not the person (a copy of the model).
        subject_ckpt = dataclasses.replace(ckpt, model=copy.deepcopy(ckpt.model), subject_air=air)
        removed = as_subject(subject_ckpt)
        candidates.append((name, detection.bounds, f"{how}; {removed} occupied cells left out", subject_ckpt))
    candidates.append(("nothing left out", detection.bounds, how, ckpt))
    print(f"new detection: {how}; {frame_box(detection.bounds, frame)}", flush=True)
    if args.old_rev:
        t0 = time.perf_counter()
        det = old_detection(args.old_rev, ckpt.model.density, model_cams)
        candidates.append((f"old detection ({args.old_rev})", det.bounds,
                           f"found {det.found} {det.reason}, {time.perf_counter() - t0:.0f} s on the CPU", ckpt))
    if args.box:
        t0 = time.perf_counter()
        det = detect_subject_bounds(ckpt.model.density, detection_cameras(ckpt), device, shape="box")
        candidates.append(("box on the same seen surface", det.bounds,
                           f"found {det.found} {det.reason}, {time.perf_counter() - t0:.0f} s on {device}", ckpt))
    candidates.append(("default box", default_subject_bounds(model_cams), "the cameras' default (fallback)", ckpt))

    h, w = images.shape[1:3]
    lines = [f"# Subject alpha IoU on the CPU: {args.checkpoint} vs the mattes of {args.data}", "",
             f"- command: python bench/subject_iou_cpu.py {' '.join(sys.argv[1:])}",
             f"- held-out views: {', '.join(cams.names)} (every {args.holdout_every}th), scored at {w}x{h} "
             f"(scale {args.scale}); rule: subject-only render opacity > 0.5 vs matte > 0.5", ""]
    for name, bounds, how, scored in candidates:
        t0 = time.perf_counter()
        scores = subject_alpha_iou(scored, bounds, cams, images, **(CPU_RENDER if device == "cpu" else {}))
        lines += [f"## {name}: mean IoU {np.mean(scores):.3f}, worst {min(scores):.3f}",
                  f"- how: {how}", f"- bounds: {bounds.shape}, {frame_box(bounds, frame)}",
                  "- per view: " + ", ".join(f"{n} {s:.3f}" for n, s in zip(cams.names, scores, strict=True)),
                  f"- scored in {time.perf_counter() - t0:.0f} s", ""]
        print("\n".join(lines[-6:]), flush=True)
    text = "\n".join(lines) + "\n"
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
