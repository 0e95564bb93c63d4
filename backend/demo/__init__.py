"""The main job, ``python -m backend demo`` (``bash scripts/main.sh``): the whole product, end to end.

Blender (the ``bpy`` module) builds a head-like subject and captures it with the add-on's Capture from Scene
(or imports ``--capture PATH``), starts a backend process on loopback with the add-on's Start Local Backend,
and drives Reconstruct, Stylize, Render Frames (a turntable) and Extract Mesh through the add-on's own
operators. It writes a .blend with everything wired in, the frames, a contact sheet, an animated preview, the
mesh as PLY and a JSON report.

Modules: :mod:`.profiles` (sizes per hardware), :mod:`.scene` (the subject), :mod:`.turntable` (the camera
path), :mod:`.progress` (progress bars), :mod:`.report` (report, contact sheet, preview), :mod:`.driver` (the
run). Only this module is imported by the command line; ``bpy`` is imported when the demo runs.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

DEFAULT_OUT = Path("out") / "demo"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``demo`` sub-command's options."""
    from .profiles import SIZES

    p.add_argument("--size", choices=SIZES, default="auto",
                   help="auto (default): gpu with a CUDA GPU, else cpu; smallest: the test suite's toy size")
    p.add_argument("--capture", type=Path, help="a real capture folder (COLMAP, transforms.json, cameras.npz or "
                   "LLFF; see the README) instead of the embedded head, e.g. ../shared/data/fangzhou_nature")
    p.add_argument("--prompt", help="the style prompt (default: the paper's Van Gogh self-portrait)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default %(default)s; a "
                   "previous demo's outputs there are replaced)")
    p.add_argument("--clip-pretrained", default="", help="CLIP weights: an open_clip tag (default openai), a local "
                   "checkpoint file, or 'random' (not prompt-driven). Without weights the demo falls back to "
                   "'random' and says so")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="where the backend computes (default: the GPU if torch sees one)")
    p.add_argument("--port", type=int, default=0, help="loopback port for the backend (default: a free one)")


def main(args: argparse.Namespace) -> int:
    """Run the demo for parsed arguments; returns the exit code."""
    missing = [m for m in ("bpy", "torch") if importlib.util.find_spec(m) is None]
    if missing:
        print(f"error: {' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not installed in this "
              f"Python ({sys.executable}). `bash scripts/main.sh` creates .venv with everything the demo needs "
              "(Python 3.11: bpy is built for 3.11 only).", file=sys.stderr)
        return 2
    from .driver import DemoError, DemoOptions, run_demo
    from .profiles import DEFAULT_PROMPT

    opts = DemoOptions(out=args.out, size=args.size, capture=args.capture, prompt=args.prompt or DEFAULT_PROMPT,
                       clip_pretrained=args.clip_pretrained or "", device=args.device, port=args.port)
    try:
        report = run_demo(opts)
    except DemoError as exc:
        print(f"\nerror: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted: the backend was stopped; partial outputs are in "
              f"{opts.out.resolve()}", file=sys.stderr)
        return 130
    return 1 if report["errors"] else 0
