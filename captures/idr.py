"""IDR / VolSDF / NeuS ``cameras.npz`` captures.

Conventions of the format (IDR ``utils/rend_util.py``, NeuS ``models/dataset.py``):

* ``world_mat_i`` (3x4 or 4x4) is the projection ``P = K [R | t]`` from the capture's world to pixels,
  OpenCV camera axes. It is decomposed like IDR's ``load_K_Rt_from_P`` (``cv2.decomposeProjectionMatrix``),
  here with a numpy RQ decomposition (:func:`decompose_projection`) that makes the focal lengths positive
  and R a proper rotation.
* ``scale_mat_i`` maps the unit sphere to the region of interest; IDR multiplies it into ``P``. We keep the
  cameras in the capture's own world (for fangzhou: the COLMAP world) and turn ``scale_mat`` into the
  :class:`~captures.normalize.Normalization` instead.
* Images are ``images/`` (or IDR's ``image/``) sorted by name, one per ``world_mat``. No lens distortion:
  :func:`~captures.load_capture` takes it from a COLMAP model beside the file when that model describes the
  same views (:mod:`.colmap_lens`); this reader alone gives a pinhole.
* **Pixel centres.** IDR, NeuS and NeRF-Art cast the ray of pixel (col, row) through the integer point
  (col, row) of ``K``'s image plane, i.e. their ``K`` puts pixel centres at integers; ours at +0.5. For such
  a file ``cx_ours = cx_file + 0.5`` (same for ``cy``): the ``"integer"`` convention.
  But ``cameras.npz`` files written by ``colmap2volsdf.py`` (all NeRF-Art scenes, fangzhou included) copy
  COLMAP's ``K`` unchanged, and COLMAP puts pixel centres at +0.5: for those files the numbers are already
  in our convention (``"half"``) and it is the IDR-family renderers that are half a pixel off. Projecting
  fangzhou's COLMAP 3D points with its ``cameras.npz`` cameras onto COLMAP's own (lens-undistorted)
  keypoints gives a mean offset of (0.00, 0.00) px as read and (0.50, 0.50) px with the +0.5 shift (see
  ``tests/test_captures_real.py``). ``pixel_centers="auto"`` (the default) picks ``"half"`` when a COLMAP
  model next to the file has the same fx, fy, cx, cy (the file was derived from it) and ``"integer"``, the
  format's own convention, otherwise.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .cameras import Cameras
from .errors import CaptureError
from .image_headers import image_header
from .images import find_images_dir, list_images

_WORLD_KEY = re.compile(r"^world_mat_(\d+)$")


@dataclass
class IdrCapture:
    """What a cameras.npz holds.

    Attributes:
        cameras: ``N`` cameras in the file's world (``world_mat`` only, ``scale_mat`` not applied).
        image_paths: ``N`` images, sorted by name.
        scale_mat: ``(4, 4)`` shared ``scale_mat``, or ``None`` when the file has none.
        pixel_centers: the convention used, ``"integer"`` (shifted +0.5) or ``"half"`` (copied).
        notes: human-readable decisions taken while reading.
    """

    cameras: Cameras
    image_paths: list[Path]
    scale_mat: np.ndarray | None
    pixel_centers: str
    notes: list[str] = field(default_factory=list)


def decompose_projection(p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split a ``(3, 4)`` projection ``P ~ K [R | t]`` into intrinsics and pose (RQ decomposition).

    ``P`` is defined up to scale (and sign); the result has ``K[2, 2] = 1``, a positive diagonal in ``K`` and
    ``det(R) = +1``, which fixes the sign: with +X right and +Y down (positive fx, fy) the right-handed third
    axis is the viewing direction, so points in front get positive depth.

    Returns:
        ``K`` ``(3, 3)`` upper triangular, ``R`` ``(3, 3)`` world-to-camera rotation, ``t`` ``(3,)``
        world-to-camera translation (``x_cam = R x + t``).
    """
    p = np.asarray(p, dtype=np.float64)[:3, :4]
    m = p[:, :3]
    flip = np.flipud(np.eye(3))
    # RQ from QR: with J the row-reversal, (J M)^T = Q U gives M = (J U^T J)(J Q^T), upper-triangular x orthogonal.
    q, u = np.linalg.qr((flip @ m).T)
    k = flip @ u.T @ flip
    rot = flip @ q.T
    signs = np.where(np.diag(k) < 0, -1.0, 1.0)
    k, rot = k * signs[None, :], signs[:, None] * rot  # K S and S R with S = diag(signs), S S = I
    p_scaled = p
    if np.linalg.det(rot) < 0:
        # -P is the same projection; it turns R proper without touching K.
        rot, p_scaled = -rot, -p
    t = np.linalg.solve(k, p_scaled[:, 3])
    return k / k[2, 2], rot, t


