"""Read the cameras of a capture folder, in every format the backend reads, into one model.

Formats (the protocol's ``capture_format`` names):

* ``transforms_json``: nerfstudio ``transforms.json`` (``fl_x``/``fl_y``/``cx``/``cy``/``w``/``h`` at the top
  level or per frame) and NeRF-synthetic / instant-ngp ``transforms_train.json`` (``camera_angle_x``; sizes
  from the images). ``transform_matrix`` is an OpenGL-axes c2w.
* ``colmap``: a COLMAP model (``sparse/0`` or ``sparse``; ``cameras``/``images`` ``.bin`` or ``.txt``);
  world-to-camera poses, OpenCV axes.
* ``idr``: IDR / VolSDF / NeRF-Art ``cameras.npz`` with ``world_mat_i = K·[R|t]`` (integer pixel centres).
* ``llff``: ``poses_bounds.npy``, ``(N, 17)``, rotation columns (down, right, back), centred principal point.

Every reader returns :class:`Capture` with OpenCV-axes c2w in the capture's own world and intrinsics with pixel
centres at +0.5 (see :mod:`.intrinsics`). Lens distortion is kept as ``k1 k2 p1 p2``; Blender cameras cannot
show it, so the importer reports it. No bpy here.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .images import image_size, list_images, resolve_image
from .intrinsics import Intrinsics, intrinsics_from_fov
from .poses import OPENGL_TO_OPENCV, as_matrix4, is_rotation, quaternion_to_matrix

CAPTURE_FORMATS = ("transforms_json", "colmap", "idr", "llff")
TRANSFORMS_NAMES = ("transforms.json", "transforms_train.json")


@dataclass
class CaptureCamera:
    """One camera of a capture.

    Attributes:
        name: image file stem (unique within the capture).
        c2w: ``(4, 4)`` camera-to-world, OpenCV axes, capture world.
        intrinsics: pinhole intrinsics at the image's size.
        image: the image file, or None when the capture does not point at one that exists.
        distortion: ``(k1, k2, p1, p2)``.
    """

    name: str
    c2w: np.ndarray
    intrinsics: Intrinsics
    image: Path | None = None
    distortion: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)

    @property
    def c2w_blender(self) -> np.ndarray:
        """``(4, 4)`` c2w with Blender camera axes (looks down −Z), capture world."""
        return self.c2w @ OPENGL_TO_OPENCV


@dataclass
class Capture:
    """The cameras of one capture, with where they came from."""

    format: str
    path: Path  # the file that was read (transforms.json, cameras.npz, ...) or the COLMAP model folder
    root: Path  # the capture folder (what is sent to the backend)
    cameras: list[CaptureCamera] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def has_distortion(self) -> bool:
        return any(any(abs(k) > 0 for k in c.distortion) for c in self.cameras)


class CaptureError(ValueError):
    """A capture that cannot be read; the message says which file and what is wrong."""


# ---------------------------------------------------------------------------------------------------------
# Detection
# ---------------------------------------------------------------------------------------------------------


def detect_format(path: str | Path) -> tuple[str, Path]:
    """The capture format of a folder (or a capture file) and the file or folder to read.

    Order when several are present: transforms.json, COLMAP, IDR cameras.npz, LLFF poses_bounds.npy.

    Raises:
        CaptureError: naming the folder and what was looked for.
    """
    p = Path(path)
    if p.is_file():
        name = p.name
        if name.endswith(".json"):
            return "transforms_json", p
        if name.endswith(".npz"):
            return "idr", p
        if name == "poses_bounds.npy":
            return "llff", p
        if name in ("cameras.bin", "cameras.txt", "images.bin", "images.txt"):
            return "colmap", p.parent
        raise CaptureError(f"{p}: not a capture file (expected transforms.json, cameras.npz, poses_bounds.npy "
                           "or a COLMAP cameras/images file)")
    if not p.is_dir():
        raise CaptureError(f"capture folder {p} does not exist")
    for name in TRANSFORMS_NAMES:
        if (p / name).is_file():
            return "transforms_json", p / name
    colmap = _find_colmap_model(p)
    if colmap is not None:
        return "colmap", colmap
    if (p / "cameras.npz").is_file():
        return "idr", p / "cameras.npz"
    if (p / "poses_bounds.npy").is_file():
        return "llff", p / "poses_bounds.npy"
    raise CaptureError(f"{p} holds no capture: looked for transforms.json, transforms_train.json, a COLMAP "
                       "model (sparse/0), cameras.npz and poses_bounds.npy")


def _find_colmap_model(root: Path) -> Path | None:
    for sub in ("sparse/0", "sparse", "colmap/sparse/0", "."):
        d = root / sub
        if (d / "cameras.bin").is_file() and (d / "images.bin").is_file():
            return d.resolve()
        if (d / "cameras.txt").is_file() and (d / "images.txt").is_file():
            return d.resolve()
    return None


def read_capture(path: str | Path, fmt: str | None = None) -> Capture:
    """Read a capture folder (or a capture file) with auto-detection, or force ``fmt``.

    Raises:
        CaptureError: with a readable message naming the file at fault.
    """
    p = Path(path)
    if fmt is None:
        fmt, target = detect_format(p)
    else:
        if fmt not in CAPTURE_FORMATS:
            raise CaptureError(f"unknown capture format {fmt!r}; known: {', '.join(CAPTURE_FORMATS)}")
        target = _target_for(p, fmt)
    root = p if p.is_dir() else p.parent
    reader = {"transforms_json": read_transforms_json, "colmap": read_colmap, "idr": read_idr,
              "llff": read_llff}[fmt]
    try:
        capture = reader(target)
    except CaptureError:
        raise
    except (OSError, ValueError, KeyError, IndexError, struct.error, json.JSONDecodeError) as exc:
        raise CaptureError(f"cannot read {fmt} capture {target}: {exc}") from exc
    capture.root = root.resolve()
    if not capture.cameras:
        raise CaptureError(f"{target} lists no cameras")
    _unique_names(capture.cameras)
    return capture


def _target_for(p: Path, fmt: str) -> Path:
    if p.is_file():
        return p.parent if fmt == "colmap" else p
    if fmt == "transforms_json":
        for name in TRANSFORMS_NAMES:
            if (p / name).is_file():
                return p / name
        raise CaptureError(f"{p} has no transforms.json or transforms_train.json")
    if fmt == "colmap":
        model = _find_colmap_model(p)
        if model is None:
            raise CaptureError(f"{p} has no COLMAP model (looked in sparse/0, sparse and the folder itself)")
        return model
    name = "cameras.npz" if fmt == "idr" else "poses_bounds.npy"
    if not (p / name).is_file():
        raise CaptureError(f"{p} has no {name}")
    return p / name


def _unique_names(cameras: list[CaptureCamera]) -> None:
    seen: dict[str, int] = {}
    for cam in cameras:
        n = seen.get(cam.name, 0)
        seen[cam.name] = n + 1
        if n:
            cam.name = f"{cam.name}.{n:03d}"


# ---------------------------------------------------------------------------------------------------------
# transforms.json
# ---------------------------------------------------------------------------------------------------------


def read_transforms_json(path: str | Path) -> Capture:
    """nerfstudio / NeRF-synthetic / instant-ngp ``transforms*.json``."""
    p = Path(path)
    data = json.loads(p.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not isinstance(data.get("frames"), list):
        raise CaptureError(f"{p.name}: expected an object with a 'frames' list")
    capture = Capture("transforms_json", p, p.parent)
    model = data.get("camera_model", "OPENCV")
    if model not in ("OPENCV", "PINHOLE", "SIMPLE_PINHOLE"):
        raise CaptureError(f"{p.name}: camera_model {model!r} is not supported (only pinhole/OPENCV cameras)")
    for i, frame in enumerate(data["frames"]):
        where = f"{p.name} frames[{i}]"
        if "transform_matrix" not in frame:
            raise CaptureError(f"{where} has no transform_matrix")
        c2w_gl = as_matrix4(frame["transform_matrix"], f"{where}.transform_matrix")
        rot = c2w_gl[:3, :3]
        scale = np.linalg.norm(rot, axis=0)
        if np.any(scale < 1e-9):
            raise CaptureError(f"{where}.transform_matrix has a zero axis")
        file_path = frame.get("file_path")
        image = resolve_image(p.parent, file_path) if isinstance(file_path, str) else None
        name = Path(file_path).stem if isinstance(file_path, str) else f"frame_{i:04d}"
        intr = _transforms_intrinsics(data, frame, image, where)
        dist = tuple(float(frame.get(k, data.get(k, 0.0)) or 0.0) for k in ("k1", "k2", "p1", "p2"))
        if not is_rotation(c2w_gl, atol=1e-3):
            capture.warnings.append(f"{name}: transform_matrix rotation is not orthonormal; it is used as stored")
        capture.cameras.append(CaptureCamera(name, c2w_gl @ OPENGL_TO_OPENCV, intr, image, dist))  # type: ignore[arg-type]
    return capture


def _transforms_intrinsics(data: dict, frame: dict, image: Path | None, where: str) -> Intrinsics:
    def get(key: str) -> Any:
        return frame.get(key, data.get(key))

    w, h = get("w"), get("h")
    if w is None or h is None:
        if image is None:
            raise CaptureError(f"{where}: no image size (w, h) in the file and the image "
                               f"{frame.get('file_path')!r} was not found next to it")
        w, h = image_size(image)
    w, h = int(w), int(h)
    fl_x, fl_y = get("fl_x"), get("fl_y")
    if fl_x is None and fl_y is None:
        ax, ay = get("camera_angle_x"), get("camera_angle_y")
        if ax is None and ay is None:
            raise CaptureError(f"{where}: no focal length (fl_x/fl_y or camera_angle_x)")
        base = intrinsics_from_fov(ax, w, h, ay)
        fl_x, fl_y = base.fx, base.fy
    fl_x = float(fl_x if fl_x is not None else fl_y)
    fl_y = float(fl_y if fl_y is not None else fl_x)
    cx = float(get("cx")) if get("cx") is not None else w / 2.0
    cy = float(get("cy")) if get("cy") is not None else h / 2.0
    intr = Intrinsics(fl_x, fl_y, cx, cy, w, h)
    intr.validate()
    return intr


# ---------------------------------------------------------------------------------------------------------
# COLMAP
# ---------------------------------------------------------------------------------------------------------

# model id -> (name, number of params)
_COLMAP_MODELS = {
    0: ("SIMPLE_PINHOLE", 3), 1: ("PINHOLE", 4), 2: ("SIMPLE_RADIAL", 4), 3: ("RADIAL", 5), 4: ("OPENCV", 8),
    5: ("OPENCV_FISHEYE", 8), 6: ("FULL_OPENCV", 12), 7: ("FOV", 5), 8: ("SIMPLE_RADIAL_FISHEYE", 4),
    9: ("RADIAL_FISHEYE", 5), 10: ("THIN_PRISM_FISHEYE", 12),
}
_COLMAP_BY_NAME = {name: (mid, n) for mid, (name, n) in _COLMAP_MODELS.items()}


def read_colmap(model_dir: str | Path) -> Capture:
    """A COLMAP sparse model folder (binary or text). Images are looked up in ``<root>/images``."""
    d = Path(model_dir)
    if (d / "cameras.bin").is_file():
        cams = _colmap_cameras_bin(d / "cameras.bin")
        images = _colmap_images_bin(d / "images.bin")
    else:
        cams = _colmap_cameras_txt(d / "cameras.txt")
        images = _colmap_images_txt(d / "images.txt")
    root = _colmap_root(d)
    capture = Capture("colmap", d, root)
    for name, qvec, tvec, cam_id in sorted(images, key=lambda im: im[0]):
        if cam_id not in cams:
            raise CaptureError(f"COLMAP image {name!r} refers to camera {cam_id}, which cameras.* does not define")
        model, w, h, params = cams[cam_id]
        intr, dist = _colmap_intrinsics(model, w, h, params, name)
        w2c = np.eye(4)
        w2c[:3, :3] = quaternion_to_matrix(*qvec)
        w2c[:3, 3] = tvec
        image = root / "images" / name
        capture.cameras.append(CaptureCamera(Path(name).stem, np.linalg.inv(w2c), intr,
                                             image if image.is_file() else None, dist))
    return capture


def _colmap_root(model_dir: Path) -> Path:
    d = model_dir.resolve()
    for parent in (d, *d.parents[:3]):
        if (parent / "images").is_dir():
            return parent
    return d.parent.parent if d.parent.name == "sparse" else d.parent


def _colmap_intrinsics(model: str, w: int, h: int, params: list[float], name: str
                       ) -> tuple[Intrinsics, tuple[float, float, float, float]]:
    if model == "SIMPLE_PINHOLE":
        f, cx, cy = params
        return Intrinsics(f, f, cx, cy, w, h), (0.0, 0.0, 0.0, 0.0)
    if model == "PINHOLE":
        fx, fy, cx, cy = params
        return Intrinsics(fx, fy, cx, cy, w, h), (0.0, 0.0, 0.0, 0.0)
    if model == "SIMPLE_RADIAL":
        f, cx, cy, k = params
        return Intrinsics(f, f, cx, cy, w, h), (k, 0.0, 0.0, 0.0)
    if model == "RADIAL":
        f, cx, cy, k1, k2 = params
        return Intrinsics(f, f, cx, cy, w, h), (k1, k2, 0.0, 0.0)
    if model == "OPENCV":
        fx, fy, cx, cy, k1, k2, p1, p2 = params
        return Intrinsics(fx, fy, cx, cy, w, h), (k1, k2, p1, p2)
    raise CaptureError(f"COLMAP camera model {model} (image {name!r}) is not supported: undistort the capture "
                       "first (colmap image_undistorter) or use a PINHOLE/OPENCV model")


def _colmap_cameras_bin(path: Path) -> dict[int, tuple[str, int, int, list[float]]]:
    out = {}
    with open(path, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        for _ in range(n):
            cam_id, model_id, w, h = struct.unpack("<iiQQ", fh.read(24))
            if model_id not in _COLMAP_MODELS:
                raise CaptureError(f"{path.name}: unknown COLMAP camera model id {model_id}")
            model, n_params = _COLMAP_MODELS[model_id]
            params = list(struct.unpack(f"<{n_params}d", fh.read(8 * n_params)))
            out[cam_id] = (model, int(w), int(h), params)
    return out


def _colmap_images_bin(path: Path) -> list[tuple[str, tuple[float, ...], tuple[float, ...], int]]:
    out = []
    with open(path, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        for _ in range(n):
            fields = struct.unpack("<i7di", fh.read(64))
            qvec, tvec, cam_id = fields[1:5], fields[5:8], fields[8]
            name = bytearray()
            while (c := fh.read(1)) not in (b"\x00", b""):
                name += c
            (n_points,) = struct.unpack("<Q", fh.read(8))
            fh.seek(24 * n_points, 1)
            out.append((name.decode("utf-8"), qvec, tvec, cam_id))
    return out


def _colmap_cameras_txt(path: Path) -> dict[int, tuple[str, int, int, list[float]]]:
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        model = parts[1]
        if model not in _COLMAP_BY_NAME:
            raise CaptureError(f"{path.name}: unknown COLMAP camera model {model!r}")
        out[int(parts[0])] = (model, int(parts[2]), int(parts[3]), [float(x) for x in parts[4:]])
    return out


def _colmap_images_txt(path: Path) -> list[tuple[str, tuple[float, ...], tuple[float, ...], int]]:
    out = []
    lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if not ln.startswith("#")]
    # Each image has two lines: the pose line and the (possibly empty) 2D points line.
    for i in range(0, len(lines) - 1 + (len(lines) % 2), 2):
        parts = lines[i].split()
        if len(parts) < 10:
            continue
        qvec = tuple(float(x) for x in parts[1:5])
        tvec = tuple(float(x) for x in parts[5:8])
        out.append((" ".join(parts[9:]), qvec, tvec, int(parts[8])))
    return out


# ---------------------------------------------------------------------------------------------------------
# IDR / VolSDF / NeRF-Art cameras.npz
# ---------------------------------------------------------------------------------------------------------


def decompose_projection(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Split a ``(3, 4)`` projection ``P = K·[R|t]`` into K ``(3, 3)`` (positive diagonal, K[2,2] = 1) and the
    OpenCV w2c ``(4, 4)`` (the same result as ``cv2.decomposeProjectionMatrix``)."""
    p = np.asarray(p, dtype=np.float64)[:3, :4]
    if np.linalg.det(p[:, :3]) < 0:  # P is defined up to scale, sign included: make det(K·R) positive
        p = -p
    m = p[:, :3]
    # RQ decomposition via QR of the row-reversed transpose.
    flip = np.eye(3)[::-1]
    q, r = np.linalg.qr((flip @ m).T)
    k = flip @ r.T @ flip
    rot = flip @ q.T
    signs = np.diag(np.sign(np.diag(k)))
    k = k @ signs
    rot = signs @ rot
    if np.linalg.det(rot) < 0:
        raise ValueError("projection matrix has no proper rotation (mirrored camera)")
    t = np.linalg.solve(k, p[:, 3])
    k = k / k[2, 2]
    w2c = np.eye(4)
    w2c[:3, :3] = rot
    w2c[:3, 3] = t
    return k, w2c


