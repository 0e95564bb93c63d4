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
    from backend.jobs import default_runners
    from backend.server.server import serve

    key = Path(args.hmac_key_file).read_bytes().strip() if args.hmac_key_file else None
    try:
        serve(args.endpoint, args.work_dir, default_runners(), device=resolve_device(args.device),
              allow_remote=args.allow_remote, hmac_key=key, single_user=not args.multi_user)
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

    p = sub.add_parser("demo", help="the main job, end to end on an embedded default scene")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    return int(args.func(args))
