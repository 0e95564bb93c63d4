"""End to end against a real backend process on loopback, with tiny settings, through the add-on's own operators
in background (blocking) mode: capture import, reconstruct, stylize (random CLIP, asked for explicitly), render
an animated camera's frames, extract a mesh; the images and the mesh land in the scene with the right sizes and
placement.

The backend is ``python -m backend serve`` run with the main environment's Python (it needs torch), also when
these tests run under another Blender's ``bpy`` (e.g. the 4.2 LTS environment, which has no torch). The
capture is the analytic-spheres capture of ``tests/test_jobs_live.py`` (written by that Python too): three
spheres within 0.65 units of the capture's origin, seen by 12 cameras 3 units away.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

bpy = pytest.importorskip("bpy", reason="the bpy module (Blender as a Python module) is not installed")
pytest.importorskip("zmq")

from backend_process import listening_endpoint  # noqa: E402
from conftest import REPO_ROOT  # noqa: E402
from waits import HANG_S  # noqa: E402

from protocol import Client, Message  # noqa: E402

pytestmark = pytest.mark.slow  # a real backend process trains, stylizes, renders and meshes

MOD = "nerfart_blender"
BACKEND_PYTHON = REPO_ROOT / ".venv" / "bin" / "python"
SIZE = 24  # the capture's images are SIZE x SIZE
N_VIEWS = 12
# The spheres of backend.nerf.synthetic.DEFAULT_SPHERES (centre, radius), in capture-world units.
SPHERES = (((0.3, 0.0, 0.0), 0.35), ((-0.3, 0.15, 0.1), 0.3), ((0.0, -0.3, -0.25), 0.25))
RED_SPHERE = 0
# A non-trivial placement: the capture is moved, turned about a tilted axis and scaled up uniformly.
PLACEMENT_LOCATION = (2.0, -1.0, 0.5)
PLACEMENT_ROTATION = (0.3, -0.2, 0.9)
PLACEMENT_SCALE = 1.5
RENDER_SIZE = (32, 24)  # 64 x 48 at 50 %


def _backend_python_problem() -> str | None:
    if not BACKEND_PYTHON.is_file():
        return f"no backend Python at {BACKEND_PYTHON} (the main .venv of the repository)"
    probe = subprocess.run([str(BACKEND_PYTHON), "-c", "import importlib.util, sys; "
                            "sys.exit(importlib.util.find_spec('torch') is None)"], capture_output=True, text=True,
                           timeout=60)
    if probe.returncode != 0:
        return f"the backend Python {BACKEND_PYTHON} has no torch (the backend needs it) {probe.stderr[-300:]}"
    return None


def _backend_env() -> dict[str, str]:
    """The environment for the backend's processes: one torch/OpenMP thread unless the caller chose otherwise.

    On a small shared CPU, torch's default of one spinning OpenMP thread per core makes the tiny reconstruction
    5-10x slower as soon as anything else runs (measured on 2 cores: 23 s with one thread, 163 s with two).
    """
    env = dict(os.environ)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env.setdefault(name, "1")
    return env


WRITE_CAPTURE = ("import sys; from pathlib import Path; sys.path.insert(0, 'tests'); "
                 "from test_jobs_live import write_sphere_capture; "
                 "write_sphere_capture(Path(sys.argv[1]))")


@contextlib.contextmanager
def running_backend(root: Path, serve_args: tuple[str, ...] = (), ready=lambda info: True):
    """A real backend process (``serve --device cpu`` plus ``serve_args``) on a free loopback port, with the
    sphere capture written beside it in ``root``; its ``hello_reply`` must satisfy ``ready`` (e.g. all its
    workers connected). Stopped with SIGTERM at the end, which must end it cleanly."""
    problem = _backend_python_problem()
    if problem is not None:
        pytest.skip(problem)
    capture = root / "capture"
    writer = subprocess.Popen([str(BACKEND_PYTHON), "-c", WRITE_CAPTURE, str(capture)], cwd=REPO_ROOT,
                              env=_backend_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log_path = root / "backend.log"
    log = open(log_path, "w")  # noqa: SIM115 - closed at teardown
    proc = subprocess.Popen([str(BACKEND_PYTHON), "-m", "backend", "serve", "--endpoint", "tcp://127.0.0.1:*", "--work-dir",
                             str(root / "work"), "--device", "cpu", *serve_args], cwd=REPO_ROOT, env=_backend_env(),
                            stdout=log, stderr=subprocess.STDOUT)

    def log_text() -> str:
        log.flush()
        return log_path.read_text(errors="replace")[-4000:]

    try:
        endpoint = listening_endpoint(log_path, 0, proc)  # it binds a port the OS gives it, and says which
        info = None
        deadline = time.monotonic() + HANG_S
        while info is None or not ready(info):
            assert proc.poll() is None, f"the backend exited with {proc.returncode}:\n{log_text()}"
            assert time.monotonic() < deadline, f"the backend was not ready within {HANG_S:g} s:\n{log_text()}"
            # Not answering yet: still starting (importing torch).
            with Client(endpoint, client_name="e2e-test") as client, contextlib.suppress(TimeoutError):
                info = client.handshake(timeout_s=1.0)
            time.sleep(0.2)
        out, _ = writer.communicate(timeout=HANG_S)
        assert writer.returncode == 0, f"writing the sphere capture failed:\n{out}"
        assert (capture / "transforms.json").is_file()
        yield SimpleNamespace(endpoint=endpoint, info=info, capture=capture, root=root, log=log_text)
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(HANG_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()
    assert proc.returncode == 0, f"the backend did not exit cleanly on SIGTERM ({proc.returncode}):\n" \
        + log_path.read_text(errors="replace")[-4000:]


@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    """A real backend process on a free loopback port (CPU), plus the sphere capture written beside it."""
    with running_backend(tmp_path_factory.mktemp("e2e")) as real:
        yield real


def _status(endpoint: str, job_id: str) -> dict:
    """The real server's record of a job (the parameters it received, its state)."""
    with Client(endpoint, client_name="e2e-test") as client:
        client.handshake(timeout_s=10)
        reply = client.request(Message("status", {"job_id": job_id}), timeout_s=10)
    (rec,) = reply.content["jobs"]
    return rec


