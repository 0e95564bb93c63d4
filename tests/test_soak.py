"""Soak: a real backend process under several concurrent clients and a fuzzer, then a full consistency check.

Each client thread (its own :class:`protocol.Client`, its own stable client id) submits cheap jobs (tiny
reconstructions, renders and meshes of a tiny model), polls, asks for status, cancels and disconnects at
random; a fuzzer sends malformed messages (the generator of ``test_server.py``, with every class of message
that once killed the backend: lone surrogates, deep nesting, numbers that overflow, over-long strings, frame
tricks) the whole time. Afterwards:
the server still answers, no accepted job is lost, every job reaches a final state and a new job still runs
(the worker is alive), the server stops cleanly, and every file on disk is whole (every ``job.json`` parses,
every checkpoint loads, every PNG decodes, every PLY and depth map reads, no temporary file is left).

Duration: ``NERFART_SOAK_SECONDS`` (default 20, the form CI runs); for a long run by hand::

    NERFART_SOAK_SECONDS=300 OMP_NUM_THREADS=1 .venv/bin/python -m pytest -s -m soak tests/test_soak.py
"""

from __future__ import annotations

import collections
import io
import json
import os
import random
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq
from backend_process import BackendProcess, submit
from hypothesis import HealthCheck, Phase, given, seed, settings
from PIL import Image
from test_jobs_live import SIZE, write_sphere_capture
from test_server import answer, labelled_messages
from waits import HANG_S

from backend.nerf.checkpoint import load_checkpoint
from backend.outputs.ply import read_ply
from backend.server.server import REQUEST_TYPES
from captures import OPENGL_TO_OPENCV
from protocol import FINAL_STATES, BackendError, Client, Message, ProtocolError, decode

SOAK_SECONDS = float(os.environ.get("NERFART_SOAK_SECONDS", "20"))
N_CLIENTS = int(os.environ.get("NERFART_SOAK_CLIENTS", "4"))
MAX_OUTSTANDING = 2  # unfinished jobs per client at once: bounds the queue (and the test's length)
FUZZ_BATCH = 25  # hypothesis examples per call of the fuzzing function (it is called until the soak is over)
MIN_FUZZED = 20  # the soak goes on past its time until the fuzzer sent this many, and each client submitted
# The source model trains for a few steps only: its density stays far below the default isolevel's surface.
ISOLEVEL = 0.05


