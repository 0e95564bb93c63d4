"""Subject bounds through the jobs: a reconstruction decides and keeps them, renders show the subject alone with
alpha (or, asked for, the background around it, the reconstruction's around a stylized subject), meshes hold the
subject only."""

from __future__ import annotations

import copy
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_jobs_live import write_sphere_capture

from backend.jobs.local import run_job_locally
from backend.jobs.render import quantized_straight_alpha
from backend.jobstore.store import JobStore
from backend.nerf.checkpoint import NeRFCheckpoint, load_checkpoint, save_checkpoint
from backend.nerf.config import ReconstructConfig
from backend.nerf.frame_renderer import FrameRenderer
from backend.nerf.model import NeRFModel
from backend.nerf.rays import rays_for_image
from backend.nerf.subject import SubjectBounds
from backend.nerf.synthetic import ring_cameras
from backend.outputs.glb import read_glb
from captures.normalize import Normalization
from protocol import Message

NORM = Normalization(center=np.array([0.5, -1.0, 2.0]), radius=2.0, method="manual")
SIZE = 16


def ball_model(seed: int = 0) -> NeRFModel:
    """A random-coloured opaque ball of radius ~0.6 (the occupied cells), fine steps."""
    torch.manual_seed(seed)
    config = ReconstructConfig.tiny(render_steps=512).model_config("matte", separate_matte=False,
                                                                    pixel_footprint=None)
    model = NeRFModel(config)
    model.field.config.density_bias = 4.0
    with torch.no_grad():
        model.field.encoding.table.normal_(0.0, 0.5, generator=torch.Generator().manual_seed(seed))
    domain = model.domain
    model.occupancy.update(0, lambda u: (domain.from_unit_cube(u).norm(dim=-1) < 0.6).float(),
                           generator=torch.Generator().manual_seed(seed))
    return model


def half_box() -> SubjectBounds:
    """A box that holds the ball's +x side and a band of it in y: the first cameras (on +x) see it cut."""
    m = np.eye(4)
    m[:3, :3] = np.diag([0.45, 0.3, 0.8])
    m[:3, 3] = (0.25, 0.0, 0.0)
    return SubjectBounds("box", m)


def add_job(store: JobStore, kind: str, ckpt: NeRFCheckpoint, params: dict | None = None) -> str:
    """A finished job of ``kind`` holding ``ckpt`` (what render and extract_mesh read)."""
    rec = store.create(kind, params or {"capture": "test"}, owner="test")
    save_checkpoint(ckpt, store.job_dir(rec.job_id) / "outputs" / "checkpoint.pt")
    rec.outputs, rec.state = {"checkpoint": "checkpoint.pt"}, "done"
    if ckpt.subject is not None and kind == "reconstruct":
        rec.outputs["subject_bounds"] = ckpt.subject.to_world(NORM)
    store.save(rec)
    return rec.job_id


def world_cameras(n: int = 2) -> object:
    return NORM.cameras_to_world(ring_cameras(n, SIZE, distance=2.6, focal=1.6 * SIZE))


def protocol_cameras(cams) -> list[dict]:
    return [{"name": f"cam{i}", "frame": i + 1, "c2w": cams.c2w[i].tolist(), "fx": float(cams.fx[i]),
             "fy": float(cams.fy[i]), "cx": float(cams.cx[i]), "cy": float(cams.cy[i]),
             "width": int(cams.width[i]), "height": int(cams.height[i])} for i in range(len(cams))]


def render_frames(work: Path, params: dict) -> tuple[object, list[np.ndarray]]:
    frames: list[np.ndarray] = []

    def on_message(msg: Message) -> None:
        if msg.type == "frame":
            frames.append(np.asarray(Image.open(io.BytesIO(bytes(msg.blob(msg.content["image"]))))))

    rec = run_job_locally("render", params, work, "cpu", on_message)
    assert rec.state == "done", rec.error
    return rec, frames


