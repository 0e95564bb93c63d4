"""The one camera model of every capture reader, shared by the backend and the Blender add-on.

Conventions, written down once (every reader converts to these; nothing downstream guesses):

* **Axes.** ``c2w`` maps camera to world with OpenCV camera axes: +X right, +Y down, +Z forward (the
  viewing direction). OpenGL / Blender / nerfstudio cameras (+X right, +Y up, looking down -Z) are converted
  by flipping the Y and Z columns of the rotation (:data:`OPENGL_TO_OPENCV`).
* **Pixels.** Continuous image coordinates have their origin at the top-left *corner* of the image, so the
  centre of pixel (column i, row j) is (i + 0.5, j + 0.5). This is COLMAP's and nerfstudio's convention;
  ``cx = width / 2`` is the exact image centre. Scaling an image by ``s`` scales fx, fy, cx, cy by ``s``.
* **Lens.** OpenCV's ``k1 k2 p1 p2`` model (COLMAP ``OPENCV``), applied to normalised camera coordinates
  (:func:`distortion_terms`). The backend's rays (``backend/nerf/rays.py``) invert it per pixel (Newton's
  method), never ignore it; Blender cameras cannot show it, so the add-on reports it.
* **Units.** World units are whatever the capture uses; :mod:`captures.normalize` maps them into
  the model's region and back.

numpy only (no torch, no Pillow, no bpy): Blender imports this package from the add-on's zip.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

# Right-multiplying an OpenGL-convention c2w rotation by this gives the OpenCV-convention one (and back).
OPENGL_TO_OPENCV = np.diag([1.0, -1.0, -1.0, 1.0])


@dataclass
class Cameras:
    """A set of N pinhole cameras with optional OpenCV lens distortion.

    Attributes:
        c2w: ``(N, 4, 4)`` float64 camera-to-world matrices, OpenCV axes (+Z forward, +Y down).
        fx, fy, cx, cy: ``(N,)`` float64 intrinsics in pixels, pixel centres at +0.5.
        width, height: ``(N,)`` int64 image sizes in pixels.
        distortion: ``(N, 4)`` float64 ``k1 k2 p1 p2``; all zero for a pinhole camera.
        names: N names (image file stems or Blender camera names), used in errors and outputs.
    """

    c2w: np.ndarray
    fx: np.ndarray
    fy: np.ndarray
    cx: np.ndarray
    cy: np.ndarray
    width: np.ndarray
    height: np.ndarray
    distortion: np.ndarray = field(default=None)  # type: ignore[assignment]
    names: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.c2w = np.asarray(self.c2w, dtype=np.float64)
        if self.c2w.ndim != 3 or self.c2w.shape[1:] not in ((4, 4), (3, 4)):
            raise ValueError(f"c2w must have shape (N, 4, 4) or (N, 3, 4), got {self.c2w.shape}")
        n = self.c2w.shape[0]
        if self.c2w.shape[1] == 3:
            bottom = np.broadcast_to(np.array([0.0, 0.0, 0.0, 1.0]), (n, 1, 4))
            self.c2w = np.concatenate([self.c2w, bottom], axis=1)
        for name in ("fx", "fy", "cx", "cy"):
            setattr(self, name, _per_camera(getattr(self, name), n, name, np.float64))
        self.width = _per_camera(self.width, n, "width", np.int64)
        self.height = _per_camera(self.height, n, "height", np.int64)
        if self.distortion is None:
            self.distortion = np.zeros((n, 4))
        self.distortion = np.asarray(self.distortion, dtype=np.float64)
        if self.distortion.shape == (4,):
            self.distortion = np.broadcast_to(self.distortion, (n, 4)).copy()
        if self.distortion.shape != (n, 4):
            raise ValueError(f"distortion must have shape ({n}, 4) (k1 k2 p1 p2), got {self.distortion.shape}")
        if not self.names:
            self.names = [f"camera_{i:04d}" for i in range(n)]
        if len(self.names) != n:
            raise ValueError(f"{len(self.names)} names for {n} cameras")

    def __len__(self) -> int:
        return self.c2w.shape[0]

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first camera whose pose or intrinsics are unusable."""
        for i in range(len(self)):
            bad = []
            if not np.all(np.isfinite(self.c2w[i])):
                bad.append("non-finite pose")
            else:
                rot = self.c2w[i, :3, :3]
                if not np.allclose(rot.T @ rot, np.eye(3), atol=1e-3) or np.linalg.det(rot) < 0:
                    bad.append("pose rotation is not a rotation")
            if not (self.fx[i] > 0 and self.fy[i] > 0 and np.isfinite(self.cx[i]) and np.isfinite(self.cy[i])):
                bad.append(f"bad intrinsics fx={self.fx[i]} fy={self.fy[i]} cx={self.cx[i]} cy={self.cy[i]}")
            if not (self.width[i] > 0 and self.height[i] > 0):
                bad.append(f"bad image size {self.width[i]}x{self.height[i]}")
            if not np.all(np.isfinite(self.distortion[i])):
                bad.append("non-finite distortion")
            if bad:
                raise ValueError(f"camera {self.names[i]!r}: " + "; ".join(bad))

    def select(self, index: np.ndarray | list[int] | slice) -> Cameras:
        """The cameras at ``index``, as a new ``Cameras``."""
        idx = np.arange(len(self))[index]
        return Cameras(
            c2w=self.c2w[idx], fx=self.fx[idx], fy=self.fy[idx], cx=self.cx[idx], cy=self.cy[idx],
            width=self.width[idx], height=self.height[idx], distortion=self.distortion[idx],
            names=[self.names[i] for i in np.atleast_1d(idx)],
        )

    def scaled(self, factor: float) -> Cameras:
        """The same cameras for images resized by ``factor`` (sizes rounded to whole pixels).

        With pixel centres at +0.5 the continuous image plane scales linearly, so intrinsics scale exactly
        by the ratio of the new to the old size along each axis.
        """
        new_w = np.maximum(1, np.round(self.width * factor)).astype(np.int64)
        new_h = np.maximum(1, np.round(self.height * factor)).astype(np.int64)
        sx, sy = new_w / self.width, new_h / self.height
        return Cameras(
            c2w=self.c2w.copy(), fx=self.fx * sx, fy=self.fy * sy, cx=self.cx * sx, cy=self.cy * sy,
            width=new_w, height=new_h, distortion=self.distortion.copy(), names=list(self.names),
        )

    def transformed(self, world_from_old: np.ndarray, scale: float = 1.0) -> Cameras:
        """Cameras moved by a similarity: ``x_new = scale * R x_old + t`` with ``world_from_old = [R|t]``.

        ``world_from_old`` is ``(4, 4)``; its rotation part must be orthonormal (scale passed separately so
        that the c2w rotations stay orthonormal).
        """
        m = np.asarray(world_from_old, dtype=np.float64)
        c2w = self.c2w.copy()
        c2w[:, :3, :3] = m[:3, :3] @ c2w[:, :3, :3]
        c2w[:, :3, 3] = scale * (c2w[:, :3, 3] @ m[:3, :3].T) + m[:3, 3]
        return Cameras(
            c2w=c2w, fx=self.fx.copy(), fy=self.fy.copy(), cx=self.cx.copy(), cy=self.cy.copy(),
            width=self.width.copy(), height=self.height.copy(), distortion=self.distortion.copy(),
            names=list(self.names),
        )

    def intrinsics_matrix(self, i: int) -> np.ndarray:
        """The ``(3, 3)`` K matrix of camera ``i`` (pixel centres at +0.5)."""
        return np.array([[self.fx[i], 0.0, self.cx[i]], [0.0, self.fy[i], self.cy[i]], [0.0, 0.0, 1.0]])