def _matrix(m) -> np.ndarray:
    return np.array([[m[r][c] for c in range(4)] for r in range(4)])


@pytest.fixture(scope="module")
def flow(addon, backend):
    """A saved file connected to the backend, with the capture imported and placed, and reconstructed."""
    bpy.ops.wm.read_homefile(use_empty=True, use_factory_startup=True)
    addon.connection.disconnect()
    addon.connection.session.__init__()
    prefs = bpy.context.preferences.addons[MOD].preferences
    prefs.endpoint, prefs.timeout_s = backend.endpoint, 10.0
    blend = backend.root / "shot" / "e2e.blend"
    blend.parent.mkdir()
    bpy.ops.wm.save_as_mainfile(filepath=str(blend))
    assert bpy.ops.nerfart.connect() == {"FINISHED"}
    scene = bpy.context.scene
    nerf = scene.nerfart
    # Import the capture, then place it: moved, rotated and uniformly scaled.
    nerf.capture.folder = str(backend.capture)
    nerf.capture.set_resolution = True  # the cameras then frame exactly like the photos (asked for)
    assert bpy.ops.nerfart.import_capture() == {"FINISHED"}
    placement = nerf.capture.placement
    placement.location = PLACEMENT_LOCATION
    placement.rotation_euler = PLACEMENT_ROTATION
    placement.scale = (PLACEMENT_SCALE,) * 3
    bpy.context.view_layer.update()
    # Reconstruct with the smoke-test settings.
    nerf.capture.preset = "TINY"
    nerf.capture.steps = 150
    nerf.capture.holdout_every = 4
    assert bpy.ops.nerfart.reconstruct() == {"FINISHED"}
    yield SimpleNamespace(scene=scene, placement=placement, blend=blend, backend=backend, addon=addon,
                          stylize_job=None)
    addon.connection.disconnect()
    prefs.endpoint, prefs.timeout_s = "tcp://127.0.0.1:5555", 4.0


def _stylize_available(backend) -> bool:
    return "stylize" in backend.info["job_kinds"]


def _skip_without_stylize(backend) -> None:
    if not _stylize_available(backend):
        pytest.skip("the real backend does not run stylize jobs yet: its hello_reply job_kinds are "
                    f"{backend.info['job_kinds']} (backend/jobs/stylize.py is not registered in "
                    "backend.jobs.default_runners())")