class Tally:
    """Thread-safe counters, the accepted jobs, and unexpected failures of the client threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts: collections.Counter[str] = collections.Counter()
        self.jobs: dict[str, str] = {}  # job id -> kind, of jobs accepted from the client threads
        self.fuzz_jobs: set[str] = set()  # accepted from a fuzzed (but valid) submit
        self.results: dict[str, str] = {}  # job id -> state in a result message a client received
        self.latencies: list[float] = []
        self.failures: list[str] = []

    def add(self, key: str, n: int = 1) -> None:
        with self.lock:
            self.counts[key] += n


def soak_over(stop_at: float, tally: Tally) -> bool:
    """Time is up and the soak did its least work: a count, not a rate, so a slow machine soaks longer."""
    with tally.lock:
        enough = len(tally.jobs) >= N_CLIENTS and tally.counts["fuzzed"] >= MIN_FUZZED
    return enough and time.monotonic() >= stop_at


def camera(meta: dict[str, Any], i: int) -> dict[str, Any]:
    c2w = (np.array(meta["frames"][i]["transform_matrix"]) @ OPENGL_TO_OPENCV).tolist()
    return {"name": f"view{i}", "frame": i, "c2w": c2w, "fx": meta["fl_x"], "fy": meta["fl_y"], "cx": meta["cx"],
            "cy": meta["cy"], "width": SIZE, "height": SIZE}


def client_thread(index: int, endpoint: str, capture: Path, source: str, stop_at: float, tally: Tally) -> None:
    rng = random.Random(1000 + index)
    meta = json.loads((capture / "transforms.json").read_text())
    client_id = f"soak{index}"  # stable across reconnects: the server routes the jobs' messages back to it
    client = Client(endpoint, client_name=f"soak client {index}", client_id=client_id)
    client.connect()
    mine: dict[str, str] = {}  # job id -> last known state

    def handle(messages: list[Message]) -> None:
        for msg in messages:
            tally.add(f"received {msg.type}")
            if msg.type == "frame":
                image = Image.open(io.BytesIO(bytes(msg.blob(msg.content["image"]))))
                image.load()
                assert image.size == (SIZE, SIZE), image.size
            elif msg.type == "result":
                with tally.lock:
                    tally.results[msg.job_id] = msg.content["state"]
                if msg.job_id in mine:
                    mine[msg.job_id] = msg.content["state"]
            elif msg.type == "error":
                tally.add(f"error {msg.content['code']}")

    try:
        while not soak_over(stop_at, tally):
            action = rng.choices(["submit", "poll", "status", "cancel", "reconnect"], [4, 10, 2, 0.6, 0.6])[0]
            tally.add(f"action {action}")
            open_jobs = [j for j, s in mine.items() if s not in FINAL_STATES]
            if action == "submit" and len(open_jobs) < MAX_OUTSTANDING:
                kind = rng.choices(["reconstruct", "render", "extract_mesh"], [1, 3, 2])[0]
                if kind == "reconstruct":
                    params = {"capture_path": str(capture), "preset": "tiny", "steps": rng.randint(3, 12),
                              "holdout_every": 0, "seed": rng.randint(0, 100)}
                elif kind == "render":
                    params = {"source_job": source,
                              "cameras": [camera(meta, rng.randrange(12)) for _ in range(rng.randint(1, 2))],
                              "depth": rng.random() < 0.3}
                else:
                    params = {"source_job": source, "resolution": rng.choice([16, 24]), "isolevel": ISOLEVEL}
                job = submit(client, kind, params)
                mine[job] = "queued"
                with tally.lock:
                    tally.jobs[job] = kind
                tally.add(f"submitted {kind}")
            elif action == "status":
                t0 = time.monotonic()
                jobs = client.request(Message("status", {}), timeout_s=HANG_S).content["jobs"]
                with tally.lock:
                    tally.latencies.append(time.monotonic() - t0)
                known = {j["job_id"]: j["state"] for j in jobs}
                assert set(mine) <= set(known), f"jobs missing from status: {set(mine) - set(known)}"
                # Results lost while disconnected are learnt here.
                mine.update({job: known[job] for job in mine})
            elif action == "cancel" and open_jobs:
                job = rng.choice(open_jobs)
                try:
                    state = client.request(Message("cancel", {"job_id": job}), timeout_s=HANG_S).content["state"]
                    tally.add(f"cancel -> {state}")
                except BackendError as exc:  # it finished in the meantime
                    assert exc.code == "bad_state", exc
                    tally.add("cancel -> already final")
            elif action == "reconnect":
                # Vanish without a word (messages in flight are lost), come back as the same client id.
                client.close()
                time.sleep(rng.uniform(0.0, 0.3))
                client = Client(endpoint, client_name=f"soak client {index}", client_id=client_id)
                client.connect()
                for job in rng.sample(sorted(mine), min(2, len(mine))):
                    # Attach re-sends the result of a finished job (and routes a running one's messages here).
                    info = client.request(Message("attach", {"job_id": job}), timeout_s=HANG_S).content["jobs"][0]
                    tally.add("attached")
                    if info["state"] in FINAL_STATES:
                        mine[job] = info["state"]
            handle(client.poll(rng.uniform(0.01, 0.1)))
            time.sleep(rng.uniform(0.0, 0.05))
    except Exception as exc:  # reported by the test, with the thread named
        with tally.lock:
            tally.failures.append(f"client {index}: {type(exc).__name__}: {exc}")
    finally:
        client.close()


def fuzz_thread(endpoint: str, stop_at: float, tally: Tally) -> None:
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)

    @settings(max_examples=FUZZ_BATCH, deadline=None, suppress_health_check=list(HealthCheck), database=None,
              phases=[Phase.generate])
    @given(labelled_messages())
    def send(labelled: tuple[str, list[bytes]]) -> None:
        shape, frames = labelled
        if soak_over(stop_at, tally):
            return
        sock.send_multipart(frames)
        reply = answer(sock, HANG_S, frames)
        tally.add("fuzzed")
        tally.add(f"fuzzed {shape}")
        try:
            valid_request = decode(frames).type in REQUEST_TYPES
        except ProtocolError:
            valid_request = False
        if not valid_request:
            assert reply.type == "error" and reply.content["message"], f"{frames!r} got {reply.type}"
        elif reply.type == "accepted":  # a fuzzed submit that happened to be valid: a real job
            with tally.lock:
                tally.fuzz_jobs.add(reply.content["job_id"])

    try:
        batch = 0
        while not soak_over(stop_at, tally):
            # Each batch other messages, the same ones on every run: a crash it finds is found again.
            seed(batch)(send)()
            batch += 1
    except Exception as exc:
        with tally.lock:
            tally.failures.append(f"fuzzer: {type(exc).__name__}: {str(exc)[:500]}")
    finally:
        sock.close()


def check_files(work: Path, states: dict[str, str]) -> collections.Counter[str]:
    """Every file of every job is whole; returns what was checked, by kind of file."""
    checked: collections.Counter[str] = collections.Counter()
    leftovers = [p for p in work.rglob("*") if p.name.endswith(".tmp")]
    assert not leftovers, f"temporary files left behind: {leftovers}"
    for record_path in (work / "jobs").glob("*/job.json"):
        record = json.loads(record_path.read_text())
        checked["job.json"] += 1
        assert record["state"] == states[record["job_id"]], record
        outputs = record_path.parent / "outputs"
        for path in outputs.rglob("*"):
            if path.name == "checkpoint.pt":
                ckpt = load_checkpoint(path, "cpu")
                # A finished model carries no training state (one cancelled mid-training keeps it).
                assert record["state"] != "done" or ckpt.train_state is None, path
                checked["checkpoint"] += 1
            elif path.suffix == ".png":
                with Image.open(path) as image:
                    image.load()
                assert image.size == (SIZE, SIZE)
                checked["png"] += 1
            elif path.suffix == ".ply":
                vertices, faces, colors = read_ply(path)
                assert len(vertices) == len(colors) and (len(faces) == 0 or faces.max() < len(vertices))
                checked["ply"] += 1
            elif path.suffix == ".npy":
                assert np.load(path).shape == (SIZE, SIZE)
                checked["npy"] += 1
        if record["state"] == "done" and record["kind"] == "render":
            assert len(record["outputs"]["frames"]) == len(record["params"]["cameras"])
            for frame in record["outputs"]["frames"]:
                assert (outputs / frame).is_file(), frame
    return checked


@pytest.mark.slow
@pytest.mark.soak
def test_soak_concurrent_clients_fuzzing_and_disconnects(tmp_path: Path) -> None:
    capture = write_sphere_capture(tmp_path / "capture")
    work = tmp_path / "work"
    backend = BackendProcess(work, tmp_path / "backend.log")
    tally = Tally()
    try:
        backend.wait_ready()
        with Client(backend.endpoint, client_name="soak setup") as client:
            source = submit(client, "reconstruct", {"capture_path": str(capture), "preset": "tiny", "steps": 15,
                                                    "holdout_every": 0})
            assert client.wait_job(source, timeout_s=HANG_S).content["state"] == "done"
        t_start = time.monotonic()
        stop_at = t_start + SOAK_SECONDS
        threads = [threading.Thread(target=client_thread, args=(i, backend.endpoint, capture, source, stop_at,
                                                                tally), name=f"soak-{i}") for i in range(N_CLIENTS)]
        threads.append(threading.Thread(target=fuzz_thread, args=(backend.endpoint, stop_at, tally), name="fuzz"))
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(SOAK_SECONDS + HANG_S)
            assert not thread.is_alive(), f"{thread.name} hangs"
        assert not tally.failures, tally.failures
        dead_processes = int(backend.proc.poll() is not None)
        assert not dead_processes, "the server died"

        with Client(backend.endpoint, client_name="soak check") as client:
            client.handshake(timeout_s=HANG_S)
            jobs = {j["job_id"]: j for j in client.request(Message("status", {})).content["jobs"]}
            lost = (set(tally.jobs) | tally.fuzz_jobs) - set(jobs)
            assert not lost, f"accepted jobs the server no longer knows: {lost}"
            assert all(j["state"] in ("queued", "running", *FINAL_STATES) for j in jobs.values())
            # Wind down: cancel whatever is left, then a new job must still run (a worker is alive).
            left = [j for j, info in jobs.items() if info["state"] in ("queued", "running")]
            for job in left:
                try:
                    client.request(Message("cancel", {"job_id": job}))
                except BackendError as exc:  # finished in the meantime
                    assert exc.code == "bad_state"
            probe = submit(client, "extract_mesh", {"source_job": source, "resolution": 16, "isolevel": ISOLEVEL})
            assert client.wait_job(probe, timeout_s=HANG_S).content["state"] == "done"
            jobs = {j["job_id"]: j for j in client.request(Message("status", {})).content["jobs"]}
        states = {job: info["state"] for job, info in jobs.items()}
        assert all(s in FINAL_STATES for s in states.values()), collections.Counter(states.values())
        # Jobs of the clients never fail (they are valid and cheap); only a fuzzed submit may.
        failed = {j: jobs[j]["error"] for j in tally.jobs if states[j] != "done" and states[j] != "cancelled"}
        assert not failed, failed
        # What the clients heard agrees with the server's records.
        disagree = {j: (s, states[j]) for j, s in tally.results.items() if j in states and s != states[j]}
        assert not disagree, disagree
        assert backend.terminate() == 0, backend.log()[-3000:]
    finally:
        if backend.proc.poll() is None:
            backend.kill9()
    log = backend.log()
    dead_workers = log.count("the job worker thread died")
    assert "backend stopped" in log and "Traceback" not in log and not dead_workers, log[-5000:]
    checked = check_files(work, states)

    by_state = collections.Counter(states[j] for j in tally.jobs)
    by_kind = collections.Counter(tally.jobs.values())
    summary = {
        "seconds": SOAK_SECONDS, "clients": N_CLIENTS, "jobs_submitted": len(tally.jobs), "by_kind": dict(by_kind),
        "by_final_state": dict(by_state), "fuzzed_messages": tally.counts["fuzzed"],
        "fuzzed_by_shape": {k[len("fuzzed "):]: v for k, v in sorted(tally.counts.items()) if k.startswith("fuzzed ")},
        "dead_processes": dead_processes, "dead_workers": dead_workers,
        "fuzz_jobs": len(tally.fuzz_jobs), "reconnects": tally.counts["action reconnect"],
        "cancels": sum(v for k, v in tally.counts.items() if k.startswith("cancel ->")),
        "status_requests": len(tally.latencies),
        "status_latency_max_s": round(max(tally.latencies, default=0.0), 3),
        "messages_received": {k[len("received "):]: v for k, v in tally.counts.items() if k.startswith("received ")},
        "files_checked": dict(checked),
    }
    print("\nsoak summary:", json.dumps(summary, indent=1))
    assert len(tally.jobs) >= N_CLIENTS and tally.counts["fuzzed"] >= MIN_FUZZED  # what soak_over waited for
    # (How long status took is in the summary: a figure of this machine's load, not a pass or fail.)
