"""Compositing passes of the render job: Blender's Depth and Normal passes of an analytic sphere, the multilayer
OpenEXR layout (read back with OpenEXR, and opened by Blender as a multilayer image with those passes), and the
render job's EXR and PNG outputs."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from backend.nerf.config import ReconstructConfig
from backend.nerf.frame_renderer import (
    BACKGROUND_DEPTH,
    FrameRenderer,
    density_gradient,
    placement_rotation_scale,
)
from backend.nerf.model import NeRFModel
from backend.nerf.rays import rays_for_image
from backend.nerf.synthetic import ring_cameras
from backend.outputs.images import encode_exr_passes, exr_channel_names, srgb_to_linear

OpenEXR = pytest.importorskip("OpenEXR")

REPO = Path(__file__).resolve().parents[1]
RADIUS = 0.5  # of the analytic sphere, model units


class SphereModel(NeRFModel):
    """A NeRFModel whose field is a solid sphere: density ``k * sigmoid((R - |x|) / eps)``, grey colour.

    Its surface is where the density rises (within ``eps`` of radius ``R``), and the density gradient points
    inwards everywhere, so the normals are ``x / |x|`` exactly.
    """

    def __init__(self) -> None:
        config = ReconstructConfig.tiny().model_config("matte", separate_matte=False, pixel_footprint=None)
        config.render_steps = 1024  # dt_min = 0.005: the expected depth resolves the sphere's surface
        super().__init__(config)
        domain = self.domain
        self.occupancy.update(0, lambda u: (domain.from_unit_cube(u).norm(dim=-1) < 0.7).float(),
                              generator=torch.Generator().manual_seed(0))

    def density(self, x: torch.Tensor) -> torch.Tensor:  # [N, 3] -> [N]
        return 2000.0 * torch.sigmoid((RADIUS - x.norm(dim=-1)) / 0.005)

    def radiance(self, x: torch.Tensor, dirs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.full_like(x, 0.5), self.density(x)


def _sphere_hits(cams, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Exact first hit ``t (H*W,)`` (inf on a miss), hit points ``(H*W, 3)`` and ray directions of camera ``i``."""
    o, d = rays_for_image(cams, i, dtype=torch.float64)
    b = (o * d).sum(-1)
    disc = b * b - ((o * o).sum(-1) - RADIUS**2)
    t = torch.where(disc > 0, -b - torch.sqrt(disc.clamp_min(0)), torch.full_like(b, math.inf))
    return t, o + d * t[:, None], d


def _expected_t(model: SphereModel, cams, i: int) -> torch.Tensor:
    """Expected ray distance ``sum w t / sum w`` of camera ``i``'s rays by fine quadrature (float64, 8000 steps
    over [1, 3]: 10x finer than the renderer's), the reference the renderer's expected depth must match."""
    o, d = rays_for_image(cams, i, dtype=torch.float64)
    edges = torch.linspace(1.0, 3.0, 8001, dtype=torch.float64)
    mid = 0.5 * (edges[1:] + edges[:-1])
    sigma = model.density((o[:, None] + d[:, None] * mid[None, :, None]).reshape(-1, 3)).reshape(o.shape[0], -1)
    sd = sigma * (edges[1:] - edges[:-1])
    w = torch.exp(-(torch.cumsum(sd, -1) - sd)) * -torch.expm1(-sd)
    return (w * mid).sum(-1) / w.sum(-1).clamp_min(1e-12)


def _placement() -> np.ndarray:
    """A similarity: rotated 30 degrees about Z and 90 about X, scaled 0.25, moved."""
    cz, sz = math.cos(math.radians(30)), math.sin(math.radians(30))
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1.0]])
    rx = np.array([[1.0, 0, 0], [0, 0, -1], [0, 1, 0]])
    m = np.eye(4)
    m[:3, :3] = 0.25 * rz @ rx
    m[:3, 3] = (2.0, -1.0, 0.5)
    return m


