"""The ``extract_mesh`` job: a coloured mesh of a checkpoint, in the capture's world coordinates.

Two formats: ``glb`` (decimated, UV-unwrapped, a baked colour texture embedded; what artists use) and ``ply``
(every marching-cubes vertex with its colour). A request without ``mesh_format`` gets PLY, as before the
option existed, so older clients keep receiving the arrays they expect.

The mesh holds the subject only: with subject bounds (``params.subject_bounds``, else the checkpoint's, see
:mod:`backend.jobs.subject`) the density grid spans the bounds' axis-aligned box, the density outside the bounds
is zero (a body cut by them is closed by a cap on their boundary) and the vertices end on or inside them. A
checkpoint without bounds is meshed over its whole region, as before bounds existed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from backend.jobstore.context import JobContext, JobFailed
from backend.outputs.mesh import AABB, DensityFn, RadianceFn, extract_mesh, mesh_grid
from backend.outputs.ply import write_ply
from protocol import Message

from .checkpoints import load_job_checkpoint
from .subject import as_subject, bounds_to_world, source_subject

MESH_FILE = "mesh.ply"
GLB_FILE = "mesh.glb"
DEFAULT_TEXTURE_SIZE = 2048


def run_extract_mesh(ctx: JobContext) -> dict[str, Any]:
    ctx.progress("loading model", 0, 1)
    source = ctx.source_job(ctx.params["source_job"], ("reconstruct", "stylize"))
    ckpt = load_job_checkpoint(ctx, source)
    model = ckpt.model
    subject, subject_source = source_subject(ctx, source, ckpt)
    density_fn, radiance_fn = model.density, model.radiance
    # The reconstructed region: the box of a bounded (matted) model, else the head's unit sphere's cube.
    bound = float(model.domain.bound) if model.domain.kind == "bounded" else 1.0
    aabb: AABB = (-bound, bound)
    if subject is not None:
        as_subject(ckpt)  # the haze around the head (seen through, keyed out) stays out of the mesh
        density_fn, radiance_fn = subject_fields(subject, model.density, model.radiance, model.occupied)
        lo, hi = subject.aabb()
        if model.domain.kind == "bounded":  # nothing exists outside the model's box
            lo, hi = np.maximum(lo, -bound), np.minimum(hi, bound)
            if np.any(hi <= lo):
                raise JobFailed("the subject bounds lie outside the reconstructed box: nothing to mesh")
        aabb = (lo, hi)
    resolution = int(ctx.params.get("resolution", 256))
    textured = ctx.params.get("mesh_format", "ply") == "glb"
    t0 = time.monotonic()

    def report(stage: str, step: int, total: int) -> None:
        ctx.check_cancel()
        ctx.progress(stage, step, total)

    with torch.no_grad():
        # A textured mesh takes its colours from the texture: no per-vertex colours are computed for it.
        mesh = extract_mesh(density_fn, None if textured else radiance_fn, resolution=resolution,
                            aabb=aabb, isolevel=ctx.params.get("isolevel"),
                            keep_largest_only=bool(ctx.params.get("keep_largest_only", False)),
                            device=ctx.device, progress=report, check_cancel=ctx.check_cancel)
    to_world = ckpt.normalization.to_world if ckpt.normalization is not None else None
    extra = {"subject_bounds": bounds_to_world(subject, ckpt.normalization), "subject_source": subject_source}
    if textured:
        return {**_send_glb(ctx, radiance_fn, mesh, mesh_grid(aabb, resolution).voxel, subject, to_world, report,
                            t0), **extra}
    vertices = mesh.vertices if subject is None else subject.clamp(mesh.vertices).astype(np.float32)
    if to_world is not None:
        vertices = to_world(vertices.astype(np.float64)).astype(np.float32)
    write_ply(ctx.outputs_dir / MESH_FILE, vertices, mesh.faces, mesh.colors)
    msg = Message("mesh", {"file": MESH_FILE, "format": "ply"})
    msg.content.update(vertices=msg.add_array(vertices), faces=msg.add_array(mesh.faces),
                       colors=msg.add_array(mesh.colors))
    ctx.send(msg)
    return {"mesh": MESH_FILE, "vertices": len(vertices), "faces": len(mesh.faces),
            "extract_seconds": time.monotonic() - t0, **extra}


def subject_fields(subject: Any, density_fn: DensityFn, radiance_fn: RadianceFn,
                   occupied: Callable[[torch.Tensor], torch.Tensor] | None = None) -> tuple[DensityFn, RadianceFn]:
    """The model's density and radiance with zero density outside ``subject`` (model coordinates), and outside
    the model's occupied cells when ``occupied`` (``[N, 3]`` model points -> ``[N]`` bool) is given: what its
    renders never sample is not part of it (a stylization that let the shape grow left the room's cells inside
    its grown bounds out of its grid)."""

    def keep(x: torch.Tensor) -> torch.Tensor:  # [N, 3] -> [N] bool
        inside = subject.contains(x)
        return inside if occupied is None else inside & occupied(x)

    def density(x: torch.Tensor) -> torch.Tensor:  # [N, 3] -> [N]
        sigma = density_fn(x)
        return torch.where(keep(x), sigma, torch.zeros_like(sigma))

    def radiance(x: torch.Tensor, dirs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # -> [N, 3], [N]
        rgb, sigma = radiance_fn(x, dirs)
        return rgb, torch.where(keep(x), sigma, torch.zeros_like(sigma))

    return density, radiance


def _send_glb(ctx: JobContext, radiance_fn: RadianceFn, mesh: Any, voxel: float, subject: Any, to_world: Any,
              report: Any, t0: float) -> dict[str, Any]:
    """Decimate, unwrap and bake the marching-cubes mesh, write ``mesh.glb`` and send its bytes."""
    from backend.outputs.glb import write_glb
    from backend.outputs.texture import texture_mesh

    target = ctx.params.get("target_faces")
    timings: dict[str, float] = {}
    with torch.no_grad():
        tm = texture_mesh(radiance_fn, mesh.vertices, mesh.faces,
                          texture_size=int(ctx.params.get("texture_size", DEFAULT_TEXTURE_SIZE)),
                          voxel=voxel, device=ctx.device,
                          target_faces=None if target is None else int(target), progress=report,
                          check_cancel=ctx.check_cancel, timings=timings)
    if subject is not None:  # decimation may move a vertex of the cut past the boundary
        tm.vertices = subject.clamp(tm.vertices).astype(np.float32)
    if to_world is not None:
        # A uniform scale and a shift (captures.normalize): normals keep their directions.
        tm.vertices = to_world(tm.vertices.astype(np.float64)).astype(np.float32)
    size = write_glb(ctx.outputs_dir / GLB_FILE, tm)
    msg = Message("mesh", {"file": GLB_FILE, "format": "glb"})
    msg.content["glb"] = msg.add_blob((ctx.outputs_dir / GLB_FILE).read_bytes(), "glb")
    ctx.send(msg)
    return {"mesh": GLB_FILE, "vertices": len(tm.vertices), "faces": len(tm.faces),
            "marching_cubes_faces": len(mesh.faces), "texture_size": int(tm.texture.shape[0]), "glb_bytes": size,
            "extract_seconds": time.monotonic() - t0, **{f"{k}_seconds": v for k, v in timings.items()}}