def bounds_miss(cams, i: int, bounds: SubjectBounds) -> np.ndarray:
    """``(H, W)`` pixels whose rays miss the bounds (outside their projection)."""
    o, d = rays_for_image(NORM.cameras_to_model(cams), i)
    s_min, s_max = bounds.ray_interval(o, d)
    return (s_max <= s_min).reshape(int(cams.height[i]), int(cams.width[i])).numpy()


# ---------------------------------------------------------------------------------------------------------
# Reconstruct
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sphere_capture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_sphere_capture(tmp_path_factory.mktemp("subject") / "capture", n_views=8)


@pytest.fixture(scope="module")
def trained(sphere_capture: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object, list[str]]:
    """A finished tiny reconstruction of the spheres: (work dir, job record, progress stages)."""
    work = tmp_path_factory.mktemp("work")
    stages: list[str] = []
    rec = run_job_locally("reconstruct", {"capture_path": str(sphere_capture), "preset": "tiny", "steps": 150,
                                          "holdout_every": 0}, work, "cpu",
                          lambda m: stages.append(m.content["stage"]) if m.type == "progress" else None)
    assert rec.state == "done", rec.error
    return work, rec, stages


@pytest.mark.slow
def test_a_reconstruction_keeps_its_subject_bounds_in_checkpoint_and_outputs(trained) -> None:
    work, rec, stages = trained
    assert "finding the subject" in stages
    out = rec.outputs
    assert out["subject_source"] in ("detected", "cameras")
    assert out["subject_found"] == (out["subject_source"] == "detected")
    assert (out["subject_source"] == "cameras") == bool(out.get("subject_note"))
    ckpt = load_checkpoint(work / "jobs" / rec.job_id / "outputs" / "checkpoint.pt", "cpu")
    assert ckpt.subject is not None
    # The outputs' capture-world form is the checkpoint's model-coordinate bounds.
    again = SubjectBounds.from_world(out["subject_bounds"], ckpt.normalization)
    np.testing.assert_allclose(again.matrix, ckpt.subject.matrix, atol=1e-9)
    assert json.loads(json.dumps(out["subject_bounds"])) == out["subject_bounds"]  # plain JSON for the protocol
    # The bounds hold where the cameras look (the model origin) and, the capture being matted, everything the
    # reconstruction renders: all three spheres, also the softly reconstructed ones.
    assert ckpt.background == "matte"
    assert bool(ckpt.subject.contains(torch.zeros(1, 3, dtype=torch.float64)).all())
    from backend.nerf.synthetic import DEFAULT_SPHERES

    for sphere in DEFAULT_SPHERES:
        far_side = np.asarray(sphere.center) * (1 + sphere.radius / np.linalg.norm(sphere.center))
        points = ckpt.normalization.to_model(np.stack([np.asarray(sphere.center), 0.9 * far_side]))
        assert bool(ckpt.subject.contains(torch.as_tensor(points)).all()), sphere


def test_given_bounds_are_used_and_bad_ones_refused_before_training(sphere_capture: Path, tmp_path: Path) -> None:
    from captures import load_capture

    norm = load_capture(sphere_capture).normalization
    given = SubjectBounds("ellipsoid", np.diag([0.7, 0.6, 0.5, 1.0]))
    rec = run_job_locally("reconstruct", {"capture_path": str(sphere_capture), "preset": "tiny", "steps": 5,
                                          "holdout_every": 0, "subject_bounds": given.to_world(norm)},
                          tmp_path, "cpu", lambda m: None)
    assert rec.state == "done", rec.error
    assert rec.outputs["subject_source"] == "given" and rec.outputs["subject_found"] is True
    ckpt = load_checkpoint(tmp_path / "jobs" / rec.job_id / "outputs" / "checkpoint.pt", "cpu")
    assert ckpt.subject.shape == "ellipsoid"
    np.testing.assert_allclose(ckpt.subject.matrix, given.matrix, atol=1e-9)

    flat = np.diag([1.0, 1.0, 0.0, 1.0]).tolist()
    stages: list[str] = []
    bad = run_job_locally("reconstruct", {"capture_path": str(sphere_capture), "preset": "tiny", "steps": 5,
                                          "subject_bounds": {"shape": "box", "matrix": flat}}, tmp_path, "cpu",
                          lambda m: stages.append(m.content["stage"]) if m.type == "progress" else None)
    assert bad.state == "failed"
    assert "params.subject_bounds" in bad.error["message"] and "zero size" in bad.error["message"]
    assert "training" not in stages


