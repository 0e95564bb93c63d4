"""Variants of the subject's difference key scored against real mattes (issue 20A): which setting carves better.

On a reconstruction of fangzhou_nature made without its mattes (a ``ck.pt`` that ``bench/run_on_device.sh issue20``
brings back), detect the subject as the reconstruct job does, then for each variant render the detection views'
plates, key them, carve the search grid and score the subject-only render's alpha against the real mattes of the
held-out views (as ``bench/bench_subject.py`` scores the job's own subject). A variant is
``name:matte_scale:fill:vote:resolution:opening[:gap]``:

* ``matte_scale``: plates at this multiple of the detection views' size (1 is the job's);
* ``fill``: ``plain`` fills the matte's holes (the job's); ``down`` also fills holes open to the image border the
  body leaves the frame through (a sweater's streaks that reach the bottom edge);
* ``vote``: the fraction of the views framing a voxel that must put it off their mattes (the job's 0.75);
* ``resolution``: the carved grid's voxels per axis (the job's search grid, 96);
* ``opening``: the side of the square opening that removes specks (the job's 3; 1 for none);
* ``gap``: model units behind the bounds within which the plate's matter counts as the person going on (the job's
  :data:`~backend.nerf.subject_key.BODY_GAP`, 0.5).

A name ending in ``!`` also writes its per-view images (colour, alpha, matte, errors) under ``OUT/key_images``.

Usage::

    python bench/study_subject_key.py CK.pt DATA_PARENT "base:1:plain:0.75:96:3,x2:2:plain:0.75:96:3" --out f.md

Runs on the GPU when there is one (the key's 48 renders take seconds there, about 20 minutes on two CPU cores).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import pickle
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import backend.nerf.subject as subject_mod  # noqa: E402
import backend.nerf.subject_key as key_mod  # noqa: E402
from backend.jobs.subject import as_subject, detection_cameras  # noqa: E402
from backend.nerf.capture_images import load_images  # noqa: E402
from backend.nerf.checkpoint import load_checkpoint  # noqa: E402
from bench.bench_subject import subject_alpha_iou  # noqa: E402
from captures import load_capture, project_points  # noqa: E402


def down_side(view, centre: np.ndarray, up: np.ndarray) -> str:
    """The image border the capture's "down" points to in ``view``: where the body leaves the frame."""
    uv, _ = project_points(view, 0, np.stack([centre, centre - 0.5 * up]))
    d = uv[1] - uv[0]
    return ("bottom" if d[1] > 0 else "top") if abs(d[1]) >= abs(d[0]) else ("right" if d[0] > 0 else "left")


def fill_open_down(matte: np.ndarray, side: str) -> np.ndarray:
    """Holes filled, counting the ``side`` border between the matte's first and last pixel on it as matte."""
    from scipy.ndimage import binary_fill_holes

    k = {"bottom": 0, "right": 1, "top": 2, "left": 3}[side]
    rotated = np.rot90(matte, k)
    border = np.zeros_like(rotated[-1])
    if rotated[-1].any():
        i = np.flatnonzero(rotated[-1])
        border[i[0]:i[-1] + 1] = True
    return np.rot90(binary_fill_holes(np.concatenate([rotated, border[None]], 0))[:-1], -k)


