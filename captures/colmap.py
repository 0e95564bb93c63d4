"""COLMAP sparse models (``sparse/0``): binary (``*.bin``) and text (``*.txt``) readers.

Conventions of the format, as COLMAP defines them (``src/colmap/scene/reconstruction_io.cc``,
``src/colmap/sensor/models.h``):

* ``images``: ``qvec = (w, x, y, z)`` and ``tvec`` give the **world-to-camera** transform,
  ``x_cam = R(q) x_world + t``, with OpenCV camera axes (+X right, +Y down, +Z forward). So
  ``c2w = inv([R|t])`` needs no axis change.
* Pixel coordinates put the centre of the top-left pixel at (0.5, 0.5), exactly our convention, so the
  intrinsics are copied unchanged.
* Lens models map to our OpenCV ``k1 k2 p1 p2``: ``SIMPLE_PINHOLE (f, cx, cy)``, ``PINHOLE (fx, fy, cx, cy)``,
  ``SIMPLE_RADIAL (f, cx, cy, k)``, ``RADIAL (f, cx, cy, k1, k2)``, ``OPENCV (fx, fy, cx, cy, k1, k2, p1, p2)``.
  COLMAP's radial/tangential formulas are OpenCV's, term for term. Fisheye and thin-prism models have no
  equivalent in our camera model and are refused with a :class:`CaptureError` naming the model.

The 3D points (and each image's 2D observations) are exposed too: :mod:`normalize` places the region of
interest from the points, and the tests check reprojection against the observations.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np

from .cameras import Cameras
from .errors import CaptureError

T = TypeVar("T")

# COLMAP camera model id -> (name, number of parameters). All of them are listed, supported or not, because
# the binary format stores only the id and the parameter count is needed to skip a record.
CAMERA_MODELS: dict[int, tuple[str, int]] = {
    0: ("SIMPLE_PINHOLE", 3),
    1: ("PINHOLE", 4),
    2: ("SIMPLE_RADIAL", 4),
    3: ("RADIAL", 5),
    4: ("OPENCV", 8),
    5: ("OPENCV_FISHEYE", 8),
    6: ("FULL_OPENCV", 12),
    7: ("FOV", 5),
    8: ("SIMPLE_RADIAL_FISHEYE", 4),
    9: ("RADIAL_FISHEYE", 5),
    10: ("THIN_PRISM_FISHEYE", 12),
    11: ("RAD_TAN_THIN_PRISM_FISHEYE", 16),
}
_MODEL_BY_NAME = {name: (model_id, n) for model_id, (name, n) in CAMERA_MODELS.items()}
SUPPORTED_MODELS = ("SIMPLE_PINHOLE", "PINHOLE", "SIMPLE_RADIAL", "RADIAL", "OPENCV")


@dataclass
class ColmapCamera:
    """One COLMAP camera (intrinsics shared by the images that reference it)."""

    camera_id: int
    model: str
    width: int
    height: int
    params: np.ndarray  # (n_params,) float64, in the model's own order


@dataclass
class ColmapImage:
    """One registered image: its world-to-camera pose and its 2D keypoints.

    Attributes:
        qvec: ``(4,)`` world-to-camera rotation quaternion ``(w, x, y, z)``.
        tvec: ``(3,)`` world-to-camera translation.
        xys: ``(n_points2d, 2)`` keypoint pixel coordinates (pixel centres at +0.5).
        point3d_ids: ``(n_points2d,)`` int64 id of the triangulated point, -1 where none.
    """

    image_id: int
    qvec: np.ndarray
    tvec: np.ndarray
    camera_id: int
    name: str
    xys: np.ndarray
    point3d_ids: np.ndarray

    def world_to_camera(self) -> np.ndarray:
        """The ``(4, 4)`` world-to-camera matrix ``[R(q) | t]``."""
        w2c = np.eye(4)
        w2c[:3, :3] = qvec_to_rotmat(self.qvec)
        w2c[:3, 3] = self.tvec
        return w2c


@dataclass
class ColmapModel:
    """A whole sparse model. ``images`` are sorted by name (the order every other format uses).

    Attributes:
        points3d_ids: ``(n_points,)`` int64 ids.
        points3d: ``(n_points, 3)`` float64 world positions.
        points3d_rgb: ``(n_points, 3)`` uint8 colours.
        points3d_error: ``(n_points,)`` mean reprojection error in pixels.
    """

    path: Path
    cameras: dict[int, ColmapCamera]
    images: list[ColmapImage]
    points3d_ids: np.ndarray
    points3d: np.ndarray
    points3d_rgb: np.ndarray
    points3d_error: np.ndarray
    format: str = field(default="bin")  # "bin" or "txt"

    def point_lookup(self) -> dict[int, int]:
        """Map from point id to row of :attr:`points3d`."""
        return {int(pid): row for row, pid in enumerate(self.points3d_ids)}


def qvec_to_rotmat(qvec: np.ndarray) -> np.ndarray:
    """``(3, 3)`` rotation of a unit quaternion ``(w, x, y, z)`` (normalised first: files store ~9 digits)."""
    q = np.asarray(qvec, dtype=np.float64)
    w, x, y, z = q / np.linalg.norm(q)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ])


def rotmat_to_qvec(rot: np.ndarray) -> np.ndarray:
    """``(4,)`` quaternion ``(w, x, y, z)`` with ``w >= 0`` of a ``(3, 3)`` rotation (for writing fixtures)."""
    m = np.asarray(rot, dtype=np.float64)
    # The eigenvector of the symmetric 4x4 K matrix (Bar-Itzhack) is robust for every rotation angle.
    k = np.array([
        [m[0, 0] - m[1, 1] - m[2, 2], 0, 0, 0],
        [m[1, 0] + m[0, 1], m[1, 1] - m[0, 0] - m[2, 2], 0, 0],
        [m[2, 0] + m[0, 2], m[2, 1] + m[1, 2], m[2, 2] - m[0, 0] - m[1, 1], 0],
        [m[2, 1] - m[1, 2], m[0, 2] - m[2, 0], m[1, 0] - m[0, 1], m[0, 0] + m[1, 1] + m[2, 2]],
    ]) / 3.0
    vals, vecs = np.linalg.eigh(k)
    x, y, z, w = vecs[:, np.argmax(vals)]
    q = np.array([w, x, y, z])
    return q if w >= 0 else -q


def find_colmap_model(root: Path) -> Path | None:
    """The sparse model folder under a capture root: ``sparse/0`` or ``sparse``, else ``None``."""
    for cand in (root / "sparse" / "0", root / "sparse"):
        if _model_files(cand) is not None:
            return cand
    return None


def is_colmap_model_dir(path: Path) -> bool:
    """Whether ``path`` itself holds ``cameras``, ``images`` and ``points3D`` (``.bin`` or ``.txt``)."""
    return _model_files(path) is not None


def _model_files(model_dir: Path) -> tuple[str, Path, Path, Path] | None:
    for ext in ("bin", "txt"):
        files = [model_dir / f"{stem}.{ext}" for stem in ("cameras", "images", "points3D")]
        if all(f.is_file() for f in files):
            return ext, files[0], files[1], files[2]
    return None


def read_colmap_model(model_dir: str | Path) -> ColmapModel:
    """Read ``cameras``, ``images`` and ``points3D`` from a COLMAP model folder (binary preferred over text).

    Raises:
        CaptureError: a file is missing, truncated or malformed (the message names it).
    """
    model_dir = Path(model_dir)
    files = _model_files(model_dir)
    if files is None:
        raise CaptureError(
            f"{model_dir}: not a COLMAP sparse model (looked for cameras, images and points3D as .bin or .txt)"
        )
    ext, cam_file, img_file, pts_file = files
    if ext == "bin":
        cameras = _guard(cam_file, _read_cameras_bin)
        images = _guard(img_file, _read_images_bin)
        pids, xyz, rgb, err = _guard(pts_file, _read_points3d_bin)
    else:
        cameras = _guard(cam_file, _read_cameras_txt)
        images = _guard(img_file, _read_images_txt)
        pids, xyz, rgb, err = _guard(pts_file, _read_points3d_txt)
    for im in images:
        if im.camera_id not in cameras:
            raise CaptureError(f"{img_file}: image {im.name!r} references camera id {im.camera_id}, "
                               f"which {cam_file.name} does not define")
    images.sort(key=lambda im: im.name)
    return ColmapModel(path=model_dir, cameras=cameras, images=images, points3d_ids=pids, points3d=xyz,
                       points3d_rgb=rgb, points3d_error=err, format=ext)


def colmap_intrinsics(camera: ColmapCamera, source: Path | str = "cameras") -> tuple[float, float, float, float,
                                                                                         np.ndarray]:
    """``fx, fy, cx, cy`` and ``(4,)`` ``k1 k2 p1 p2`` of a supported COLMAP camera.

    Raises:
        CaptureError: unsupported model (fisheye, thin prism, FOV, FULL_OPENCV), naming it and ``source``.
    """
    p = camera.params
    zero = np.zeros(4)
    if camera.model == "SIMPLE_PINHOLE":
        return p[0], p[0], p[1], p[2], zero
    if camera.model == "PINHOLE":
        return p[0], p[1], p[2], p[3], zero
    if camera.model == "SIMPLE_RADIAL":
        return p[0], p[0], p[1], p[2], np.array([p[3], 0.0, 0.0, 0.0])
    if camera.model == "RADIAL":
        return p[0], p[0], p[1], p[2], np.array([p[3], p[4], 0.0, 0.0])
    if camera.model == "OPENCV":
        return p[0], p[1], p[2], p[3], np.array(p[4:8], dtype=np.float64)
    raise CaptureError(
        f"{source}: camera {camera.camera_id} uses the COLMAP model {camera.model}, which is not supported "
        f"(supported: {', '.join(SUPPORTED_MODELS)}); re-run COLMAP with one of those or undistort the images "
        "first (colmap image_undistorter)"
    )


def cameras_from_colmap(model: ColmapModel) -> Cameras:
    """All registered images of ``model`` as :class:`Cameras` (in ``model.images`` order, i.e. sorted by name).

    Names are the image names without extension (matte files are matched on them).
    """
    n = len(model.images)
    c2w = np.zeros((n, 4, 4))
    fx, fy, cx, cy = (np.zeros(n) for _ in range(4))
    width, height = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
    dist = np.zeros((n, 4))
    cam_file = next(model.path.glob("cameras.*"), model.path / "cameras")
    for i, im in enumerate(model.images):
        cam = model.cameras[im.camera_id]
        fx[i], fy[i], cx[i], cy[i], dist[i] = colmap_intrinsics(cam, cam_file)
        width[i], height[i] = cam.width, cam.height
        c2w[i] = np.linalg.inv(im.world_to_camera())
    names = [str(Path(im.name).with_suffix("")) for im in model.images]
    return Cameras(c2w=c2w, fx=fx, fy=fy, cx=cx, cy=cy, width=width, height=height, distortion=dist, names=names)


def images_dir_for_model(model_dir: Path, within: Path | None = None) -> Path | None:
    """The ``images/`` folder of a model: the nearest ancestor of ``model_dir`` (itself included) holding one.

    Args:
        within: when given, only ancestors inside this folder are looked at (a confined capture).
    """
    for anc in (model_dir, *list(model_dir.parents)[:3]):
        if within is not None and not anc.is_relative_to(within):
            break
        if (anc / "images").is_dir():
            return anc / "images"
    return None


# --------------------------------------------------------------------------------------------------------
# Binary files. Layout from COLMAP's reconstruction_io.cc (all little-endian).


class _Reader:
    """Sequential little-endian reads over a bytes buffer, raising ``struct.error`` when it runs short."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def read(self, fmt: str) -> tuple:
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.data):
            raise struct.error(f"file ends at byte {len(self.data)}, wanted {size} more bytes at {self.pos}")
        out = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += size
        return out

    def array(self, dtype: np.dtype, count: int) -> np.ndarray:
        size = np.dtype(dtype).itemsize * count
        if self.pos + size > len(self.data):
            raise struct.error(f"file ends at byte {len(self.data)}, wanted {size} more bytes at {self.pos}")
        out = np.frombuffer(self.data, dtype=dtype, count=count, offset=self.pos)
        self.pos += size
        return out

    def cstring(self) -> str:
        end = self.data.find(b"\0", self.pos)
        if end < 0:
            raise struct.error("unterminated string")
        out = self.data[self.pos:end].decode("utf-8")
        self.pos = end + 1
        return out

    def done(self) -> bool:
        return self.pos == len(self.data)


