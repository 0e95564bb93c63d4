"""The ``extract_mesh`` job: a coloured mesh of a checkpoint, in the capture's world coordinates."""

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


def run_extract_mesh(ctx: JobContext) -> dict[str, Any]:
    import torch

    ctx.progress("loading model", 0, 1)
    ckpt = load_source_checkpoint(ctx)
    model = ckpt.model
    # The reconstructed region: the box of a bounded (matted) model, else the head's unit sphere's cube.
    bound = float(model.domain.bound) if model.domain.kind == "bounded" else 1.0
    t0 = time.monotonic()

    def report(stage: str, step: int, total: int) -> None:
        ctx.check_cancel()
        ctx.progress(stage, step, total)

    with torch.no_grad():
        mesh = extract_mesh(model.density, model.radiance, resolution=ctx.params.get("resolution", 256),
                            aabb=(-bound, bound), isolevel=ctx.params.get("isolevel"),
                            keep_largest_only=bool(ctx.params.get("keep_largest_only", False)),
                            device=ctx.device, progress=report, check_cancel=ctx.check_cancel)
    vertices = mesh.vertices
    if ckpt.normalization is not None:
        vertices = ckpt.normalization.to_world(vertices.astype(np.float64)).astype(np.float32)
    write_ply(ctx.outputs_dir / MESH_FILE, vertices, mesh.faces, mesh.colors)
    msg = Message("mesh", {"file": MESH_FILE})
    msg.content.update(vertices=msg.add_array(vertices), faces=msg.add_array(mesh.faces),
                       colors=msg.add_array(mesh.colors))
    ctx.send(msg)
    return {"mesh": MESH_FILE, "vertices": len(vertices), "faces": len(mesh.faces),
            "extract_seconds": time.monotonic() - t0}
