"""A full disk and the work dir's quota: clear errors, no corrupt or ghost job, a backend that starts and restarts.

The disk is never really filled: the operating system's answer (``ENOSPC``) is injected into the writes of
job records and uploads, the free space the backend sees is set, and the quota is set tiny.
"""

from __future__ import annotations

import errno
import io
import json
import logging
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from backend_process import BackendProcess
from test_server import serving
from waits import HANG_S

from backend import cli
from backend.jobs import uploads
from backend.jobs.uploads import extract_capture_zip
from backend.jobstore import store as store_module
from backend.jobstore.disk import DiskBudget, format_bytes, parse_size
from backend.jobstore.store import JobStore
from backend.server.server import Server
from protocol import BackendError, Client, Message


def enospc(*_args: Any, **_kwargs: Any) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


def with_budget(make: Callable[[Path], DiskBudget]) -> Callable[[Server], None]:
    """A ``prepare`` for :func:`test_server.serving` that gives the server's store the budget ``make`` makes."""

    def prepare(srv: Server) -> None:
        srv.store.disk = make(srv.store.work_dir)

    return prepare


def upload(n_bytes: int, steps: int = 2) -> Message:
    msg = Message("submit", {"kind": "reconstruct", "params": {"steps": steps}})
    msg.content["inputs"] = {"capture": msg.add_blob(b"\1" * n_bytes, "zip")}
    return msg


def job_dirs(srv: Server) -> list[Path]:
    return sorted(p for p in srv.store.jobs_dir.iterdir() if p.is_dir())


def test_the_quota_is_advertised_enforced_and_names_what_to_free(tmp_path: Path) -> None:
    def tiny_quota(work: Path) -> DiskBudget:
        return DiskBudget(work, quota_bytes=200_000, min_free_bytes=0, rescan_s=0.0)

    with serving(tmp_path / "work", prepare=with_budget(tiny_quota)) as srv, Client(srv.bound_endpoint) as client:
        limits = client.handshake()["limits"]
        assert limits["work_dir_quota_bytes"] == 200_000 and limits["writable"] is True
        assert limits["disk_free_bytes"] > 0 and limits["min_free_bytes"] == 0
        with pytest.raises(BackendError) as err:
            client.request(upload(300_000))
        assert err.value.code == "disk_full"
        assert "quota of 195.3 KiB" in str(err.value) and str(srv.store.jobs_dir) in str(err.value)
        assert "--work-dir-quota" in str(err.value)
        assert job_dirs(srv) == [], "nothing of the refused upload was written"
        # Within the quota it is accepted and runs; then the job folder fills the quota.
        job = client.request(upload(150_000)).content["job_id"]
        assert client.wait_job(job, timeout_s=HANG_S).content["state"] == "done"
        (srv.store.job_dir(job) / "outputs" / "big.bin").write_bytes(b"\0" * 60_000)
        with pytest.raises(BackendError) as err:
            client.request(Message("submit", {"kind": "reconstruct", "params": {"steps": 1}}))
        assert err.value.code == "disk_full" and f"largest: {job}" in str(err.value)
        assert client.handshake()["limits"]["writable"] is False
        assert [j["job_id"] for j in client.request(Message("status", {})).content["jobs"]] == [job]
        # Freeing space (the user deletes the job's outputs) makes room again.
        (srv.store.job_dir(job) / "outputs" / "big.bin").unlink()
        (srv.store.job_dir(job) / "inputs" / "capture.zip").unlink()
        nxt = client.request(Message("submit", {"kind": "reconstruct", "params": {"steps": 1}})).content["job_id"]
        assert client.wait_job(nxt, timeout_s=HANG_S).content["state"] == "done"


