"""Captures in the scene: import a capture's cameras under one placement empty, or render a ring of cameras.

An imported capture is a collection holding a *placement* empty and one camera per photo, parented to it with
an identity parent-inverse, so ``camera.matrix_world = placement.matrix_world · c2w_file``. By default the
placement stands the subject upright at the 3D cursor at head scale (:mod:`.core.placement`). Moving, rotating
or uniformly scaling the empty moves the whole capture (and every mesh or render that comes back) into place.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import bpy
import numpy as np

from .cameras_bpy import (
    apply_blender_camera,
    apply_render_settings,
    blender_camera,
    matrix_to_numpy,
    numpy_to_matrix,
)
from .core.camera_export import record_from_blender
from .core.capture_frame import background_frame_method, frame_mismatch
from .core.captures import Capture, blender_cameras, capture_subject
from .core.intrinsics import BlenderCamera, intrinsics_from_blender
from .core.nerfstudio import transforms_json
from .core.placement import HEAD_SIZE_M, upright_placement
from .core.poses import placement_scale
from .core.ring import RingCamera, bounding_sphere, framing_distance, ring_cameras
from .core.subject_bounds import box_around_sphere, head_and_shoulders

CAPTURE_ROOT_KEY = "nerfart_capture_root"
CAPTURE_FORMAT_KEY = "nerfart_capture_format"
CAPTURE_SIZE_KEY = "nerfart_photo_size"  # (width, height) of the first photo
CAPTURE_PIXEL_ASPECT_KEY = "nerfart_pixel_aspect"  # (x, y) the cameras need
# Add Subject Bounds' box (16 numbers, capture world), from where the cameras look (see subject_bpy).
CAPTURE_SUBJECT_KEY = "nerfart_subject_default"


def _new_collection(scene: bpy.types.Scene, name: str) -> bpy.types.Collection:
    coll = bpy.data.collections.new(name)
    scene.collection.children.link(coll)
    return coll


def _new_placement(coll: bpy.types.Collection, name: str, display_size: float = 0.5) -> bpy.types.Object:
    empty = bpy.data.objects.new(name, None)
    empty.empty_display_type = "ARROWS"
    empty.empty_display_size = display_size
    coll.objects.link(empty)
    return empty


PLACEMENT_MODES = ("CURSOR", "AS_CAPTURED")
# Drawn sizes relative to the subject's diameter, in capture units (the placement's scale applies on top).
CAMERA_DISPLAY_FRACTION = 0.15
PLACEMENT_DISPLAY_FRACTION = 0.75


def import_capture(scene: bpy.types.Scene, capture: Capture, show_photos: bool = True,
                   set_resolution: bool = False, set_active_camera: bool = False,
                   placement_mode: str = "CURSOR", subject_size: float = HEAD_SIZE_M,
                   ) -> tuple[bpy.types.Collection, bpy.types.Object, list[str]]:
    """Create the capture's cameras in a new collection under one placement empty.

    ``placement_mode`` ``'CURSOR'`` stands the subject upright at the 3D cursor, ``subject_size`` Blender units
    across (:func:`.core.placement.upright_placement`); ``'AS_CAPTURED'`` keeps the capture's own position,
    orientation and scale (identity placement). The scene's render resolution and active camera change only
    when asked (``set_resolution``, ``set_active_camera``): an artist's shot settings are theirs.

    Returns:
        The collection, the placement empty, and warnings for the user (reader warnings, distortion, mixed
        image sizes, pixel aspects shared). Whether the scene's render frames like the photos is not among them:
        it changes with the scene, so :func:`frame_warning` tells it when asked.

    Raises:
        CaptureError: the views need pixel aspects too different for one scene (before anything is created).
        ValueError: an unknown ``placement_mode`` or a non-positive ``subject_size``.
    """
    if placement_mode not in PLACEMENT_MODES:
        raise ValueError(f"placement_mode must be one of {', '.join(PLACEMENT_MODES)}, got {placement_mode!r}")
    settings, aspect_warning = blender_cameras(capture, clip_start=0.01, clip_end=1000.0)
    subject = capture_subject(capture)
    if placement_mode == "CURSOR":
        matrix = upright_placement(subject, tuple(scene.cursor.location), subject_size)
    else:
        matrix = np.eye(4)
    name = f"NeRF-Art {capture.root.name or 'capture'}"
    coll = _new_collection(scene, name)
    placement = _new_placement(coll, f"{name} Placement", PLACEMENT_DISPLAY_FRACTION * subject.diameter)
    placement.matrix_world = numpy_to_matrix(matrix)
    coll[CAPTURE_ROOT_KEY] = str(capture.root)
    coll[CAPTURE_FORMAT_KEY] = capture.format
    first = capture.cameras[0].intrinsics
    coll[CAPTURE_SIZE_KEY] = (first.width, first.height)
    coll[CAPTURE_PIXEL_ASPECT_KEY] = (settings[0].pixel_aspect_x, settings[0].pixel_aspect_y)
    coll[CAPTURE_SUBJECT_KEY] = [float(x) for x in head_and_shoulders(subject).ravel()]
    warnings = [*capture.warnings, *([aspect_warning] if aspect_warning else [])]
    sizes = {(c.intrinsics.width, c.intrinsics.height) for c in capture.cameras}
    first_obj = None
    for cam, bc in zip(capture.cameras, settings, strict=True):
        data = bpy.data.cameras.new(cam.name)
        apply_blender_camera(data, bc)
        data.display_size = CAMERA_DISPLAY_FRACTION * subject.diameter
        obj = bpy.data.objects.new(cam.name, data)
        coll.objects.link(obj)
        obj.parent = placement
        obj.matrix_parent_inverse.identity()
        obj.rotation_mode = "QUATERNION"
        obj.matrix_basis = numpy_to_matrix(cam.c2w_blender)
        first_obj = first_obj or obj
        obj["nerfart_width"] = cam.intrinsics.width
        obj["nerfart_height"] = cam.intrinsics.height
        obj["nerfart_image"] = str(cam.image)
        if show_photos:
            img = bpy.data.images.load(str(cam.image), check_existing=True)
            bg = data.background_images.new()
            bg.image = img
            bg.alpha = 0.8
            data.show_background_images = True
    if set_resolution:
        apply_render_settings(scene.render, settings[0])
    fit_backgrounds(scene, coll)
    if len(sizes) > 1:
        warnings.append(f"the capture mixes {len(sizes)} image sizes; a camera frames its photo exactly only "
                        "when the scene resolution matches its size (stored as nerfart_width/height)")
    if capture.has_distortion:
        warnings.append("the capture's lens distortion (k1 k2 p1 p2) cannot be shown by Blender cameras; the "
                        "backend uses it, the viewport shows the pinhole part only")
    if set_active_camera:
        scene.camera = first_obj
    return coll, placement, warnings


def _capture_shape(coll: bpy.types.Collection | None) -> tuple[tuple[int, int], tuple[float, float]] | None:
    """The photos' size and the pixel aspect the cameras need, as stored on an imported capture's collection."""
    if coll is None or CAPTURE_SIZE_KEY not in coll or CAPTURE_PIXEL_ASPECT_KEY not in coll:
        return None
    width, height = (int(v) for v in coll[CAPTURE_SIZE_KEY])
    pax, pay = (float(v) for v in coll[CAPTURE_PIXEL_ASPECT_KEY])
    return (width, height), (pax, pay)


def frame_warning(scene: bpy.types.Scene, coll: bpy.types.Collection | None) -> str | None:
    """Why the scene's render does not frame like the imported capture's photos, or None (also for no capture,
    or one made by Capture from Scene)."""
    shape = _capture_shape(coll)
    if shape is None:
        return None
    r = scene.render
    return frame_mismatch((r.resolution_x, r.resolution_y), (r.pixel_aspect_x, r.pixel_aspect_y), *shape)


def fit_backgrounds(scene: bpy.types.Scene, coll: bpy.types.Collection) -> None:
    """Fit every capture camera's photo to its frame at the scene's current render shape, keeping its aspect.

    At the photos' own shape the photo fills the frame exactly (``STRETCH``, which also honours non-square
    pixels); at any other shape it keeps its shape and lines up with the camera's view
    (:func:`.core.capture_frame.background_frame_method`).
    """
    r = scene.render
    frame_aspect = (r.resolution_x * r.pixel_aspect_x) / (r.resolution_y * r.pixel_aspect_y)
    shape = _capture_shape(coll)
    pax, pay = shape[1] if shape is not None else (1.0, 1.0)
    for obj in coll.objects:
        if obj.type != "CAMERA" or "nerfart_width" not in obj:
            continue
        w, h = int(obj["nerfart_width"]), int(obj["nerfart_height"])
        photo_aspect = (w * pax) / (h * pay)
        if math.isclose(photo_aspect, frame_aspect, rel_tol=1e-6):  # float32 pixel aspects
            method = "STRETCH"
        else:
            method = background_frame_method(obj.data.sensor_fit, photo_aspect, frame_aspect)
        for bg in obj.data.background_images:
            bg.frame_method = method


def match_scene_to_capture(scene: bpy.types.Scene, coll: bpy.types.Collection) -> tuple[int, int]:
    """Set the scene's resolution and pixel aspect to the capture's photos (the percentage stays); returns the
    size set. Raises ``ValueError`` for a collection that is not an imported capture."""
    shape = _capture_shape(coll)
    if shape is None:
        raise ValueError(f"'{coll.name}' is not an imported capture (it has no photo size)")
    (width, height), (pax, pay) = shape
    r = scene.render
    r.resolution_x, r.resolution_y = width, height
    r.pixel_aspect_x, r.pixel_aspect_y = pax, pay
    fit_backgrounds(scene, coll)
    return width, height


def store_warnings(cap, warnings: list[str]) -> None:
    """Replace the warnings shown in the Capture panel (``Scene.nerfart.capture.warnings``) by ``warnings``."""
    cap.warnings.clear()
    for text in warnings:
        cap.warnings.add().text = text


def placement_matrix(placement: bpy.types.Object | None) -> np.ndarray | None:
    """The placement empty's matrix_world (validated: uniform scale), or None for no placement."""
    if placement is None:
        return None
    m = matrix_to_numpy(placement.matrix_world)
    placement_scale(m)
    return m


