"""Binary PLY with per-vertex colours: what Blender's PLY importer and every DCC tool read."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_ply(path: Path, vertices: np.ndarray, faces: np.ndarray, colors: np.ndarray) -> None:
    """Write a little-endian binary PLY.

    Args:
        vertices: ``(n_vertices, 3)`` float32.
        faces: ``(n_faces, 3)`` int32 vertex indices.
        colors: ``(n_vertices, 4)`` uint8 sRGB RGBA.
    """
    n, m = len(vertices), len(faces)
    if vertices.shape != (n, 3) or faces.shape != (m, 3) or colors.shape != (n, 4):
        raise ValueError(f"bad mesh arrays: vertices {vertices.shape}, faces {faces.shape}, colors {colors.shape}")
    header = (
        "ply\nformat binary_little_endian 1.0\ncomment NeRF-Art for Blender\n"
        f"element vertex {n}\nproperty float x\nproperty float y\nproperty float z\n"
        "property uchar red\nproperty uchar green\nproperty uchar blue\nproperty uchar alpha\n"
        f"element face {m}\nproperty list uchar int vertex_indices\nend_header\n"
    )
    vdt = np.dtype([("p", "<f4", 3), ("c", "u1", 4)])
    vrec = np.empty(n, dtype=vdt)
    vrec["p"], vrec["c"] = vertices, colors
    fdt = np.dtype([("k", "u1"), ("i", "<i4", 3)])
    frec = np.empty(m, dtype=fdt)
    frec["k"], frec["i"] = 3, faces
    tmp = Path(path).with_suffix(".ply.tmp")
    with open(tmp, "wb") as f:
        f.write(header.encode("ascii"))
        f.write(vrec.tobytes())
        f.write(frec.tobytes())
    tmp.replace(path)  # never leave a half-written file under the final name


def read_ply(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read a PLY written by :func:`write_ply` (for tests and re-sending a mesh on attach)."""
    data = Path(path).read_bytes()
    end = data.index(b"end_header\n") + len(b"end_header\n")
    lines = data[:end].decode("ascii").splitlines()
    n = int(next(line.split()[2] for line in lines if line.startswith("element vertex")))
    m = int(next(line.split()[2] for line in lines if line.startswith("element face")))
    vdt = np.dtype([("p", "<f4", 3), ("c", "u1", 4)])
    fdt = np.dtype([("k", "u1"), ("i", "<i4", 3)])
    v = np.frombuffer(data, dtype=vdt, count=n, offset=end)
    f = np.frombuffer(data, dtype=fdt, count=m, offset=end + n * vdt.itemsize)
    return v["p"].copy(), f["i"].copy(), v["c"].copy()
