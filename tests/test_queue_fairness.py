"""Fairness and big records (issue 21, item 3).

A script that rotates client names must not fill the queue (the cap per host bounds it), a newcomer must not
wait behind thousands of one client's jobs (turns between hosts, then owners), and ``status`` of all jobs must
answer summaries of bounded size whatever the stored jobs hold. Counted in jobs, positions and bytes; never
timed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from backend.jobstore.context import JobContext
from backend.jobstore.queue import FairQueue
from backend.jobstore.store import JobStore
from backend.server.server import Server
from protocol import BackendError, Client, Message, encode

# ---------------------------------------------------------------------------------------------------------
# The turns, on their own
# ---------------------------------------------------------------------------------------------------------


def test_turns_go_round_hosts_then_owners_then_oldest_first() -> None:
    q = FairQueue()
    for job, host, owner in (("a1", "h1", "A"), ("a2", "h1", "A"), ("a3", "h1", "A"), ("b1", "h1", "B"),
                             ("c1", "h2", "C")):
        q.append(job, host, owner)
    assert q.order() == ["a1", "c1", "b1", "a2", "a3"]
    assert [q.pop() for _ in range(len(q))] == ["a1", "c1", "b1", "a2", "a3"]  # order() says what pop() does
    with pytest.raises(IndexError):
        q.pop()


def test_a_newcomer_waits_for_one_job_of_each_other_client_not_for_all_their_jobs() -> None:
    """The issue's script: 100 client names x 32 jobs queued; a newcomer used to be placed 3,201st."""
    q = FairQueue()
    for i in range(32):
        for n in range(100):
            q.append(f"script{n}-{i}", "127.0.0.1", f"id:name{n}")
    q.append("other-host", "10.0.0.2", "id:newcomer")
    q.append("same-host", "127.0.0.1", "id:newcomer")
    order = q.order()
    assert len(order) == 3202
    assert order.index("other-host") == 1  # after one job of the only other host
    assert order.index("same-host") == 101  # after one job of each of the 100 names on its host (and other-host)


def test_counts_removal_and_a_lost_job_first_in_line() -> None:
    q = FairQueue()
    q.append("a1", "h1", "A")
    q.append("a2", "h1", "A")
    q.append("b1", "h2", "B")
    assert (q.count(host="h1"), q.count(owner="A"), q.count(host="h2"), q.count(owner="nobody"), len(q)) == (
        2, 2, 1, 0, 3)
    assert q.remove("a1") and not q.remove("a1") and "a1" not in q
    assert (q.count(host="h1"), q.count(owner="A")) == (1, 1)
    q.push_front("b0", "h2", "B")  # e.g. a job whose worker was lost: it goes on first
    assert q.order() == ["b0", "a2", "b1"]
    with pytest.raises(ValueError):
        q.append("a2", "h1", "A")
    for job in ("b0", "a2", "b1"):
        assert q.remove(job)
    assert len(q) == 0 and q.count(host="h1") == 0 and q.order() == []


# ---------------------------------------------------------------------------------------------------------
# Through the server: caps per host, newcomers' positions
# ---------------------------------------------------------------------------------------------------------


def held_runner(release: threading.Event) -> Callable[[JobContext], dict[str, Any]]:
    """A runner that runs until ``release`` is set (or it is cancelled), so that the jobs behind it stay queued."""
    def run(ctx: JobContext) -> dict[str, Any]:
        ctx.progress("holding", 0, 1)
        while not release.wait(0.02):
            ctx.check_cancel()
        return {}
    return run


@pytest.fixture
def held_server(tmp_path: Path) -> Iterator[tuple[Server, threading.Event]]:
    release = threading.Event()
    srv = Server("tcp://127.0.0.1:*", tmp_path / "work", runners={"reconstruct": held_runner(release)},
                 max_queued_per_client=2, max_queued_per_host=6)
    thread = threading.Thread(target=srv.serve, daemon=True)
    thread.start()
    assert srv.ready.wait(10)
    yield srv, release
    release.set()
    srv.stop()
    thread.join(10)


def from_host(srv: Server, source_ip: str, client_id: str) -> Client:
    """A client whose connection leaves from ``source_ip`` (any 127.x.y.z is this machine on Linux)."""
    port = srv.bound_endpoint.rsplit(":", 1)[1]
    return Client(f"tcp://{source_ip}:0;127.0.0.1:{port}", client_id=client_id)


def submit(client: Client) -> dict[str, Any]:
    return client.request(Message("submit", {"kind": "reconstruct", "params": {"steps": 1}})).content


def wait_running(srv: Server, job_id: str) -> None:
    deadline = time.monotonic() + 30  # only so that a broken server fails the test instead of hanging it
    while srv.store.get(job_id).state != "running":
        assert time.monotonic() < deadline, "the first job never started"
        time.sleep(0.01)


