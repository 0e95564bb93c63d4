"""Textured meshes from the backend: write the GLB it sent, import it with Blender's own glTF importer.

The importer wires the material (Principled BSDF with the embedded texture as Base Color, packed into the
.blend) and converts glTF's Y-up to Blender's Z-up; the backend wrote the GLB so that the imported vertices
are in capture-world coordinates, like :func:`results_bpy.mesh_object`'s, and the object is parented to the
capture's placement the same way.
"""

from __future__ import annotations

from pathlib import Path

import bpy

from .results_bpy import write_atomic


def import_glb(name: str, data: bytes | memoryview, path: Path, collection: bpy.types.Collection,
               placement: bpy.types.Object | None = None) -> bpy.types.Object:
    """Write ``data`` to ``path`` and import it as one mesh object named ``name`` in ``collection``.

    Args:
        data: the GLB file's bytes (one mesh, one base-colour texture).
        path: where the GLB is kept (the output folder), so the artist has the file too.
        placement: the capture's placement empty; the mesh is parented to it so it lands in place.

    Raises:
        RuntimeError: the importer failed or the file held no mesh.
    """
    write_atomic(path, data)
    before = set(bpy.data.objects)
    result = bpy.ops.import_scene.gltf(filepath=str(path))
    if "FINISHED" not in result:
        raise RuntimeError(f"Blender's glTF importer could not read {path}")
    new = [o for o in bpy.data.objects if o not in before]
    meshes = [o for o in new if o.type == "MESH"]
    if len(meshes) != 1:
        raise RuntimeError(f"{path} held {len(meshes)} meshes, expected one")
    obj = meshes[0]
    for other in new:  # the importer may add an empty root node; the mesh keeps its world transform
        if other is not obj:
            bpy.data.objects.remove(other)
    obj.name = name
    obj.data.name = name
    # The importer links into the active collection; the mesh belongs beside the capture.
    for coll in list(obj.users_collection):
        coll.objects.unlink(obj)
    collection.objects.link(obj)
    obj.parent = None
    obj.matrix_world.identity()
    if placement is not None:
        obj.parent = placement
        obj.matrix_parent_inverse.identity()
    return obj


def show_texture_colours() -> None:
    """Make every 3D view's Solid shading show textures (Viewport Shading ▸ Color ▸ Texture)."""
    for screen in bpy.data.screens:
        for area in screen.areas:
            for space in area.spaces:
                if space.type == "VIEW_3D":
                    space.shading.color_type = "TEXTURE"