def read_idr(path: str | Path) -> Capture:
    """IDR ``cameras.npz``: ``world_mat_i`` (and optionally ``scale_mat_i``), images in ``image/`` or ``images/``.

    IDR casts rays at integer pixel coordinates, so its principal point is half a pixel off ours:
    ``cx = cx_idr + 0.5``. Poses are returned in the world of ``world_mat`` (not the normalised unit sphere).
    """
    p = Path(path)
    data = np.load(p)
    indices = sorted(int(k[len("world_mat_"):]) for k in data.files
                     if k.startswith("world_mat_") and k[len("world_mat_"):].isdigit())
    if not indices:
        raise CaptureError(f"{p.name} has no world_mat_<i> entries")
    images = list_images(p.parent / "image") or list_images(p.parent / "images")
    capture = Capture("idr", p, p.parent)
    if images and len(images) != len(indices):
        capture.warnings.append(f"{p.name} has {len(indices)} cameras but the image folder holds {len(images)} "
                                "images; names follow the camera index")
    for n, i in enumerate(indices):
        k, w2c = decompose_projection(data[f"world_mat_{i}"])
        image = images[n] if n < len(images) and len(images) == len(indices) else None
        if image is not None:
            w, h = image_size(image)
        else:
            w, h = round(2 * float(k[0, 2])), round(2 * float(k[1, 2]))
            capture.warnings.append(f"camera {i}: image not found; size guessed from the principal point")
        intr = Intrinsics(float(k[0, 0]), float(k[1, 1]), float(k[0, 2]) + 0.5, float(k[1, 2]) + 0.5, w, h)
        if abs(k[0, 1]) > 1e-6 * k[0, 0]:
            capture.warnings.append(f"camera {i}: skew {k[0, 1]:.3g} ignored")
        name = image.stem if image is not None else f"{i:06d}"
        capture.cameras.append(CaptureCamera(name, np.linalg.inv(w2c), intr, image))
    return capture


