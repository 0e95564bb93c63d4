"""Output benchmark: camera-path rendering throughput and mesh extraction time, on one GPU.

A fangzhou_nature model is trained first (``--train-s`` seconds at half resolution, or ``--checkpoint`` is
loaded), then:

* **Frames.** A turntable of ``--frames`` cameras around the head at 512x512 and at 1920x1080, through
  the ``render`` job itself (run in this process): frames rendered, encoded as PNG (or, with
  ``--image-format exr``, as multilayer OpenEXR with the Depth and Normal passes), written and streamed.
  Frames per second counts from the first frame message to the last (the first frame warms up). Targets:
  >= 30 fps at 512x512 and >= 5 fps at 1920x1080 (PNG).
* **Mesh.** ``extract_mesh`` at 256^3 (and 512^3) with colours, as the ``extract_mesh`` job does. Target:
  256^3 under 5 s.

Peak GPU memory is ``torch.cuda.max_memory_allocated`` per measurement. Writes
``bench/results/outputs_<gpu>_<date>.md``.

Usage::

    python bench/bench_outputs.py --commit $(git rev-parse --short HEAD)
    python bench/bench_outputs.py --smoke     # tiny sizes on the CPU, to check the script itself
    python bench/bench_outputs.py --image-format exr --skip-mesh   # the EXR path's cost (compare with png)
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from backend.jobs.local import run_job_locally  # noqa: E402
from backend.jobstore.store import JobStore  # noqa: E402
from backend.nerf import ReconstructConfig, train_reconstruction  # noqa: E402
from backend.nerf.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from backend.nerf.evaluate import render_image  # noqa: E402
from backend.nerf.frame_renderer import FrameRenderer  # noqa: E402
from backend.outputs.mesh import extract_mesh  # noqa: E402
from bench.results_file import write_results  # noqa: E402
from captures import Cameras, load_capture  # noqa: E402
from protocol import Message  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def turntable(ckpt, n: int, width: int, height: int) -> Cameras:
    """``n`` world cameras circling the head at the capture's mean camera distance, looking at its centre."""
    norm = ckpt.normalization
    cams = ckpt.cameras
    centre = norm.center
    dist = float(np.median(np.linalg.norm(cams.c2w[:, :3, 3] - centre, axis=1)))
    up = -np.mean(cams.c2w[:, :3, 1], axis=0)  # OpenCV +Y is down: the mean "up" of the capture
    up /= np.linalg.norm(up)
    a = np.cross(up, [1.0, 0.0, 0.0] if abs(up[0]) < 0.9 else [0.0, 1.0, 0.0])
    a /= np.linalg.norm(a)
    b = np.cross(up, a)
    c2ws = []
    for k in range(n):
        ang = 2 * np.pi * k / n
        pos = centre + dist * (np.cos(ang) * a + np.sin(ang) * b)
        fwd = (centre - pos) / np.linalg.norm(centre - pos)
        right = np.cross(fwd, up)
        right /= np.linalg.norm(right)
        down = np.cross(fwd, right)
        m = np.eye(4)
        m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = right, down, fwd, pos
        c2ws.append(m)
    # The capture's focal length, scaled so the head fills the frame as it does in the photos.
    f = float(np.median(cams.fy / cams.height)) * height
    return Cameras(c2w=np.stack(c2ws), fx=f, fy=f, cx=width / 2, cy=height / 2, width=width, height=height)


def protocol_cameras(cams: Cameras) -> list[dict]:
    """The render job's camera list (protocol format) for a :class:`Cameras` set."""
    return [{"name": f"turntable_{i:03d}", "frame": i, "c2w": cams.c2w[i].tolist(), "fx": float(cams.fx[i]),
             "fy": float(cams.fy[i]), "cx": float(cams.cx[i]), "cy": float(cams.cy[i]),
             "width": int(cams.width[i]), "height": int(cams.height[i])} for i in range(len(cams))]


def source_job(ckpt, work_dir: Path) -> str:
    """A finished ``reconstruct`` job holding ``ckpt`` in a job store under ``work_dir`` (what render reads)."""
    store = JobStore(work_dir)
    rec = store.create("reconstruct", {"capture": "bench"}, owner="bench")
    save_checkpoint(ckpt, store.job_dir(rec.job_id) / "outputs" / "model.ckpt")
    rec.outputs = {"checkpoint": "model.ckpt"}
    rec.state = "done"
    store.save(rec)
    return rec.job_id