def test_a_resumed_reconstruction_keeps_or_decides_its_bounds(sphere_capture: Path, tmp_path: Path) -> None:
    from backend.jobs.local import resume_job_locally

    rec = run_job_locally("reconstruct", {"capture_path": str(sphere_capture), "preset": "tiny", "steps": 5,
                                          "holdout_every": 0}, tmp_path, "cpu", lambda m: None)
    assert rec.state == "done", rec.error
    path = tmp_path / "jobs" / rec.job_id / "outputs" / "checkpoint.pt"
    store = JobStore(tmp_path)

    def interrupt() -> None:
        record = store.get(rec.job_id)
        record.state = "running"  # what a backend killed mid-job leaves; the store then finds it interrupted
        store.save(record)
        assert JobStore(tmp_path).get(rec.job_id).state == "interrupted"

    # Interrupted after training finished: the finished checkpoint's bounds are kept.
    interrupt()
    again = resume_job_locally(rec.job_id, tmp_path, "cpu", lambda m: None)
    assert again.state == "done" and again.outputs["subject_source"] == "checkpoint"
    assert again.outputs["subject_bounds"] == rec.outputs["subject_bounds"]
    # A finished checkpoint from before subject bounds existed: they are decided on resuming, and kept.
    ckpt = load_checkpoint(path, "cpu")
    ckpt.subject = None
    save_checkpoint(ckpt, path)
    interrupt()
    again = resume_job_locally(rec.job_id, tmp_path, "cpu", lambda m: None)
    assert again.state == "done" and again.outputs["subject_source"] in ("detected", "cameras")
    assert load_checkpoint(path, "cpu").subject is not None


# ---------------------------------------------------------------------------------------------------------
# Render
# ---------------------------------------------------------------------------------------------------------


def test_render_frames_hold_the_subject_alone_with_alpha(tmp_path: Path) -> None:
    model, bounds = ball_model(), half_box()
    ckpt = NeRFCheckpoint(model, ReconstructConfig.tiny(), "contract", normalization=NORM, subject=bounds)
    store = JobStore(tmp_path)
    job = add_job(store, "reconstruct", ckpt)
    cams = world_cameras()
    rec, frames = render_frames(tmp_path, {"source_job": job, "cameras": protocol_cameras(cams)})
    assert rec.outputs["subject_source"] == "checkpoint" and rec.outputs["include_background"] is False
    np.testing.assert_allclose(SubjectBounds.from_world(rec.outputs["subject_bounds"], NORM).matrix, bounds.matrix,
                               atol=1e-9)
    whole = FrameRenderer(ckpt)
    for i, png in enumerate(frames):
        miss = bounds_miss(cams, i, bounds)
        assert miss.any() and (~miss).any()
        assert (png[..., 3][miss] == 0).all(), "nothing of the subject outside the bounds' projection"
        full = quantized_straight_alpha(whole.render(cams, i)[0], 8)
        assert (full[..., 3][miss] > 128).any(), "the whole scene does reach there: the bounds cut it"
        # Inside, where the subject is opaque, it is the scene as it is (the cameras see the +x side, whose
        # surface lies inside the bounds).
        solid = png[..., 3] >= 254
        assert solid.sum() > 10
        assert np.abs(png[solid].astype(int) - full[solid].astype(int)).max() <= 3

    # include_background on a reconstruction: its whole scene, as before bounds existed.
    rec, frames = render_frames(tmp_path, {"source_job": job, "cameras": protocol_cameras(cams),
                                           "include_background": True})
    assert rec.outputs["include_background"] is True and rec.outputs["background_model"] == "source"
    for i, png in enumerate(frames):
        np.testing.assert_array_equal(png, quantized_straight_alpha(whole.render(cams, i)[0], 8))