def test_depth_and_normals_of_an_analytic_sphere_in_scene_units() -> None:
    model = SphereModel()
    cams = ring_cameras(2, 24, distance=2.0)
    renderer = FrameRenderer(model, max_rays=200, max_samples=1000, first_window=4)
    placement = _placement()
    rot, scale = placement_rotation_scale(placement)
    assert scale == pytest.approx(0.25)
    for i in range(2):
        passes = renderer.render_passes(cams, i, placement)
        t, hit_point, d = _sphere_hits(cams, i)
        forward = torch.as_tensor(cams.c2w[i][:3, 2])
        z_true = (t * (d @ forward) * scale).reshape(24, 24)  # view-axis depth, not the ray length
        alpha = passes.rgba[..., 3].double()
        inside = torch.isfinite(z_true) & (alpha > 0.999)
        edge = torch.isfinite(z_true) & ~inside
        assert int(inside.sum()) > 100 and int((~torch.isfinite(z_true)).sum()) > 100
        depth = passes.depth.double()
        # The renderer's expected depth, turned into view-axis depth in scene units, is the quadrature's.
        z_expected = (_expected_t(model, cams, i) * (d @ forward) * scale).reshape(24, 24)
        err = (depth[inside] - z_expected[inside]).abs()
        assert float(err.max()) < 0.002 * scale, float(err.max())  # under half a marching step (0.0034)
        # And the sphere's surface is where it should be: in front of it by the soft shell's width at most
        # (~0.015 model units head-on, more at grazing angles where rays cross the shell obliquely).
        shell = (z_true[inside] - depth[inside]) / scale
        assert float(shell.min()) > 0 and float(shell.median()) < 0.03 and float(shell.max()) < 0.08, shell
        # Empty pixels get Cycles' background depth; pixels mostly covered get a surface depth.
        miss = ~torch.isfinite(z_true) & (alpha < 1e-3)
        assert bool((depth[miss] == BACKGROUND_DEPTH).all())
        assert bool((depth[edge & (alpha >= 0.5)] < 10).all()) and bool((depth[alpha < 0.5] == 1e10).all())
        # Normals: world (scene) axes, unit length times coverage.
        n_true = torch.as_tensor(rot) @ (hit_point / RADIUS).T
        n_true = n_true.T.reshape(24, 24, 3)
        normal = passes.normal.double()
        cos = (normal[inside] * n_true[inside]).sum(-1)
        # Head-on the samples sit on the hit point's normal; at grazing angles the weighted samples spread
        # along the shell, whose normals differ from the geometric hit's by a few degrees.
        assert float(cos.median()) > math.cos(math.radians(2)), float(cos.median())
        assert float(cos.min()) > math.cos(math.radians(10)), float(cos.min())
        length = normal.norm(dim=-1)
        some = length > 0
        torch.testing.assert_close(length[some], alpha[some], atol=1e-4, rtol=0)
        # Faint edge pixels whose weight is spread thin (no sample >= NORMAL_MIN_WEIGHT) get no normal.
        assert float(alpha[~some].max()) < 0.15 and int(some.sum()) > int(inside.sum())
        assert bool((normal[alpha == 0] == 0).all())


def test_depth_pass_of_a_checkpoint_scales_by_the_normalization_radius() -> None:
    from backend.nerf.checkpoint import NeRFCheckpoint
    from captures.normalize import Normalization

    model = SphereModel()
    norm = Normalization(center=np.array([1.0, 2.0, -3.0]), radius=4.0, method="manual")
    ckpt = NeRFCheckpoint(model=model, config=ReconstructConfig.tiny(), background="matte", normalization=norm)
    cams_model = ring_cameras(1, 16, distance=2.0)
    cams_world = norm.cameras_to_world(cams_model)
    bare = FrameRenderer(model).render_passes(cams_model, 0, normals=False)
    world = FrameRenderer(ckpt).render_passes(cams_world, 0, normals=False)
    assert world.normal is None
    hit = bare.depth < 1e9
    assert int(hit.sum()) > 20
    torch.testing.assert_close(world.depth[hit], 4.0 * bare.depth[hit], rtol=1e-4, atol=1e-4)
    assert bool((world.depth[~hit] == BACKGROUND_DEPTH).all())


