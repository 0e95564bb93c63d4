"""Cameras to render: a nerfstudio ``camera_path.json``, or a list of cameras in the protocol's format.

Both are read into :class:`Cameras` in the capture's own world coordinates (what Blender exports), plus the
frame number of each camera.

* nerfstudio ``camera_path.json``: ``render_width``, ``render_height`` and a ``camera_path`` list of
  ``{"camera_to_world": 16 numbers, row-major, OpenGL axes, "fov": vertical degrees, "aspect": w/h}``.
  Pixels are square and the principal point is the image centre.
* protocol cameras (``render.params.cameras``): a JSON list, or ``{"cameras": [...]}``, of
  ``{name, frame, c2w (4x4, OpenCV axes), fx, fy, cx, cy, width, height}``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from captures import OPENGL_TO_OPENCV, Cameras, CaptureError


def cameras_from_protocol(items: list[dict[str, Any]]) -> tuple[Cameras, list[int]]:
    """Cameras and frame numbers from ``render.params.cameras`` entries (already schema-checked)."""
    if not items:
        raise ValueError("no cameras to render")
    cams = Cameras(
        c2w=np.array([c["c2w"] for c in items], dtype=np.float64),
        fx=[c["fx"] for c in items], fy=[c["fy"] for c in items],
        cx=[c["cx"] for c in items], cy=[c["cy"] for c in items],
        width=[c["width"] for c in items], height=[c["height"] for c in items],
        names=[str(c["name"]) for c in items],
    )
    cams.validate()
    return cams, [int(c.get("frame", i)) for i, c in enumerate(items)]


def load_camera_path(path: str | Path) -> tuple[Cameras, list[int]]:
    """Read a nerfstudio ``camera_path.json`` or a protocol camera list.

    Raises:
        CaptureError: naming the file and what is wrong with it.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise CaptureError(f"{path}: camera path file not found") from None
    except (OSError, ValueError) as exc:
        raise CaptureError(f"{path}: not a readable JSON file: {exc}") from None
    try:
        if isinstance(data, dict) and "camera_path" in data:
            return _nerfstudio(data)
        items = data["cameras"] if isinstance(data, dict) and "cameras" in data else data
        if not isinstance(items, list):
            raise ValueError("expected a nerfstudio camera_path.json or a list of cameras")
        from protocol import CAMERA, ProtocolError
        from protocol.schema import Field, _check_value

        try:
            _check_value(items, Field("cameras", "list", "", min=1, item=CAMERA), "cameras")
        except ProtocolError as exc:
            raise ValueError(exc.message) from None
        return cameras_from_protocol(items)
    except (ValueError, KeyError, TypeError) as exc:
        raise CaptureError(f"{path}: {exc}") from None


def _nerfstudio(data: dict[str, Any]) -> tuple[Cameras, list[int]]:
    width, height = int(data["render_width"]), int(data["render_height"])
    if not (0 < width <= 16384 and 0 < height <= 16384):
        raise ValueError(f"render size {width}x{height} is out of range")
    path = data["camera_path"]
    if not path:
        raise ValueError("camera_path is empty")
    c2w, fy = [], []
    for i, item in enumerate(path):
        m = np.asarray(item["camera_to_world"], dtype=np.float64).reshape(4, 4)
        fov = float(item["fov"])
        if not 0 < fov < 180:
            raise ValueError(f"camera_path[{i}].fov must be between 0 and 180 degrees, got {fov}")
        c2w.append(m @ OPENGL_TO_OPENCV)
        fy.append(0.5 * height / math.tan(math.radians(fov) / 2))
    cams = Cameras(c2w=np.stack(c2w), fx=fy, fy=fy, cx=width / 2, cy=height / 2, width=width, height=height,
                   names=[f"path_{i:04d}" for i in range(len(path))])
    cams.validate()
    return cams, list(range(len(path)))