def _read_cameras_bin(path: Path) -> dict[int, ColmapCamera]:
    r = _Reader(path.read_bytes())
    (count,) = r.read("<Q")
    cams = {}
    for _ in range(count):
        cam_id, model_id, width, height = r.read("<iiQQ")
        if model_id not in CAMERA_MODELS:
            raise CaptureError(f"{path}: camera {cam_id} has unknown COLMAP model id {model_id}")
        name, n_params = CAMERA_MODELS[model_id]
        params = np.array(r.read(f"<{n_params}d"))
        cams[cam_id] = ColmapCamera(cam_id, name, int(width), int(height), params)
    if not r.done():
        raise struct.error(f"{len(r.data) - r.pos} unexpected trailing bytes")
    return cams


_POINT2D_DTYPE = np.dtype([("x", "<f8"), ("y", "<f8"), ("id", "<i8")])


def _read_images_bin(path: Path) -> list[ColmapImage]:
    r = _Reader(path.read_bytes())
    (count,) = r.read("<Q")
    images = []
    for _ in range(count):
        image_id, qw, qx, qy, qz, tx, ty, tz, cam_id = r.read("<i7di")
        name = r.cstring()
        (n_pts,) = r.read("<Q")
        pts = r.array(_POINT2D_DTYPE, n_pts)
        images.append(ColmapImage(
            image_id=image_id, qvec=np.array([qw, qx, qy, qz]), tvec=np.array([tx, ty, tz]), camera_id=cam_id,
            name=name, xys=np.stack([pts["x"], pts["y"]], axis=-1), point3d_ids=pts["id"].astype(np.int64),
        ))
    if not r.done():
        raise struct.error(f"{len(r.data) - r.pos} unexpected trailing bytes")
    return images