def test_rotating_client_names_cannot_fill_the_queue_and_newcomers_go_near_the_front(
        held_server: tuple[Server, threading.Event]) -> None:
    srv, release = held_server
    with from_host(srv, "127.0.0.9", "holder") as holder:
        first = submit(holder)["job_id"]
        wait_running(srv, first)  # it runs: the queue below is what waits behind it
    accepted, refused = [], []
    for n in range(10):  # the script: a new name whenever a name's allowance is used up
        with from_host(srv, "127.0.0.1", f"name{n}") as script:
            for _ in range(2):
                try:
                    accepted.append(submit(script))
                except BackendError as exc:
                    refused.append(exc)
    assert len(accepted) == 6, "the host's cap (6) bounds the script, whatever names it makes up"
    # Each name's jobs take turns with the other names' (name0, name1, name2, name0, ...), behind the running one.
    assert [a["position"] for a in accepted] == [1, 2, 2, 4, 3, 6]
    assert len(refused) == 14 and {e.code for e in refused} == {"queue_full"}
    assert "per machine" in str(refused[0]) and "127.0.0.1" in str(refused[0])
    with from_host(srv, "127.0.0.2", "newcomer") as newcomer:
        assert newcomer.handshake()["limits"]["max_queued_jobs_per_host"] == 6
        fresh = submit(newcomer)
        # Behind the running job and one job of the script's host, not behind all six.
        assert fresh["position"] == 2
        positions = {j["job_id"]: j["position"] for j in newcomer.request(Message("status", {})).content["jobs"]}
        assert positions[fresh["job_id"]] == 2 and positions[first] == 0
        assert sorted(positions[a["job_id"]] for a in accepted) == [1, 3, 4, 5, 6, 7]
        # Cancelling one of the script's jobs makes room on its host again.
        with from_host(srv, "127.0.0.1", "name0") as script:
            assert script.request(Message("cancel", {"job_id": accepted[0]["job_id"]})).content["state"] == \
                "cancelled"
            assert submit(script)["job_id"]
    release.set()


# ---------------------------------------------------------------------------------------------------------
# Big records: status answers stay small
# ---------------------------------------------------------------------------------------------------------

N_CAMERAS = 2_000  # the jobs had 100,000 (bench/bench_status.py times that size); the sizes do not depend on it


def big_render_params(n: int) -> dict[str, Any]:
    camera = {"name": "Camera.000", "frame": 1, "c2w": [[1.0, 0.0, 0.0, 0.1], [0.0, 1.0, 0.0, 0.2],
                                                         [0.0, 0.0, 1.0, 3.0], [0.0, 0.0, 0.0, 1.0]],
              "fx": 800.0, "fy": 800.0, "cx": 400.0, "cy": 300.0, "width": 800, "height": 600}
    return {"source_job": "0123456789abcdef", "cameras": [dict(camera, name=f"Camera.{i:06d}", frame=i)
                                                          for i in range(n)]}


def test_status_of_all_jobs_answers_summaries_of_bounded_size(tmp_path: Path) -> None:
    work = tmp_path / "work"
    store = JobStore(work)
    big = []
    for _ in range(2):
        rec = store.create("render", big_render_params(N_CAMERAS), "id:someone")
        rec.state = "done"
        rec.outputs = {"frames": [f"frames/{i:06d}.png" for i in range(N_CAMERAS)], "frames_rendered": N_CAMERAS,
                       "note": "x" * 5000}
        store.save(rec)
        big.append(rec.job_id)
    small = store.create("reconstruct", {"steps": 1}, "id:someone")
    small.state, small.outputs = "done", {"file": "count.json", "steps": 1}
    store.save(small)
    srv = Server("tcp://127.0.0.1:*", work, runners={})
    thread = threading.Thread(target=srv.serve, daemon=True)
    thread.start()
    assert srv.ready.wait(10)
    try:
        with Client(srv.bound_endpoint) as client:
            reply = client.request(Message("status", {}))
            jobs = {j["job_id"]: j for j in reply.content["jobs"]}
            assert set(jobs) == {*big, small.job_id}
            for job_id in big:
                entry = jobs[job_id]
                assert "params" not in entry and entry["state"] == "done"
                assert entry["outputs"] == {"frames_rendered": N_CAMERAS}  # plain values; no frame list, no essay
            assert jobs[small.job_id]["outputs"] == {"file": "count.json", "steps": 1}
            size = sum(len(bytes(f)) for f in encode(reply))
            assert size < 3 * 2048, f"status of 3 jobs took {size} bytes"
            # One job by id: its whole record.
            whole = client.request(Message("status", {"job_id": big[0]})).content["jobs"][0]
            assert len(whole["params"]["cameras"]) == N_CAMERAS and len(whole["outputs"]["frames"]) == N_CAMERAS
    finally:
        srv.stop()
        thread.join(10)
