"""Command line of the backend: ``python -m backend <command>``.

``serve`` runs the ZeroMQ server; ``status`` asks a running server about its jobs. The job commands
(reconstruct, stylize, render, mesh) run the same runners as the server, in this process, with a progress bar.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from protocol import DEFAULT_ENDPOINT, BackendError, Client, Message

DEFAULT_WORK_DIR = Path.home() / ".local" / "share" / "nerfart" / "work"


def resolve_device(name: str) -> str:
    """``auto`` picks CUDA when torch sees a GPU, else the CPU; ``cuda`` without a GPU is an error."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda was asked for, but torch sees no CUDA GPU here")
    return name


def cmd_serve(args: argparse.Namespace) -> int:
    from backend.jobs import CLIP_MODELS, default_runners
    from backend.server.server import serve

    key = Path(args.hmac_key_file).read_bytes().strip() if args.hmac_key_file else None
    try:
        serve(args.endpoint, args.work_dir, default_runners(), device=resolve_device(args.device),
              allow_remote=args.allow_remote, hmac_key=key, single_user=not args.multi_user,
              clip_models=CLIP_MODELS)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    with Client(args.endpoint, client_name="nerfart-cli") as client:
        try:
            info = client.handshake(timeout_s=args.timeout)
            reply = client.request(Message("status", {"job_id": args.job_id}), timeout_s=args.timeout)
        except (TimeoutError, BackendError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    if args.json:
        print(json.dumps({"backend": info, "jobs": reply.content["jobs"]}, indent=1))
        return 0
    gpu = info["gpu"] or {"name": "unknown", "memory_total": 0, "memory_free": 0}
    print(f"backend {info['backend_version']} (protocol v{info['protocol_version']}) on {gpu['name']}"
          + (f", {gpu['memory_free'] / 2**30:.1f} of {gpu['memory_total'] / 2**30:.1f} GiB free"
             if gpu["memory_total"] else ""))
    print(f"job kinds: {', '.join(info['job_kinds']) or 'none'}; queue: {info['queue_length']}")
    for job in reply.content["jobs"]:
        step = f" {job.get('stage', '')} {job.get('step', 0)}/{job.get('total', 0)}" if job["state"] == "running" else ""
        err = f" - {job['error']['message']}" if job.get("error") else ""
        print(f"  {job['job_id']}  {job['kind']:<13} {job['state']:<11}{step}{err}")
    return 0


def _run_local(kind: str, params: dict, args: argparse.Namespace) -> tuple[int, dict]:
    """Run one job in this process with a progress bar; returns (exit code, job record as a dict)."""
    from backend.jobs.local import run_job_locally
    from backend.progress_bar import ProgressBar
    from protocol import ProtocolError

    bar = ProgressBar()

    def on_message(msg: Message) -> None:
        if msg.type == "progress":
            c = msg.content
            bar.update(c["stage"], c["step"], c["total"], c.get("eta_s"), {**c.get("losses", {}),
                                                                          **c.get("metrics", {})})

    try:
        rec = run_job_locally(kind, params, Path(args.work_dir), resolve_device(args.device), on_message)
    except ProtocolError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2, {}
    finally:
        bar.close()
    job_dir = Path(args.work_dir) / "jobs" / rec.job_id
    if rec.state != "done":
        why = f": {rec.error['message']}" if rec.error else ""
        print(f"{kind} job {rec.job_id} {rec.state}{why}", file=sys.stderr)
        return 1, {}
    print(json.dumps({"job_id": rec.job_id, "job_dir": str(job_dir), "outputs": rec.outputs}, indent=1))
    return 0, {"job_id": rec.job_id, "job_dir": job_dir, "outputs": rec.outputs}


def _params(args: argparse.Namespace, names: dict[str, str]) -> dict:
    return {key: getattr(args, attr) for key, attr in names.items() if getattr(args, attr, None) is not None}


def cmd_reconstruct(args: argparse.Namespace) -> int:
    params = {"capture_path": str(Path(args.capture).resolve()), **_params(args, {
        "preset": "preset", "steps": "steps", "time_budget_s": "time_budget", "scale": "scale",
        "holdout_every": "holdout_every", "background": "background", "seed": "seed",
        "capture_format": "format"})}
    return _run_local("reconstruct", params, args)[0]


def cmd_stylize(args: argparse.Namespace) -> int:
    params = {"source_job": args.job, "prompt": args.prompt, **_params(args, {
        "source_text": "source_text", "negative_prompts": "negative", "strength": "strength",
        "iterations": "iterations", "clip_model": "clip_model", "clip_pretrained": "clip_pretrained",
        "scale": "scale", "preset": "preset", "seed": "seed"})}
    if args.colour_only:
        params["colour_only"] = True
    return _run_local("stylize", params, args)[0]


def cmd_render(args: argparse.Namespace) -> int:
    from backend.captures import CaptureError
    from backend.captures.camera_path import load_camera_path

    try:
        cams, frames = load_camera_path(args.cameras)
    except CaptureError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    cameras = [{"name": cams.names[i], "frame": frames[i], "c2w": cams.c2w[i].tolist(), "fx": float(cams.fx[i]),
                "fy": float(cams.fy[i]), "cx": float(cams.cx[i]), "cy": float(cams.cy[i]),
                "width": int(cams.width[i]), "height": int(cams.height[i])} for i in range(len(cams))]
    params = {"source_job": args.job, "cameras": cameras, "format": args.format, "depth": args.depth}
    code, result = _run_local("render", params, args)
    if code == 0 and args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        for rel in result["outputs"]["frames"]:
            (out / Path(rel).name).write_bytes((result["job_dir"] / "outputs" / rel).read_bytes())
        print(f"{len(result['outputs']['frames'])} frames written to {out}", file=sys.stderr)
    return code


def cmd_mesh(args: argparse.Namespace) -> int:
    params = {"source_job": args.job, **_params(args, {"resolution": "resolution", "isolevel": "isolevel"})}
    if args.keep_largest_only:
        params["keep_largest_only"] = True
    code, result = _run_local("extract_mesh", params, args)
    if code == 0 and args.out:
        Path(args.out).write_bytes((result["job_dir"] / "outputs" / result["outputs"]["mesh"]).read_bytes())
        print(f"mesh written to {args.out}", file=sys.stderr)
    return code


def cmd_demo(args: argparse.Namespace) -> int:
    print("The main job (capture -> reconstruct -> stylize -> frames and mesh in Blender) is not built yet: "
          "it lands with issue 7. The backend server runs today: python -m backend serve", file=sys.stderr)
    return 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m backend", description=__doc__.split("\n\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the GPU backend server")
    p.add_argument("--endpoint", default=DEFAULT_ENDPOINT, help="ZeroMQ endpoint to bind (default %(default)s)")
    p.add_argument("--work-dir", default=str(DEFAULT_WORK_DIR), help="where jobs and outputs are kept "
                   "(default %(default)s)")
    p.add_argument("--device", default="auto", help="auto, cuda or cpu (default %(default)s)")
    p.add_argument("--allow-remote", action="store_true", help="allow a non-loopback endpoint (read the "
                   "README's Security section first)")
    p.add_argument("--hmac-key-file", help="sign and check every message with the key in this file")
    p.add_argument("--multi-user", action="store_true", help="each client sees and cancels only its own jobs")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("status", help="show a running backend's device and jobs")
    p.add_argument("job_id", nargs="?", default=None)
    p.add_argument("--endpoint", default=DEFAULT_ENDPOINT)
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for an answer")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_status)

    def local_job_parser(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--work-dir", default=str(DEFAULT_WORK_DIR), help="jobs and outputs (default %(default)s)")
        p.add_argument("--device", default="auto", help="auto, cuda or cpu (default %(default)s)")
        return p

    p = local_job_parser("reconstruct", "train a NeRF from a capture folder, in this process")
    p.add_argument("capture", help="capture folder (COLMAP sparse/0, transforms.json, cameras.npz, poses_bounds.npy)")
    p.add_argument("--preset", choices=("tiny", "fast", "default", "quality"), help="size preset (default: default)")
    p.add_argument("--steps", type=int, help="maximum training steps")
    p.add_argument("--time-budget", type=float, help="stop after this many seconds of training")
    p.add_argument("--scale", type=float, help="image resolution scale, e.g. 0.5")
    p.add_argument("--holdout-every", type=int, help="hold out every k-th view for PSNR (0: none)")
    p.add_argument("--background", choices=("auto", "matte", "contract"))
    p.add_argument("--format", choices=("transforms_json", "colmap", "idr", "llff"), help="force a reader")
    p.add_argument("--seed", type=int)
    p.set_defaults(func=cmd_reconstruct)

    p = local_job_parser("stylize", "stylize a finished reconstruction with a text prompt, in this process")
    p.add_argument("job", help="id of a finished reconstruct job (in --work-dir)")
    p.add_argument("--prompt", required=True, help="target text, e.g. 'oil painting by Van Gogh'")
    p.add_argument("--source-text", help="source text of the directional loss (default 'photo')")
    p.add_argument("--negative", action="append", help="an extra negative text (repeat for several)")
    p.add_argument("--strength", type=float, help="style strength, 0 (subtle) to 1 (strong); default 0.5")
    p.add_argument("--iterations", type=int, help="iterations, one view each (default from strength and preset)")
    p.add_argument("--colour-only", action="store_true", help="freeze geometry: train colours only")
    p.add_argument("--clip-model", help="open_clip model name (default ViT-B-32)")
    p.add_argument("--clip-pretrained", help="open_clip tag (default openai), a local checkpoint file, or 'random' "
                   "(random CLIP and perceptual weights: a test mode, NOT prompt-driven)")
    p.add_argument("--scale", type=float, help="image size relative to the capture's original size (default 0.5)")
    p.add_argument("--preset", choices=("tiny", "fast", "default", "quality"), help="size preset (default: default)")
    p.add_argument("--seed", type=int)
    p.set_defaults(func=cmd_stylize)

    p = local_job_parser("render", "render frames of a finished job along a camera path")
    p.add_argument("job", help="id of a finished reconstruct or stylize job (in --work-dir)")
    p.add_argument("cameras", help="nerfstudio camera_path.json, or a JSON list of cameras (see protocol/SPEC.md)")
    p.add_argument("--out", help="also copy the frames to this folder")
    p.add_argument("--format", choices=("png", "png16", "exr"), default="png")
    p.add_argument("--depth", action="store_true", help="also write depth maps")
    p.set_defaults(func=cmd_render)

    p = local_job_parser("mesh", "extract a coloured mesh (PLY) of a finished job")
    p.add_argument("job", help="id of a finished reconstruct or stylize job (in --work-dir)")
    p.add_argument("--out", help="also copy the PLY here")
    p.add_argument("--resolution", type=int, help="grid cells per axis (default 256, up to 1024)")
    p.add_argument("--isolevel", type=float, help="surface density (default: the documented rule)")
    p.add_argument("--keep-largest-only", action="store_true", help="drop every part but the largest")
    p.set_defaults(func=cmd_mesh)

    p = sub.add_parser("demo", help="the main job, end to end on an embedded default scene")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    return int(args.func(args))
