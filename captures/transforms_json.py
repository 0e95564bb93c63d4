"""``transforms*.json`` captures: NeRF-synthetic (Blender), instant-ngp and nerfstudio.

Conventions of the format:

* ``transform_matrix`` is camera-to-world in OpenGL camera axes (+Y up, looking down -Z); right-multiplied
  by :data:`OPENGL_TO_OPENCV` it becomes our OpenCV c2w. 3x4 matrices are accepted.
* Intrinsics are global (top level) or per frame (a frame's keys win): ``fl_x``, ``fl_y`` (default
  ``fl_x``), ``cx``, ``cy`` (default ``w/2``, ``h/2``), ``w``, ``h`` (default: read from the image file),
  ``k1 k2 p1 p2`` (default 0). nerfstudio's and instant-ngp's ``cx, cy`` put pixel centres at +0.5 (both
  copy COLMAP's numbers and cast rays through ``pixel + 0.5``), which is our convention, so they are copied.
* NeRF-synthetic gives ``camera_angle_x`` (optionally ``camera_angle_y``) instead: ``fx = 0.5 w / tan(0.5
  camera_angle_x)`` with ``w`` the width of the image *file* (the half-resolution lego then gets 555.555),
  ``fy = fx`` unless ``camera_angle_y`` is given, ``cx = w/2``, ``cy = h/2``.
* ``file_path`` is relative to the json's folder, with or without extension (NeRF-synthetic omits ``.png``);
  an optional per-frame ``mask_path`` gives the matte.
* Refused with a :class:`CaptureError`: fisheye / equirectangular cameras (instant-ngp ``is_fisheye``,
  nerfstudio ``camera_model`` other than ``OPENCV``/``PINHOLE``/``SIMPLE_PINHOLE``), and non-zero ``k3``,
  ``k4`` (not representable in our ``k1 k2 p1 p2`` model).
* **Ignored on purpose:** instant-ngp's ``aabb_scale``, ``scale`` and ``offset`` (they place the scene in
  instant-ngp's own unit cube after its axis cycling, an internal detail of that renderer; our
  :mod:`normalize` places the region of interest itself), nerfstudio's ``applied_transform`` (already
  baked into the matrices), ``ply_file_path``, depth paths and per-frame ``rotation``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .cameras import OPENGL_TO_OPENCV, Cameras
from .errors import CaptureError
from .image_headers import image_header
from .images import resolve_image_path

_PINHOLE_MODELS = ("OPENCV", "PINHOLE", "SIMPLE_PINHOLE")


@dataclass
class TransformsCapture:
    """What a transforms.json holds.

    Attributes:
        cameras: ``N`` cameras, OpenCV axes, in the file's world.
        image_paths: ``N`` resolved image files.
        mask_paths: ``N`` matte files from per-frame ``mask_path``, or ``None`` when no frame has one.
    """

    cameras: Cameras
    image_paths: list[Path]
    mask_paths: list[Path] | None


def read_json(path: Path) -> dict:
    """Parse a json file into a dict, with the line and column of a syntax error in the message.

    Raises:
        CaptureError: unreadable file, a syntax error, or a top level that is not an object.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CaptureError(f"{path}: cannot read the file ({exc})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CaptureError(f"{path}, line {exc.lineno} column {exc.colno}: invalid JSON ({exc.msg})") from None
    if not isinstance(data, dict):
        raise CaptureError(f"{path}: expected a JSON object at the top level, got {type(data).__name__}")
    return data


def _number(value: object, key: str, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CaptureError(f"{where}: {key!r} must be a number, got {value!r}")
    return float(value)


def read_transforms_json(path: str | Path, confine_to: Path | None = None) -> TransformsCapture:
    """Read one transforms.json (any of the three dialects) into OpenCV cameras.

    Args:
        path: the json file.
        confine_to: when given, every ``file_path`` and ``mask_path`` must stay inside this folder
            (:mod:`.confine`; uploaded captures).

    Raises:
        CaptureError: syntax error (with line), missing/invalid keys, a fisheye camera, missing images, a
            path that leaves ``confine_to``.
    """
    path = Path(path)
    data = read_json(path)
    base = path.parent
    frames = data.get("frames")
    if not isinstance(frames, list) or not frames:
        raise CaptureError(f"{path}: no 'frames' list (or it is empty)")
    if data.get("is_fisheye") or any(isinstance(f, dict) and f.get("is_fisheye") for f in frames):
        raise CaptureError(f"{path}: fisheye cameras (instant-ngp 'is_fisheye') are not supported")

    n = len(frames)
    c2w = np.zeros((n, 4, 4))
    fx, fy, cx, cy = (np.zeros(n) for _ in range(4))
    width, height = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
    dist = np.zeros((n, 4))
    image_paths: list[Path] = []
    mask_paths: list[Path | None] = []
    for i, frame in enumerate(frames):
        where = f"{path}, frames[{i}]"
        if not isinstance(frame, dict):
            raise CaptureError(f"{where}: expected an object, got {type(frame).__name__}")
        merged = {**data, **frame}  # per-frame intrinsics override the global ones

        model = merged.get("camera_model", "OPENCV")
        if model not in _PINHOLE_MODELS:
            raise CaptureError(f"{where}: camera_model {model!r} is not supported (only pinhole cameras with "
                               f"k1 k2 p1 p2 distortion: {', '.join(_PINHOLE_MODELS)})")
        for key in ("k3", "k4"):
            if key in merged and _number(merged[key], key, where) != 0.0:
                raise CaptureError(f"{where}: distortion term {key}={merged[key]} is not supported "
                                   "(only k1 k2 p1 p2); undistort the images first")

        fp = frame.get("file_path")
        if not isinstance(fp, str) or not fp:
            raise CaptureError(f"{where}: missing 'file_path'")
        img = resolve_image_path(base, fp, confine_to=confine_to, where=where)
        image_paths.append(img)
        mp = frame.get("mask_path")
        if mp is not None and not isinstance(mp, str):
            raise CaptureError(f"{where}: 'mask_path' must be a string, got {mp!r}")
        mask_paths.append(resolve_image_path(base, mp, "matte", confine_to, where) if mp else None)

        mat = frame.get("transform_matrix")
        try:
            m = np.array(mat, dtype=np.float64)
        except (TypeError, ValueError):
            raise CaptureError(f"{where}: 'transform_matrix' is not a numeric matrix") from None
        if m.shape not in ((4, 4), (3, 4)):
            raise CaptureError(f"{where}: 'transform_matrix' must be 4x4 or 3x4, got shape {m.shape}")
        full = np.eye(4)
        full[: m.shape[0]] = m
        c2w[i] = full @ OPENGL_TO_OPENCV

        if "w" in merged and "h" in merged:
            w, h = int(_number(merged["w"], "w", where)), int(_number(merged["h"], "h", where))
        else:
            w, h, _ = image_header(img)
        width[i], height[i] = w, h
        if "fl_x" in merged:
            fx[i] = _number(merged["fl_x"], "fl_x", where)
            fy[i] = _number(merged.get("fl_y", merged["fl_x"]), "fl_y", where)
        elif "camera_angle_x" in merged:
            fx[i] = 0.5 * w / math.tan(0.5 * _number(merged["camera_angle_x"], "camera_angle_x", where))
            if "camera_angle_y" in merged:
                fy[i] = 0.5 * h / math.tan(0.5 * _number(merged["camera_angle_y"], "camera_angle_y", where))
            else:
                fy[i] = fx[i]
        else:
            raise CaptureError(f"{where}: no focal length ('fl_x' or 'camera_angle_x', global or per frame)")
        cx[i] = _number(merged.get("cx", w / 2.0), "cx", where)
        cy[i] = _number(merged.get("cy", h / 2.0), "cy", where)
        dist[i] = [_number(merged.get(k, 0.0), k, where) for k in ("k1", "k2", "p1", "p2")]

    if any(m is None for m in mask_paths) and any(m is not None for m in mask_paths):
        missing = next(i for i, m in enumerate(mask_paths) if m is None)
        raise CaptureError(f"{path}, frames[{missing}]: 'mask_path' is given for some frames but not this one")
    masks = None if mask_paths[0] is None else [m for m in mask_paths if m is not None]
    names = [p.stem for p in image_paths]
    cams = Cameras(c2w=c2w, fx=fx, fy=fy, cx=cx, cy=cy, width=width, height=height, distortion=dist, names=names)
    return TransformsCapture(cameras=cams, image_paths=image_paths, mask_paths=masks)