def _per_camera(value: object, n: int, name: str, dtype: type) -> np.ndarray:
    arr = np.asarray(value, dtype=dtype)
    if arr.ndim == 0:
        arr = np.full((n,), arr, dtype=dtype)
    if arr.shape != (n,):
        raise ValueError(f"{name} must be a scalar or have shape ({n},), got {arr.shape}")
    return arr


def distortion_terms(x: Any, y: Any, k1: Any, k2: Any, p1: Any, p2: Any) -> tuple[Any, Any]:
    """The OpenCV ``k1 k2 p1 p2`` model on normalised camera coordinates, as plain arithmetic.

    Only ``+ - *`` are used, so the arguments may be numpy arrays or torch tensors (the backend's ray code
    calls it with tensors): one formula for both sides instead of two copies that could drift apart.

    .. math::
        r^2 = x^2 + y^2, \\quad
        x_d = x (1 + k_1 r^2 + k_2 r^4) + 2 p_1 x y + p_2 (r^2 + 2 x^2), \\quad
        y_d = y (1 + k_1 r^2 + k_2 r^4) + p_1 (r^2 + 2 y^2) + 2 p_2 x y

    Args:
        x, y: undistorted normalised coordinates (x/z, y/z), any broadcastable shape.
        k1, k2, p1, p2: coefficients, broadcastable against ``x``.

    Returns:
        ``(x_d, y_d)``, the distorted coordinates, shaped like ``x``.
    """
    r2 = x * x + y * y
    radial = 1.0 + r2 * (k1 + k2 * r2)
    xd = x * radial + 2.0 * p1 * x * y + p2 * (r2 + 2.0 * x * x)
    yd = y * radial + p1 * (r2 + 2.0 * y * y) + 2.0 * p2 * x * y
    return xd, yd


def distort(xy: np.ndarray, dist: np.ndarray) -> np.ndarray:
    """Apply the OpenCV ``k1 k2 p1 p2`` model to normalised camera coordinates (numpy).

    Args:
        xy: ``(..., 2)`` undistorted normalised coordinates (x/z, y/z).
        dist: ``(..., 4)`` or ``(4,)`` coefficients ``k1 k2 p1 p2``.

    Returns:
        ``(..., 2)`` distorted normalised coordinates, float64.
    """
    xy = np.asarray(xy, dtype=np.float64)
    d = np.asarray(dist, dtype=np.float64)
    xd, yd = distortion_terms(xy[..., 0], xy[..., 1], d[..., 0], d[..., 1], d[..., 2], d[..., 3])
    return np.stack([xd, yd], axis=-1)


def project_points(cameras: Cameras, i: int, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Project world points into camera ``i`` (with distortion), for tests and mesh colouring.

    Args:
        points: ``(n, 3)`` world points.

    Returns:
        ``uv`` ``(n, 2)`` continuous pixel coordinates and ``depth`` ``(n,)`` camera-space z.
    """
    w2c = np.linalg.inv(cameras.c2w[i])
    pc = points @ w2c[:3, :3].T + w2c[:3, 3]
    z = pc[:, 2]
    xy = pc[:, :2] / z[:, None]
    if np.any(cameras.distortion[i] != 0):
        xy = distort(xy, cameras.distortion[i])
    uv = np.stack([xy[:, 0] * cameras.fx[i] + cameras.cx[i], xy[:, 1] * cameras.fy[i] + cameras.cy[i]], axis=-1)
    return uv, z