def test_a_job_that_cannot_be_saved_is_never_created(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ghost jobs (item 3): the client used to get 'internal error' while a queued job that never ran stayed in
    memory, uncancellable, counting against its owner's 32."""
    with serving(tmp_path / "work", max_queued_per_client=2) as srv, Client(srv.bound_endpoint) as client:
        monkeypatch.setattr(store_module, "atomic_write_bytes", enospc)
        for message in (Message("submit", {"kind": "reconstruct", "params": {"steps": 1}}), upload(1000)):
            for _ in range(3):  # more than the queue allows: failed submits must not count
                with pytest.raises(BackendError) as err:
                    client.request(message)
                assert err.value.code == "disk_full" and "no room" in str(err.value)
        assert srv.store.all() == [] and job_dirs(srv) == []
        assert client.request(Message("status", {})).content["jobs"] == []
        monkeypatch.undo()
        job = client.request(Message("submit", {"kind": "reconstruct", "params": {"steps": 1}})).content["job_id"]
        assert client.wait_job(job, timeout_s=HANG_S).content["state"] == "done"


def test_a_full_disk_when_a_job_finishes_fails_it_clearly_and_the_next_job_runs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Item 2: saving the finished job's record raised in the worker thread, which died; later jobs stayed
    queued forever."""
    real_save = JobStore.save

    def save_fails_when_five_steps_end(store: JobStore, rec: Any) -> None:
        if rec.params.get("steps") == 5 and rec.state == "done":
            enospc()
        real_save(store, rec)

    monkeypatch.setattr(JobStore, "save", save_fails_when_five_steps_end)
    work = tmp_path / "work"
    with serving(work) as srv, Client(srv.bound_endpoint) as client:
        unlucky, after = (client.request(Message("submit", {"kind": "reconstruct", "params": {"steps": s}}))
                          .content["job_id"] for s in (5, 3))
        result = client.wait_job(unlucky, timeout_s=HANG_S).content
        assert result["state"] == "failed" and result["error"]["code"] == "disk_full"
        assert "ran to its end, but its record could not be saved" in result["error"]["message"]
        assert client.wait_job(after, timeout_s=HANG_S).content["state"] == "done", "the worker went on"
        on_disk = json.loads((srv.store.job_dir(unlucky) / "job.json").read_text())
        assert on_disk["state"] == "running", "the record on disk is the last one saved, whole"
    monkeypatch.undo()
    with serving(work) as srv:  # the next start: the job whose end was not recorded can be resumed
        assert srv.store.get(unlucky).state == "interrupted" and srv.store.get(after).state == "done"


def test_the_backend_starts_on_a_full_disk_read_only_and_runs_again_once_there_is_room(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    work = tmp_path / "work"
    store = JobStore(work)
    done, running, queued = (store.create("reconstruct", {"steps": 2}, owner="cli") for _ in range(3))
    done.state = "done"
    (store.job_dir(done.job_id) / "outputs" / "count.json").write_bytes(b"x" * 5000)
    running.state = "running"
    for rec in (done, running):
        store.save(rec)
    free = [0]

    def budget(work_dir: Path) -> DiskBudget:
        return DiskBudget(work_dir, min_free_bytes=1000, free_bytes_fn=lambda: free[0], rescan_s=0.0)

    monkeypatch.setattr(store_module, "atomic_write_bytes", enospc)  # every record and upload write fails
    caplog.set_level(logging.WARNING)
    with serving(work, prepare=with_budget(budget)) as srv, Client(srv.bound_endpoint) as client:
        assert "starting read-only" in caplog.text and "no room on the backend's disk" in caplog.text
        limits = client.handshake()["limits"]
        assert limits["writable"] is False and limits["disk_free_bytes"] == 0
        states = {j["job_id"]: j["state"] for j in client.request(Message("status", {})).content["jobs"]}
        assert states == {done.job_id: "done", running.job_id: "interrupted", queued.job_id: "queued"}
        for message in (Message("submit", {"kind": "reconstruct", "params": {}}),
                        Message("resume", {"job_id": running.job_id})):
            with pytest.raises(BackendError) as err:
                client.request(message)
            assert err.value.code == "disk_full"
            assert f"largest: {done.job_id}" in str(err.value), "says which job folder frees the most"
        time.sleep(0.3)
        assert srv.store.get(queued.job_id).state == "queued", "queued jobs wait while the disk is full"
        # Room again (the user deleted something): the held job runs, and new ones are accepted.
        client.request(Message("attach", {"job_id": queued.job_id}))  # its messages come here
        monkeypatch.undo()
        free[0] = 10**9
        assert client.wait_job(queued.job_id, timeout_s=HANG_S).content["state"] == "done"
        assert client.handshake()["limits"]["writable"] is True
    with serving(work) as srv:  # and it restarts with every record whole
        assert {r.job_id: r.state for r in srv.store.all()} == {
            done.job_id: "done", running.job_id: "interrupted", queued.job_id: "done"}


# ---------------------------------------------------------------------------------------------------------
# Uploads
# ---------------------------------------------------------------------------------------------------------


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def test_a_decompression_bomb_is_refused_and_nothing_stays(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The allowance for small, compressible captures is 256 MiB; a smaller one keeps this test small.
    monkeypatch.setattr(uploads, "MIN_EXPANSION_ALLOWANCE", 2**20)
    bomb = tmp_path / "bomb.zip"
    bomb.write_bytes(zip_bytes({"head/images/a.png": b"\0" * 20 * 2**20}))  # 20 MiB in about 20 KB
    assert bomb.stat().st_size < 50_000
    with pytest.raises(ValueError, match=r"expands to 20\.0 MiB, over the most an upload may expand to"):
        extract_capture_zip(bomb, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_extraction_stops_at_the_room_given_and_removes_what_it_wrote(tmp_path: Path) -> None:
    capture = tmp_path / "c.zip"
    capture.write_bytes(zip_bytes({f"head/images/{i}.png": bytes(range(256)) * 400 for i in range(5)}))
    with pytest.raises(ValueError, match="room left in the backend's work dir"):
        extract_capture_zip(capture, tmp_path / "out", max_bytes=300_000)
    assert not (tmp_path / "out").exists()
    root = extract_capture_zip(capture, tmp_path / "ok", max_bytes=600_000)
    assert len(list((root / "images").iterdir())) == 5


def test_a_damaged_member_removes_the_partial_extraction(tmp_path: Path) -> None:
    data = bytearray(zip_bytes({"head/a.txt": b"fine " * 100, "head/b.txt": b"damaged " * 1000}))
    data[data.index(b"head/b.txt") + 40] ^= 0xFF  # flip a byte of b.txt's compressed data
    (tmp_path / "c.zip").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="cannot be unpacked"):
        extract_capture_zip(tmp_path / "c.zip", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_sizes_are_parsed_and_shown() -> None:
    assert parse_size("200G") == 200 * 2**30 and parse_size("512MiB") == 512 * 2**20 and parse_size("1000") == 1000
    with pytest.raises(ValueError, match="not a size"):
        parse_size("lots")
    assert format_bytes(300) == "300 bytes" and format_bytes(1536) == "1.5 KiB" and format_bytes(3 * 2**30) == "3.0 GiB"


@pytest.mark.slow
def test_serve_takes_a_quota_and_status_says_when_the_work_dir_is_full(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    work = tmp_path / "work"
    (work / "jobs" / "old-job" / "outputs").mkdir(parents=True)
    (work / "jobs" / "old-job" / "outputs" / "frames.bin").write_bytes(b"\0" * 300_000)
    backend = BackendProcess(work, tmp_path / "backend.log", ("--work-dir-quota", "200K", "--min-free", "0"))
    try:
        limits = backend.wait_ready()["limits"]
        assert limits["work_dir_quota_bytes"] == 200 * 1024 and limits["writable"] is False
        assert cli.main(["status", "--endpoint", backend.endpoint]) == 0
        out = capsys.readouterr().out
        assert "GiB quota" in out and "FULL: new jobs are refused" in out, out
        with Client(backend.endpoint) as client, pytest.raises(BackendError) as err:
            client.request(Message("submit", {"kind": "reconstruct", "params": {"capture_path": "/nowhere"}}))
        assert err.value.code == "disk_full" and "largest: old-job" in str(err.value)
    finally:
        assert backend.terminate() == 0
    assert "starting read-only" in backend.log()
