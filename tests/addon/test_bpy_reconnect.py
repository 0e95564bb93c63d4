"""The add-on against a real backend process with CURVE keys (``serve --curve``, multi-user by default), under
real Blender: a Blender without keys, with a backend key but no key pair, and with an unauthorised key pair is
refused with a message that says what to do; once its key is authorised (the real ``keys authorize`` command,
no backend restart) it connects. Then the backend is killed (SIGKILL) and started again on the same address
while jobs run: the add-on shows the connection lost and "reconnecting…", reconnects on the same socket
without anything being pressed, and its job list shows the interrupted job as interrupted and the requeued
one running again, still under its control (it is cancelled). A restart quicker than the heartbeat timeout is
noticed too (the answers come from a new backend process).

The backend runs with the main environment's Python (it needs torch), also when these tests run under another
Blender's ``bpy``; the capture is the analytic-spheres capture of ``tests/test_jobs_live.py``.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

bpy = pytest.importorskip("bpy", reason="the bpy module (Blender as a Python module) is not installed")
zmq = pytest.importorskip("zmq")

from conftest import REPO_ROOT  # noqa: E402
from recording_layout import RecordingLayout  # noqa: E402
from waits import HANG_S  # noqa: E402

MOD = "nerfart_blender"
BACKEND_PYTHON = REPO_ROOT / ".venv" / "bin" / "python"
WRITE_CAPTURE = ("import sys; from pathlib import Path; sys.path.insert(0, 'tests'); "
                 "from test_jobs_live import write_sphere_capture; "
                 "write_sphere_capture(Path(sys.argv[1]))")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    # One torch/OpenMP thread: the test machines have 2 shared cores (see test_e2e_real_backend._backend_env).
    return {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
            "MKL_NUM_THREADS": os.environ.get("MKL_NUM_THREADS", "1")}


def _cli(*args: str) -> str:
    """Run ``python -m backend ARGS`` (the real command line) and return its stdout."""
    out = subprocess.run([str(BACKEND_PYTHON), "-m", "backend", *args], cwd=REPO_ROOT, env=_env(),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


class Backend:
    """``python -m backend serve --curve`` on a fixed loopback port, that can be killed and started again."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.work = root / "work"
        self.endpoint = f"tcp://127.0.0.1:{_free_port()}"
        self.log_path = root / "backend.log"
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        with open(self.log_path, "ab") as log:
            log.write(f"=== start {self.starts}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                [str(BACKEND_PYTHON), "-m", "backend", "serve", "--endpoint", self.endpoint, "--work-dir",
                 str(self.work), "--device", "cpu", "--curve"], cwd=REPO_ROOT, env=_env(), stdout=log,
                stderr=subprocess.STDOUT)

    def wait_listening(self, timeout: float = HANG_S) -> None:
        deadline = time.monotonic() + timeout
        while self.log().rsplit(f"=== start {self.starts}", 1)[-1].count("listening on") == 0:
            assert self.proc is not None and self.proc.poll() is None, f"the backend exited:\n{self.log()}"
            assert time.monotonic() < deadline, f"the backend did not start within {timeout} s:\n{self.log()}"
            time.sleep(0.05)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()  # SIGKILL: no clean shutdown, no goodbye to the clients
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""


