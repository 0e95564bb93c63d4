"""Command line of the backend: ``python -m backend <command>``.

``serve`` runs the ZeroMQ server (with ``--workers N`` or ``--ray-address`` its jobs run as Ray tasks, see
:mod:`backend.scaleout`); ``status`` asks a running server about its jobs; ``keys`` manages the CURVE keys (the
server's key pair and the client keys it trusts). The job commands (reconstruct, stylize, render, mesh,
resume) run the same runners as the server, in this process, with a progress bar on stderr; each prints the
finished job's id on stdout (its record as JSON with ``--json``) and a readable summary on stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from backend.device import resolve_device
from protocol import DEFAULT_ENDPOINT, BackendError, Client, Message

DEFAULT_WORK_DIR = Path.home() / ".local" / "share" / "nerfart" / "work"
# How a reconstruction's subject bounds were decided (its outputs' subject_source), for the summary line.
SUBJECT_SOURCES = {"given": "as given", "detected": "found from the density",
                   "cameras": "the cameras' default (no subject found)", "checkpoint": "kept from before"}
SUBJECT_BOUNDS_HELP = ('the subject (inside: the subject, outside: background) as JSON, inline or a file: '
                       '{"shape": "box" or "ellipsoid", "matrix": 4x4 rows mapping the unit cube or sphere into '
                       "capture-world coordinates} (a reconstruct job's --json output works too)")


def _keys_dir(args: argparse.Namespace) -> Path:
    return Path(args.keys_dir).expanduser() if args.keys_dir else Path(args.work_dir).expanduser() / "keys"


def cmd_serve(args: argparse.Namespace) -> int:
    from backend.access.auth import load_or_create_server_keys
    from backend.access.endpoints import check_bind_endpoint, is_loopback_endpoint
    from backend.jobstore.disk import parse_size

    key = Path(args.hmac_key_file).read_bytes().strip() if args.hmac_key_file else None
    try:
        quota = parse_size(args.work_dir_quota) if args.work_dir_quota else None
        min_free = parse_size(args.min_free)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.curve and args.insecure:
        print("error: --curve and --insecure contradict each other; choose one", file=sys.stderr)
        return 2
    # CURVE is on when asked for, and by default on any address other machines can reach: there it is the
    # only thing between the network and this GPU (and the captures on its disk).
    use_curve = args.curve or (not is_loopback_endpoint(args.endpoint) and not args.insecure)
    single_user = True if args.single_user else (False if args.multi_user else None)
    try:
        check_bind_endpoint(args.endpoint, args.allow_remote)  # before keys are made for a refused address
        from backend.scaleout.commands import ray_config

        scaleout = ray_config(args, _keys_dir(args))
        keys = None
        if use_curve:
            keys, created = load_or_create_server_keys(_keys_dir(args))
            if created:
                print(f"created this backend's CURVE key pair in {keys.keys_dir}. Its public key, for the "
                      f"clients:\n{keys.public.decode()}\nAuthorise each client's public key with: "
                      "python -m backend keys authorize KEY", file=sys.stderr)
        from backend.jobs import CLIP_MODELS, default_runners
        from backend.server.server import serve

        device = resolve_device(args.device)
        serve(args.endpoint, args.work_dir, default_runners(), device=device,
              allow_remote=args.allow_remote, hmac_key=key, single_user=single_user, clip_models=CLIP_MODELS,
              curve=keys if use_curve else None, insecure=args.insecure, work_dir_quota_bytes=quota,
              min_free_bytes=min_free, scaleout=scaleout)
    except ValueError as exc:  # also backend.access.auth.CurveKeyError
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # e.g. a work dir that cannot be made: a full disk, a read-only mount
        print(f"error: cannot use the work dir {args.work_dir}: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    from backend.access import auth

    keys_dir = _keys_dir(args)
    try:
        if args.action == "show":
            keys, _ = auth.load_or_create_server_keys(keys_dir)  # logs when it makes a new pair
            print(keys.public.decode())
        elif args.action == "authorize":
            public = auth.read_public_key(args.key)
            path = auth.authorize(keys_dir, public, args.name)
            print(f"authorised {public.decode()} as {path.stem} ({path}); a running backend accepts it at once",
                  file=sys.stderr)
        elif args.action == "revoke":
            removed = auth.revoke(keys_dir, args.key)
            if not removed:
                print(f"error: no authorised key named or equal to {args.key!r} in {keys_dir / auth.AUTHORIZED_DIR}",
                      file=sys.stderr)
                return 1
            for path in removed:
                print(f"revoked {path.stem}; its connections are refused from their next message", file=sys.stderr)
        elif args.action == "list":
            for name, public in auth.authorized_keys(keys_dir).items():
                print(f"{name}\t{public.decode()}")
        elif args.action == "new-client":
            public, secret_path = auth.new_client(keys_dir, args.name, args.out)
            server_key = keys_dir / (auth.SERVER_NAME + ".key")
            use = f"python -m backend status --server-key {server_key} --client-key {secret_path}"
            print(f"new client key pair {secret_path} (keep it private), authorised on this backend. Use it with:"
                  f"\n  {use}", file=sys.stderr)
            print(public.decode())
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _client_curve(args: argparse.Namespace) -> tuple[bytes, bytes, bytes] | None:
    """CURVE keys for a command-line client: the server's public key and this client's key pair.

    Raises:
        ValueError: one given without the other, or an unreadable key.
    """
    if not args.server_key and not args.client_key:
        return None
    if not (args.server_key and args.client_key):
        raise ValueError("CURVE needs both --server-key (the backend's public key) and --client-key (this "
                         "client's secret certificate, from 'python -m backend keys new-client')")
    from backend.access import auth

    public, secret = auth.read_key_pair(args.client_key)
    return auth.read_public_key(args.server_key), public, secret


def cmd_status(args: argparse.Namespace) -> int:
    try:
        curve = _client_curve(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    with Client(args.endpoint, client_name="nerfart-cli", curve=curve) as client:
        try:
            info = client.handshake(timeout_s=args.timeout)
            reply = client.request(Message("status", {"job_id": args.job_id}), timeout_s=args.timeout)
        except (TimeoutError, BackendError, ConnectionError) as exc:  # ConnectionError: a refused handshake
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
    limits = info.get("limits") or {}
    if "disk_free_bytes" in limits:
        quota, used = limits["work_dir_quota_bytes"], limits["work_dir_used_bytes"]
        print(f"work dir: {limits['disk_free_bytes'] / 2**30:.2f} GiB free on its disk"
              + (f", {used / 2**30:.2f} GiB used of a {quota / 2**30:.2f} GiB quota" if quota else "")
              + ("" if limits["writable"] else " - FULL: new jobs are refused until space is freed (a submit's "
                 "error says where)"))
    for job in reply.content["jobs"]:
        step = f" {job.get('stage', '')} {job.get('step', 0)}/{job.get('total', 0)}" if job["state"] == "running" else ""
        err = f" - {job['error']['message']}" if job.get("error") else ""
        print(f"  {job['job_id']}  {job['kind']:<13} {job['state']:<11}{step}{err}")
    return 0


def _run_local(kind: str, params: dict, args: argparse.Namespace, resume_job: str | None = None) -> tuple[int, dict]:
    """Run one job (or resume the interrupted job ``resume_job``) in this process with a progress bar.

    Returns:
        (exit code, job record as a dict).
    """
    from backend.jobs.local import resume_job_locally, run_job_locally
    from backend.progress_bar import ProgressBar
    from protocol import ProtocolError

    bar = ProgressBar()

    def on_message(msg: Message) -> None:
        if msg.type == "progress":
            c = msg.content
            bar.update(c["stage"], c["step"], c["total"], c.get("eta_s"), {**c.get("losses", {}),
                                                                          **c.get("metrics", {})})

    try:
        if resume_job is not None:
            rec = resume_job_locally(resume_job, Path(args.work_dir), resolve_device(args.device), on_message)
            kind = rec.kind
        else:
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
    # stdout carries only the result, so that scripts can chain commands: JOB=$(python -m backend reconstruct
    # ...); the readable summary goes to stderr with the progress bar.
    if args.json:
        print(json.dumps({"job_id": rec.job_id, "job_dir": str(job_dir), "outputs": rec.outputs}, indent=1))
    else:
        print(rec.job_id)
    print(result_summary(kind, rec.job_id, job_dir, rec.outputs), file=sys.stderr)
    return 0, {"job_id": rec.job_id, "job_dir": job_dir, "outputs": rec.outputs}


def result_summary(kind: str, job_id: str, job_dir: Path, outputs: dict) -> str:
    """The readable lines a finished job prints to stderr: its metrics, its folder, and any warning."""
    facts = []
    if outputs.get("train_psnr") is not None:
        facts.append(f"PSNR {outputs['train_psnr']:.2f} dB")
    if outputs.get("heldout_psnr") is not None:
        facts.append(f"held-out PSNR {outputs['heldout_psnr']:.2f} dB")
    if outputs.get("loss_total") is not None:
        facts.append(f"style loss {outputs['loss_total']:.4f}")
    if isinstance(outputs.get("frames"), list):
        facts.append(f"{len(outputs['frames'])} frames"
                     + (" with the background" if outputs.get("include_background") else
                        ", the subject alone with alpha" if outputs.get("subject_bounds") else ""))
    if outputs.get("subject_source") in SUBJECT_SOURCES and kind == "reconstruct":
        facts.append(f"subject bounds {SUBJECT_SOURCES[outputs['subject_source']]}")
    lines = [f"{kind} job {job_id} done" + (f": {', '.join(facts)}" if facts else "")
             + f"; outputs in {job_dir / 'outputs'}"]
    if outputs.get("prompt_driven") is False:
        lines.append(f"warning: {outputs.get('note') or 'the result is not prompt-driven (random CLIP weights)'}")
    if outputs.get("subject_note"):
        lines.append(f"note: {outputs['subject_note']}")
    if outputs.get("resume_note"):
        lines.append(f"note: {outputs['resume_note']}")
    return "\n".join(lines)


def load_subject_bounds(text: str) -> dict:
    """``--subject-bounds``: inline JSON or a JSON file holding ``{"shape", "matrix"}`` in capture-world
    coordinates (or any object with a ``subject_bounds`` key, such as a reconstruct job's ``--json`` outputs).

    Raises:
        ValueError: unreadable, not JSON, or no bounds in it.
    """
    source = text.strip()
    if not source.startswith("{"):
        try:
            source = Path(source).expanduser().read_text()
        except OSError as exc:
            raise ValueError(f"--subject-bounds: cannot read {text}: {exc}") from None
    try:
        value = json.loads(source)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--subject-bounds: not JSON ({exc})") from None
    for key in ("outputs", "subject_bounds"):  # a job record's or outputs' JSON holds them one or two levels down
        if isinstance(value, dict) and key in value and "matrix" not in value:
            value = value[key]
    if not (isinstance(value, dict) and "shape" in value and "matrix" in value):
        raise ValueError('--subject-bounds must be {"shape": "box" or "ellipsoid", "matrix": 4x4 rows} '
                         "(capture-world coordinates), inline or in a file")
    return {"shape": value["shape"], "matrix": value["matrix"]}


def _subject_params(args: argparse.Namespace) -> dict:
    """``{"subject_bounds": ...}`` when ``--subject-bounds`` was given (raises ``ValueError`` on bad input)."""
    if getattr(args, "subject_bounds", None) is None:
        return {}
    return {"subject_bounds": load_subject_bounds(args.subject_bounds)}


def _params(args: argparse.Namespace, names: dict[str, str]) -> dict:
    return {key: getattr(args, attr) for key, attr in names.items() if getattr(args, attr, None) is not None}


def cmd_reconstruct(args: argparse.Namespace) -> int:
    params = {"capture_path": str(Path(args.capture).resolve()), **_params(args, {
        "preset": "preset", "steps": "steps", "time_budget_s": "time_budget", "scale": "scale",
        "holdout_every": "holdout_every", "background": "background", "seed": "seed",
        "capture_format": "format"})}
    try:
        params.update(_subject_params(args))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return _run_local("reconstruct", params, args)[0]


def cmd_stylize(args: argparse.Namespace) -> int:
    params = {"source_job": args.job, "prompt": args.prompt, **_params(args, {
        "source_text": "source_text", "negative_prompts": "negative", "strength": "strength",
        "iterations": "iterations", "clip_model": "clip_model", "clip_pretrained": "clip_pretrained",
        "scale": "scale", "preset": "preset", "seed": "seed", "shape_freedom": "shape_freedom"})}
    if args.colour_only:
        params["colour_only"] = True
    return _run_local("stylize", params, args)[0]


def cmd_render(args: argparse.Namespace) -> int:
    from backend.jobs.camera_path import load_camera_path
    from captures import CaptureError

    try:
        cams, frames = load_camera_path(args.cameras)
    except CaptureError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    cameras = [{"name": cams.names[i], "frame": frames[i], "c2w": cams.c2w[i].tolist(), "fx": float(cams.fx[i]),
                "fy": float(cams.fy[i]), "cx": float(cams.cx[i]), "cy": float(cams.cy[i]),
                "width": int(cams.width[i]), "height": int(cams.height[i])} for i in range(len(cams))]
    params = {"source_job": args.job, "cameras": cameras, "format": args.format, "depth": args.depth}
    if args.include_background:
        params["include_background"] = True
    try:
        params.update(_subject_params(args))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    code, result = _run_local("render", params, args)
    if code == 0 and args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        for rel in result["outputs"]["frames"]:
            (out / Path(rel).name).write_bytes((result["job_dir"] / "outputs" / rel).read_bytes())
        print(f"{len(result['outputs']['frames'])} frames written to {out}", file=sys.stderr)
    return code


def cmd_resume(args: argparse.Namespace) -> int:
    return _run_local("", {}, args, resume_job=args.job)[0]


def cmd_mesh(args: argparse.Namespace) -> int:
    params = {"source_job": args.job, "mesh_format": args.format,
              **_params(args, {"resolution": "resolution", "isolevel": "isolevel"})}
    if args.format == "glb":
        params.update(texture_size=args.texture_size, target_faces=args.target_faces)
    if args.keep_largest_only:
        params["keep_largest_only"] = True
    try:
        params.update(_subject_params(args))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    code, result = _run_local("extract_mesh", params, args)
    if code == 0 and args.out:
        Path(args.out).write_bytes((result["job_dir"] / "outputs" / result["outputs"]["mesh"]).read_bytes())
        print(f"mesh written to {args.out}", file=sys.stderr)
    return code


def cmd_demo(args: argparse.Namespace) -> int:
    from backend.demo import main as demo_main

    return demo_main(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m backend", description=__doc__.split("\n\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the GPU backend server")
    p.add_argument("--endpoint", default=DEFAULT_ENDPOINT, help="ZeroMQ endpoint to bind (default %(default)s)")
    p.add_argument("--work-dir", default=str(DEFAULT_WORK_DIR), help="where jobs and outputs are kept "
                   "(default %(default)s)")
    p.add_argument("--device", default="auto", help="auto, cuda or cpu (default %(default)s)")
    p.add_argument("--allow-remote", action="store_true", help="allow a non-loopback endpoint; CURVE keys are "
                   "then required (read the README's Security section first)")
    p.add_argument("--curve", action="store_true", help="require CURVE keys also on loopback (on a machine "
                   "shared with other users, who can all reach its loopback ports)")
    p.add_argument("--insecure", action="store_true", help="with --allow-remote: no CURVE, the traffic is "
                   "unencrypted and anyone who reaches the port can use the backend")
    p.add_argument("--keys-dir", help="CURVE keys folder (default: WORK_DIR/keys)")
    p.add_argument("--hmac-key-file", help="sign and check every message with the key in this file")
    p.add_argument("--work-dir-quota", help="the most the work dir may hold, e.g. 200G (default: no quota; "
                   "uploads and jobs that do not fit are refused with 'disk_full')")
    p.add_argument("--min-free", default="256M", help="free space always left on the work dir's disk "
                   "(default %(default)s)")
    users = p.add_mutually_exclusive_group()
    users.add_argument("--multi-user", action="store_true", help="each client sees and cancels only its own jobs "
                       "(the default with CURVE or a non-loopback endpoint)")
    users.add_argument("--single-user", action="store_true", help="every client sees and cancels every job (the "
                       "default on loopback without CURVE)")
    from backend.scaleout.commands import add_serve_arguments

    add_serve_arguments(p)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("status", help="show a running backend's device and jobs")
    p.add_argument("job_id", nargs="?", default=None)
    p.add_argument("--endpoint", default=DEFAULT_ENDPOINT)
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for an answer")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--server-key", help="CURVE: the backend's public key, or its server.key file")
    p.add_argument("--client-key", help="CURVE: this client's secret certificate (keys new-client makes one)")
    p.set_defaults(func=cmd_status)

    keys_common = argparse.ArgumentParser(add_help=False)
    keys_common.add_argument("--work-dir", default=str(DEFAULT_WORK_DIR), help="the backend's work dir; the keys "
                             "are in its keys/ folder (default %(default)s)")
    keys_common.add_argument("--keys-dir", help="the keys folder, if not WORK_DIR/keys")
    p = sub.add_parser("keys", help="CURVE keys: show the server's public key, authorise or revoke client keys")
    keys = p.add_subparsers(dest="action", required=True)
    keys.add_parser("show", parents=[keys_common], help="print the server's public key (making the key pair on "
                    "first use)")
    k = keys.add_parser("authorize", parents=[keys_common], help="let a client key connect (takes effect at once)")
    k.add_argument("key", help="the client's public key (40 characters: quote it, and put -- before it, since it "
                   "may start with '-') or its .key file")
    k.add_argument("--name", help="a name for it, e.g. the artist or the machine (default from the key)")
    k = keys.add_parser("revoke", parents=[keys_common], help="withdraw a client key (by name or key)")
    k.add_argument("key", help="the name or public key of an authorised client")
    keys.add_parser("list", parents=[keys_common], help="list the authorised client keys")
    k = keys.add_parser("new-client", parents=[keys_common], help="make and authorise a key pair for a "
                        "command-line client; prints its public key")
    k.add_argument("name", help="a name for the client")
    k.add_argument("--out", help="folder for the pair (default: KEYS_DIR/clients)")
    p.set_defaults(func=cmd_keys)

    def local_job_parser(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--work-dir", default=str(DEFAULT_WORK_DIR), help="jobs and outputs (default %(default)s)")
        p.add_argument("--device", default="auto", help="auto, cuda or cpu (default %(default)s)")
        p.add_argument("--json", action="store_true", help="print the job's record (id, folder, outputs) as JSON "
                       "instead of its id")
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
    p.add_argument("--subject-bounds", metavar="JSON", help=SUBJECT_BOUNDS_HELP + "; default: found from the "
                   "reconstruction (where the cameras look, refined by the density)")
    p.set_defaults(func=cmd_reconstruct)

    p = local_job_parser("stylize", "stylize a finished reconstruction with a text prompt, in this process")
    p.add_argument("job", help="id of a finished reconstruct job (in --work-dir)")
    p.add_argument("--prompt", required=True, help="target text, e.g. 'oil painting by Van Gogh'")
    p.add_argument("--source-text", help="source text of the directional loss (default 'photo')")
    p.add_argument("--negative", action="append", help="an extra negative text (repeat for several)")
    p.add_argument("--strength", type=float, help="style strength, 0 (subtle) to 1 (strong); default 0.5")
    p.add_argument("--iterations", type=int, help="iterations, one view each (default from strength and preset)")
    p.add_argument("--colour-only", action="store_true", help="freeze geometry: train colours only")
    p.add_argument("--shape-freedom", type=float, metavar="F", help="how far the surface may move outwards, in head "
                   "radii (0-0.5): 0 (default) keeps the head's shape, 0.25 a quarter of its radius, 0.5 room for a "
                   "hat or horns (may leave haze); shape grows only inside the subject bounds; ignored with "
                   "--colour-only")
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
    p.add_argument("--format", choices=("png", "png16", "exr"), default="png",
                   help="png (8-bit sRGB, default), png16, or exr: multilayer OpenEXR with Blender's Combined, "
                   "Depth and Normal passes (capture-world units and axes)")
    p.add_argument("--depth", action="store_true", help="also write depth maps (Blender's Depth pass)")
    p.add_argument("--subject-bounds", metavar="JSON", help=SUBJECT_BOUNDS_HELP + "; default: the job's own")
    p.add_argument("--include-background", action="store_true", help="render the whole scene, not the subject "
                   "alone with alpha (a stylized job's background comes from its reconstruction)")
    p.set_defaults(func=cmd_render)

    p = local_job_parser("mesh", "extract a textured mesh (GLB) or a vertex-coloured one (PLY) of a finished job")
    p.add_argument("job", help="id of a finished reconstruct or stylize job (in --work-dir)")
    p.add_argument("--out", help="also copy the mesh file (GLB or PLY) here")
    p.add_argument("--format", choices=("glb", "ply"), default="glb",
                   help="glb: UV-unwrapped, decimated, baked colour texture embedded (default); "
                        "ply: every marching-cubes vertex with its colour")
    p.add_argument("--texture-size", type=int, choices=(512, 1024, 2048, 4096), default=2048,
                   help="texture width and height in texels (glb; default 2048)")
    p.add_argument("--target-faces", type=int, default=0,
                   help="triangles to decimate to before unwrapping (glb): 0 = auto (above 40000 faces, reduce "
                        "to 40000), -1 = keep every face")
    p.add_argument("--resolution", type=int, help="grid cells along the longest side of the meshed box (the "
                   "subject bounds' box; default 256, up to 1024)")
    p.add_argument("--isolevel", type=float, help="surface density (default: the documented rule)")
    p.add_argument("--keep-largest-only", action="store_true", help="drop every part but the largest")
    p.add_argument("--subject-bounds", metavar="JSON", help=SUBJECT_BOUNDS_HELP + "; default: the job's own. "
                   "The mesh holds what lies inside them")
    p.set_defaults(func=cmd_mesh)

    p = local_job_parser("resume", "continue an interrupted job (the backend stopped while it ran) from its "
                         "latest checkpoint, in this process")
    p.add_argument("job", help="id of an interrupted job (in --work-dir)")
    p.set_defaults(func=cmd_resume)

    from backend.demo import add_arguments as add_demo_arguments

    p = sub.add_parser("demo", help="the main job: capture, reconstruct, stylize, render and mesh through the "
                       "Blender add-on, end to end on an embedded head (or --capture PATH)")
    add_demo_arguments(p)
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    return int(args.func(args))
