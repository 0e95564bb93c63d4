"""LLFF ``poses_bounds.npy`` captures.

Conventions of the format (LLFF ``imgs2poses.py`` / ``poses/pose_utils.py``, NeRF ``load_llff.py``):

* ``(N, 17)`` rows: a flattened ``3x5`` matrix ``[R | t | hwf]`` then ``near, far``. ``R | t`` is
  camera-to-world in the COLMAP world, with the columns ordered ``[down, right, backwards]``:
  ``imgs2poses`` writes ``[c1, c0, -c2]`` of COLMAP's OpenCV c2w. So OpenCV ``(right, down, forward)`` =
  ``(col1, col0, -col2)``. ``hwf`` is ``(height, width, focal)`` of the images COLMAP saw.
* One focal for both axes and the principal point at the image centre: ``cx = w/2, cy = h/2`` in our
  convention (the format assumes a centred principal point; NeRF's loader happens to cast rays at integer
  pixels, half a pixel off, which is a renderer detail, not part of the file). fangzhou's real principal
  point is (343.5, 586.1), not (270, 480), and its lens is distorted: prefer its COLMAP model.
* Images are ``images/`` sorted by name. If they are a resized copy (e.g. ``images_4`` moved into
  ``images/``), the focal is scaled by the width ratio; an aspect ratio that differs is refused.
* ``near, far`` are depths in world units; kept as ``near_far`` (``(N, 2)``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .cameras import Cameras
from .errors import CaptureError
from .image_headers import image_header
from .images import find_images_dir, list_images


@dataclass
class LlffCapture:
    """What a poses_bounds.npy holds.

    Attributes:
        cameras: ``N`` cameras, OpenCV axes, COLMAP world.
        image_paths: ``N`` images, sorted by name.
        near_far: ``(N, 2)`` depth bounds in world units.
    """

    cameras: Cameras
    image_paths: list[Path]
    near_far: np.ndarray


# OpenCV c2w columns from LLFF columns [down, right, backwards]: x = col1, y = col0, z = -col2.
LLFF_TO_OPENCV = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, -1.0]])


def read_llff(path: str | Path, images_dir: Path | None = None) -> LlffCapture:
    """Read a poses_bounds.npy and the sorted images next to it.

    Raises:
        CaptureError: unreadable file, wrong shape, image count or aspect mismatch.
    """
    path = Path(path)
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise CaptureError(f"{path}: cannot read as a .npy array ({exc})") from None
    if arr.ndim != 2 or arr.shape[1] != 17:
        raise CaptureError(f"{path}: expected shape (N, 17) (3x5 pose + near/far per view), got {arr.shape}")
    arr = arr.astype(np.float64)
    n = arr.shape[0]
    poses = arr[:, :15].reshape(n, 3, 5)
    near_far = arr[:, 15:17].copy()

    images_dir = images_dir if images_dir is not None else find_images_dir(path.parent)
    image_paths = list_images(images_dir)
    if len(image_paths) != n:
        raise CaptureError(f"{path}: {n} poses but {len(image_paths)} images in {images_dir}; they are paired "
                           "in sorted order, so the counts must match")

    c2w = np.tile(np.eye(4), (n, 1, 1))
    # Right-multiplying by the column permutation reorders [down, right, back] into [right, down, forward].
    c2w[:, :3, :3] = poses[:, :, :3] @ LLFF_TO_OPENCV
    c2w[:, :3, 3] = poses[:, :, 3]
    h_file, w_file, focal = poses[:, 0, 4], poses[:, 1, 4], poses[:, 2, 4]

    width, height = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
    for i, img in enumerate(image_paths):
        width[i], height[i], _ = image_header(img)
    sx, sy = width / w_file, height / h_file
    bad = np.flatnonzero(np.abs(sx - sy) > 0.01 * np.maximum(sx, sy))
    if len(bad):
        i = int(bad[0])
        raise CaptureError(f"{image_paths[i]}: image is {width[i]}x{height[i]} but {path.name} says "
                           f"{w_file[i]:g}x{h_file[i]:g} (different aspect ratio)")
    fx, fy = focal * sx, focal * sy
    cams = Cameras(c2w=c2w, fx=fx, fy=fy, cx=width / 2.0, cy=height / 2.0, width=width, height=height,
                   names=[p.stem for p in image_paths])
    return LlffCapture(cameras=cams, image_paths=image_paths, near_far=near_far)