def test_exr_frames_of_the_subject_are_empty_outside_the_bounds(tmp_path: Path) -> None:
    import OpenEXR

    bounds = half_box()
    ckpt = NeRFCheckpoint(ball_model(), ReconstructConfig.tiny(), "contract", normalization=NORM, subject=bounds)
    job = add_job(JobStore(tmp_path), "reconstruct", ckpt)
    cams = world_cameras(1)
    rec = run_job_locally("render", {"source_job": job, "cameras": protocol_cameras(cams), "format": "exr",
                                     "depth": True}, tmp_path, "cpu", lambda m: None)
    assert rec.state == "done", rec.error
    with OpenEXR.File(str(tmp_path / "jobs" / rec.job_id / "outputs" / rec.outputs["frames"][0]),
                      separate_channels=True) as exr:
        ch = {k: v.pixels for k, v in exr.parts[0].channels.items()}
    miss = bounds_miss(cams, 0, bounds)
    assert (ch["ViewLayer.Combined.A"][miss] == 0).all() and (ch["ViewLayer.Depth.Z"][miss] == 1e10).all()
    assert (ch["ViewLayer.Normal.X"][miss] == 0).all()
    solid = ch["ViewLayer.Combined.A"] > 0.99
    assert solid.sum() > 10 and (ch["ViewLayer.Depth.Z"][solid] < 1e9).all()


def test_given_render_bounds_replace_the_checkpoints_and_bad_ones_fail(tmp_path: Path) -> None:
    model = ball_model()
    ckpt = NeRFCheckpoint(model, ReconstructConfig.tiny(), "matte", normalization=NORM, subject=half_box())
    job = add_job(JobStore(tmp_path), "reconstruct", ckpt)
    cams = world_cameras(1)
    small = SubjectBounds("ellipsoid", np.diag([0.3, 0.3, 0.3, 1.0]))
    rec, frames = render_frames(tmp_path, {"source_job": job, "cameras": protocol_cameras(cams),
                                           "subject_bounds": small.to_world(NORM)})
    assert rec.outputs["subject_source"] == "given"
    assert (frames[0][..., 3][bounds_miss(cams, 0, small)] == 0).all()
    bad = run_job_locally("render", {"source_job": job, "cameras": protocol_cameras(cams),
                                     "subject_bounds": {"shape": "box", "matrix": np.ones((4, 4)).tolist()}},
                          tmp_path, "cpu", lambda m: None)
    assert bad.state == "failed" and "params.subject_bounds" in bad.error["message"]


def test_given_bounds_of_a_stylization_that_grew_the_shape_are_grown_as_it_grew_them(tmp_path: Path) -> None:
    """The add-on sends the subject's own bounds with every job: for a stylized model whose shape could grow, the
    render takes them grown by its shape freedom, so what grew above them is not cut off."""
    model = ball_model()  # a ball of radius 0.6
    store = JobStore(tmp_path)
    rec_job = add_job(store, "reconstruct", NeRFCheckpoint(model, ReconstructConfig.tiny(), "matte",
                                                           normalization=NORM))
    small = SubjectBounds("ellipsoid", np.diag([0.3, 0.3, 0.3, 1.0]))
    sty_job = add_job(store, "stylize", NeRFCheckpoint(copy.deepcopy(model), ReconstructConfig.tiny(), "matte",
                                                       normalization=NORM, subject=small.grown(0.2)),
                      {"source_job": rec_job, "prompt": "a big hat"})
    record = store.get(sty_job)
    record.outputs.update(shape_freedom=0.2, colour_only=False)
    store.save(record)
    cams = world_cameras(1)
    params = {"source_job": sty_job, "cameras": protocol_cameras(cams), "subject_bounds": small.to_world(NORM)}
    rec, frames = render_frames(tmp_path, params)
    assert rec.outputs["subject_source"] == "given, grown by the stylization's shape freedom 0.2"
    alpha = frames[0][..., 3]
    grown = small.grown(0.2)
    assert (alpha[bounds_miss(cams, 0, grown)] == 0).all()
    assert (alpha[bounds_miss(cams, 0, small) & ~bounds_miss(cams, 0, grown)] > 0).any(), "the grown part shows"
    # A colour-only stylization (or freedom 0) keeps the given bounds as they are.
    record.outputs.update(colour_only=True)
    store.save(record)
    rec, frames = render_frames(tmp_path, params)
    assert rec.outputs["subject_source"] == "given"
    assert (frames[0][..., 3][bounds_miss(cams, 0, small)] == 0).all()