def _stylize_once(flow) -> str:
    """Stylize through the operator (once per module): preset Tiny, random CLIP asked for explicitly."""
    if flow.stylize_job is None:
        st = flow.scene.nerfart.stylize
        st.prompt = "a marble statue"
        st.clip_pretrained = "random"
        st.preset = "TINY"  # with Image Scale 0: the preset's resolution (at most 48 px)
        st.iterations = 2
        assert bpy.ops.nerfart.stylize() == {"FINISHED"}
        ref = flow.scene.nerfart.backend.jobs[-1]
        assert ref.kind == "STYLIZE" and ref.state == "done", (ref.state, ref.error)
        flow.stylize_job = ref.job_id
    return flow.stylize_job


def test_capture_import_and_reconstruct(flow):
    scene, placement = flow.scene, flow.placement
    cap = scene.nerfart.capture
    meta = json.loads((flow.backend.capture / "transforms.json").read_text())
    cams = sorted((o for o in cap.cameras.objects if o.type == "CAMERA"), key=lambda o: o.name)
    assert len(cams) == N_VIEWS and all(c.parent == placement for c in cams)
    assert (scene.render.resolution_x, scene.render.resolution_y) == (SIZE, SIZE)
    # Each camera sits where the file says, carried by the placement: world = placement @ c2w (OpenGL axes).
    p = _matrix(placement.matrix_world)
    assert np.allclose(p[:3, 3], PLACEMENT_LOCATION) and np.isclose(np.linalg.det(p[:3, :3]), PLACEMENT_SCALE**3)
    by_image = {Path(c["nerfart_image"]).name: c for c in cams}
    for frame in meta["frames"]:
        cam = by_image[Path(frame["file_path"]).name]
        np.testing.assert_allclose(_matrix(cam.matrix_world), p @ np.array(frame["transform_matrix"]), atol=1e-5)
        assert (cam["nerfart_width"], cam["nerfart_height"]) == (SIZE, SIZE)
    # The reconstruction ran on the real backend with the tiny settings, and is what stylize starts from.
    be = scene.nerfart.backend
    ref = be.jobs[0]
    assert ref.kind == "RECONSTRUCT" and ref.state == "done" and be.reconstruct_job == ref.job_id
    rec = _status(flow.backend.endpoint, ref.job_id)
    assert rec["state"] == "done" and rec["kind"] == "reconstruct"
    assert rec["params"]["preset"] == "tiny" and rec["params"]["steps"] == 150
    assert rec["params"]["holdout_every"] == 4 and rec["params"]["capture_path"] == str(flow.backend.capture)
    job = flow.addon.connection.session.jobs[ref.job_id]
    assert job.outputs["heldout_psnr"] > 15.0, job.outputs
    rt = bpy.context.window_manager.nerfart_runtime
    assert rt.preview is not None and rt.error == "" and rt.connection == "CONNECTED"
    assert rt.gpu_name == "cpu", rt.gpu_name


def test_stylize_with_random_clip(flow):
    _skip_without_stylize(flow.backend)
    job_id = _stylize_once(flow)
    be = flow.scene.nerfart.backend
    rec = _status(flow.backend.endpoint, job_id)
    assert rec["state"] == "done" and rec["kind"] == "stylize"
    assert rec["params"]["clip_pretrained"] == "random" and rec["params"]["preset"] == "tiny"
    assert rec["params"]["source_job"] == be.reconstruct_job and rec["params"]["prompt"] == "a marble statue"
    assert "scale" not in rec["params"] and rec["params"]["iterations"] == 2
    outputs = flow.addon.connection.session.jobs[job_id].outputs
    assert outputs["iterations"] == 2 and outputs["prompt_driven"] is False, outputs
    assert bpy.context.window_manager.nerfart_runtime.error == ""


