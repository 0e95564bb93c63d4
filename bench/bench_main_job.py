"""The main job's backend stages at the demo's GPU size, on one GPU, timed stage by stage.

``python -m backend demo --size gpu --capture CAPTURE`` drives these four jobs through the Blender add-on;
this script submits the same jobs with the same parameters (``backend/demo/profiles.py``, profile ``gpu``)
in this process, so the backend's share of the main job can be measured where Blender itself cannot run
(the lent GPU machines have Python 3.12, and ``bpy`` from PyPI is built for Python 3.11 only):

1. ``reconstruct``: preset ``default``, photos scaled to a 960-pixel long side, every 8th view held out.
2. ``stylize``: preset ``default`` with the demo's prompt. CLIP is a randomly initialised ViT-B-32 unless
   ``--clip-pretrained`` names weights (no weights can be downloaded there); it costs the same.
3. ``render``: a 120-frame 512x512 turntable around the head (PNG frames written and streamed).
4. ``extract_mesh``: 256^3 with colours.

Writes ``bench/results/main_job_<gpu>_<date>.md``.

Usage::

    python bench/bench_main_job.py --capture .scene/fangzhou_nature --commit $(git rev-parse --short HEAD)
    python bench/bench_main_job.py --capture CAPTURE --smoke      # tiny sizes, any device (checks the script)
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from backend.demo.profiles import DEFAULT_PROMPT, PROFILES  # noqa: E402
from backend.jobs.local import run_job_locally  # noqa: E402
from backend.nerf.checkpoint import load_checkpoint  # noqa: E402
from bench.bench_outputs import protocol_cameras, turntable  # noqa: E402
from bench.results_file import write_results  # noqa: E402
from captures import load_capture  # noqa: E402


def run_stage(kind: str, params: dict[str, Any], work: Path, device: str) -> tuple[dict[str, Any], float]:
    t0 = time.perf_counter()
    rec = run_job_locally(kind, params, work, device, lambda _m: None)
    seconds = time.perf_counter() - t0
    if rec.state != "done":
        raise RuntimeError(f"{kind} ended {rec.state}: {rec.error}")
    print(f"{kind}: {seconds:.1f} s {dict(list(rec.outputs.items())[:12])}", flush=True)
    return {"job_id": rec.job_id, **rec.outputs}, seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--capture", type=Path, required=True)
    parser.add_argument("--clip-pretrained", default="random")
    parser.add_argument("--commit", default="unknown")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    gpu = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    p = PROFILES["smallest" if args.smoke else "gpu"]
    capture = load_capture(args.capture)
    long_side = max(int(capture.cameras.width[0]), int(capture.cameras.height[0]))
    scale = min(1.0, p.photo_long_side / long_side)
    stages: list[tuple[str, float, str]] = []
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        recon_params: dict[str, Any] = {"capture_path": str(args.capture.resolve()), "preset": p.reconstruct_preset,
                                        "holdout_every": p.holdout_every, "scale": scale}
        if p.reconstruct_steps:
            recon_params["steps"] = p.reconstruct_steps
        recon, s = run_stage("reconstruct", recon_params, work, device)
        stages.append(("reconstruct", s, f"preset {p.reconstruct_preset}, {len(capture.cameras)} photos at scale "
                       f"{scale:.3f}, {recon.get('steps')} steps, held-out PSNR {recon.get('heldout_psnr', 0):.2f} "
                       "dB"))
        sty_params: dict[str, Any] = {"source_job": recon["job_id"], "prompt": DEFAULT_PROMPT,
                                      "preset": p.stylize_preset, "clip_pretrained": args.clip_pretrained}
        if p.stylize_iterations:
            sty_params["iterations"] = p.stylize_iterations
        sty, s = run_stage("stylize", sty_params, work, device)
        losses = ", ".join(f"{k[5:]} {v:.3g}" for k, v in sty.items() if k.startswith("loss_"))
        stages.append(("stylize", s, f"preset {p.stylize_preset}, {sty.get('iterations')} iterations, CLIP "
                       f"{args.clip_pretrained}; final losses: {losses}"))
        ckpt = load_checkpoint(work / "jobs" / sty["job_id"] / "outputs" / str(sty["checkpoint"]), "cpu")
        cams = turntable(ckpt, p.turntable_frames, p.turntable_size, p.turntable_size)
        ren, s = run_stage("render", {"source_job": sty["job_id"], "cameras": protocol_cameras(cams)}, work, device)
        stages.append(("render", s, f"{ren['count']} frames {p.turntable_size}x{p.turntable_size} PNG "
                       f"({ren['frames_per_second']:.1f} fps in the job, model load included in the stage)"))
        mesh_params: dict[str, Any] = {"source_job": sty["job_id"], "resolution": p.mesh_resolution}
        if args.smoke:  # a 200-step smoke model is haze, below the surface rule's density
            mesh_params["isolevel"] = 5.0
        mesh, s = run_stage("extract_mesh", mesh_params, work, device)
        stages.append(("extract_mesh", s, f"{p.mesh_resolution}^3, {mesh.get('vertices')} vertices"))
    total = time.perf_counter() - t_all
    date = dt.date.today().isoformat()
    lines = [f"# Main job, backend stages ({'smoke' if args.smoke else 'gpu profile'})", "",
             f"- GPU: {gpu}", f"- date: {date}", f"- commit: {args.commit}", f"- torch: {torch.__version__}",
             f"- capture: {args.capture.name}", "",
             "The jobs `python -m backend demo --size gpu --capture ...` submits through the add-on, with its "
             "parameters, run in one process (each stage includes loading its inputs).", "",
             "| stage | seconds | what |", "| --- | --- | --- |"]
    lines += [f"| {name} | {s:.1f} | {what} |" for name, s, what in stages]
    lines.append(f"| all | {total:.1f} | |")
    write_results("\n".join(lines) + "\n", args.out, "main_job", gpu, date, args.smoke)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
