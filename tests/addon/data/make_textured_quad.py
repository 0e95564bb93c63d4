"""Writes ``textured_quad.glb`` (the add-on tests' textured mesh) with the backend's own GLB writer.

Run from the repository root with the backend venv: ``.venv/bin/python tests/addon/data/make_textured_quad.py``.
The add-on test venvs have no trimesh, so the file is committed.

The mesh: a unit square in the z = 0.5 plane of capture-world (Z-up) coordinates, two triangles, uvs covering
the whole texture; the 8 x 8 texture is red in its top half (v > 0.5, i.e. +y) and blue in its bottom half.
"""

from pathlib import Path

import numpy as np

from backend.outputs.glb import glb_bytes
from backend.outputs.texture import TexturedMesh

vertices = np.array([[0, 0, 0.5], [1, 0, 0.5], [1, 1, 0.5], [0, 1, 0.5]], np.float32)
faces = np.array([[0, 1, 2], [0, 2, 3]], np.int32)
uvs = np.array([[0, 0], [1, 0], [1, 1], [0, 1]], np.float32)
texture = np.zeros((8, 8, 3), np.uint8)
texture[:4] = (255, 0, 0)  # row 0 is the top (v = 1)
texture[4:] = (0, 0, 255)
normals = np.tile(np.array([[0, 0, 1]], np.float32), (4, 1))
Path(__file__).with_name("textured_quad.glb").write_bytes(
    glb_bytes(TexturedMesh(vertices, faces, uvs, texture, normals)))
