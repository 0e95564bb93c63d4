"""Scale-out: jobs per hour of one batch through ``serve --workers W`` (jobs as Ray tasks), for each W asked for.

The batch is what users who stylize many heads run: ``--heads`` pipelines of three jobs each on a real
capture, reconstruct -> stylize (a prompt of its own) -> render (a turntable), all submitted through the one
client endpoint as a client does, each stylize as soon as its reconstruction is done and each render as soon
as its stylization is. The same batch runs once per worker count, each on a fresh ``python -m backend serve
--workers W``: a local Ray cluster running up to W jobs at once, each job a Ray task with ``min(1, GPUs / W)``
GPUs (or ``--gpus-per-job``): on one GPU, W = 2 puts two jobs on it at once. Before the clock starts, W small
pipelines run untimed, one per Ray worker process, so that no worker count pays for CUDA start-up or kernel
compilation in the figures (Ray keeps those processes for the next jobs).

Reported per worker count: the batch's wall time, jobs per hour (jobs / wall time), speed-up over one worker,
and the mean time of each job kind (which grows when workers share a GPU), and how many job attempts Ray ran
again because a worker was lost (0 on a healthy run). Workers sharing one GPU measure only what overlaps (model
loading, PNG encoding, the CPU side of each step), and the table says so. On one H100 the MDP broker this
replaced ran 360 jobs/hour with 1 worker and 552 with 2 sharing the GPU (issue 21).

Writes ``bench/results/scaleout_<gpu>_<date>.md``.

Usage (about 5 minutes on one H100 for 1 and 2 workers)::

    python bench/bench_scaleout.py --capture .scene/fangzhou_nature --workers 1,2 --commit $(git rev-parse --short HEAD)
    python bench/bench_scaleout.py --capture .scene/fangzhou_nature --workers 1,2,4   # on 4 GPUs: one job per GPU
    python bench/bench_scaleout.py --capture ../shared/data/fangzhou_nature --smoke   # CPU, tiny: checks the script

The smoke run only checks the script: its figures are not results (no results file unless ``--out`` is given).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.bench_outputs import protocol_cameras, turntable  # noqa: E402
from bench.results_file import write_results  # noqa: E402
from protocol import Client, Message  # noqa: E402

DATE = dt.date.today().isoformat()
PROMPTS = ("a marble statue", "painting, oil on canvas, Vincent van Gogh self-portrait style", "Fauvism",
           "a bronze bust", "a pencil sketch", "Pixar, disney character, 3D render", "a wooden sculpture",
           "Edvard Munch, The Scream")


@dataclass(frozen=True)
class Sizes:
    """What one pipeline computes: reconstruction steps and photo scale, stylization, turntable frames."""

    reconstruct: dict[str, Any]
    stylize: dict[str, Any]
    frames: int
    frame_size: int


GPU_SIZES = Sizes(
    # A fixed step count (the time budget only caps it): workers sharing a GPU must do the same work.
    reconstruct={"preset": "fast", "steps": 1000, "time_budget_s": 900.0, "scale": 0.5, "holdout_every": 0},
    stylize={"preset": "fast", "iterations": 40, "clip_model": "ViT-B-32"},
    frames=24, frame_size=256)
WARMUP_SIZES = Sizes(
    reconstruct={"preset": "fast", "steps": 100, "time_budget_s": 900.0, "scale": 0.5, "holdout_every": 0},
    stylize={"preset": "fast", "iterations": 2, "clip_model": "ViT-B-32"},
    frames=2, frame_size=256)
SMOKE_SIZES = Sizes(
    reconstruct={"preset": "tiny", "steps": 30, "scale": 0.05, "holdout_every": 0},
    stylize={"preset": "tiny", "iterations": 2, "clip_model": "ViT-S-32"},
    frames=2, frame_size=24)


@dataclass
class Pipeline:
    """One head's chain of jobs; ``jobs`` maps kind -> job id as they are submitted."""

    index: int
    prompt: str
    seed: int
    jobs: dict[str, str] = field(default_factory=dict)
    done: bool = False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Backend:
    """``python -m backend serve --workers W`` on a free loopback port, logging to a file."""

    def __init__(self, work: Path, workers: int, device: str, gpus_per_job: float | None) -> None:
        self.endpoint = f"tcp://127.0.0.1:{free_port()}"
        self.log_path = work.parent / f"backend_{workers}.log"
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH"))
                                                            if p)}
        if device == "cpu":
            # CPU workers share the cores: one torch thread each (see tests/conftest.py). GPU workers keep the
            # environment's setting, as a user's would.
            env.setdefault("OMP_NUM_THREADS", "1")
        more = ["--gpus-per-job", str(gpus_per_job)] if gpus_per_job is not None else []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "backend", "serve", "--endpoint", self.endpoint, "--work-dir", str(work),
             "--device", device, "--workers", str(workers), *more],
            cwd=REPO, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        self.client = Client(self.endpoint, client_name="bench_scaleout")

    def wait_workers(self, workers: int, timeout_s: float = 300.0) -> str:
        """Wait until the backend (and its Ray cluster) answers; returns where it runs jobs (``hello_reply.gpu``)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the backend exited ({self.proc.returncode}):\n{self.log_tail()}")
            try:
                name = self.client.handshake(timeout_s=2.0)["gpu"]["name"]
            except TimeoutError:
                continue
            if name.startswith(f"{workers} worker"):
                return name
            time.sleep(0.5)
        raise RuntimeError(f"the backend did not run {workers} workers within {timeout_s} s:\n{self.log_tail()}")

    def log_tail(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        self.client.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def run_batch(backend: Backend, pipelines: list[Pipeline], sizes: Sizes, capture: Path,
              cameras: list[dict] | None, clip_pretrained: str) -> tuple[float, dict[str, list[float]]]:
    """Submit the pipelines and wait until every job is done; returns (wall seconds, kind -> job seconds).

    ``cameras``: the turntable for the renders (None: made from the first finished reconstruction).

    Raises:
        RuntimeError: a job that did not finish ``done``.
    """
    client = backend.client
    owner: dict[str, Pipeline] = {}

    def submit(p: Pipeline, kind: str, params: dict[str, Any]) -> None:
        reply = client.request(Message("submit", {"kind": kind, "params": params}), timeout_s=30)
        p.jobs[kind] = reply.content["job_id"]
        owner[p.jobs[kind]] = p

    t0 = time.monotonic()
    for p in pipelines:
        submit(p, "reconstruct", {**sizes.reconstruct, "capture_path": str(capture), "seed": p.seed})
    while not all(p.done for p in pipelines):
        for msg in client.poll(0.2):
            if msg.type == "error":
                raise RuntimeError(f"the backend answered with an error: {msg.content}")
            if msg.type != "result" or msg.job_id not in owner:
                continue
            p, state = owner[msg.job_id], msg.content["state"]
            if state != "done":
                raise RuntimeError(f"job {msg.job_id} of pipeline {p.index} ended {state}: {msg.content['error']}")
            if msg.job_id == p.jobs.get("reconstruct"):
                submit(p, "stylize", {**sizes.stylize, "source_job": msg.job_id, "prompt": p.prompt,
                                      "clip_pretrained": clip_pretrained, "seed": p.seed})
            elif msg.job_id == p.jobs.get("stylize"):
                if cameras is None:
                    cameras = turntable_cameras(backend, p.jobs["reconstruct"], sizes)
                submit(p, "render", {"source_job": msg.job_id, "cameras": cameras})
            else:
                p.done = True
        time.sleep(0.05)
    wall = time.monotonic() - t0
    seconds: dict[str, list[float]] = {"reconstruct": [], "stylize": [], "render": []}
    for job in client.request(Message("status", {}), timeout_s=30).content["jobs"]:
        if job["job_id"] in owner and job["started"] and job["finished"]:
            seconds[job["kind"]].append(job["finished"] - job["started"])
    return wall, seconds


def turntable_cameras(backend: Backend, recon_job: str, sizes: Sizes) -> list[dict]:
    """A turntable around the head, from a finished reconstruction's checkpoint (the capture's coordinates)."""
    from backend.nerf.checkpoint import load_checkpoint

    info = backend.client.request(Message("status", {"job_id": recon_job}), timeout_s=30).content["jobs"][0]
    work = Path(backend.proc.args[backend.proc.args.index("--work-dir") + 1])
    ckpt = load_checkpoint(work / "jobs" / recon_job / "outputs" / info["outputs"]["checkpoint"], "cpu")
    return protocol_cameras(turntable(ckpt, sizes.frames, sizes.frame_size, sizes.frame_size))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--capture", type=Path, required=True, help="a real capture folder, e.g. fangzhou_nature")
    parser.add_argument("--workers", default="1,2", help="worker counts to measure, comma-separated (default "
                        "%(default)s)")
    parser.add_argument("--gpus-per-job", type=float, help="GPUs each job's Ray task asks for (default: serve's, "
                        "min(1, GPUs / W))")
    parser.add_argument("--heads", type=int, help="pipelines in the batch (default 4; 2 with --smoke)")
    parser.add_argument("--clip-pretrained", default="random", help="CLIP weights (default random: no weights "
                        "can be downloaded on the GPU machines; the cost is the same)")
    parser.add_argument("--commit", default="unknown")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny sizes: checks the script, not a result")
    args = parser.parse_args()

    counts = [int(w) for w in args.workers.split(",")]
    device = "cpu" if args.smoke else "cuda"
    # A smoke run checks the script: no warm-up (on a CPU a real capture's stylization renders for a minute).
    sizes, warmup = (SMOKE_SIZES, None) if args.smoke else (GPU_SIZES, WARMUP_SIZES)
    heads = args.heads or (2 if args.smoke else 4)
    gpu = "cpu"
    if not args.smoke:
        import torch

        gpu = torch.cuda.get_device_name()
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        for w in counts:
            work = Path(tmp) / f"work_{w}"
            backend = Backend(work, w, device, args.gpus_per_job)
            try:
                t_start = time.monotonic()
                where = backend.wait_workers(w)
                started_s = time.monotonic() - t_start
                cameras = None
                if warmup is not None:
                    # Untimed: one small pipeline per worker (W jobs at once: W Ray worker processes warm up).
                    warm = [Pipeline(-1 - i, PROMPTS[0], 100 + i) for i in range(w)]
                    run_batch(backend, warm, warmup, args.capture.resolve(), None, args.clip_pretrained)
                    cameras = turntable_cameras(backend, warm[0].jobs["reconstruct"], sizes)
                batch = [Pipeline(i, PROMPTS[i % len(PROMPTS)], i) for i in range(heads)]
                wall, seconds = run_batch(backend, batch, sizes, args.capture.resolve(), cameras,
                                          args.clip_pretrained)
            except BaseException:
                print(backend.log_tail(), file=sys.stderr)
                raise
            finally:
                backend.stop()
            jobs = 3 * heads
            lost = backend.log_path.read_text(errors="replace").count("its previous Ray worker was lost")
            rows.append(Row(w, where, wall, jobs / wall * 3600, seconds, started_s, lost))
            print(f"{where}: {jobs} jobs in {wall:.1f} s = {jobs / wall * 3600:.0f} jobs/hour (ready after "
                  f"{started_s:.0f} s, {lost} attempts run again)", flush=True)
            # Written after every worker count: a run cut short keeps the rows it finished.
            write_results(results_table(rows, args, gpu, heads, sizes), args.out, "scaleout", gpu, DATE, args.smoke)
    return 0


@dataclass(frozen=True)
class Row:
    workers: int
    where: str  # hello_reply.gpu's name: "2 workers (0 busy): Ray local, 0.5 GPU each"
    wall_s: float
    jobs_per_hour: float
    job_seconds: dict[str, list[float]]
    ready_s: float
    lost: int  # job attempts Ray ran again because their worker process or node died


def results_table(rows: list[Row], args: argparse.Namespace, gpu: str, heads: int, sizes: Sizes) -> str:
    base = next((r.jobs_per_hour for r in rows if r.workers == 1), None)
    shared = any("GPU each" in r.where and not r.where.endswith(" 1 GPU each") for r in rows)
    lines = [f"# Scale-out: jobs per hour through serve --workers, jobs as Ray tasks "
             f"({'smoke' if args.smoke else 'gpu sizes'})", "",
             f"- GPU: {gpu}", f"- date: {DATE}", f"- commit: {args.commit}", f"- capture: {args.capture.name}",
             f"- batch: {heads} pipelines (reconstruct -> stylize -> render), {3 * heads} jobs; reconstruct "
             f"{sizes.reconstruct}; stylize {sizes.stylize}, CLIP {args.clip_pretrained}; render {sizes.frames} "
             f"frames {sizes.frame_size}x{sizes.frame_size}",
             "- jobs run as Ray tasks on a local Ray cluster (serve --workers W)"
             + (" ; several share one GPU: this measures what overlaps, not multi-GPU scaling" if shared else ""), "",
             "| workers | where | wall s | jobs/hour | speed-up | reconstruct s | stylize s | render s | "
             "ready after s | attempts run again |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        means = [f"{statistics.mean(r.job_seconds[k]):.1f}" if r.job_seconds[k] else "-"
                 for k in ("reconstruct", "stylize", "render")]
        speedup = f"{r.jobs_per_hour / base:.2f}x" if base else "-"
        lines.append(f"| {r.workers} | {r.where.partition(': ')[2]} | {r.wall_s:.1f} | {r.jobs_per_hour:.0f} | {speedup} | "
                     f"{' | '.join(means)} | {r.ready_s:.0f} | {r.lost} |")
    lines += ["", "Job seconds are means from start to result on a worker. Targets: on one GPU, no worse than the MDP "
              "broker this replaced (360 jobs/hour with 1 worker, 552 with 2 sharing it; issue 21); on several, "
              ">= 1.9x at 2 GPUs and >= 3.6x at 4 GPUs, one worker per GPU (issue 15)."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