# ---------------------------------------------------------------------------------------------------------
# LLFF poses_bounds.npy
# ---------------------------------------------------------------------------------------------------------


def read_llff(path: str | Path) -> Capture:
    """LLFF ``poses_bounds.npy`` ``(N, 17)``: ``[R|t|hwf]`` rows with rotation columns (down, right, back).

    The principal point is the image centre. If ``images/`` holds images of another size than ``hwf``'s H×W,
    the focal length is scaled to them.
    """
    p = Path(path)
    arr = np.load(p)
    if arr.ndim != 2 or arr.shape[1] != 17:
        raise CaptureError(f"{p.name} must have shape (N, 17), got {arr.shape}")
    poses = arr[:, :15].reshape(-1, 3, 5)
    images = list_images(p.parent / "images")
    capture = Capture("llff", p, p.parent)
    for i, pose in enumerate(poses):
        h, w, f = (float(x) for x in pose[:, 4])
        image = images[i] if len(images) == len(poses) else None
        iw, ih = round(w), round(h)
        if image is not None:
            iw, ih = image_size(image)
        intr = Intrinsics(f * iw / w, f * ih / h, iw / 2.0, ih / 2.0, iw, ih)
        c2w_gl = np.eye(4)
        c2w_gl[:3, 0] = pose[:, 1]
        c2w_gl[:3, 1] = -pose[:, 0]
        c2w_gl[:3, 2] = pose[:, 2]
        c2w_gl[:3, 3] = pose[:, 3]
        name = image.stem if image is not None else f"{i:06d}"
        capture.cameras.append(CaptureCamera(name, c2w_gl @ OPENGL_TO_OPENCV, intr, image))
    if images and len(images) != len(poses):
        capture.warnings.append(f"{p.name} has {len(poses)} poses but images/ holds {len(images)} files")
    return capture
