"""How long ``status`` takes with big jobs stored (issue 21, item 3): CPU only, no GPU needed.

Writes ``--jobs`` finished render records of ``--cameras`` cameras each (and as many frames in their outputs)
straight into a fresh work dir's ``job.json`` files, starts a server on it, and times, from a client, ``status``
of all jobs and ``status`` of one big job (round trips: answer, encode, send, decode), with the reply's size.

The records are written as JSON, not through the job store, so the same script times any version of the
backend: ``PYTHONPATH=<checkout> python bench/bench_status.py`` runs the server of that checkout.

    PYTHONPATH=. python bench/bench_status.py                    # 2 jobs x 100,000 cameras
    PYTHONPATH=. python bench/bench_status.py --cameras 1000 --smoke
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path

from results_file import RESULTS_DIR

from backend.server.server import Server
from protocol import Client, Message, encode


def write_render_record(work: Path, n_cameras: int) -> str:
    job_id = uuid.uuid4().hex[:16]
    camera = {"name": "", "frame": 0, "c2w": [[1.0, 0.0, 0.0, 0.1], [0.0, 1.0, 0.0, 0.2], [0.0, 0.0, 1.0, 3.0],
                                             [0.0, 0.0, 0.0, 1.0]],
              "fx": 800.0, "fy": 800.0, "cx": 400.0, "cy": 300.0, "width": 800, "height": 600}
    params = {"source_job": "0123456789abcdef",
              "cameras": [dict(camera, name=f"Camera.{i:06d}", frame=i) for i in range(n_cameras)]}
    record = {"job_id": job_id, "kind": "render", "params": params, "owner": "id:bench", "state": "done",
              "created": time.time(), "started": time.time(), "finished": time.time(), "stage": "rendering",
              "step": n_cameras, "total": n_cameras, "error": None, "inputs": {}, "resumes": 0,
              "outputs": {"frames": [f"frames/{i:06d}.png" for i in range(n_cameras)], "frames_rendered": n_cameras}}
    job_dir = work / "jobs" / job_id
    (job_dir / "outputs").mkdir(parents=True)
    (job_dir / "inputs").mkdir()
    (job_dir / "job.json").write_text(json.dumps(record))
    return job_id


def timed(client: Client, msg: Message, repeat: int) -> tuple[float, int]:
    """Median round trip in seconds, and the reply's size in bytes."""
    times, size = [], 0
    for _ in range(repeat):
        t0 = time.perf_counter()
        reply = client.request(Message(msg.type, dict(msg.content)), timeout_s=600)
        times.append(time.perf_counter() - t0)
        size = sum(len(bytes(f)) for f in encode(reply))
    return statistics.median(times), size


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cameras", type=int, default=100_000)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--label", default="", help="what is measured, e.g. the branch (default: git describe)")
    p.add_argument("--smoke", action="store_true", help="print only; write no results file")
    args = p.parse_args()
    label = args.label or subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True,
                                         text=True).stdout.strip()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / "work"
        jobs = [write_render_record(work, args.cameras) for _ in range(args.jobs)]
        t0 = time.perf_counter()
        srv = Server("tcp://127.0.0.1:*", work, runners={})
        thread = threading.Thread(target=srv.serve, daemon=True)
        thread.start()
        assert srv.ready.wait(600)
        start_s = time.perf_counter() - t0
        try:
            with Client(srv.bound_endpoint) as client:
                client.handshake(timeout_s=60)
                all_s, all_bytes = timed(client, Message("status", {}), args.repeat)
                one_s, one_bytes = timed(client, Message("status", {"job_id": jobs[0]}), args.repeat)
        finally:
            srv.stop()
            thread.join(60)
    text = (f"# status with {args.jobs} stored render jobs of {args.cameras:,} cameras each ({label})\n\n"
            f"CPU: {platform.processor() or platform.machine()}, Python {platform.python_version()}; "
            f"median of {args.repeat} round trips from a client on the same machine.\n\n"
            "| request | seconds | reply bytes |\n| --- | ---: | ---: |\n"
            f"| status (all jobs) | {all_s:.3f} | {all_bytes:,} |\n"
            f"| status (one big job) | {one_s:.3f} | {one_bytes:,} |\n"
            f"| server start (loading the records) | {start_s:.1f} | |\n")
    print(text)
    if not args.smoke:
        out = RESULTS_DIR / f"status_cpu_{label.replace('/', '-')}_{time.strftime('%Y-%m-%d')}.md"
        out.write_text(text)
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
