"""nerfstudio files: ``transforms.json`` (a capture) and ``camera_path.json`` (``ns-render camera-path``).

* ``transforms.json``: ``frames[i].transform_matrix`` is the c2w in OpenGL / Blender camera axes, so a
  Blender matrix_world goes in unchanged; intrinsics are written per frame (needed when the lens is animated
  or marker cameras differ) and also at the top level when every frame shares them. Pixel centres are at
  +0.5 in nerfstudio as in Blender, so ``cx``/``cy`` are written unchanged.
* ``camera_path.json``: one vertical FOV per frame, principal point at the centre, square pixels. Cameras
  that need more (lens shift, non-square pixels, differing sizes) are refused unless ``approximate=True``.

Poses stay in the capture world; nerfstudio's dataparser applies its own ``dataparser_transforms.json``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from .camera_export import CameraRecord
from .intrinsics import Intrinsics
from .poses import as_nested_list


def transforms_json(records: Sequence[CameraRecord], file_paths: Sequence[str],
                    extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """A nerfstudio ``transforms.json`` object for ``records`` whose images are ``file_paths``.

    Args:
        records: one camera record per image (OpenCV c2w; converted to OpenGL axes here).
        file_paths: image paths relative to the transforms.json, one per record.
        extra: extra top-level keys (e.g. ``{"nerfart": {...}}`` provenance).
    """
    if len(records) != len(file_paths):
        raise ValueError(f"{len(records)} cameras but {len(file_paths)} image paths")
    if not records:
        raise ValueError("no cameras to write")
    frames = []
    for rec, path in zip(records, file_paths, strict=True):
        frames.append({
            "file_path": path,
            "transform_matrix": as_nested_list(rec.c2w_blender()),
            "fl_x": rec.fx, "fl_y": rec.fy, "cx": rec.cx, "cy": rec.cy, "w": rec.width, "h": rec.height,
            "camera_name": rec.name, "frame": rec.frame,
        })
    out: dict[str, Any] = {"camera_model": "OPENCV"}
    first = records[0].intrinsics
    if all(r.intrinsics == first for r in records):
        out.update({"fl_x": first.fx, "fl_y": first.fy, "cx": first.cx, "cy": first.cy,
                    "w": first.width, "h": first.height})
    out.update({"k1": 0.0, "k2": 0.0, "p1": 0.0, "p2": 0.0})
    if extra:
        out.update(extra)
    out["frames"] = frames
    return out


def vertical_fov_deg(intr: Intrinsics) -> float:
    """Vertical field of view in degrees for a centred principal point: ``2·atan(H / (2 fy))``."""
    return math.degrees(2.0 * math.atan(intr.height / (2.0 * intr.fy)))


def camera_path_json(records: Sequence[CameraRecord], fps: float, approximate: bool = False,
                     tolerance_px: float = 1e-3) -> dict[str, Any]:
    """A ``camera_path.json`` for ``ns-render camera-path``.

    Args:
        records: the cameras in render order, all of one size.
        fps: ``render.fps / render.fps_base`` (29.97 stays 29.97).
        approximate: write even if a camera has lens shift or non-square pixels (they are then lost).
        tolerance_px: how far the principal point may be from the centre before it counts as shifted.

    Raises:
        ValueError: if cameras differ in size, or (unless ``approximate``) use shift or non-square pixels.
    """
    if not records:
        raise ValueError("no cameras to write")
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    w, h = records[0].width, records[0].height
    path = []
    for rec in records:
        if (rec.width, rec.height) != (w, h):
            raise ValueError(f"camera_path.json holds one image size; {rec.name} at frame {rec.frame} is "
                             f"{rec.width}x{rec.height}, the first is {w}x{h}")
        if not approximate:
            if abs(rec.cx - w / 2) > tolerance_px or abs(rec.cy - h / 2) > tolerance_px:
                raise ValueError(f"{rec.name} at frame {rec.frame} has lens shift, which camera_path.json cannot "
                                 "hold; use transforms.json or the add-on's own camera list")
            if abs(rec.fx - rec.fy) > 1e-6 * rec.fx:
                raise ValueError(f"{rec.name} at frame {rec.frame} has non-square pixels, which camera_path.json "
                                 "cannot hold")
        c2w = rec.c2w_blender()
        path.append({
            "camera_to_world": [float(x) for row in c2w for x in row],
            "fov": vertical_fov_deg(rec.intrinsics),
            "aspect": 1.0,
        })
    return {
        "camera_type": "perspective",
        "render_width": int(w),
        "render_height": int(h),
        "fps": float(fps),
        "seconds": len(path) / float(fps),
        "smoothness_value": 0,
        "is_cycle": False,
        "camera_path": path,
    }


def read_camera_path_json(data: dict[str, Any]) -> list[CameraRecord]:
    """Cameras of a ``camera_path.json`` object (centred principal point, square pixels), frames 0..n-1."""
    import numpy as np

    from .poses import OPENGL_TO_OPENCV

    w, h = int(data["render_width"]), int(data["render_height"])
    fps = float(data.get("fps", 0)) or None
    out = []
    for i, cam in enumerate(data["camera_path"]):
        c2w = np.array(cam["camera_to_world"], dtype=np.float64).reshape(4, 4)
        fy = h / (2.0 * math.tan(math.radians(float(cam["fov"])) / 2.0))
        out.append(CameraRecord.from_dict({
            "name": f"camera_path_{i:04d}", "frame": i, "c2w": as_nested_list(c2w @ OPENGL_TO_OPENCV),
            "fx": fy, "fy": fy, "cx": w / 2.0, "cy": h / 2.0, "width": w, "height": h,
            **({"time": i / fps} if fps else {}),
        }, where=f"camera_path[{i}]"))
    return out
