"""The camera list the add-on sends to the backend (``render`` jobs and scene captures): format version 1.

A camera list is a JSON array of records, one per rendered image, in render order::

    {
      "name":   str,            # Blender camera object name (or image stem); names the output frame
      "frame":  int,            # Blender frame number the pose was sampled at
      "c2w":    [[4 floats] x4],# camera-to-world, row-major, OpenCV camera axes (+X right, +Y down, +Z forward)
                                # in CAPTURE-WORLD coordinates (Blender world when there is no placement empty)
      "fx": float, "fy": float, # focal lengths in pixels
      "cx": float, "cy": float, # principal point in pixels, origin at the image's top-left CORNER, so the
                                # centre of pixel (i, j) is (i + 0.5, j + 0.5)  (COLMAP / nerfstudio convention)
      "width": int, "height": int,  # image size in pixels (after Blender's resolution percentage)
      # optional, ignored by consumers that do not need them:
      "time": float,            # seconds, frame / (fps / fps_base)
      "clip_start": float, "clip_end": float   # Blender clipping distances, in capture-world units
    }

Rules: the rotation part of ``c2w`` is orthonormal with determinant +1 (Blender's renderer ignores object scale,
and so does the export); all numbers are finite; ``width``/``height`` are 1..16384; ``fx``/``fy`` > 0. Unknown
extra keys are ignored on reading, so later versions may add fields. The list is never empty.

The capture world is the frame the backend reconstructed in: cameras imported from a capture hang under a
*placement* empty, and a Blender camera's pose is mapped back with ``inv(placement) · matrix_world``
(:func:`..poses.capture_from_world`), clipping distances are divided by the placement's scale.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .intrinsics import BlenderCamera, Intrinsics, intrinsics_from_blender
from .poses import OPENGL_TO_OPENCV, as_nested_list, capture_from_world, is_rotation, placement_scale

CAMERA_LIST_VERSION = 1
REQUIRED_KEYS = ("name", "frame", "c2w", "fx", "fy", "cx", "cy", "width", "height")
OPTIONAL_KEYS = ("time", "clip_start", "clip_end")
MAX_IMAGE_SIDE = 16384
MAX_NAME = 1024


@dataclass(frozen=True)
class CameraRecord:
    """One entry of a camera list (see the module docstring for the exact meaning of each field)."""

    name: str
    frame: int
    c2w: tuple[tuple[float, float, float, float], ...]
    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int
    time: float | None = None
    clip_start: float | None = None
    clip_end: float | None = None

    @property
    def intrinsics(self) -> Intrinsics:
        return Intrinsics(self.fx, self.fy, self.cx, self.cy, self.width, self.height)

    def c2w_opencv(self) -> np.ndarray:
        """``(4, 4)`` float64 c2w, OpenCV axes."""
        return np.array(self.c2w, dtype=np.float64)

    def c2w_blender(self) -> np.ndarray:
        """``(4, 4)`` float64 c2w, Blender / OpenGL axes (what nerfstudio's ``transform_matrix`` holds)."""
        return self.c2w_opencv() @ OPENGL_TO_OPENCV

    def to_dict(self) -> dict[str, Any]:
        """The JSON-able record; optional fields appear only when set."""
        out: dict[str, Any] = {
            "name": self.name, "frame": int(self.frame), "c2w": [list(row) for row in self.c2w],
            "fx": float(self.fx), "fy": float(self.fy), "cx": float(self.cx), "cy": float(self.cy),
            "width": int(self.width), "height": int(self.height),
        }
        for key in OPTIONAL_KEYS:
            value = getattr(self, key)
            if value is not None:
                out[key] = float(value)
        return out

    @classmethod
    def from_dict(cls, data: Any, where: str = "camera") -> CameraRecord:
        """Parse and validate one record.

        Raises:
            ValueError: naming ``where`` and the field at fault.
        """
        if not isinstance(data, dict):
            raise ValueError(f"{where} must be an object, got {type(data).__name__}")
        for key in REQUIRED_KEYS:
            if key not in data:
                raise ValueError(f"{where} is missing {key!r}")
        name = data["name"]
        if not isinstance(name, str) or not name or len(name) > MAX_NAME:
            raise ValueError(f"{where}.name must be a non-empty string of at most {MAX_NAME} characters")
        values: dict[str, Any] = {"name": name}
        for key in ("frame", "width", "height"):
            v = data[key]
            if isinstance(v, bool) or not isinstance(v, int):
                raise ValueError(f"{where}.{key} must be an integer, got {v!r}")
            values[key] = v
        for key in ("width", "height"):
            if not 1 <= values[key] <= MAX_IMAGE_SIDE:
                raise ValueError(f"{where}.{key} must be between 1 and {MAX_IMAGE_SIDE}, got {values[key]}")
        for key in ("fx", "fy", "cx", "cy", *OPTIONAL_KEYS):
            if key not in data or data[key] is None:
                continue
            v = data[key]
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                raise ValueError(f"{where}.{key} must be a finite number, got {v!r}")
            values[key] = float(v)
        if values["fx"] <= 0 or values["fy"] <= 0:
            raise ValueError(f"{where}: focal lengths must be positive, got fx={values['fx']} fy={values['fy']}")
        values["c2w"] = _parse_c2w(data["c2w"], f"{where}.c2w")
        return cls(**values)


def _parse_c2w(value: Any, where: str) -> tuple[tuple[float, float, float, float], ...]:
    if (not isinstance(value, list | tuple) or len(value) != 4
            or any(not isinstance(row, list | tuple) or len(row) != 4 for row in value)):
        raise ValueError(f"{where} must be 4 rows of 4 numbers")
    rows = []
    for row in value:
        for x in row:
            if isinstance(x, bool) or not isinstance(x, int | float) or not math.isfinite(x):
                raise ValueError(f"{where} must hold finite numbers only, found {x!r}")
        rows.append(tuple(float(x) for x in row))
    m = np.array(rows)
    if not np.allclose(m[3], (0.0, 0.0, 0.0, 1.0)):
        raise ValueError(f"{where} must end with the row [0, 0, 0, 1]")
    if not is_rotation(m, atol=1e-4):
        raise ValueError(f"{where} rotation is not orthonormal with determinant +1")
    return tuple(rows)  # type: ignore[return-value]


def record_from_blender(
    name: str,
    frame: int,
    matrix_world: Sequence | np.ndarray,
    camera: BlenderCamera,
    placement: Sequence | np.ndarray | None = None,
    fps: float | None = None,
) -> CameraRecord:
    """The record of a Blender camera sampled at ``frame``.

    Args:
        name: the camera object's name.
        frame: the frame it was evaluated at.
        matrix_world: ``(4, 4)`` its matrix_world at that frame (Blender axes; object scale is dropped).
        camera: its lens / sensor / shift and the scene's render settings at that frame.
        placement: ``(4, 4)`` matrix_world of the capture's placement empty, or None (capture world =
            Blender world).
        fps: ``render.fps / render.fps_base``; when given, ``time = frame / fps``.

    Raises:
        ValueError: for a non-perspective camera, a non-uniform placement, or degenerate settings.
    """
    intr = intrinsics_from_blender(camera)
    c2w_cv = capture_from_world(matrix_world, placement) @ OPENGL_TO_OPENCV
    scale = placement_scale(placement) if placement is not None else 1.0
    return CameraRecord(
        name=str(name), frame=int(frame), c2w=tuple(tuple(r) for r in as_nested_list(c2w_cv)),  # type: ignore[arg-type]
        fx=intr.fx, fy=intr.fy, cx=intr.cx, cy=intr.cy, width=intr.width, height=intr.height,
        time=(frame / fps) if fps else None,
        clip_start=camera.clip_start / scale, clip_end=camera.clip_end / scale,
    )


def record_from_opencv(name: str, frame: int, c2w_opencv: Sequence | np.ndarray, intr: Intrinsics,
                       **optional: float | None) -> CameraRecord:
    """A record from an OpenCV-axes pose and intrinsics (validated like any parsed record)."""
    d = {"name": name, "frame": int(frame), "c2w": as_nested_list(np.asarray(c2w_opencv, dtype=np.float64)),
         "fx": intr.fx, "fy": intr.fy, "cx": intr.cx, "cy": intr.cy, "width": int(intr.width),
         "height": int(intr.height), **{k: v for k, v in optional.items() if v is not None}}
    return CameraRecord.from_dict(d, where=f"camera {name!r}")


def camera_list_to_dicts(records: Iterable[CameraRecord]) -> list[dict[str, Any]]:
    """The JSON-able camera list."""
    out = [r.to_dict() for r in records]
    if not out:
        raise ValueError("the camera list is empty: there is nothing to render")
    return out


def camera_list_from_dicts(data: Any) -> list[CameraRecord]:
    """Parse and validate a camera list (as produced by :func:`camera_list_to_dicts`)."""
    if not isinstance(data, list):
        raise ValueError(f"a camera list must be a JSON array, got {type(data).__name__}")
    if not data:
        raise ValueError("the camera list is empty")
    return [CameraRecord.from_dict(item, where=f"cameras[{i}]") for i, item in enumerate(data)]


def dumps(records: Iterable[CameraRecord]) -> str:
    """Strict JSON text of the camera list (NaN and infinities refused)."""
    return json.dumps(camera_list_to_dicts(records), allow_nan=False)


def loads(text: str) -> list[CameraRecord]:
    """Parse :func:`dumps` output."""
    return camera_list_from_dicts(json.loads(text))
