"""The embedded default subject: a head-like figure built in Blender from primitives, with procedural materials.

Nothing is downloaded or read from disk: a scaled UV sphere is the skull, with a nose, ears, eyes, lips, hair
and a neck, each a primitive with its own procedural material (Noise and Voronoi textures, so that every view
has texture the NeRF can lock on to). The head is centred on the world origin, Z up, facing -Y (Blender's
front view), and fits in a sphere of radius about 1.2, so the capture cameras frame it predictably.

Everything is built with ``bpy.data`` and ``bmesh`` (no ``bpy.ops``), so it works in background mode and in the
``bpy`` module without a window or an active object.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import bmesh
import bpy

SUBJECT_COLLECTION = "Demo Subject"

# Extent of the subject in Blender units (world = capture world for the embedded capture): every part lies
# inside this axis-aligned box. The tests check that the extracted mesh does too.
SUBJECT_BOUNDS = ((-1.0, -1.15, -1.45), (1.0, 1.0, 1.25))


@dataclass(frozen=True)
class Part:
    """One primitive of the head: a sphere or cylinder, placed, scaled and rotated, with a material key."""

    name: str
    shape: str  # "sphere" or "cylinder"
    location: tuple[float, float, float]
    scale: tuple[float, float, float]
    material: str
    rotation: tuple[float, float, float] = (0.0, 0.0, 0.0)


# Proportions of a stylised human head (front is -Y). Sizes are radii (spheres) or radius/half-height.
PARTS: tuple[Part, ...] = (
    Part("Skull", "sphere", (0.0, 0.0, 0.1), (0.72, 0.82, 0.98), "skin"),
    Part("Jaw", "sphere", (0.0, -0.18, -0.38), (0.55, 0.6, 0.5), "skin"),
    Part("Nose", "sphere", (0.0, -0.86, -0.02), (0.11, 0.16, 0.2), "skin", (math.radians(-15), 0.0, 0.0)),
    Part("Ear.L", "sphere", (0.72, 0.02, 0.02), (0.08, 0.16, 0.26), "skin", (0.0, 0.0, math.radians(-10))),
    Part("Ear.R", "sphere", (-0.72, 0.02, 0.02), (0.08, 0.16, 0.26), "skin", (0.0, 0.0, math.radians(10))),
    Part("Eye.L", "sphere", (0.27, -0.62, 0.2), (0.13, 0.13, 0.13), "eye"),
    Part("Eye.R", "sphere", (-0.27, -0.62, 0.2), (0.13, 0.13, 0.13), "eye"),
    Part("Iris.L", "sphere", (0.27, -0.735, 0.2), (0.07, 0.03, 0.07), "iris"),
    Part("Iris.R", "sphere", (-0.27, -0.735, 0.2), (0.07, 0.03, 0.07), "iris"),
    Part("Brow.L", "sphere", (0.28, -0.74, 0.4), (0.17, 0.05, 0.035), "hair", (0.0, math.radians(-8), 0.0)),
    Part("Brow.R", "sphere", (-0.28, -0.74, 0.4), (0.17, 0.05, 0.035), "hair", (0.0, math.radians(8), 0.0)),
    Part("Lips", "sphere", (0.0, -0.72, -0.4), (0.24, 0.09, 0.075), "lips"),
    Part("Hair", "sphere", (0.0, 0.1, 0.38), (0.78, 0.84, 0.8), "hair", (math.radians(-12), 0.0, 0.0)),
    Part("Neck", "cylinder", (0.0, 0.08, -1.05), (0.36, 0.36, 0.4), "skin"),
)


def _primitive(name: str, shape: str) -> bpy.types.Mesh:
    """A smooth-shaded unit sphere (radius 1) or cylinder (radius 1, height 2) mesh."""
    bm = bmesh.new()
    try:
        if shape == "sphere":
            bmesh.ops.create_uvsphere(bm, u_segments=48, v_segments=24, radius=1.0)
        elif shape == "cylinder":
            bmesh.ops.create_cone(bm, cap_ends=True, cap_tris=False, segments=48, radius1=1.0, radius2=1.0,
                                  depth=2.0)
        else:
            raise ValueError(f"unknown primitive {shape!r}")
        mesh = bpy.data.meshes.new(name)
        bm.to_mesh(mesh)
    finally:
        bm.free()
    # Smooth shading everywhere but a cylinder's flat caps (whose normals would otherwise be bent).
    for poly in mesh.polygons:
        poly.use_smooth = shape == "sphere" or len(poly.vertices) == 4
    return mesh


def _new_material(name: str) -> tuple[bpy.types.Material, bpy.types.NodeTree, bpy.types.Node]:
    """A material with a Principled BSDF (node-based; ``use_nodes`` is implicit from Blender 5.0)."""
    mat = bpy.data.materials.new(name)
    if bpy.app.version < (5, 0, 0):
        mat.use_nodes = True
    tree = mat.node_tree
    bsdf = next(n for n in tree.nodes if n.type == "BSDF_PRINCIPLED")
    return mat, tree, bsdf


def _ramp(tree: bpy.types.NodeTree, stops: Sequence[tuple[float, tuple[float, float, float]]]) -> bpy.types.Node:
    ramp = tree.nodes.new("ShaderNodeValToRGB")
    elements = ramp.color_ramp.elements
    while len(elements) < len(stops):
        elements.new(0.5)
    for element, (pos, rgb) in zip(elements, stops, strict=True):
        element.position = pos
        element.color = (*rgb, 1.0)
    return ramp


def _skin_material() -> bpy.types.Material:
    """Skin: a Noise texture through a skin-tone ramp (blotches), darkened by Voronoi cells (freckles, pores)."""
    mat, tree, bsdf = _new_material("Demo Skin")
    links = tree.links
    coord = tree.nodes.new("ShaderNodeTexCoord")
    noise = tree.nodes.new("ShaderNodeTexNoise")
    noise.inputs["Scale"].default_value = 3.5
    noise.inputs["Detail"].default_value = 6.0
    links.new(coord.outputs["Object"], noise.inputs["Vector"])
    tones = _ramp(tree, [(0.3, (0.5, 0.25, 0.15)), (0.5, (0.8, 0.48, 0.34)), (0.7, (0.93, 0.66, 0.52))])
    links.new(noise.outputs["Fac"], tones.inputs["Fac"])
    voronoi = tree.nodes.new("ShaderNodeTexVoronoi")
    voronoi.inputs["Scale"].default_value = 14.0
    links.new(coord.outputs["Object"], voronoi.inputs["Vector"])
    freckles = _ramp(tree, [(0.0, (0.45, 0.22, 0.15)), (0.12, (1.0, 1.0, 1.0))])
    links.new(voronoi.outputs["Distance"], freckles.inputs["Fac"])
    mix = tree.nodes.new("ShaderNodeMix")
    mix.data_type = "RGBA"
    mix.blend_type = "MULTIPLY"
    mix.inputs["Factor"].default_value = 1.0
    links.new(tones.outputs["Color"], mix.inputs["A"])
    links.new(freckles.outputs["Color"], mix.inputs["B"])
    links.new(mix.outputs["Result"], bsdf.inputs["Base Color"])
    bsdf.inputs["Roughness"].default_value = 0.55
    return mat


def _hair_material() -> bpy.types.Material:
    """Hair: stretched Noise (strands) through a dark-brown ramp."""
    mat, tree, bsdf = _new_material("Demo Hair")
    coord = tree.nodes.new("ShaderNodeTexCoord")
    mapping = tree.nodes.new("ShaderNodeMapping")
    mapping.inputs["Scale"].default_value = (12.0, 12.0, 1.5)  # fine across, long along Z: strands
    tree.links.new(coord.outputs["Object"], mapping.inputs["Vector"])
    noise = tree.nodes.new("ShaderNodeTexNoise")
    noise.inputs["Scale"].default_value = 2.0
    noise.inputs["Detail"].default_value = 8.0
    tree.links.new(mapping.outputs["Vector"], noise.inputs["Vector"])
    ramp = _ramp(tree, [(0.35, (0.05, 0.025, 0.015)), (0.65, (0.3, 0.16, 0.07))])
    tree.links.new(noise.outputs["Fac"], ramp.inputs["Fac"])
    tree.links.new(ramp.outputs["Color"], bsdf.inputs["Base Color"])
    bsdf.inputs["Roughness"].default_value = 0.7
    return mat


def _flat_material(name: str, rgb: tuple[float, float, float], roughness: float) -> bpy.types.Material:
    mat, _tree, bsdf = _new_material(name)
    bsdf.inputs["Base Color"].default_value = (*rgb, 1.0)
    bsdf.inputs["Roughness"].default_value = roughness
    return mat


def _materials() -> dict[str, bpy.types.Material]:
    return {"skin": _skin_material(), "hair": _hair_material(),
            "eye": _flat_material("Demo Eye", (0.92, 0.92, 0.88), 0.2),
            "iris": _flat_material("Demo Iris", (0.06, 0.12, 0.28), 0.15),
            "lips": _flat_material("Demo Lips", (0.55, 0.08, 0.09), 0.4)}


def _lights(scene: bpy.types.Scene, collection: bpy.types.Collection) -> None:
    """A warm key light front-left, a cool fill right, a rim light behind, and a grey world."""
    for name, kind, energy, colour, rotation in (
        ("Key", "SUN", 3.5, (1.0, 0.95, 0.88), (50.0, 0.0, -35.0)),
        ("Fill", "SUN", 1.2, (0.85, 0.9, 1.0), (60.0, 0.0, 60.0)),
        ("Rim", "SUN", 2.0, (1.0, 1.0, 1.0), (-60.0, 0.0, 10.0)),
    ):
        data = bpy.data.lights.new(f"Demo {name}", kind)
        data.energy = energy
        data.color = colour
        obj = bpy.data.objects.new(f"Demo {name}", data)
        obj.rotation_euler = tuple(math.radians(a) for a in rotation)
        collection.objects.link(obj)
    world = scene.world or bpy.data.worlds.new("Demo World")
    scene.world = world
    if bpy.app.version < (5, 0, 0):
        world.use_nodes = True
    background = next((n for n in world.node_tree.nodes if n.type == "BACKGROUND"), None)
    if background is not None:
        background.inputs["Color"].default_value = (0.35, 0.35, 0.38, 1.0)
        background.inputs["Strength"].default_value = 0.6


def build_head(scene: bpy.types.Scene) -> list[bpy.types.Object]:
    """Build the head in a new ``Demo Subject`` collection of ``scene``; returns its mesh objects."""
    collection = bpy.data.collections.new(SUBJECT_COLLECTION)
    scene.collection.children.link(collection)
    materials = _materials()
    objects = []
    for part in PARTS:
        mesh = _primitive(f"Demo {part.name}", part.shape)
        mesh.materials.append(materials[part.material])
        obj = bpy.data.objects.new(f"Demo {part.name}", mesh)
        obj.location = part.location
        obj.scale = part.scale
        obj.rotation_euler = part.rotation
        collection.objects.link(obj)
        objects.append(obj)
    _lights(scene, collection)
    return objects