# ---------------------------------------------------------------------------------------------------------
# Capture from scene
# ---------------------------------------------------------------------------------------------------------


def selection_bounds(objects) -> tuple[np.ndarray, float]:
    """Bounding sphere (centre, radius) of the objects' world-space bounding boxes."""
    corners = []
    for obj in objects:
        if obj.type in ("CAMERA", "LIGHT", "EMPTY", "SPEAKER", "LIGHT_PROBE"):
            continue
        m = matrix_to_numpy(obj.matrix_world)
        for corner in obj.bound_box:
            corners.append(m[:3, :3] @ np.array(corner[:]) + m[:3, 3])
    if not corners:
        raise ValueError("select the objects to capture (meshes, curves...) first; the selection has no geometry")
    return bounding_sphere(np.array(corners))


def create_ring(scene: bpy.types.Scene, objects, count: int, elevations: list[float], lens: float,
                width: int, height: int, margin: float) -> tuple[bpy.types.Collection, list[RingCamera]]:
    """A collection of ring cameras framing ``objects`` (placement empty at the world origin, identity)."""
    centre, radius = selection_bounds(objects)
    bc = BlenderCamera(lens=lens, sensor_width=36.0, sensor_fit="AUTO", resolution_x=width, resolution_y=height)
    intr = intrinsics_from_blender(bc)
    fov_x, fov_y = intr.fov()
    distance = framing_distance(radius, fov_x, fov_y, margin)
    ring = ring_cameras(centre, distance, count, elevations)
    coll = _new_collection(scene, "NeRF-Art Scene Capture")
    placement = _new_placement(coll, "NeRF-Art Scene Capture Placement")
    # The selection is the whole subject here (the placement is identity: capture world is the scene).
    coll[CAPTURE_SUBJECT_KEY] = [float(x) for x in box_around_sphere(centre, radius).ravel()]
    for rc in ring:
        data = bpy.data.cameras.new(rc.name)
        apply_blender_camera(data, BlenderCamera(lens=lens, sensor_width=36.0, sensor_fit="AUTO",
                                                 clip_start=max(1e-3, (distance - 2 * radius) * 0.5),
                                                 clip_end=distance + 4 * radius))
        data.display_size = 0.2 * radius
        obj = bpy.data.objects.new(rc.name, data)
        coll.objects.link(obj)
        obj.parent = placement
        obj.matrix_parent_inverse.identity()
        obj.matrix_basis = numpy_to_matrix(rc.matrix_world)
    return coll, ring