@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    if not BACKEND_PYTHON.is_file():
        pytest.skip(f"no backend Python at {BACKEND_PYTHON} (the main .venv of the repository)")
    probe = subprocess.run([str(BACKEND_PYTHON), "-c", "import torch"], capture_output=True, timeout=60)
    if probe.returncode != 0:
        pytest.skip(f"the backend Python {BACKEND_PYTHON} has no torch (the backend needs it)")
    root = tmp_path_factory.mktemp("reconnect")
    be = Backend(root)
    be.capture = root / "capture"
    writer = subprocess.Popen([str(BACKEND_PYTHON), "-c", WRITE_CAPTURE, str(be.capture)], cwd=REPO_ROOT,
                              env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    be.start()
    try:
        be.wait_listening()
        out, _ = writer.communicate(timeout=120)
        assert writer.returncode == 0, f"writing the sphere capture failed:\n{out}"
        yield be
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()
        be.stop()


@pytest.fixture()
def prefs(addon):
    p = bpy.context.preferences.addons[MOD].preferences
    saved = {k: getattr(p, k) for k in ("endpoint", "timeout_s", "server_public_key", "client_public_key",
                                        "client_secret_key")}
    yield p
    addon.connection.disconnect()
    for k, v in saved.items():
        setattr(p, k, v)


def pump(addon, until, what: str, timeout: float = HANG_S, backend: Backend | None = None) -> None:
    """Call the timer's tick (timers do not fire in module mode) until ``until()``; ``timeout`` guards a hang.
    A hang's message shows the add-on's jobs and ``backend``'s log."""
    deadline = time.monotonic() + timeout
    addon.tick.tick()
    while not until():
        if time.monotonic() > deadline:
            jobs = [(j.job_id, j.state, j.stage, j.step, j.error) for j in addon.connection.session.jobs.values()]
            raise AssertionError(f"not reached within {timeout} s: {what}; the add-on's jobs: {jobs}\n"
                                 f"{backend.log() if backend else ''}")
        time.sleep(0.02)
        addon.tick.tick()


def _refused(match: str) -> str:
    with pytest.raises(RuntimeError, match=match):
        bpy.ops.nerfart.connect()
    rt = bpy.context.window_manager.nerfart_runtime
    assert rt.connection == "ERROR" and rt.error
    return rt.error


def _authorised_connection(addon, prefs, backend) -> None:
    """Keys set and authorised (as the first test leaves them), connected."""
    prefs.endpoint, prefs.timeout_s = backend.endpoint, 2.0
    if not prefs.client_public_key or prefs.server_public_key != _cli("keys", "show", "--work-dir",
                                                                        str(backend.work)):
        prefs.server_public_key = _cli("keys", "show", "--work-dir", str(backend.work))
        assert bpy.ops.nerfart.generate_client_keys() == {"FINISHED"}
        _cli("keys", "authorize", "--work-dir", str(backend.work), "--", prefs.client_public_key)
    addon.connection.disconnect()
    assert bpy.ops.nerfart.connect() == {"FINISHED"}


def test_keys_are_required_and_an_authorised_key_connects(addon, fresh_file, prefs, backend):
    prefs.endpoint, prefs.timeout_s = backend.endpoint, 2.0
    prefs.server_public_key = prefs.client_public_key = prefs.client_secret_key = ""
    error = _refused("requires encryption keys")
    assert "keys show" in error and "Backend Public Key" in error
    prefs.server_public_key = _cli("keys", "show", "--work-dir", str(backend.work))
    assert len(prefs.server_public_key) == 40
    _refused("no key pair yet")
    assert bpy.ops.nerfart.generate_client_keys() == {"FINISHED"}
    public, secret = prefs.client_public_key, prefs.client_secret_key
    assert zmq.curve_public(secret.encode()) == public.encode(), "a matching CURVE key pair"
    error = _refused("refused this Blender's key")
    assert f"python -m backend keys authorize -- '{public}'" in error
    # (That a refusal ends the wait rather than the timeout is tested on the client itself, in test_auth.py.)
    # The preferences show the key, the command that authorises it, and the error.
    calls: list = []

    class Proxy:
        layout = RecordingLayout(calls, "preferences")

        def __getattr__(self, name):
            return getattr(prefs, name)

    type(prefs).draw(Proxy(), bpy.context)
    labels = [c[1].get("text", "") for c in calls if c[0] == "label"]
    assert any(public in text and "keys authorize" in text for text in labels)
    assert any("refused this Blender's key" in text for text in labels), "the error shows in the preferences"
    # (The clipboard itself is not there without a window system: only that the operator runs is checked.)
    assert bpy.ops.nerfart.copy_client_key(command=True) == {"FINISHED"}
    # Authorise it with the real command (the backend keeps running), and connect.
    _cli("keys", "authorize", "--name", "blender-test", "--work-dir", str(backend.work), "--", public)
    assert bpy.ops.nerfart.connect() == {"FINISHED"}
    rt = bpy.context.window_manager.nerfart_runtime
    assert rt.connection == "CONNECTED" and rt.error == "" and rt.gpu_name == "cpu"
    assert f"owner key:{public}" in backend.log()
    # A wrong backend key is caught too.
    wrong = zmq.curve_keypair()[0].decode()
    prefs.server_public_key, right = wrong, prefs.server_public_key
    addon.connection.disconnect()
    _refused("Backend Public Key in .* is not this backend's")
    prefs.server_public_key = right


def _submit_reconstruct(addon, scene, backend) -> object:
    from nerfart_blender.jobs_bpy import reconstruct_job

    job, inputs = reconstruct_job(scene, backend.endpoint)
    job.params.update(steps=1_000_000, time_budget_s=3600.0)  # runs until killed or cancelled
    addon.connection.submit(job, inputs)
    return job


@pytest.mark.slow
def test_backend_restart_reconnects_and_refreshes_jobs(addon, fresh_file, prefs, backend):
    conn = addon.connection
    _authorised_connection(addon, prefs, backend)
    rt = bpy.context.window_manager.nerfart_runtime
    scene = bpy.context.scene
    scene.nerfart.capture.folder = str(backend.capture)
    scene.nerfart.capture.preset = "TINY"
    first = _submit_reconstruct(addon, scene, backend)
    second = _submit_reconstruct(addon, scene, backend)
    pump(addon, lambda: first.state == "running" and second.state == "queued", "one job running, one queued")
    refs = {ref.job_id: ref for ref in scene.nerfart.backend.jobs}
    assert set(refs) == {first.job_id, second.job_id}
    client = conn.client()
    old_session = conn.session.info["session"]

    # Killed: the panel says so and that it is reconnecting.
    backend.kill()
    pump(addon, lambda: rt.connection == "LOST", "the connection shows as lost")
    assert "not responding" in rt.status_text and "reconnecting" in rt.status_text
    assert conn.reconnecting()

    # Back on the same address: connected again by itself, on the same socket, nothing pressed.
    backend.start()
    pump(addon, lambda: rt.connection == "CONNECTED", "reconnected after the restart")
    assert conn.client() is client and conn.session.info["session"] != old_session
    assert rt.error == ""
    # The job list is refreshed: the killed job is interrupted, the queued one runs on the new process, and
    # its progress comes here (the backend routes it to this key's new connection).
    pump(addon, lambda: refs[first.job_id].state == "interrupted", "the killed job shows as interrupted")
    pump(addon, lambda: refs[second.job_id].state == "running" and second.stage, "the requeued job runs")
    # Still this Blender's job on a multi-user backend: it can cancel it.
    assert bpy.ops.nerfart.cancel_job(job_id=second.job_id) == {"FINISHED"}
    pump(addon, lambda: refs[second.job_id].state == "cancelled", "the requeued job is cancelled")
    # The interrupted job resumes from the panel (from its checkpoint, or from the start if it had none): the
    # backend accepts it under the same id and its progress comes here again.
    assert bpy.ops.nerfart.resume_job(job_id=first.job_id) == {"FINISHED"}
    # The restarted backend imports torch and loads the checkpoint first: over 30 s on a loaded 2-core machine.
    pump(addon, lambda: refs[first.job_id].state == "running" and first.step > 0, "the resumed job runs",
         backend=backend)
    assert first.error == "" and rt.error == ""
    assert bpy.ops.nerfart.cancel_job(job_id=first.job_id) == {"FINISHED"}
    pump(addon, lambda: refs[first.job_id].state == "cancelled", "the resumed job is cancelled")

    # A restart quicker than the heartbeat timeout never shows as lost, but is noticed: the answers come from
    # another backend process. The running job shows as interrupted.
    third = _submit_reconstruct(addon, scene, backend)
    pump(addon, lambda: third.state == "running", "a third job runs")
    conn._timeout_s = 2 * HANG_S  # "quicker than the heartbeat timeout" however slow the restart is here
    session_before = conn.session.info["session"]
    backend.kill()
    backend.start()
    backend.wait_listening()
    seen = set()

    def back() -> bool:
        seen.add(rt.connection)
        return conn.session.state == "CONNECTED" and conn.session.info["session"] != session_before

    pump(addon, back, "the quick restart is noticed")
    assert "LOST" not in seen
    ref3 = next(r for r in scene.nerfart.backend.jobs if r.job_id == third.job_id)
    pump(addon, lambda: ref3.state == "interrupted", "the job killed by the quick restart is interrupted")
    assert conn.client() is client and rt.error == ""


def test_preferences_without_keys_stay_zero_config(addon, prefs):
    """No backend key: no CURVE (a loopback backend needs none), whatever the key pair fields hold."""
    conn = addon.connection
    assert conn.curve_keys("", "", "") is None
    assert conn.curve_keys("", "x", "y") is None
    server = zmq.curve_keypair()[0].decode()
    public, secret = (k.decode() for k in zmq.curve_keypair())
    assert conn.curve_keys(server, public, secret) == (server.encode(), public.encode(), secret.encode())
    other_secret = zmq.curve_keypair()[1].decode()
    for args, match in (((server, public, other_secret), "do not belong together"),
                        (("short", public, secret), "Backend Public Key .* is not a CURVE key"),
                        ((server, public, '"' * 40), "Secret Key .* is not a CURVE key"),
                        ((server, "", ""), "no key pair yet")):
        with pytest.raises(ValueError, match=match):
            conn.curve_keys(*args)
    opts = SimpleNamespace(endpoint="tcp://127.0.0.1:5555")
    assert addon.preferences.connect_options(opts) == {"curve": ("", "", ""), "client_id": ""}
    real = addon.preferences.connect_options(prefs)
    assert len(real["client_id"]) == 32 and prefs.client_id == real["client_id"], "made once and kept"
    assert addon.preferences.connect_options(prefs)["client_id"] == real["client_id"]