def test_a_checkpoint_without_bounds_renders_the_whole_scene(tmp_path: Path) -> None:
    ckpt = NeRFCheckpoint(ball_model(), ReconstructConfig.tiny(), "matte", normalization=NORM)
    job = add_job(JobStore(tmp_path), "reconstruct", ckpt)
    cams = world_cameras(1)
    rec, frames = render_frames(tmp_path, {"source_job": job, "cameras": protocol_cameras(cams)})
    assert rec.outputs["subject_bounds"] is None and rec.outputs["subject_source"] == "none"
    np.testing.assert_array_equal(frames[0], quantized_straight_alpha(FrameRenderer(ckpt).render(cams, 0)[0], 8))


def test_a_stylized_subject_renders_in_the_reconstructions_background(tmp_path: Path) -> None:
    rec_model, bounds = ball_model(3), half_box()
    sty_model = copy.deepcopy(rec_model)
    g = torch.Generator().manual_seed(9)
    with torch.no_grad():
        for p in sty_model.field.colour_mlp.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.8)
    config = ReconstructConfig.tiny()
    ckpt_rec = NeRFCheckpoint(rec_model, config, "contract", normalization=NORM, subject=bounds)
    # As a stylize job's checkpoint: the same cameras and normalization, here without bounds of its own (then
    # the reconstruction's are used).
    ckpt_sty = NeRFCheckpoint(sty_model, config, "contract", normalization=NORM,
                              metrics={"stylize_iterations": 3.0})
    store = JobStore(tmp_path)
    rec_job = add_job(store, "reconstruct", ckpt_rec)
    sty_job = add_job(store, "stylize", ckpt_sty, {"source_job": rec_job, "prompt": "x"})
    cams = world_cameras()
    rec, frames = render_frames(tmp_path, {"source_job": sty_job, "cameras": protocol_cameras(cams),
                                           "include_background": True})
    assert rec.outputs["background_model"] == f"reconstruction {rec_job}"
    assert rec.outputs["subject_source"] == "reconstruction"
    reference = FrameRenderer(ckpt_sty, subject=bounds, background=ckpt_rec)
    rec_whole = FrameRenderer(ckpt_rec)
    for i, png in enumerate(frames):
        np.testing.assert_array_equal(png, quantized_straight_alpha(reference.render(cams, i)[0], 8))
        miss = bounds_miss(cams, i, bounds)
        rec_png = quantized_straight_alpha(rec_whole.render(cams, i)[0], 8)
        # Outside the bounds the background is the reconstruction's own render (to the last 8-bit level).
        assert np.abs(png[miss].astype(int) - rec_png[miss].astype(int)).max() <= 1
        assert (png[..., 3][miss] > 128).any()
        # Inside, the stylized colours.
        assert np.abs(png[~miss][..., :3].astype(int) - rec_png[~miss][..., :3].astype(int)).max() > 20

    # By default the stylized subject alone.
    _, frames = render_frames(tmp_path, {"source_job": sty_job, "cameras": protocol_cameras(cams)})
    for i, png in enumerate(frames):
        assert (png[..., 3][bounds_miss(cams, i, bounds)] == 0).all()


# ---------------------------------------------------------------------------------------------------------
# Mesh
# ---------------------------------------------------------------------------------------------------------