class RenderSettingsGuard:
    """Change render settings for the capture and put every one back afterwards."""

    FIELDS = ("engine", "resolution_x", "resolution_y", "resolution_percentage", "pixel_aspect_x",
              "pixel_aspect_y", "film_transparent", "filepath", "use_file_extension")

    def __init__(self, scene: bpy.types.Scene) -> None:
        self.scene = scene
        r = scene.render
        self.saved = {f: getattr(r, f) for f in self.FIELDS}
        self.saved_format = (r.image_settings.file_format, r.image_settings.color_mode)
        self.saved_camera = scene.camera
        self.saved_samples = scene.cycles.samples if hasattr(scene, "cycles") else None

    def apply(self, width: int, height: int, samples: int, transparent: bool) -> None:
        r = self.scene.render
        r.engine = "CYCLES"
        r.resolution_x, r.resolution_y, r.resolution_percentage = width, height, 100
        r.pixel_aspect_x = r.pixel_aspect_y = 1.0
        r.film_transparent = transparent
        r.use_file_extension = True
        r.image_settings.file_format = "PNG"
        r.image_settings.color_mode = "RGBA" if transparent else "RGB"
        self.scene.cycles.samples = samples

    def restore(self) -> None:
        r = self.scene.render
        for f, v in self.saved.items():
            setattr(r, f, v)
        r.image_settings.file_format, r.image_settings.color_mode = self.saved_format
        self.scene.camera = self.saved_camera
        if self.saved_samples is not None:
            self.scene.cycles.samples = self.saved_samples