def test_render_animated_camera(flow):
    from mathutils import Matrix, Vector

    scene, placement = flow.scene, flow.placement
    be = scene.nerfart.backend
    if _stylize_available(flow.backend):
        source = _stylize_once(flow)
        be.render_source = "LATEST_STYLIZED"
    else:  # only while the backend has no stylize runner (see test_stylize_with_random_clip's skip)
        source = be.reconstruct_job
        be.render_source = "RECONSTRUCTION"
    # A camera (not part of the capture, not parented) flying around the placed capture: three keyframed poses
    # 3 capture units (4.5 Blender units) from its origin, each looking at it.
    p = Matrix(placement.matrix_world)
    target = p @ Vector((0.0, 0.0, 0.0))
    cam = bpy.data.objects.new("Shot", bpy.data.cameras.new("Shot"))
    scene.collection.objects.link(cam)
    cam.rotation_mode = "QUATERNION"
    for frame, azimuth in ((1, 10.0), (2, 40.0), (3, 75.0)):
        az, el = math.radians(azimuth), math.radians(15.0)
        local = Vector((3 * math.cos(az) * math.cos(el), 3 * math.sin(az) * math.cos(el), 3 * math.sin(el)))
        cam.location = p @ local
        cam.rotation_quaternion = (target - cam.location).to_track_quat("-Z", "Y")  # look at it, upright
        cam.keyframe_insert("location", frame=frame)
        cam.keyframe_insert("rotation_quaternion", frame=frame)
    scene.camera = cam
    scene.frame_start, scene.frame_end, scene.frame_step = 1, 3, 1
    scene.frame_set(2)
    r = scene.render
    r.resolution_x, r.resolution_y, r.resolution_percentage = RENDER_SIZE[0] * 2, RENDER_SIZE[1] * 2, 50
    bpy.ops.wm.save_mainfile()
    assert bpy.ops.nerfart.render() == {"FINISHED"}
    assert scene.frame_current == 2
    ref = be.jobs[-1]
    assert ref.kind == "RENDER" and ref.state == "done" and ref.source_job == source
    rec = _status(flow.backend.endpoint, ref.job_id)
    sent = rec["params"]["cameras"]
    assert [c["frame"] for c in sent] == [1, 2, 3]
    for c in sent:  # in the capture's world: 3 units from its origin, looking at it; 32 x 24 pixels
        c2w = np.array(c["c2w"])
        assert (c["width"], c["height"]) == RENDER_SIZE
        np.testing.assert_allclose(np.linalg.norm(c2w[:3, 3]), 3.0, atol=1e-4)
        np.testing.assert_allclose(c2w[:3, 2], -c2w[:3, 3] / 3.0, atol=1e-4)  # OpenCV +Z: the optical axis
    # The frames are next to the .blend, in the default output folder's sub-folder for this job.
    out_dir = Path(ref.output_dir)
    assert out_dir.parent == flow.blend.parent / "nerfart" / "renders"
    files = sorted(out_dir.glob("*.png"))
    assert [f.name for f in files] == ["frame_0001.png", "frame_0002.png", "frame_0003.png"]
    alphas = []
    for f in files:
        img = bpy.data.images.load(str(f), check_existing=False)
        try:
            assert tuple(img.size) == RENDER_SIZE
            px = np.empty(RENDER_SIZE[0] * RENDER_SIZE[1] * 4, dtype=np.float32)
            img.pixels.foreach_get(px)
        finally:
            bpy.data.images.remove(img)
        alphas.append(px.reshape(RENDER_SIZE[1], RENDER_SIZE[0], 4)[..., 3])
    for f, alpha in zip(files, alphas, strict=True):
        # The spheres are in view and roughly centred: the capture's placement was undone for the backend.
        covered = alpha > 0.5
        assert 0.05 < covered.mean() < 0.8, (f.name, covered.mean())
        ys, xs = np.nonzero(covered)
        centre = np.array([xs.mean() + 0.5, ys.mean() + 0.5])
        assert np.all(np.abs(centre - np.array(RENDER_SIZE) / 2) < 5), (f.name, centre)
    assert not np.array_equal(alphas[0], alphas[2]), "the camera moves: the first and last frames differ"
    # The frames are loaded as one image sequence whose frame k is the file frame_000k (checked above: the
    # right size). Blender reads a sequence datablock's own size at no frame (0 x 0) until a viewer shows a
    # frame, so the frames are resolved through an image user, as an Image Editor does.
    seq = next(i for i in bpy.data.images if i.name == f"NeRF-Art {ref.name}")
    assert seq.source == "SEQUENCE"
    assert Path(bpy.path.abspath(seq.filepath)) == files[0]
    probe = bpy.data.materials.new("sequence probe")
    try:
        if bpy.app.version < (5, 0, 0):
            probe.use_nodes = True
        node = probe.node_tree.nodes.new("ShaderNodeTexImage")
        node.image = seq
        for frame, f in zip((1, 2, 3), files, strict=True):
            node.image_user.frame_current = frame
            assert Path(seq.filepath_from_user(image_user=node.image_user)) == f
    finally:
        bpy.data.materials.remove(probe)
    assert bpy.context.window_manager.nerfart_runtime.error == ""