def _read_points3d_bin(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    r = _Reader(path.read_bytes())
    (count,) = r.read("<Q")
    ids = np.zeros(count, dtype=np.int64)
    xyz = np.zeros((count, 3))
    rgb = np.zeros((count, 3), dtype=np.uint8)
    err = np.zeros(count)
    for i in range(count):
        pid, x, y, z, cr, cg, cb, e, track_len = r.read("<Q3d3BdQ")
        ids[i], xyz[i], rgb[i], err[i] = pid, (x, y, z), (cr, cg, cb), e
        r.pos += 8 * track_len  # (image_id int32, point2D_idx int32) pairs; the images carry the same links
        if r.pos > len(r.data):
            raise struct.error("track runs past the end of the file")
    if not r.done():
        raise struct.error(f"{len(r.data) - r.pos} unexpected trailing bytes")
    return ids, xyz, rgb, err


# --------------------------------------------------------------------------------------------------------
# Text files. '#' starts a comment line; images.txt has two lines per image, the second (the keypoints)
# possibly empty, so empty lines are significant there.


def _data_lines(path: Path) -> list[tuple[int, str]]:
    return [(no, line.strip()) for no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
            if not line.lstrip().startswith("#")]


def _read_cameras_txt(path: Path) -> dict[int, ColmapCamera]:
    cams = {}
    for no, line in _data_lines(path):
        if not line:
            continue
        tok = line.split()
        try:
            cam_id, model, width, height = int(tok[0]), tok[1], int(tok[2]), int(tok[3])
            params = np.array([float(t) for t in tok[4:]])
        except (IndexError, ValueError) as exc:
            raise CaptureError(f"{path}, line {no}: malformed camera line ({exc})") from None
        if model not in _MODEL_BY_NAME:
            raise CaptureError(f"{path}, line {no}: unknown COLMAP camera model {model!r}")
        if params.size != _MODEL_BY_NAME[model][1]:
            raise CaptureError(f"{path}, line {no}: model {model} needs {_MODEL_BY_NAME[model][1]} parameters, "
                               f"got {params.size}")
        cams[cam_id] = ColmapCamera(cam_id, model, width, height, params)
    return cams


def _read_images_txt(path: Path) -> list[ColmapImage]:
    lines = _data_lines(path)
    images = []
    i = 0
    while i < len(lines):
        no, line = lines[i]
        if not line:  # blank line where a header is expected: trailing whitespace of the file
            i += 1
            continue
        tok = line.split()
        try:
            image_id = int(tok[0])
            q = np.array([float(t) for t in tok[1:5]])
            t = np.array([float(v) for v in tok[5:8]])
            cam_id = int(tok[8])
            # A name may contain spaces: it is everything after the camera id.
            name = line.split(maxsplit=9)[9]
        except (IndexError, ValueError) as exc:
            raise CaptureError(f"{path}, line {no}: malformed image line ({exc})") from None
        pts_line = lines[i + 1][1] if i + 1 < len(lines) else ""
        pts_no = lines[i + 1][0] if i + 1 < len(lines) else no + 1
        ptok = pts_line.split()
        if len(ptok) % 3:
            raise CaptureError(f"{path}, line {pts_no}: keypoint line needs (X, Y, POINT3D_ID) triples")
        try:
            arr = np.array([float(v) for v in ptok]).reshape(-1, 3)
        except ValueError as exc:
            raise CaptureError(f"{path}, line {pts_no}: malformed keypoint line ({exc})") from None
        images.append(ColmapImage(image_id=image_id, qvec=q, tvec=t, camera_id=cam_id, name=name,
                                  xys=arr[:, :2].copy(), point3d_ids=arr[:, 2].astype(np.int64)))
        i += 2
    return images


def _read_points3d_txt(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    ids, xyz, rgb, err = [], [], [], []
    for no, line in _data_lines(path):
        if not line:
            continue
        tok = line.split()
        try:
            ids.append(int(tok[0]))
            xyz.append([float(v) for v in tok[1:4]])
            rgb.append([int(v) for v in tok[4:7]])
            err.append(float(tok[7]))
        except (IndexError, ValueError) as exc:
            raise CaptureError(f"{path}, line {no}: malformed point line ({exc})") from None
    return (np.array(ids, dtype=np.int64), np.array(xyz, dtype=np.float64).reshape(-1, 3),
            np.array(rgb, dtype=np.uint8).reshape(-1, 3), np.array(err, dtype=np.float64))


def _guard(path: Path, fn: Callable[[Path], T]) -> T:
    """Run a file parser, turning low-level failures into a CaptureError that names the file."""
    try:
        return fn(path)
    except CaptureError:
        raise
    except (struct.error, UnicodeDecodeError, OSError) as exc:
        raise CaptureError(f"{path}: truncated or corrupt COLMAP file ({exc})") from None