def test_density_gradient_is_exact_for_linear_fields() -> None:
    a = torch.tensor([0.3, -1.2, 2.0])
    x = torch.randn(50, 3, generator=torch.Generator().manual_seed(0))
    grad = density_gradient(lambda p: p @ a + 7.0, x, 0.01)
    torch.testing.assert_close(grad, a.expand(50, 3), atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("bad", [np.diag([1.0, 2.0, 1.0, 1.0]), np.diag([-1.0, 1.0, 1.0, 1.0]), np.zeros((4, 4)),
                                 np.eye(3)])
def test_placements_that_are_not_similarities_are_refused(bad: np.ndarray) -> None:
    with pytest.raises(ValueError, match="placement"):
        placement_rotation_scale(bad)


def _read_exr(path: Path) -> tuple[dict[str, np.ndarray], dict]:
    with OpenEXR.File(str(path), separate_channels=True) as exr:
        part = exr.parts[0]
        return {name: ch.pixels.copy() for name, ch in part.channels.items()}, dict(part.header)


def test_exr_layout_round_trips_and_blender_reads_its_passes(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    h, w = 7, 5
    rgba = rng.random((h, w, 4), dtype=np.float32)
    depth = rng.random((h, w), dtype=np.float32) * 10
    depth[0, 0] = BACKGROUND_DEPTH
    normal = rng.standard_normal((h, w, 3)).astype(np.float32)
    path = tmp_path / "f.exr"
    path.write_bytes(encode_exr_passes(rgba, depth, normal))
    channels, header = _read_exr(path)
    assert sorted(channels) == sorted(exr_channel_names()) == sorted(
        ["ViewLayer.Combined.R", "ViewLayer.Combined.G", "ViewLayer.Combined.B", "ViewLayer.Combined.A",
         "ViewLayer.Depth.Z", "ViewLayer.Normal.X", "ViewLayer.Normal.Y", "ViewLayer.Normal.Z"])
    assert all(c.dtype == np.float32 and c.shape == (h, w) for c in channels.values())
    assert header["compression"] == OpenEXR.ZIP_COMPRESSION
    for k, c in enumerate("RGBA"):
        np.testing.assert_array_equal(channels[f"ViewLayer.Combined.{c}"], rgba[..., k])
    np.testing.assert_array_equal(channels["ViewLayer.Depth.Z"], depth)
    for k, c in enumerate("XYZ"):
        np.testing.assert_array_equal(channels[f"ViewLayer.Normal.{c}"], normal[..., k])
    with pytest.raises(ValueError, match="depth must be"):
        encode_exr_passes(rgba, depth[:, :2], normal)

    bpy = pytest.importorskip("bpy")
    image = bpy.data.images.load(str(path))
    scene = bpy.context.scene
    if hasattr(scene, "compositing_node_group"):  # Blender 5.0 moved the compositor into a node group
        tree = bpy.data.node_groups.new("Compositing", "CompositorNodeTree")
        scene.compositing_node_group = tree
    else:
        scene.use_nodes = True
        tree = scene.node_tree
    node = tree.nodes.new("CompositorNodeImage")
    node.image = image
    # What a Blender render of the Combined, Z and Normal passes gives an Image node: one socket per pass.
    assert image.type == "MULTILAYER" and node.layer == "ViewLayer"
    assert [o.name for o in node.outputs if o.enabled] == ["Combined", "Alpha", "Depth", "Normal"]
    bpy.data.images.remove(image)


def test_linear_premultiplied_inverts_srgb_and_premultiplies() -> None:
    from backend.jobs.render import linear_premultiplied

    rng = np.random.default_rng(1)
    straight = rng.random((6, 4, 4)).astype(np.float32)
    straight[0, 0, 3] = 0.0
    premultiplied = straight.copy()
    premultiplied[..., :3] *= premultiplied[..., 3:]
    out = linear_premultiplied(torch.from_numpy(premultiplied)).numpy()
    np.testing.assert_allclose(out[..., 3], straight[..., 3], atol=1e-7)
    np.testing.assert_allclose(out[..., :3], srgb_to_linear(straight[..., :3]) * straight[..., 3:], atol=2e-6)
    assert (out[0, 0] == 0).all()


def fused_pass_errors(device: str, size: int) -> dict[str, float]:
    """Depth and Normal passes of the fused Triton path against the PyTorch path, on a dense random field.

    On the CPU the fused kernel runs only in Triton's interpreter (``TRITON_INTERPRET=1``, chosen when Triton
    compiles, so in a process of its own); FrameRenderer itself never offers the fused path off CUDA.
    """
    import dataclasses

    from test_fused_field import _model as random_field_model  # the default architecture, a random field

    from backend.nerf._triton_field import FusedField

    model = random_field_model("matte", device)
    # +4 on the density pre-activation: the random field alone stays under 50% opacity everywhere (no pixel
    # is a solid surface to compare depths on); this makes the sphere's inside opaque.
    model.field.config = dataclasses.replace(model.field.config,
                                             density_bias=model.field.config.density_bias + 4.0)
    domain = model.domain
    model.occupancy.update(0, lambda u: (domain.from_unit_cube(u).norm(dim=-1) < 0.6).float())
    cams, placement = ring_cameras(2, size), _placement()
    fused_renderer = FrameRenderer(model, fused="off")
    fused_renderer._fused = FusedField(model.field)  # the fused path, also where it is not offered (CPU)
    fused = fused_renderer.render_passes(cams, 1, placement)
    ref = FrameRenderer(model, fused="off").render_passes(cams, 1, placement)
    assert ref.normal is not None and fused.normal is not None
    hit = (ref.rgba[..., 3] > 0.99) & (fused.rgba[..., 3] > 0.99)
    empty = (ref.rgba[..., 3] == 0) & (fused.rgba[..., 3] == 0)
    out = {"pixels": float(size * size), "hit": float(hit.sum()), "empty": float(empty.sum()),
           "empty_not_background": float((fused.depth[empty] != BACKGROUND_DEPTH).sum())}
    if out["hit"]:
        cos = (fused.normal[hit] * ref.normal[hit]).sum(-1) / (fused.normal[hit].norm(dim=-1)
                                                              * ref.normal[hit].norm(dim=-1)).clamp_min(1e-9)
        out.update(depth_max_abs=float((fused.depth[hit] - ref.depth[hit]).abs().max()),
                   normal_cos_median=float(cos.median()))
    return out


def _check_fused_passes(errors: dict[str, float]) -> None:
    assert errors["hit"] > 0.1 * errors["pixels"], errors  # enough solid surface to compare on
    assert errors["empty"] > 0.1 * errors["pixels"] and errors["empty_not_background"] == 0, errors
    # float16 tables and weights in the fused kernel: depth within a few thousandths of a scene unit (the
    # placement scales model units by 0.25).
    assert errors["depth_max_abs"] < 5e-3 * 0.25, errors
    assert errors["normal_cos_median"] > 0.99, errors


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (the fused Triton field)")
def test_passes_of_the_fused_gpu_path_match_the_pytorch_path() -> None:
    pytest.importorskip("triton")
    _check_fused_passes(fused_pass_errors("cuda", 64))


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="Triton is not installed")
def test_passes_of_the_fused_path_in_the_triton_interpreter() -> None:
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, __file__], capture_output=True, text=True, env=env, timeout=600,
                          cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _check_fused_passes(json.loads(proc.stdout.strip().splitlines()[-1]))