def render_ring_view(scene: bpy.types.Scene, camera: bpy.types.Object, out_dir: Path) -> Path:
    """Render one capture view with the scene's current render settings; returns the PNG written."""
    scene.camera = camera
    path = out_dir / "images" / f"{camera.name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    scene.render.filepath = str(path.with_suffix(""))
    bpy.ops.render.render(write_still=True)
    if not path.is_file():
        raise RuntimeError(f"Cycles did not write {path}")
    return path


def write_ring_transforms(scene: bpy.types.Scene, cameras, out_dir: Path) -> Path:
    """Write the capture's transforms.json (Blender world; OpenGL c2w) for the rendered views."""
    records = [record_from_blender(obj.name, scene.frame_current, matrix_to_numpy(obj.matrix_world),
                                   blender_camera(obj.data, scene.render)) for obj in cameras]
    data = transforms_json(records, [f"images/{r.name}.png" for r in records],
                           extra={"nerfart": {"source": "blender scene capture", "blend": bpy.data.filepath}})
    path = out_dir / "transforms.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1, allow_nan=False), encoding="utf-8")
    os.replace(tmp, path)
    return path


def ring_cameras_of(coll: bpy.types.Collection) -> list[bpy.types.Object]:
    return sorted((o for o in coll.objects if o.type == "CAMERA"), key=lambda o: o.name)