def variant_matte(plate: key_mod.Plate, side: str, fill: str, opening: int, gap: float) -> np.ndarray:
    """:func:`backend.nerf.subject_key.key_matte` with the study's fill, opening and gap."""
    from scipy.ndimage import binary_fill_holes, binary_opening

    matte = key_mod.raw_key_matte(plate, body_gap=gap)
    matte = fill_open_down(matte, side) if fill == "down" else binary_fill_holes(matte)
    return binary_opening(matte, np.ones((opening, opening), dtype=bool)) if opening > 1 else matte


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path, help="a reconstruction of fangzhou_nature without its mattes")
    parser.add_argument("data", type=Path, help="the folder holding fangzhou_nature (with its matte/ folder)")
    parser.add_argument("variants", help="name:matte_scale:fill:vote:resolution:opening,...")
    parser.add_argument("--score-scale", type=float, default=0.25, help="photo scale of the scored views")
    parser.add_argument("--out", type=Path, required=True, help="the results table (its folder gets key_images/)")
    parser.add_argument("--cache", type=Path, help="keep the detection and the plates here and reuse them (a CPU "
                        "study: they take minutes there); delete it for another checkpoint")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        torch.set_num_threads(2)
    ckpt = load_checkpoint(args.checkpoint, device)
    for tensor in ckpt.model.state_dict().values():  # brought back in float16 (bench_subject.save_halved)
        if tensor.dtype == torch.float16:
            tensor.data = tensor.data.float()
    capture = load_capture(args.data / "fangzhou_nature")
    _, held = capture.split(ckpt.config.holdout_every)
    images = load_images(capture, held, scale=args.score_scale)
    cams = ckpt.cameras.select(ckpt.heldout_indices)
    cams = cams.scaled(images.shape[2] / float(cams.width[0]))
    t0 = time.perf_counter()
    cached = None if args.cache is None else args.cache / "detection.pkl"
    if cached is not None and cached.exists():
        det = pickle.loads(cached.read_bytes())
    else:
        det = subject_mod.detect_subject_bounds(ckpt.model.density, detection_cameras(ckpt), device)
        if cached is not None:
            cached.parent.mkdir(parents=True, exist_ok=True)
            cached.write_bytes(pickle.dumps(det))
    detect_s = time.perf_counter() - t0
    seen = det.air
    frame = seen.frame
    centre = np.asarray(det.bounds.matrix[:3, 3], dtype=np.float64)
    plates: dict[float, list[key_mod.Plate]] = {}
    grid = ckpt.model.occupancy
    renderer = {"max_rays": 1 << 15, "max_samples": 1 << 22} if device == "cuda" else {"max_rays": 4096,
                                                                                     "max_samples": 1 << 20}
    gpu = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    lines = [f"# Difference-key variants on fangzhou_nature without its mattes ({gpu})", "",
             f"- checkpoint {args.checkpoint.name}; detection {detect_s:.1f} s; held-out views scored at "
             f"{int(cams.width[0])}x{int(cams.height[0])} (scale {args.score_scale}), alpha > 0.5 vs matte > 0.5",
             "- extra / missing: the subject's alpha where the matte is background / the matte it leaves out, as "
             "fractions of the matte's area; person kept: the person's seen-surface voxels the key keeps "
             "(the job applies the key when it keeps at least half); key s: plates, mattes and carving", "",
             "| variant | IoU mean | worst | extra | missing | person kept | key s |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for spec in args.variants.split(","):
        name, scale_s, fill, vote_s, res_s, opening_s, *gap_s = spec.split(":")
        scale, vote, res, opening = float(scale_s), float(vote_s), int(res_s), int(opening_s)
        gap = float(gap_s[0]) if gap_s else key_mod.BODY_GAP
        t1 = time.perf_counter()
        views = [v.scaled(scale) for v in det.views]
        cached = None if args.cache is None else args.cache / f"plates_x{scale:g}.pkl"
        if scale not in plates and cached is not None and cached.exists():
            plates[scale] = pickle.loads(cached.read_bytes())
        if scale not in plates:
            plate_fn = key_mod.model_plates(ckpt.model, det.bounds)
            plates[scale] = [plate_fn(v) for v in views]
            if cached is not None:
                cached.write_bytes(pickle.dumps(plates[scale]))
        mattes = [variant_matte(p, down_side(v, centre, frame[:, 1]), fill, opening, gap)
                  for p, v in zip(plates[scale], views, strict=True)]
        keyed = subject_mod.off_matte_voxels(mattes, views, frame, seen.half_extent, res, vote)
        key_s = time.perf_counter() - t1
        cells = seen.cells(grid.resolution, ckpt.model.domain, grid.binary.device) | subject_mod.SeenAir(
            keyed, frame, seen.half_extent).cells(grid.resolution, ckpt.model.domain, grid.binary.device)
        subject_ckpt = dataclasses.replace(ckpt, model=copy.deepcopy(ckpt.model), subject_air=cells)
        as_subject(subject_ckpt)
        n = seen.voxels.shape[0]
        on_search_grid = keyed if res == n else torch.nn.functional.interpolate(
            torch.from_numpy(keyed).float()[None, None], size=(n, n, n)).numpy()[0, 0] > 0.5
        kept = float((det.person & ~on_search_grid).sum() / det.person.sum())
        errors: list[tuple[float, float]] = []
        scores = subject_alpha_iou(subject_ckpt, det.bounds, cams, images, errors=errors,
                                   save_dir=args.out.parent / "key_images" if name.endswith("!") else None,
                                   tag=name.rstrip("!"), **renderer)
        lines.append(f"| {name.rstrip('!')} (`{spec.replace('!', '')}`) | {np.mean(scores):.3f} | {min(scores):.3f} | "
                     f"{np.mean([e for e, _ in errors]):.3f} | {np.mean([m for _, m in errors]):.3f} | {kept:.2f} | "
                     f"{key_s:.1f} |")
        print(lines[-1], flush=True)
        args.out.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
