"""The job worker outlives every job, and one unreadable job record never hides the others.

Issue 13: the worker thread died while hello and status still answered, so later jobs stayed queued forever;
a lone surrogate or an infinity stored in one job's record broke ``status`` for every client, even after
restarts.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_server import counting_runner, serving

from backend.jobstore.context import JobContext
from backend.jobstore.store import JobStore
from backend.server.server import Server
from protocol import Client, Message


def unruly_runner(ctx: JobContext) -> dict[str, Any]:
    """Fails in the ways a runner can, chosen by ``steps``; otherwise counts."""
    steps = ctx.params.get("steps")
    if steps == 66:
        raise SystemExit("a library called sys.exit() on the worker thread")
    if steps == 67:
        raise RuntimeError("\ud800 an error whose text cannot be encoded, and long: " + "x" * 10_000)
    if steps == 68:
        ctx.send(Message("frame", {"index": "not a number"}))  # a message that fails its schema
    if steps == 69:
        return {"heldout_psnr": float("nan"), "losses": [1.0, float("inf")]}  # a diverged training's metrics
    return counting_runner(ctx)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    with serving(tmp_path / "work", {"reconstruct": unruly_runner}) as srv:
        yield srv


def submit(client: Client, steps: int) -> str:
    return client.request(Message("submit", {"kind": "reconstruct", "params": {"steps": steps}})).content["job_id"]


# The worker thread's death by SystemExit is what this test provokes; pytest would warn about it.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_the_next_job_runs_after_every_kind_of_failure(server: Server, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR)
    with Client(server.bound_endpoint) as client:
        for steps, code in ((67, "internal"), (68, "job_failed"), (66, "internal")):
            job, nxt = submit(client, steps), submit(client, 3)
            result = client.wait_job(job, timeout_s=10).content
            assert result["state"] == "failed" and result["error"]["code"] == code, result
            assert 0 < len(result["error"]["message"]) <= 2000
            assert client.wait_job(nxt, timeout_s=10).content["state"] == "done", f"no job ran after {steps}"
        # Numbers JSON cannot hold are not available: the job is done, its record stores them as null.
        result = client.wait_job(submit(client, 69), timeout_s=10).content
        assert result["state"] == "done" and result["outputs"]["heldout_psnr"] is None
        assert result["outputs"]["losses"] == [1.0, None]
    # The SystemExit killed the thread itself; the supervisor saw it, failed its job and started another.
    assert server._worker.restarts == 1 and "the job worker thread died while running job" in caplog.text
    assert "stopped while running this job" in server.store.get(job).error["message"]


# ---------------------------------------------------------------------------------------------------------
# Records that cannot be read
# ---------------------------------------------------------------------------------------------------------


def record(job_id: str, **changes: Any) -> dict[str, Any]:
    return {"job_id": job_id, "kind": "reconstruct", "params": {"steps": 1}, "owner": "id:alice", "state": "done",
            "created": 1.0, "started": 1.0, "finished": 2.0, "stage": "", "step": 0, "total": 0, "outputs": {},
            "error": None, "inputs": {}, "resumes": 0, **changes}


def write(jobs_dir: Path, folder: str, text: str | bytes) -> None:
    (jobs_dir / folder).mkdir(parents=True)
    path = jobs_dir / folder / "job.json"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())


def test_unreadable_records_are_reported_as_corrupt_never_fatal(tmp_path: Path) -> None:
    jobs_dir = tmp_path / "work" / "jobs"
    write(jobs_dir, "good", json.dumps(record("good")))
    # What a v1 backend stored from a submit (json.dumps escapes the surrogate), and other damage.
    write(jobs_dir, "surrogate", json.dumps(record("surrogate", kind="stylize", params={
        "source_job": "good", "prompt": "a marble \ud800"})))
    write(jobs_dir, "infinity", json.dumps(record("infinity")).replace('"steps": 1', '"steps": 1e400'))
    write(jobs_dir, "nested", json.dumps(record("nested", outputs={"x": json.loads("[" * 100 + "]" * 100)})))
    write(jobs_dir, "elsewhere", json.dumps(record("another-job")))
    write(jobs_dir, "badtypes", json.dumps(record("badtypes", created="yesterday")))
    write(jobs_dir, "garbage", b"\x00\xff not json")
    write(jobs_dir, "toodeep", "[" * 100_000 + "]" * 100_000)
    write(jobs_dir, "unknownkind", json.dumps(record("unknownkind", kind="teleport")))
    write(jobs_dir, "bad name!", json.dumps(record("bad name!")))

    srv = Server("tcp://127.0.0.1:*", tmp_path / "work", runners={"reconstruct": counting_runner})
    corrupt = {"surrogate", "infinity", "nested", "elsewhere", "badtypes"}
    assert {r.job_id for r in srv.store.all()} == {"good"} | corrupt, "the unidentifiable ones are skipped"
    for job_id in corrupt:
        rec = srv.store.get(job_id)
        assert rec.state == "failed" and rec.error["code"] == "corrupt_record", rec
        assert "cannot be read" in rec.error["message"] and "delete it" in rec.error["message"]
    assert srv.store.get("surrogate").kind == "stylize" and srv.store.get("surrogate").params == {}
    assert "\ud800" not in json.dumps(srv.store.get("surrogate").error, ensure_ascii=False)
    assert (jobs_dir / "infinity" / "job.json").read_text().count("1e400") == 1, "the file is left as it is"

    thread = threading.Thread(target=srv.serve, daemon=True)
    thread.start()
    assert srv.ready.wait(10)
    try:
        with Client(srv.bound_endpoint) as client:
            jobs = {j["job_id"]: j for j in client.request(Message("status", {})).content["jobs"]}
            assert set(jobs) == {"good"} | corrupt and jobs["good"]["state"] == "done"
            # A record spoiled in memory (a bug) is reported as corrupt; the other jobs still come through.
            srv.store.get("good").outputs["psnr"] = float("inf")
            jobs = {j["job_id"]: j for j in client.request(Message("status", {})).content["jobs"]}
            assert jobs["good"]["error"]["code"] == "corrupt_record" and len(jobs) == len(corrupt) + 1
            job = client.request(Message("submit", {"kind": "reconstruct", "params": {"steps": 2}})).content["job_id"]
            assert client.wait_job(job, timeout_s=10).content["state"] == "done"
    finally:
        srv.stop()
        thread.join(10)


def test_a_record_is_checked_before_it_is_written(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "work")
    rec = store.create("reconstruct", {"steps": 1}, owner="cli")
    rec.outputs["loss"] = float("nan")
    with pytest.raises(Exception, match="cannot be stored"):
        store.save(rec)
    assert json.loads((store.job_dir(rec.job_id) / "job.json").read_text())["outputs"] == {}, "the old one stays"
