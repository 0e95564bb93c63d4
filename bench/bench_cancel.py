"""Cancel latency: seconds from a cancel to a frame render or a mesh density grid stopping.

The tests (``tests/test_cancel_points.py``) check the order of events: a cancel check before every batch of
samples of a frame and every chunk of a mesh grid, no batch after the one that saw the cancel. How long that
takes is a speed, measured here: the cancel is raised ``--delay-s`` into the work (by the wall clock, as a
user's click), and the latency is the time from then to the call returning. SPEC.md promises about a second.

The model is a tiny random field in an occupied ball (as the tests'), which makes the per-batch cost that of
the field at the sizes the jobs use on this device (``CPU_MAX_RAYS``/``CPU_MAX_SAMPLES`` and ``CPU_CHUNK`` on
the CPU, the defaults on a GPU). Run it on an otherwise idle machine: its figures are the device's, not the
suite's. Writes ``bench/results/cancel_<device>_<date>.md``.

Usage::

    python bench/bench_cancel.py --commit $(git rev-parse --short HEAD)
    python bench/bench_cancel.py --smoke      # small sizes, one repeat: checks the script, writes nothing
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from backend.jobs.render import CPU_MAX_RAYS, CPU_MAX_SAMPLES  # noqa: E402
from backend.nerf.config import ReconstructConfig  # noqa: E402
from backend.nerf.frame_renderer import FrameRenderer  # noqa: E402
from backend.nerf.model import NeRFModel  # noqa: E402
from backend.nerf.synthetic import ring_cameras  # noqa: E402
from backend.outputs.mesh import CPU_CHUNK, GPU_CHUNK, density_grid  # noqa: E402
from bench.results_file import write_results  # noqa: E402


class Cancelled(Exception):
    pass


class CancelAfter:
    """A cancel check that raises once ``delay_s`` has passed since it was made."""

    def __init__(self, delay_s: float) -> None:
        self.deadline = time.perf_counter() + delay_s

    def __call__(self) -> None:
        if time.perf_counter() >= self.deadline:
            raise Cancelled()


def random_model(device: torch.device, seed: int = 0) -> NeRFModel:
    """A tiny model with a random hash table, occupied inside a ball of radius 0.6 (model units)."""
    torch.manual_seed(seed)
    model = NeRFModel(ReconstructConfig.tiny().model_config("matte", separate_matte=False, pixel_footprint=None))
    with torch.no_grad():
        model.field.encoding.table.normal_(0.0, 0.5, generator=torch.Generator().manual_seed(seed))
    domain = model.domain
    model.occupancy.update(0, lambda u: (domain.from_unit_cube(u).norm(dim=-1) < 0.6).float(),
                           generator=torch.Generator().manual_seed(seed))
    return model.to(device)


def latency(work: Callable[[Callable[[], None]], Any], delay_s: float) -> float | None:
    """Seconds from the cancel to ``work`` returning; None if it finished before the cancel came."""
    check = CancelAfter(delay_s)
    try:
        work(check)
    except Cancelled:
        return time.perf_counter() - check.deadline
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--frame-size", type=int, default=2048)
    parser.add_argument("--grid", type=int, default=384)
    parser.add_argument("--delay-s", type=float, default=1.0, help="the cancel comes this long into the work")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--commit", default="unknown")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    if args.smoke:
        args.frame_size, args.grid, args.delay_s, args.repeats = 256, 64, 0.2, 1
    device = torch.device(args.device)
    model = random_model(device)
    if device.type == "cuda":
        renderer, chunk = FrameRenderer(model), GPU_CHUNK
    else:
        renderer, chunk = FrameRenderer(model, max_rays=CPU_MAX_RAYS, max_samples=CPU_MAX_SAMPLES), CPU_CHUNK
    cameras = ring_cameras(1, args.frame_size)
    cases = {
        f"frame {args.frame_size}^2": lambda check: renderer.render(cameras, 0, check_cancel=check),
        f"density grid {args.grid}^3": lambda check: density_grid(model.density, args.grid, (-1.0, 1.0), device,
                                                                  chunk=chunk, check_cancel=check),
    }
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    lines = [f"# Cancel latency on {name}", "",
             f"commit {args.commit}; torch {torch.__version__}, {torch.get_num_threads()} CPU threads; cancel "
             f"{args.delay_s:g} s into the work; {args.repeats} repeats", "",
             "| work | median latency (s) | worst (s) | finished before the cancel |", "|---|---|---|---|"]
    for label, work in cases.items():
        results = [latency(work, args.delay_s) for _ in range(args.repeats)]
        stopped = [r for r in results if r is not None]
        median = f"{statistics.median(stopped):.3f}" if stopped else "-"
        worst = f"{max(stopped):.3f}" if stopped else "-"
        lines.append(f"| {label} | {median} | {worst} | {len(results) - len(stopped)} of {len(results)} |")
    write_results("\n".join(lines) + "\n", args.out, "cancel", name, dt.date.today().isoformat(), args.smoke)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
