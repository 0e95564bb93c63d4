"""Results coming back from the backend into Blender: frames as files (where they go, written atomically),
meshes with their colours, and the live preview image. Showing frames in the scene is :mod:`.frames_bpy`'s."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import bpy
import numpy as np

from .core.sampling import frame_file_name

PREVIEW_IMAGE = "NeRF-Art Preview"


def output_root(base: str) -> Path:
    """``base`` as an absolute folder (``//`` = the .blend's folder).

    An unsaved file has no folder; ``//`` paths then go to the system's temporary folder.
    """
    if base.startswith("//") and not bpy.data.filepath:
        return Path(tempfile.gettempdir()) / "nerfart" / base[2:]
    return Path(bpy.path.abspath(base))


def temporary_output_note(base: str) -> str:
    """What an artist must know before rendering into ``base``: that an unsaved file's ``//`` folder is the
    system's temporary folder (cleaned by the system), and how to keep the frames; "" when it is not."""
    if not (base.startswith("//") and not bpy.data.filepath):
        return ""
    return (f"This file is not saved: frames go to {output_root(base)} in the system's temporary folder. Save the "
            ".blend first, or choose an absolute Output Folder, to keep them")


def write_atomic(path: Path, data: bytes | memoryview) -> None:
    """Write a file so that readers never see half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    with open(tmp, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def save_frame(msg, out_dir: Path, multi_camera: bool) -> Path:
    """Write a ``frame`` message's image where it belongs; returns the file."""
    c = msg.content
    spec = c.get("image") or {"buffer": c.get("buffer", 0), "format": c.get("format", "png")}
    ext = "exr" if spec.get("format") == "exr" else "png"
    name = frame_file_name(int(c.get("index", 0)), str(c.get("camera_name", "camera")), int(c.get("frame", 0)),
                           ext, multi_camera)
    path = out_dir / name
    write_atomic(path, msg.blob(spec) if hasattr(msg, "blob") else msg.buffers[spec["buffer"]])
    return path


def show_attribute_colours() -> int:
    """Make the Solid shading of every 3D view show colour attributes (a mesh's vertex colours) instead of
    material colours ("Attribute" in the shading popover, identifier VERTEX); returns how many views changed."""
    changed = 0
    for screen in bpy.data.screens:
        for area in screen.areas:
            for space in area.spaces:
                if space.type == "VIEW_3D" and space.shading.color_type != "VERTEX":
                    space.shading.color_type = "VERTEX"
                    changed += 1
    return changed


def update_preview(data: bytes | memoryview, fmt: str = "png") -> bpy.types.Image:
    """Put a preview image (file bytes) into the ``NeRF-Art Preview`` image and return it."""
    path = Path(tempfile.gettempdir()) / "nerfart_preview" / f"preview.{fmt}"
    write_atomic(path, data)
    img = bpy.data.images.get(PREVIEW_IMAGE)
    if img is None:
        img = bpy.data.images.load(str(path), check_existing=False)
        img.name = PREVIEW_IMAGE
    else:
        img.filepath = str(path)
        img.reload()
    img.preview_ensure()
    if img.preview is not None:
        img.preview.reload()
    return img


def mesh_object(name: str, vertices: np.ndarray, faces: np.ndarray, colors: np.ndarray | None,
                collection: bpy.types.Collection, placement: bpy.types.Object | None = None,
                decimate: float = 1.0) -> bpy.types.Object:
    """Create a triangle mesh object with a per-vertex colour attribute shown by its material.

    Args:
        vertices: ``(n_vertices, 3)`` float positions in capture-world coordinates.
        faces: ``(n_faces, 3)`` int vertex indices.
        colors: ``(n_vertices, 4)`` uint8 sRGB RGBA, or None.
        placement: the capture's placement empty; the mesh is parented to it so it lands in place.
        decimate: fraction of faces to keep; below 1 a Decimate modifier is added (non-destructive).
    """
    v = np.ascontiguousarray(vertices, dtype=np.float32).reshape(-1, 3)
    f = np.ascontiguousarray(faces, dtype=np.int32).reshape(-1, 3)
    if f.size and (f.min() < 0 or f.max() >= len(v)):
        raise ValueError(f"mesh faces index vertices outside 0..{len(v) - 1}")
    mesh = bpy.data.meshes.new(name)
    mesh.vertices.add(len(v))
    mesh.vertices.foreach_set("co", v.ravel())
    mesh.loops.add(f.size)
    mesh.loops.foreach_set("vertex_index", f.ravel())
    mesh.polygons.add(len(f))
    mesh.polygons.foreach_set("loop_start", np.arange(0, f.size, 3, dtype=np.int32))
    mesh.update(calc_edges=True)
    mesh.validate(clean_customdata=False)
    if colors is not None and len(colors) == len(v):
        rgba = np.ascontiguousarray(colors, dtype=np.float32).reshape(-1, 4) / 255.0
        attr = mesh.color_attributes.new("Col", "BYTE_COLOR", "POINT")
        attr.data.foreach_set("color_srgb", rgba.ravel())
        mesh.color_attributes.active_color = attr
        mesh.color_attributes.render_color_index = mesh.color_attributes.active_color_index
        mesh.materials.append(_colour_material())
    obj = bpy.data.objects.new(name, mesh)
    collection.objects.link(obj)
    if placement is not None:
        obj.parent = placement
        obj.matrix_parent_inverse.identity()
    if decimate < 1.0:
        mod = obj.modifiers.new("Decimate", "DECIMATE")
        mod.ratio = decimate
    return obj


def _colour_material() -> bpy.types.Material:
    name = "NeRF-Art Vertex Colour"
    mat = bpy.data.materials.get(name)
    if mat is not None:
        return mat
    mat = bpy.data.materials.new(name)
    if bpy.app.version < (5, 0, 0):
        mat.use_nodes = True
    nodes, links = mat.node_tree.nodes, mat.node_tree.links
    bsdf = next((n for n in nodes if n.type == "BSDF_PRINCIPLED"), None)
    if bsdf is None:
        bsdf = nodes.new("ShaderNodeBsdfPrincipled")
        out = next((n for n in nodes if n.type == "OUTPUT_MATERIAL"), None) or nodes.new("ShaderNodeOutputMaterial")
        links.new(bsdf.outputs[0], out.inputs[0])
    attr = nodes.new("ShaderNodeVertexColor")
    attr.layer_name = "Col"
    attr.location = (bsdf.location[0] - 300, bsdf.location[1])
    links.new(attr.outputs["Color"], bsdf.inputs["Base Color"])
    return mat