def unit_coordinates(bounds: SubjectBounds, points: np.ndarray) -> np.ndarray:  # [N, 3] -> [N]
    """How far inside the unit shape each model point lies (<= 1 inside: max-norm for a box, length for an
    ellipsoid)."""
    inv = np.linalg.inv(bounds.matrix)
    u = points @ inv[:3, :3].T + inv[:3, 3]
    return np.abs(u).max(axis=1) if bounds.shape == "box" else np.linalg.norm(u, axis=1)


def mesh_vertices(work: Path, params: dict) -> tuple[object, np.ndarray]:
    """Run an extract_mesh job; its record and the world vertices it sent (PLY arrays or the GLB's)."""
    meshes: list[Message] = []
    rec = run_job_locally("extract_mesh", params, work, "cpu", lambda m: meshes.append(m) if m.type == "mesh" else None)
    assert rec.state == "done", rec.error
    msg = meshes[0]
    if msg.content["format"] == "ply":
        return rec, msg.array(msg.content["vertices"]).astype(np.float64)
    return rec, read_glb(bytes(msg.blob(msg.content["glb"]))).vertices.astype(np.float64)


@pytest.mark.slow
@pytest.mark.parametrize("mesh_format", ["ply", "glb"])
def test_meshes_hold_the_subject_only(trained, mesh_format: str) -> None:
    work, recon, _ = trained
    # A world box holding the +x half of the red sphere (centre (0.3, 0, 0), radius 0.35): the mesh is cut at x = 0.
    centre, half = np.array([0.4, 0.0, 0.0]), np.array([0.4, 0.6, 0.6])
    matrix = np.eye(4)
    matrix[:3, :3], matrix[:3, 3] = np.diag(half), centre
    params = {"source_job": recon.job_id, "resolution": 32, "mesh_format": mesh_format, "isolevel": 10.0,
              "subject_bounds": {"shape": "box", "matrix": matrix.tolist()}}
    if mesh_format == "glb":
        params["texture_size"] = 512
    rec, world = mesh_vertices(work, params)
    assert rec.outputs["subject_source"] == "given" and len(world) > 50
    unit = np.abs(world - centre) / half
    assert unit.max() <= 1.0 + 1e-4, "every vertex lies inside the bounds"
    # The sphere is cut by the box's x = 0 face and closed there; the rest of it is its own surface.
    assert (np.abs(world[:, 0]) < 1e-4).sum() >= 5
    assert world[:, 0].max() > 0.55
    # Without given bounds: the reconstruction's own.
    rec, whole = mesh_vertices(work, {"source_job": recon.job_id, "resolution": 32, "isolevel": 10.0})
    assert rec.outputs["subject_source"] == "checkpoint" and len(whole) > 50
    norm = load_checkpoint(work / "jobs" / recon.job_id / "outputs" / "checkpoint.pt", "cpu").normalization
    own = SubjectBounds.from_world(recon.outputs["subject_bounds"], norm)
    assert unit_coordinates(own, norm.to_model(whole)).max() <= 1.0 + 1e-4


