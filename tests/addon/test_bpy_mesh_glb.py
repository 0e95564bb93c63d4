"""Textured meshes in Blender: a backend ``mesh`` message carrying a GLB becomes one object, imported by
Blender's own glTF importer, placed under the capture's placement, with a material whose Base Color is the
embedded texture. ``data/textured_quad.glb`` was written by the backend's GLB writer (see its script)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

bpy = pytest.importorskip("bpy", reason="the bpy module (Blender as a Python module) is not installed")

GLB = Path(__file__).with_name("data") / "textured_quad.glb"


def _mesh_message(glb: bytes):
    from nerfart_blender.protocol import Message

    msg = Message("mesh", {"job_id": "j1", "file": "mesh.glb", "format": "glb"})
    msg.content["glb"] = msg.add_blob(glb, "glb")
    return msg


def _base_color_image(obj) -> bpy.types.Image:
    mat = obj.active_material
    bsdf = next(n for n in mat.node_tree.nodes if n.bl_idname == "ShaderNodeBsdfPrincipled")
    link = bsdf.inputs["Base Color"].links[0]
    # The importer may put a UV map or mix node between; follow back to the Image Texture.
    node = link.from_node
    while node.bl_idname != "ShaderNodeTexImage":
        node = next(i.links[0].from_node for i in node.inputs if i.is_linked)
    return node.image


def test_glb_mesh_message_imports_in_place_with_a_textured_material(addon, fresh_file, tmp_path):
    from nerfart_blender import tick
    from nerfart_blender.cameras_bpy import matrix_to_numpy
    from nerfart_blender.core.jobs import JobState

    scene = fresh_file
    coll = bpy.data.collections.new("Capture")
    scene.collection.children.link(coll)
    placement = bpy.data.objects.new("P", None)
    coll.objects.link(placement)
    placement.location, placement.scale = (1.0, 2.0, 3.0), (2.0, 2.0, 2.0)
    job = JobState("extract_mesh", "mesh abc", params={"source_job": "abc"},
                   meta={"scene": scene.name, "placement": "P", "mesh_dir": str(tmp_path / "meshes"),
                         "show_colours": True})
    job.job_id = "j1"
    objects_before = len(bpy.data.objects)

    tick._on_mesh(job, _mesh_message(GLB.read_bytes()))

    assert len(bpy.data.objects) == objects_before + 1  # one mesh, no stray importer empties
    views = [s for screen in bpy.data.screens for a in screen.areas for s in a.spaces if s.type == "VIEW_3D"]
    assert views and all(v.shading.color_type == "TEXTURE" for v in views)  # Solid view shows the texture
    obj = bpy.data.objects[job.meta["object"]]
    assert obj.name == "NeRF-Art mesh abc" and obj.type == "MESH"
    assert list(obj.users_collection) == [coll] and obj.parent == placement
    assert (tmp_path / "meshes" / "mesh_j1.glb").read_bytes() == GLB.read_bytes()
    # Capture-world (Z-up) coordinates survive glTF's Y-up round trip; the placement moves and scales them.
    bpy.context.view_layer.update()
    co = np.empty(len(obj.data.vertices) * 3)
    obj.data.vertices.foreach_get("co", co)
    local = co.reshape(-1, 3)
    np.testing.assert_allclose(np.sort(local[:, 2]), 0.5, atol=1e-6)
    assert local[:, :2].min() == pytest.approx(0.0, abs=1e-6) and local[:, :2].max() == pytest.approx(1.0)
    world = matrix_to_numpy(obj.matrix_world)
    np.testing.assert_allclose(world[:3, :3] @ np.array([1.0, 1.0, 0.5]) + world[:3, 3], (3.0, 4.0, 4.0),
                               atol=1e-6)
    assert len(obj.data.polygons) == 2 and len(obj.data.uv_layers) == 1
    image = _base_color_image(obj)
    assert tuple(image.size) == (8, 8)
    # Blender's pixels start at the bottom row: the bottom half is blue, the top red, as the backend baked it.
    px = np.array(image.pixels[:]).reshape(8, 8, 4)
    np.testing.assert_allclose(px[0, 0, :3], (0, 0, 1), atol=1e-3)
    np.testing.assert_allclose(px[7, 0, :3], (1, 0, 0), atol=1e-3)
    # Each vertex's uv points at the colour on its side: +y is red (v = 1), -y blue.
    uv = np.empty(len(obj.data.loops) * 2)
    obj.data.uv_layers[0].data.foreach_get("uv", uv)
    vidx = np.empty(len(obj.data.loops), np.int32)
    obj.data.loops.foreach_get("vertex_index", vidx)
    np.testing.assert_allclose(uv.reshape(-1, 2)[:, 1], local[vidx, 1], atol=1e-6)


def test_mesh_job_sends_the_panel_options(addon, fresh_file):
    from nerfart_blender import jobs_bpy

    scene = fresh_file
    scene.nerfart.backend.reconstruct_job = "abcdef123"
    scene.nerfart.backend.render_source = "RECONSTRUCTION"
    out = scene.nerfart.outputs
    assert (out.mesh_format, out.mesh_texture_size, out.mesh_target_faces) == ("GLB", "2048", 0)
    out.mesh_texture_size, out.mesh_target_faces = "4096", 40000
    job = jobs_bpy.mesh_job(scene)
    assert job.params["mesh_format"] == "glb" and job.params["texture_size"] == 4096
    assert job.params["target_faces"] == 40000 and job.meta["mesh_dir"].endswith("meshes")
    out.mesh_format = "PLY"
    job = jobs_bpy.mesh_job(scene)
    assert job.params["mesh_format"] == "ply" and "texture_size" not in job.params