def _source_job(tmp_path: Path) -> tuple[str, object]:
    """A finished reconstruct job holding a small random-field checkpoint (world = model x 2 + offset)."""
    from test_nerf_render import _model as random_model

    from backend.jobstore.store import JobStore
    from backend.nerf.checkpoint import NeRFCheckpoint, save_checkpoint
    from captures.normalize import Normalization

    model = random_model(3, "matte", 2.0)
    norm = Normalization(center=np.array([0.5, -1.0, 2.0]), radius=2.0, method="manual")
    ckpt = NeRFCheckpoint(model=model, config=ReconstructConfig.tiny(), background="matte", normalization=norm)
    store = JobStore(tmp_path)
    rec = store.create("reconstruct", {"capture": "test"}, owner="test")
    save_checkpoint(ckpt, store.job_dir(rec.job_id) / "outputs" / "model.ckpt")
    rec.outputs, rec.state = {"checkpoint": "model.ckpt"}, "done"
    store.save(rec)
    return rec.job_id, norm.cameras_to_world(ring_cameras(2, 20))


def _protocol_cameras(cams) -> list[dict]:
    return [{"name": f"cam{i}", "frame": i + 1, "c2w": cams.c2w[i].tolist(), "fx": float(cams.fx[i]),
             "fy": float(cams.fy[i]), "cx": float(cams.cx[i]), "cy": float(cams.cy[i]),
             "width": int(cams.width[i]), "height": int(cams.height[i])} for i in range(len(cams))]