def test_extract_mesh_in_place(flow):
    scene, placement = flow.scene, flow.placement
    be = scene.nerfart.backend
    be.render_source = "LATEST_STYLIZED" if _stylize_available(flow.backend) else "RECONSTRUCTION"
    if _stylize_available(flow.backend):
        _stylize_once(flow)
    scene.nerfart.outputs.mesh_resolution = 48
    scene.nerfart.outputs.mesh_format = "PLY"  # vertex colours; the textured GLB is test_main_job's
    assert bpy.ops.nerfart.extract_mesh() == {"FINISHED"}
    ref = be.jobs[-1]
    assert ref.kind == "EXTRACT_MESH" and ref.state == "done"
    job = flow.addon.connection.session.jobs[ref.job_id]
    obj = bpy.data.objects[job.meta["object"]]
    mesh = obj.data
    assert obj.type == "MESH" and obj.name.startswith("NeRF-Art mesh")
    assert obj.parent == placement and obj.name in placement.users_collection[0].objects
    assert len(mesh.vertices) > 100 and len(mesh.polygons) > 100
    assert len(mesh.vertices) == job.outputs["vertices"]
    # Colours: a per-vertex colour attribute, shown by the object's material.
    assert "Col" in mesh.color_attributes
    col = mesh.color_attributes["Col"]
    assert col.domain == "POINT" and mesh.color_attributes.active_color.name == "Col"
    mat = mesh.materials[0]
    node = next(n for n in mat.node_tree.nodes if n.type == "VERTEX_COLOR")
    assert node.layer_name == "Col"
    assert any(link.from_node == node and link.to_socket.name == "Base Color" for link in mat.node_tree.links)
    # Placement: the mesh is the capture's, carried by the placement empty. In the capture's frame (inverse
    # placement) its vertices lie within 1.2 units of the origin; in the world they lie on the spheres moved,
    # turned and scaled by the placement (the tiny model's surface sits up to ~0.25 capture units inside the
    # true spheres, never outside).
    bpy.context.view_layer.update()
    co = np.empty(len(mesh.vertices) * 3, dtype=np.float64)
    mesh.vertices.foreach_get("co", co)
    co = co.reshape(-1, 3)
    mw = _matrix(obj.matrix_world)
    world = co @ mw[:3, :3].T + mw[:3, 3]
    p = _matrix(placement.matrix_world)
    local = (world - p[:3, 3]) @ np.linalg.inv(p[:3, :3]).T
    assert np.linalg.norm(local, axis=1).max() < 1.2
    placed = [(p[:3, :3] @ c + p[:3, 3], PLACEMENT_SCALE * r) for c, r in SPHERES]
    world_sdf = np.min([np.linalg.norm(world - c, axis=1) - r for c, r in placed], axis=0)
    assert world_sdf.max() < 0.05 * PLACEMENT_SCALE, np.percentile(world_sdf, [0, 50, 100])
    assert np.median(world_sdf) > -0.2 * PLACEMENT_SCALE, np.percentile(world_sdf, [0, 50, 100])
    lo, hi = world.min(0), world.max(0)
    sphere_lo = np.min([c - r for c, r in placed], axis=0)
    sphere_hi = np.max([c + r for c, r in placed], axis=0)
    assert np.all(lo > sphere_lo - 0.05) and np.all(hi < sphere_hi + 0.05), (lo, hi, sphere_lo, sphere_hi)
    assert np.linalg.norm(hi - lo) > 0.5 * PLACEMENT_SCALE, "a mesh of the spheres, not a speck"
    # Colours: the red sphere's outer side (where no other sphere is near) is red.
    rgba = np.empty(len(col.data) * 4, dtype=np.float32)
    col.data.foreach_get("color_srgb", rgba)
    rgba = rgba.reshape(-1, 4)
    (c_red, r_red) = SPHERES[RED_SPHERE]
    on_red = np.linalg.norm(local - c_red, axis=1) - r_red < 0.03
    on_red &= local[:, 0] > 0.5  # the part of the red sphere no other sphere is near
    assert on_red.sum() > 10
    mean = rgba[on_red, :3].mean(0)
    assert mean[0] > mean[1] + 0.2 and mean[0] > mean[2] + 0.2, mean
    assert bpy.context.window_manager.nerfart_runtime.error == ""