def frame_alpha(data: bytes, image_format: str) -> float:
    """Mean alpha of a frame file's bytes (PNG, or our multilayer EXR's Combined.A)."""
    if image_format == "exr":
        import OpenEXR

        with OpenEXR.File(io.BytesIO(data), separate_channels=True) as exr:
            return float(exr.parts[0].channels["ViewLayer.Combined.A"].pixels.mean())
    return float(np.asarray(Image.open(io.BytesIO(data)))[..., 3].mean() / 255.0)


def bench_frames(ckpt, n: int, width: int, height: int, device: torch.device, work_dir: Path,
                 image_format: str = "png") -> dict[str, float]:
    """The ``render`` job end to end (model load excluded): frames rendered, encoded, written and streamed.

    Frames per second is over the whole path after the first frame (which warms up kernels for the size):
    the time from the first frame message to the last, over ``n`` frames.
    """
    cams = turntable(ckpt, n + 1, width, height)
    job = source_job(ckpt, work_dir)
    stamps: list[float] = []
    alphas: list[float] = []

    def on_message(msg: Message) -> None:
        if msg.type == "frame":
            stamps.append(time.perf_counter())
            if len(alphas) < 4:
                alphas.append(frame_alpha(bytes(msg.blob(msg.content["image"])), image_format))

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    rec = run_job_locally("render", {"source_job": job, "cameras": protocol_cameras(cams), "format": image_format},
                          work_dir, device.type, on_message)
    if rec.state != "done":
        raise RuntimeError(f"render job ended {rec.state}: {rec.error}")
    per_frame = (stamps[-1] - stamps[0]) / (len(stamps) - 1)
    frames_dir = work_dir / "jobs" / rec.job_id / "outputs" / "frames"
    sizes = [f.stat().st_size for f in frames_dir.glob(f"*.{image_format}")]
    return {"fps": 1.0 / per_frame, "ms": 1e3 * per_frame, "frames": len(stamps), "field": rec.outputs["field"],
            "mean_alpha": float(np.mean(alphas)), "file_kib": float(np.mean(sizes)) / 1024,
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else 0.0}


def bench_reference(ckpt, n: int, width: int, height: int) -> dict[str, float]:
    """The training renderer on the same frames (what the render job used before the frame renderer),
    and how far the frame renderer's frames are from it."""
    cams = turntable(ckpt, n + 1, width, height)
    renderer = FrameRenderer(ckpt)
    render_image(ckpt, cams, 0, chunk=2**18)
    times, max_diff = [], 0.0
    for i in range(1, n + 1):
        sync(ckpt.model.device)
        t0 = time.perf_counter()
        ref, _ = render_image(ckpt, cams, i, chunk=2**18)
        sync(ckpt.model.device)
        times.append(time.perf_counter() - t0)
        if i <= 3:
            max_diff = max(max_diff, float((renderer.render(cams, i)[0] - ref).abs().max()))
    return {"ms": 1e3 * statistics.median(times), "max_abs_diff": max_diff}