def idr_camera_count(path: Path) -> int | None:
    """How many ``world_mat_<i>`` a cameras.npz holds, or ``None`` when it cannot be read (reading it says why)."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            return sum(1 for k in npz.files if _WORLD_KEY.match(k))
    except (OSError, ValueError, EOFError):
        return None


def read_idr_cameras(path: str | Path, images_dir: Path | None = None, pixel_centers: str = "auto",
                     colmap_intrinsics: tuple[float, float, float, float] | None = None) -> IdrCapture:
    """Read a cameras.npz and the sorted images next to it.

    Args:
        path: the ``.npz`` file.
        images_dir: image folder; default ``images/`` or ``image/`` next to the file.
        pixel_centers: ``"integer"`` (IDR's convention: add 0.5 to cx, cy), ``"half"`` (already ours), or
            ``"auto"``: ``"half"`` when ``colmap_intrinsics`` (fx, fy, cx, cy of a COLMAP model beside the file)
            equal every view's K to 1e-3 px, else ``"integer"``.
        colmap_intrinsics: see ``pixel_centers``.

    Raises:
        CaptureError: unreadable file, missing/non-contiguous ``world_mat_i``, bad matrices, a count that
            differs from the number of images, skewed intrinsics.
    """
    path = Path(path)
    if pixel_centers not in ("auto", "integer", "half"):
        raise ValueError(f"pixel_centers must be 'auto', 'integer' or 'half', got {pixel_centers!r}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            data = {k: np.asarray(npz[k]) for k in npz.files}
    except (OSError, ValueError, EOFError) as exc:
        raise CaptureError(f"{path}: cannot read as an .npz archive ({exc})") from None
    ids = sorted(int(mt.group(1)) for k in data if (mt := _WORLD_KEY.match(k)))
    if not ids:
        raise CaptureError(f"{path}: no world_mat_<i> arrays (keys: {', '.join(sorted(data)) or 'none'})")
    if ids != list(range(len(ids))):
        missing = sorted(set(range(max(ids) + 1)) - set(ids))
        raise CaptureError(f"{path}: world_mat indices are not 0..{len(ids) - 1} (missing world_mat_{missing[0]})")
    n = len(ids)

    images_dir = images_dir if images_dir is not None else find_images_dir(path.parent)
    image_paths = list_images(images_dir)
    if len(image_paths) != n:
        raise CaptureError(f"{path}: {n} cameras (world_mat_0..{n - 1}) but {len(image_paths)} images in "
                           f"{images_dir}; they are paired in sorted order, so the counts must match")

    ks = np.zeros((n, 3, 3))
    c2w = np.zeros((n, 4, 4))
    for i in range(n):
        wm = data[f"world_mat_{i}"]
        if wm.shape not in ((3, 4), (4, 4)) or not np.all(np.isfinite(wm)):
            raise CaptureError(f"{path}: world_mat_{i} must be a finite 3x4 or 4x4 matrix, got shape {wm.shape}")
        if abs(np.linalg.det(wm[:3, :3])) < 1e-12:
            raise CaptureError(f"{path}: world_mat_{i} is singular (not a projection matrix)")
        k, rot, t = decompose_projection(wm)
        if abs(k[0, 1]) > 1e-4 * k[0, 0]:
            raise CaptureError(f"{path}: world_mat_{i} has skewed intrinsics (K[0,1]={k[0, 1]:.4g}), which the "
                               "camera model cannot represent")
        ks[i] = k
        w2c = np.eye(4)
        w2c[:3, :3], w2c[:3, 3] = rot, t
        c2w[i] = np.linalg.inv(w2c)

    notes: list[str] = []
    if pixel_centers == "auto":
        if colmap_intrinsics is not None and np.allclose(
                ks[:, [0, 1, 0, 1], [0, 1, 2, 2]], np.asarray(colmap_intrinsics)[None], rtol=0, atol=1e-3):
            pixel_centers = "half"
            notes.append(f"{path.name}: K equals the COLMAP model's intrinsics (written by colmap2volsdf), so it "
                         "follows COLMAP's +0.5 pixel-centre convention; copied without a shift")
        else:
            pixel_centers = "integer"
            notes.append(f"{path.name}: IDR integer pixel-centre convention assumed; cx, cy shifted by +0.5")
    shift = 0.5 if pixel_centers == "integer" else 0.0

    width, height = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
    for i, img in enumerate(image_paths):
        width[i], height[i], _ = image_header(img)

    scale_mat = None
    if "scale_mat_0" in data:
        scale_mat = np.asarray(data["scale_mat_0"], dtype=np.float64)
        for i in range(n):
            other = data.get(f"scale_mat_{i}")
            if other is None or other.shape != scale_mat.shape or not np.allclose(other, scale_mat):
                raise CaptureError(f"{path}: scale_mat_{i} is missing or differs from scale_mat_0; a per-view "
                                   "scale_mat is not supported (they must all be equal)")
        if scale_mat.shape == (3, 4):
            scale_mat = np.vstack([scale_mat, [0.0, 0.0, 0.0, 1.0]])

    cams = Cameras(c2w=c2w, fx=ks[:, 0, 0], fy=ks[:, 1, 1], cx=ks[:, 0, 2] + shift, cy=ks[:, 1, 2] + shift,
                   width=width, height=height, names=[p.stem for p in image_paths])
    return IdrCapture(cameras=cams, image_paths=image_paths, scale_mat=scale_mat, pixel_centers=pixel_centers,
                      notes=notes)
