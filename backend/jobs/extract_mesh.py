"""The ``extract_mesh`` job: a coloured mesh of a checkpoint, in the capture's world coordinates.

Two formats: ``glb`` (decimated, UV-unwrapped, a baked colour texture embedded; what artists use) and ``ply``
(every marching-cubes vertex with its colour). A request without ``mesh_format`` gets PLY, as before the
option existed, so older clients keep receiving the arrays they expect.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from backend.outputs.mesh import extract_mesh
from backend.outputs.ply import write_ply
from backend.server.jobs import JobContext
from protocol import Message

from .checkpoints import load_source_checkpoint

MESH_FILE = "mesh.ply"
GLB_FILE = "mesh.glb"
DEFAULT_TEXTURE_SIZE = 2048


def run_extract_mesh(ctx: JobContext) -> dict[str, Any]:
    import torch

    ctx.progress("loading model", 0, 1)
    ckpt = load_source_checkpoint(ctx)
    model = ckpt.model
    # The reconstructed region: the box of a bounded (matted) model, else the head's unit sphere's cube.
    bound = float(model.domain.bound) if model.domain.kind == "bounded" else 1.0
    resolution = int(ctx.params.get("resolution", 256))
    textured = ctx.params.get("mesh_format", "ply") == "glb"
    t0 = time.monotonic()

    def report(stage: str, step: int, total: int) -> None:
        ctx.check_cancel()
        ctx.progress(stage, step, total)

    with torch.no_grad():
        # A textured mesh takes its colours from the texture: no per-vertex colours are computed for it.
        mesh = extract_mesh(model.density, None if textured else model.radiance, resolution=resolution,
                            aabb=(-bound, bound), isolevel=ctx.params.get("isolevel"),
                            keep_largest_only=bool(ctx.params.get("keep_largest_only", False)),
                            device=ctx.device, progress=report, check_cancel=ctx.check_cancel)
    to_world = ckpt.normalization.to_world if ckpt.normalization is not None else None
    if textured:
        return _send_glb(ctx, model, mesh, bound, resolution, to_world, report, t0)
    vertices = mesh.vertices
    if to_world is not None:
        vertices = to_world(vertices.astype(np.float64)).astype(np.float32)
    write_ply(ctx.outputs_dir / MESH_FILE, vertices, mesh.faces, mesh.colors)
    msg = Message("mesh", {"file": MESH_FILE, "format": "ply"})
    msg.content.update(vertices=msg.add_array(vertices), faces=msg.add_array(mesh.faces),
                       colors=msg.add_array(mesh.colors))
    ctx.send(msg)
    return {"mesh": MESH_FILE, "vertices": len(vertices), "faces": len(mesh.faces),
            "extract_seconds": time.monotonic() - t0}


def _send_glb(ctx: JobContext, model, mesh, bound: float, resolution: int, to_world, report,
              t0: float) -> dict[str, Any]:
    """Decimate, unwrap and bake the marching-cubes mesh, write ``mesh.glb`` and send its bytes."""
    import torch

    from backend.outputs.glb import write_glb
    from backend.outputs.texture import texture_mesh

    target = ctx.params.get("target_faces")
    timings: dict[str, float] = {}
    with torch.no_grad():
        tm = texture_mesh(model.radiance, mesh.vertices, mesh.faces,
                          texture_size=int(ctx.params.get("texture_size", DEFAULT_TEXTURE_SIZE)),
                          voxel=2.0 * bound / resolution, device=ctx.device,
                          target_faces=None if target is None else int(target), progress=report,
                          check_cancel=ctx.check_cancel, timings=timings)
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