def test_a_mesh_leaves_out_what_the_models_grid_leaves_out(tmp_path: Path) -> None:
    """Inside its bounds a mesh holds only what the model's renders sample, its occupied cells: a stylization that
    let the shape grow leaves the room's cells within its grown bounds out of its grid, and they stay out of the
    mesh too."""
    model = ball_model(4)
    whole_grid = model.occupancy.binary.clone()
    r = model.occupancy.resolution
    lo, hi = np.array([-0.9, -0.9, -0.9]), np.array([0.9, 0.9, 0.9])
    bounds = SubjectBounds("box", np.diag([*(hi - lo) / 2, 1.0]))
    store = JobStore(tmp_path)
    counts = []
    for cut in (False, True):
        if cut:  # the cells of the ball's -x half (model x < 0) leave the grid
            model.occupancy.binary.copy_(whole_grid)
            model.occupancy.binary[: r // 2] = False
        ckpt = NeRFCheckpoint(model, ReconstructConfig.tiny(), "contract", normalization=NORM, subject=bounds)
        job = add_job(store, "reconstruct", ckpt)
        _, world = mesh_vertices(tmp_path, {"source_job": job, "resolution": 32, "isolevel": 10.0})
        x = NORM.to_model(world)[:, 0]
        counts.append((int((x < -0.1).sum()), int((x > 0.1).sum())))
    (left_whole, right_whole), (left_cut, right_cut) = counts
    assert left_whole > 50 and right_whole > 50, "the ball's whole surface without the cut"
    assert left_cut == 0 and right_cut > 0.8 * right_whole


def test_the_air_its_cameras_saw_through_stays_out_of_the_subjects_renders_and_mesh(tmp_path: Path) -> None:
    """A reconstruction's ``subject_air`` (here: every cell of the ball's upper half, model z > 0) is left out of what
    the jobs use as the subject (its frames and its mesh) while the whole scene (include_background) keeps it; the
    checkpoint file carries it."""
    from backend.jobs.subject import as_subject

    model = ball_model(5)
    r = model.occupancy.resolution
    air = torch.zeros(r, r, r, dtype=torch.bool)
    air[:, :, r // 2:] = True
    bounds = SubjectBounds("box", np.diag([0.9, 0.9, 0.9, 1.0]))
    ckpt = NeRFCheckpoint(model, ReconstructConfig.tiny(), "contract", normalization=NORM, subject=bounds,
                          subject_air=air)
    store = JobStore(tmp_path)
    job = add_job(store, "reconstruct", ckpt)
    again = load_checkpoint(store.job_dir(job) / "outputs" / "checkpoint.pt", "cpu")
    assert again.subject_air is not None and torch.equal(again.subject_air, air)

    cut = copy.deepcopy(ckpt)
    removed = as_subject(cut)
    assert removed == int((model.occupancy.binary & air).sum()) > 0 and torch.equal(cut.subject_air, air)
    assert not bool(cut.model.occupancy.binary[:, :, r // 2:].any())
    assert torch.equal(cut.model.occupancy.binary[:, :, : r // 2], model.occupancy.binary[:, :, : r // 2])
    assert as_subject(cut) == 0  # once

    cams = world_cameras()
    params = {"source_job": job, "cameras": protocol_cameras(cams)}
    _, frames = render_frames(tmp_path, params)
    subject_only, whole = FrameRenderer(cut, subject=bounds), FrameRenderer(ckpt, subject=bounds)
    for i, png in enumerate(frames):
        np.testing.assert_array_equal(png, quantized_straight_alpha(subject_only.render(cams, i)[0], 8))
        # The air is the ball's upper half: without it, much less of the frame is covered.
        kept = quantized_straight_alpha(whole.render(cams, i)[0], 8)
        assert 10 < (png[..., 3] > 128).sum() < 0.7 * (kept[..., 3] > 128).sum()
    _, frames = render_frames(tmp_path, {**params, "include_background": True})
    scene = FrameRenderer(ckpt)
    for i, png in enumerate(frames):
        np.testing.assert_array_equal(png, quantized_straight_alpha(scene.render(cams, i)[0], 8))

    _, world = mesh_vertices(tmp_path, {"source_job": job, "resolution": 32, "isolevel": 10.0})
    z = NORM.to_model(world)[:, 2]
    assert int((z > 0.1).sum()) == 0 and int((z < -0.1).sum()) > 50


def test_a_mesh_without_bounds_spans_the_whole_model_and_the_grid_follows_the_bounds_box() -> None:
    from backend.outputs.mesh import mesh_grid

    cube = mesh_grid((-1.5, 1.5), 64)
    assert cube.dims == (64, 64, 64) and cube.voxel == pytest.approx(3.0 / 64)
    np.testing.assert_allclose(cube.lo, -1.5)
    box = mesh_grid((np.array([-0.2, -0.3, -0.8]), np.array([0.7, 0.3, 0.8])), 64)
    assert box.voxel == pytest.approx(1.6 / 64) and box.dims == (36, 24, 64)
    np.testing.assert_allclose((box.lo + box.hi) / 2, [0.25, 0.0, 0.0], atol=1e-12)


# ---------------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_command_line_takes_bounds_and_the_background_option(trained, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from backend import cli

    work, recon, _ = trained
    common = ["--work-dir", str(work), "--device", "cpu", "--json"]
    box = {"shape": "box", "matrix": [[0.4, 0, 0, 0.4], [0, 0.6, 0, 0], [0, 0, 0.6, 0], [0, 0, 0, 1]]}
    bounds_file = tmp_path / "bounds.json"
    bounds_file.write_text(json.dumps({"job_id": "x", "outputs": {"subject_bounds": box}}))
    assert cli.main(["mesh", recon.job_id, "--format", "ply", "--resolution", "16", "--isolevel", "10",
                     "--subject-bounds", str(bounds_file), *common]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["outputs"]["subject_source"] == "given"
    # The bounds go to model coordinates and back: equal up to float rounding (0.4 may come back 0.39999999999999997).
    assert record["outputs"]["subject_bounds"]["shape"] == "box"
    np.testing.assert_allclose(record["outputs"]["subject_bounds"]["matrix"], box["matrix"], atol=1e-12)

    cams = ring_cameras(2, 12)
    cameras = tmp_path / "cameras.json"
    cameras.write_text(json.dumps(protocol_cameras(cams)))
    assert cli.main(["render", recon.job_id, str(cameras), "--include-background", "--subject-bounds",
                     json.dumps(box), *common]) == 0
    captured = capsys.readouterr()
    outputs = json.loads(captured.out)["outputs"]
    assert outputs["include_background"] is True and outputs["subject_source"] == "given"
    assert "with the background" in captured.err

    assert cli.main(["render", recon.job_id, str(cameras), "--subject-bounds", "{not json", *common]) == 2
    assert "--subject-bounds: not JSON" in capsys.readouterr().err
    assert cli.main(["mesh", recon.job_id, "--subject-bounds", json.dumps({"shape": "box"}), *common]) == 2
    assert "--subject-bounds must be" in capsys.readouterr().err


@pytest.mark.parametrize("takes_all", [True, False])
def test_a_key_that_would_take_most_of_the_person_is_not_applied(monkeypatch: pytest.MonkeyPatch,
                                                                  takes_all: bool) -> None:
    """Haze is never most of what the cameras see: a difference key that would leave out most of the person's seen
    surface (a model too young to render its person opaque) is dropped and only the seen air is left out; a key
    that takes a little (the haze) is applied."""
    import types

    from test_subject_bounds import person_and_wall, ring_cameras

    import backend.nerf.subject_key as subject_key
    from backend.jobs.subject import left_out_cells
    from backend.nerf.subject import SeenAir, detect_subject_bounds

    det = detect_subject_bounds(person_and_wall, ring_cameras(focal=40.0), "cpu", resolution=48)
    assert det.found and det.person is not None and det.air is not None
    some = np.zeros_like(det.person)
    some[20:28, 20:28, 20:28] = True  # a block inside the head, off its seen surface

    def fake_key(plates, views, frame, half_extent, resolution):  # the whole cube, or the block
        return np.ones_like(det.person) if takes_all else some

    monkeypatch.setattr(subject_key, "keyed_out_voxels", fake_key)
    ckpt = types.SimpleNamespace(model=ball_model(), background="contract")
    with_key = left_out_cells(ckpt, det)
    without = left_out_cells(ckpt, det, key=False)
    assert with_key is not None and without is not None
    if takes_all:
        assert torch.equal(with_key, without)
    else:
        block = SeenAir(some, det.air.frame, det.air.half_extent)
        cells = block.cells(ckpt.model.occupancy.resolution, ckpt.model.domain)
        assert bool(cells.any()) and bool(with_key[cells].all()) and int(with_key.sum()) > int(without.sum())