def bench_mesh(ckpt, resolution: int, device: torch.device, isolevel: float | None = None) -> dict[str, float]:
    model = ckpt.model
    bound = float(model.domain.bound) if model.domain.kind == "bounded" else 1.0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(2):  # the first run includes one-off start-up (scikit-image, kernels)
        sync(device)
        t0 = time.perf_counter()
        with torch.no_grad():
            mesh = extract_mesh(model.density, model.radiance, resolution=resolution, aabb=(-bound, bound),
                                isolevel=isolevel, device=device)
        sync(device)
        times.append(time.perf_counter() - t0)
    return {"seconds": times[-1], "first_seconds": times[0], "vertices": len(mesh.vertices),
            "faces": len(mesh.faces),
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else 0.0}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--checkpoint", type=Path, help="use this checkpoint instead of training one")
    parser.add_argument("--save-checkpoint", type=Path,
                        help="write the trained model here, so later benchmarks in the same lease reuse it")
    parser.add_argument("--train-s", type=float, default=60.0, help="training budget for the model")
    parser.add_argument("--frames", type=int, default=30)
    parser.add_argument("--commit", default="unknown")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on any device")
    parser.add_argument("--image-format", choices=("png", "exr"), default="png",
                        help="frame format of the render job (exr: multilayer with the Depth and Normal passes)")
    parser.add_argument("--skip-mesh", action="store_true", help="frames only")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gpu = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"

    if args.checkpoint:
        ckpt = load_checkpoint(args.checkpoint, device)
    else:
        capture = load_capture(args.data / "fangzhou_nature")
        config = (ReconstructConfig.tiny(steps=20, resolution_scale=0.1) if args.smoke else
                  ReconstructConfig(time_budget_s=args.train_s, resolution_scale=0.5))
        t0 = time.perf_counter()
        ckpt = train_reconstruction(capture, config, device)
        print(f"trained in {time.perf_counter() - t0:.1f} s: {ckpt.metrics}", flush=True)
        if args.save_checkpoint:
            save_checkpoint(ckpt, args.save_checkpoint)

    sizes = [(64, 64), (96, 54)] if args.smoke else [(512, 512), (1920, 1080)]
    n = 3 if args.smoke else args.frames
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for w, h in sizes:
            r = bench_frames(ckpt, n, w, h, device, Path(tmp), args.image_format)
            r.update({f"ref_{k}": v for k, v in bench_reference(ckpt, min(n, 8), w, h).items()})
            rows.append((f"{w}x{h}", r))
            print(f"frames {w}x{h}: {r}", flush=True)
    mesh_rows = []
    for res in ([] if args.skip_mesh else [32] if args.smoke else [256, 512]):
        # A 20-step smoke model is haze, below the surface rule's density: mesh it at a low isolevel.
        r = bench_mesh(ckpt, res, device, isolevel=0.05 if args.smoke else None)
        mesh_rows.append((res, r))
        print(f"mesh {res}^3: {r}", flush=True)

    date = dt.date.today().isoformat()
    lines = [f"# Output benchmark: frames and meshes ({'smoke' if args.smoke else 'full'})", "",
             f"- GPU: {gpu}", f"- date: {date}", f"- commit: {args.commit}", f"- torch: {torch.__version__}",
             f"- model: fangzhou_nature, {ckpt.metrics.get('elapsed_s', float('nan')):.0f} s of training, "
             f"held-out PSNR {ckpt.metrics.get('heldout_psnr', float('nan')):.2f} dB, background "
             f"{ckpt.background}", "",
             f"`render` job end to end, frame format {args.image_format} (png: frames rendered, "
             "un-premultiplied and quantized on the GPU, PNG-encoded on worker threads; exr: plus the Depth and "
             "Normal passes, linearised on the GPU, multilayer-EXR-encoded on worker threads; written to the job "
             "folder and streamed as frame messages); fps over "
             f"{n} frames after the first. Reference: the training renderer (`render_image`, 256k-ray chunks) "
             "on the same frames, render only, and the largest difference of the job's frames to it.", "",
             "| frames | job fps | ms/frame | field | file KiB | mean alpha | peak GiB | reference ms/frame "
             "(render only) | max abs diff to reference |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for size, r in rows:
        lines.append(f"| {size} | {r['fps']:.1f} | {r['ms']:.1f} | {r['field']} | {r['file_kib']:.0f} | "
                     f"{r['mean_alpha']:.3f} | {r['peak_gib']:.2f} | {r['ref_ms']:.1f} | "
                     f"{r['ref_max_abs_diff']:.1e} |")
    lines += ["", "| mesh grid | seconds (warm) | first run s | vertices | faces | peak GiB |",
              "| --- | --- | --- | --- | --- | --- |"]
    for res, r in mesh_rows:
        lines.append(f"| {res}^3 | {r['seconds']:.2f} | {r['first_seconds']:.2f} | {r['vertices']} | "
                     f"{r['faces']} | {r['peak_gib']:.2f} |")
    name = "outputs" if args.image_format == "png" else f"outputs_{args.image_format}"
    write_results("\n".join(lines) + "\n", args.out, name, gpu, date, args.smoke)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
