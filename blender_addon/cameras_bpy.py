"""Blender cameras in and out of the core camera model. The only place that reads or writes camera data.

Reading: :func:`sample_cameras` walks a sampling plan with ``scene.frame_set`` and reads each camera's
evaluated ``matrix_world``, lens, sensor and shift and the scene's render size at that frame, then restores the
frame in ``finally``. Writing: :func:`apply_blender_camera` / :func:`apply_render_settings` put core values
into ``bpy.types.Camera`` and ``RenderSettings``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import bpy
import mathutils
import numpy as np

from .core.camera_export import CameraRecord, record_from_blender
from .core.intrinsics import BlenderCamera
from .core.sampling import Marker, Sample


def matrix_to_numpy(matrix) -> np.ndarray:
    """A ``mathutils.Matrix`` (4×4) as a float64 array, row-major (``m[row][col]``)."""
    return np.array([[matrix[r][c] for c in range(4)] for r in range(4)], dtype=np.float64)


def numpy_to_matrix(m: np.ndarray) -> mathutils.Matrix:
    """A 4×4 array (row-major) as a ``mathutils.Matrix``.

    Always assign ``matrix_world`` a Matrix: a plain nested list is read in RNA's column-major memory order,
    which silently transposes it.
    """
    return mathutils.Matrix([[float(x) for x in row] for row in np.asarray(m, dtype=np.float64)])


def blender_camera(cam_data: bpy.types.Camera, render: bpy.types.RenderSettings) -> BlenderCamera:
    """Copy a camera datablock's projection settings and the scene's render size into core data."""
    return BlenderCamera(
        lens=float(cam_data.lens),
        sensor_width=float(cam_data.sensor_width),
        sensor_height=float(cam_data.sensor_height),
        sensor_fit=str(cam_data.sensor_fit),
        shift_x=float(cam_data.shift_x),
        shift_y=float(cam_data.shift_y),
        resolution_x=int(render.resolution_x),
        resolution_y=int(render.resolution_y),
        resolution_percentage=int(render.resolution_percentage),
        pixel_aspect_x=float(render.pixel_aspect_x),
        pixel_aspect_y=float(render.pixel_aspect_y),
        clip_start=float(cam_data.clip_start),
        clip_end=float(cam_data.clip_end),
        type=str(cam_data.type),
    )


def read_camera(obj: bpy.types.Object, scene: bpy.types.Scene, depsgraph=None,
                placement: np.ndarray | None = None) -> CameraRecord:
    """The record of camera object ``obj`` at the scene's current frame (evaluated: animation, constraints,
    drivers and parenting included).

    Raises:
        ValueError: if ``obj`` is not a camera or its settings have no pinhole projection.
    """
    if obj is None or obj.type != "CAMERA":
        raise ValueError(f"{getattr(obj, 'name', 'nothing')!r} is not a camera object")
    depsgraph = depsgraph or bpy.context.evaluated_depsgraph_get()
    obj_eval = obj.evaluated_get(depsgraph)
    fps = scene.render.fps / scene.render.fps_base
    try:
        return record_from_blender(
            obj.name, scene.frame_current, matrix_to_numpy(obj_eval.matrix_world),
            blender_camera(obj_eval.data, scene.render), placement=placement, fps=fps,
        )
    except ValueError as exc:
        raise ValueError(f"camera {obj.name!r} at frame {scene.frame_current}: {exc}") from None


def sample_cameras(
    scene: bpy.types.Scene,
    samples: Sequence[Sample],
    placement: np.ndarray | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[CameraRecord]:
    """Evaluate every sample of a plan and return its camera records, restoring the current frame after.

    Args:
        scene: the scene to evaluate.
        samples: from :func:`..core.sampling.plan_active_camera` (camera None = ``scene.camera`` at that
            frame, which timeline markers switch) or :func:`..core.sampling.plan_rig` (camera names).
        placement: ``(4, 4)`` matrix_world of the capture's placement empty, or None for Blender world.
        progress: called with ``(done, total)`` after each sample.

    Raises:
        ValueError: naming the frame and camera at fault (no active camera, not a camera, ORTHO...).
    """
    frame, subframe = scene.frame_current, scene.frame_subframe
    out: list[CameraRecord] = []
    try:
        for i, sample in enumerate(samples):
            scene.frame_set(sample.frame)
            if sample.camera is None:
                obj = scene.camera
                if obj is None:
                    raise ValueError(f"the scene has no active camera at frame {sample.frame}")
            else:
                obj = bpy.data.objects.get(sample.camera)
                if obj is None:
                    raise ValueError(f"camera {sample.camera!r} no longer exists")
            depsgraph = bpy.context.evaluated_depsgraph_get()
            out.append(read_camera(obj, scene, depsgraph, placement))
            if progress is not None:
                progress(i + 1, len(samples))
    finally:
        scene.frame_set(frame, subframe=subframe)
    return out


def scene_markers(scene: bpy.types.Scene) -> list[Marker]:
    """The scene's timeline markers as core data (camera names; hidden-from-render cameras flagged)."""
    return [Marker(int(m.frame), m.camera.name if m.camera else None,
                   bool(m.camera.hide_render) if m.camera else False) for m in scene.timeline_markers]


def rig_camera_names(collection: bpy.types.Collection | None) -> list[str]:
    """Names of the camera objects in ``collection`` and its children, sorted."""
    if collection is None:
        return []
    return sorted(o.name for o in collection.all_objects if o.type == "CAMERA")


def apply_blender_camera(cam_data: bpy.types.Camera, bc: BlenderCamera) -> None:
    """Write lens, sensor, fit, shift and clipping into a camera datablock (perspective)."""
    cam_data.type = "PERSP"
    cam_data.lens_unit = "MILLIMETERS"
    cam_data.sensor_fit = bc.sensor_fit
    cam_data.sensor_width = bc.sensor_width
    cam_data.sensor_height = bc.sensor_height
    cam_data.lens = bc.lens
    cam_data.shift_x = bc.shift_x
    cam_data.shift_y = bc.shift_y
    cam_data.clip_start = bc.clip_start
    cam_data.clip_end = bc.clip_end


def apply_render_settings(render: bpy.types.RenderSettings, bc: BlenderCamera) -> None:
    """Write resolution, percentage and pixel aspect into the scene's render settings."""
    render.resolution_x = bc.resolution_x
    render.resolution_y = bc.resolution_y
    render.resolution_percentage = bc.resolution_percentage
    render.pixel_aspect_x = bc.pixel_aspect_x
    render.pixel_aspect_y = bc.pixel_aspect_y


def projection_intrinsics(obj: bpy.types.Object, scene: bpy.types.Scene, depsgraph=None):
    """Intrinsics read from Blender's own ``Object.calc_matrix_camera`` (for tests and diagnostics)."""
    from .core.intrinsics import intrinsics_from_projection, render_size

    depsgraph = depsgraph or bpy.context.evaluated_depsgraph_get()
    r = scene.render
    w, h = render_size(r.resolution_x, r.resolution_y, r.resolution_percentage)
    p = obj.evaluated_get(depsgraph).calc_matrix_camera(depsgraph, x=w, y=h, scale_x=r.pixel_aspect_x,
                                                        scale_y=r.pixel_aspect_y)
    return intrinsics_from_projection([[p[i][j] for j in range(4)] for i in range(4)], w, h)
