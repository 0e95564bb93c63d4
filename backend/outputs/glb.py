"""Binary glTF (GLB) with one embedded base-colour texture: what Blender's glTF importer and every engine read."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from .texture import TexturedMesh

# glTF is Y-up, Blender (and our capture-world coordinates) Z-up; Blender's importer maps glTF (x, y, z) to
# (x, -z, y), so writing (x, z, -y) gives back the capture-world coordinates after import.
_Z_UP_TO_Y_UP = np.array([[1, 0, 0], [0, 0, 1], [0, -1, 0]], dtype=np.float32)


def glb_bytes(mesh: TexturedMesh, name: str = "NeRF-Art mesh") -> bytes:
    """The GLB file of a textured mesh (Z-up coordinates in, Y-up glTF out; texture as PNG).

    Args:
        mesh: vertices ``(n, 3)`` Z-up, faces ``(m, 3)``, uvs ``(n, 2)`` OpenGL convention, texture
            ``(s, s, 3)`` uint8 sRGB with row 0 at the top.
    """
    import trimesh
    from PIL import Image

    material = trimesh.visual.material.PBRMaterial(
        name=name, baseColorTexture=Image.fromarray(mesh.texture, "RGB"), metallicFactor=0.0, roughnessFactor=1.0)
    tm = trimesh.Trimesh(vertices=mesh.vertices @ _Z_UP_TO_Y_UP.T, faces=mesh.faces,
                         visual=trimesh.visual.TextureVisuals(uv=mesh.uvs, material=material), process=False)
    if mesh.normals is not None:
        tm.vertex_normals = mesh.normals @ _Z_UP_TO_Y_UP.T
    # trimesh flips v on export (glTF's uv origin is the top-left), so OpenGL-convention uvs go in as they are.
    return tm.export(file_type="glb", include_normals=True)


def write_glb(path: Path, mesh: TexturedMesh) -> int:
    """Write :func:`glb_bytes` atomically; returns the file size in bytes."""
    data = glb_bytes(mesh)
    tmp = Path(path).with_suffix(".glb.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)  # never leave a half-written file under the final name
    return len(data)


def read_glb(path_or_bytes: Path | bytes) -> TexturedMesh:
    """Read a GLB written by :func:`write_glb` back to Z-up arrays (for tests and tools)."""
    import trimesh

    src = io.BytesIO(path_or_bytes) if isinstance(path_or_bytes, (bytes, bytearray)) else str(path_or_bytes)
    scene = trimesh.load(src, file_type="glb", process=False, force="scene")
    (tm,) = scene.geometry.values()
    tex = np.asarray(tm.visual.material.baseColorTexture.convert("RGB"))
    return TexturedMesh(np.asarray(tm.vertices, np.float32) @ _Z_UP_TO_Y_UP, np.asarray(tm.faces, np.int32),
                        np.asarray(tm.visual.uv, np.float32), tex)