def test_render_job_png_frames_skip_the_passes_and_exr_frames_hold_them(tmp_path: Path, monkeypatch) -> None:
    import io

    from PIL import Image

    from backend.jobs.local import run_job_locally
    from backend.jobs.render import linear_premultiplied, quantized_straight_alpha
    from backend.jobstore.store import JobStore
    from backend.nerf.checkpoint import load_checkpoint

    job, cams = _source_job(tmp_path)
    renderer = FrameRenderer(load_checkpoint(JobStore(tmp_path).job_dir(job) / "outputs" / "model.ckpt", "cpu"))
    marches = []
    original = FrameRenderer._march

    def counting(self, rays_o, rays_d, check_cancel, with_normals):
        marches.append(with_normals)
        return original(self, rays_o, rays_d, check_cancel, with_normals)

    monkeypatch.setattr(FrameRenderer, "_march", counting)
    frames: list = []
    rec = run_job_locally("render", {"source_job": job, "cameras": _protocol_cameras(cams)}, tmp_path, "cpu",
                          lambda m: frames.append(m) if m.type == "frame" else None)
    assert rec.state == "done" and len(frames) == 2
    assert marches == [False, False]  # PNG: colour only, no normals and no depth conversion
    for i, msg in enumerate(frames):
        png = np.asarray(Image.open(io.BytesIO(bytes(msg.blob(msg.content["image"])))))
        rgba, _ = renderer.render(cams, i)
        np.testing.assert_array_equal(png, quantized_straight_alpha(rgba, 8))  # the PNG path as before
        assert msg.content["file"].endswith(".png") and "depth" not in msg.content

    marches.clear()
    frames.clear()
    placement = _placement()
    rec = run_job_locally("render", {"source_job": job, "cameras": _protocol_cameras(cams), "format": "exr",
                                     "depth": True, "placement": placement.tolist()}, tmp_path, "cpu",
                          lambda m: frames.append(m) if m.type == "frame" else None)
    assert rec.state == "done" and marches == [True, True] and len(frames) == 2
    monkeypatch.setattr(FrameRenderer, "_march", original)
    for i, msg in enumerate(frames):
        assert msg.content["image"]["format"] == "exr" and msg.content["file"].endswith(".exr")
        path = tmp_path / "jobs" / rec.job_id / "outputs" / msg.content["file"]
        channels, _ = _read_exr(path)
        passes = renderer.render_passes(cams, i, placement)
        combined = np.stack([channels[f"ViewLayer.Combined.{c}"] for c in "RGBA"], -1)
        np.testing.assert_allclose(combined, linear_premultiplied(passes.rgba).numpy(), atol=1e-6)
        np.testing.assert_allclose(channels["ViewLayer.Depth.Z"], passes.depth.numpy(), rtol=1e-6)
        np.testing.assert_allclose(np.stack([channels[f"ViewLayer.Normal.{c}"] for c in "XYZ"], -1),
                                   passes.normal.numpy(), atol=1e-6)
        # The depth array carries the same Depth pass; colour is the same render as the PNG's.
        np.testing.assert_array_equal(msg.array(msg.content["depth"]), channels["ViewLayer.Depth.Z"])
        torch.testing.assert_close(passes.rgba, renderer.render(cams, i)[0])
        assert (channels["ViewLayer.Depth.Z"] < 1e9).sum() > 20 and (channels["ViewLayer.Depth.Z"] == 1e10).sum() > 20


def fixture_passes() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The 4x3 frame of ``tests/addon/frame_passes_4x3.exr`` (the add-on tests load it without OpenEXR)."""
    y, x = np.mgrid[0:3, 0:4].astype(np.float32)
    rgba = np.stack([x / 3, y / 2, 0.25 * np.ones_like(x), np.where(x > 0, 1.0, 0.0)], -1).astype(np.float32)
    rgba[..., :3] *= rgba[..., 3:]
    depth = np.where(x > 0, 2.0 + 0.1 * x + 0.01 * y, BACKGROUND_DEPTH).astype(np.float32)
    normal = np.zeros((3, 4, 3), np.float32)
    normal[..., 1] = -rgba[..., 3]
    return rgba, depth, normal


def test_the_add_on_tests_exr_fixture_is_what_the_writer_writes(tmp_path: Path) -> None:
    fixture = Path(__file__).parent / "addon" / "frame_passes_4x3.exr"
    # To regenerate: fixture.write_bytes(encode_exr_passes(*fixture_passes()))
    path = tmp_path / "now.exr"
    path.write_bytes(encode_exr_passes(*fixture_passes()))
    now, _ = _read_exr(path)
    then, _ = _read_exr(fixture)
    assert sorted(now) == sorted(then)
    for name in now:
        np.testing.assert_array_equal(now[name], then[name])


if __name__ == "__main__":  # the interpreter run of test_passes_of_the_fused_path_in_the_triton_interpreter
    print(json.dumps(fused_pass_errors("cpu", 32)))
