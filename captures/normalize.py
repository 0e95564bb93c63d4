"""The world <-> model mapping: where the region of interest (the head) is, and how big.

Model coordinates are ``x_model = (x_world - center) / radius``: the region of interest becomes the unit
sphere, which sits inside the model's cube ``[-1, 1]^3``. Rotations are untouched (a pure translation and
uniform scale), so camera rotations and the "up" of the capture stay as they were.

How ``center`` and ``radius`` are chosen, most trusted source first (:func:`capture.load_capture` applies it):

1. **IDR/VolSDF ``scale_mat``** (``cameras.npz``), when present and its cameras are the capture's: centre =
   its translation, radius = its scale. It was made for exactly this purpose (it maps the region of interest
   to the unit sphere) and reusing it keeps our model frame identical to NeRF-Art's for its released scenes.
   For fangzhou it is the cameras' look-at point with radius ``1.1 * max camera distance / 3`` (VolSDF's
   ``normalize_cameras``), which puts the cameras 2.36-2.73 from the origin.
2. **COLMAP 3D points**: centre = the cameras' look-at point (:func:`lookat_point`, the least-squares point
   nearest every optical axis; the median of the points when the axes are near-parallel or it lies behind
   the cameras); radius = the :data:`POINTS_QUANTILE` quantile of the distances from it of the points no
   farther from it than the mean camera distance. Points beyond the cameras are background by construction
   in an outside-in capture, and a head capture's cloud also holds the shoulders/torso, hair and stray
   background, so a high quantile without extra margin is used. On fangzhou this reproduces the IDR
   ``scale_mat``: same centre (VolSDF also uses the look-at point), radius 8.69 against 8.74, cameras
   2.38-2.74 from the origin, 95 % of the points within 1.16 (``tests/test_captures_real.py``). Points
   beyond the unit sphere up to the cube's corners (radius 1.73) are still inside the model.
3. **Cameras only** (transforms.json, LLFF): centre = :func:`lookat_point`; radius = mean camera distance
   × sin(largest half field of view) × :data:`FOV_MARGIN`, i.e. the sphere that would just fill the widest
   view from the average distance, with a margin, capped at (nearest camera distance) /
   :data:`MIN_CAMERA_DISTANCE` so that no camera ends up inside the model's cube. For NeRF-synthetic lego
   (cameras 4.03 from the origin, 40° field of view) that is 1.64 world units (no cap), which contains the
   whole model (its visual hull reaches 0.80 in model units). For fangzhou's cameras alone the
   field-filling sphere would be 14.1 (widest half view 32° because of the off-centre principal point,
   times the margin), putting the cameras 1.5-1.7 from the origin; the cap makes it 10.3, 1.18x the IDR
   radius. If the optical axes are near-parallel (a forward-facing capture) and no bounds are given, the look-at point is undefined and a
   :class:`CaptureError` says so; LLFF's near/far bounds place it at the median mid-depth instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .cameras import Cameras
from .errors import CaptureError

# Quantile of point distances taken as the radius (no margin on top; see the module docstring).
POINTS_QUANTILE = 0.85
# Margin on the sphere that exactly fills the field of view (cameras-only rule).
FOV_MARGIN = 1.2
# Cameras-only rule: every camera at least this far from the centre in model units, i.e. outside the
# model's cube [-1, 1]^3 (corners at 1.73); IDR/VolSDF frames put them at 2.36-2.73 for fangzhou.
MIN_CAMERA_DISTANCE = 2.0
# Smallest eigenvalue of mean(I - d d^T) over the optical axes below which they count as parallel
# (about 0.6 degrees of spread): the least-squares look-at point is then meaningless.
_PARALLEL_EIGENVALUE = 1e-4


@dataclass
class Normalization:
    """World <-> model similarity: ``x_model = (x_world - center) / radius``.

    Attributes:
        center: ``(3,)`` float64 centre of the region of interest, world units.
        radius: radius of the region of interest, world units (> 0).
        method: how it was obtained ("idr_scale_mat", "colmap_points", "cameras", "manual", ...); informative.
    """

    center: np.ndarray
    radius: float
    method: str = field(default="manual")

    def __post_init__(self) -> None:
        self.center = np.asarray(self.center, dtype=np.float64).reshape(-1)
        self.radius = float(self.radius)
        if self.center.shape != (3,) or not np.all(np.isfinite(self.center)):
            raise ValueError(f"Normalization center must be 3 finite numbers, got {self.center}")
        if not (np.isfinite(self.radius) and self.radius > 0):
            raise ValueError(f"Normalization radius must be finite and > 0, got {self.radius}")

    def to_model(self, points_world: np.ndarray) -> np.ndarray:
        """``(..., 3)`` world points -> ``(..., 3)`` model points."""
        return (np.asarray(points_world, dtype=np.float64) - self.center) / self.radius

    def to_world(self, points_model: np.ndarray) -> np.ndarray:
        """``(..., 3)`` model points -> ``(..., 3)`` world points."""
        return np.asarray(points_model, dtype=np.float64) * self.radius + self.center

    def cameras_to_model(self, cameras: Cameras) -> Cameras:
        """Cameras in model coordinates: rotations unchanged, centres mapped by :meth:`to_model`."""
        m = np.eye(4)
        m[:3, 3] = -self.center / self.radius
        return cameras.transformed(m, scale=1.0 / self.radius)

    def cameras_to_world(self, cameras: Cameras) -> Cameras:
        """Inverse of :meth:`cameras_to_model`."""
        m = np.eye(4)
        m[:3, 3] = self.center
        return cameras.transformed(m, scale=self.radius)

    def to_dict(self) -> dict:
        """JSON-able form for checkpoints: ``{"center": [x, y, z], "radius": r, "method": str}``."""
        return {"center": [float(v) for v in self.center], "radius": float(self.radius), "method": self.method}

    @classmethod
    def from_dict(cls, d: dict) -> Normalization:
        """Inverse of :meth:`to_dict` (``method`` optional). Raises ``ValueError`` on a malformed dict."""
        if not isinstance(d, dict) or "center" not in d or "radius" not in d:
            raise ValueError(f"Normalization dict needs 'center' and 'radius', got {d!r}")
        center = d["center"]
        if not isinstance(center, list | tuple) or len(center) != 3 or not all(
                isinstance(v, int | float) and not isinstance(v, bool) for v in center):
            raise ValueError(f"Normalization 'center' must be a list of 3 numbers, got {center!r}")
        radius = d["radius"]
        if not isinstance(radius, int | float) or isinstance(radius, bool):
            raise ValueError(f"Normalization 'radius' must be a number, got {radius!r}")
        return cls(center=np.array(center, dtype=np.float64), radius=float(radius),
                   method=str(d.get("method", "manual")))


def lookat_point(cameras: Cameras) -> tuple[np.ndarray, float]:
    """The least-squares point closest to every camera's optical axis (its +Z through the centre).

    Minimises ``sum_i |(I - d_i d_i^T)(x - o_i)|^2`` in closed form.

    Returns:
        ``(3,)`` point and the smallest eigenvalue of ``mean(I - d_i d_i^T)`` (~ sin² of the angular spread
        of the axes; near 0 when they are parallel and the point is ill-defined).
    """
    origins = cameras.c2w[:, :3, 3]
    dirs = cameras.c2w[:, :3, 2]
    dirs = dirs / np.linalg.norm(dirs, axis=1, keepdims=True)
    proj = np.eye(3)[None] - dirs[:, :, None] * dirs[:, None, :]  # (N, 3, 3)
    a = proj.sum(0)
    b = np.einsum("nij,nj->i", proj, origins)
    eig_min = float(np.linalg.eigvalsh(a / len(cameras))[0])
    point = np.linalg.lstsq(a, b, rcond=None)[0]
    return point, eig_min


def _in_front_fraction(cameras: Cameras, point: np.ndarray) -> float:
    depth = np.einsum("ni,ni->n", point[None] - cameras.c2w[:, :3, 3], cameras.c2w[:, :3, 2])
    return float(np.mean(depth > 0))


def normalization_from_scale_mat(scale_mat: np.ndarray, source: str = "cameras.npz") -> Normalization:
    """From an IDR ``scale_mat`` (``(4, 4)``, uniform scale + translation mapping the unit sphere to the ROI).

    Raises:
        CaptureError: the matrix is not a uniform scale plus translation (naming ``source``).
    """
    s = np.asarray(scale_mat, dtype=np.float64)
    if s.shape not in ((4, 4), (3, 4)) or not np.all(np.isfinite(s)):
        raise CaptureError(f"{source}: scale_mat must be a finite 4x4 matrix, got shape {s.shape}")
    lin = s[:3, :3]
    scale = float(np.mean(np.diag(lin)))
    if not (scale > 0 and np.allclose(lin, scale * np.eye(3), rtol=1e-6, atol=1e-9 * max(scale, 1.0))):
        raise CaptureError(f"{source}: scale_mat is not a uniform scale plus translation:\n{s}")
    return Normalization(center=s[:3, 3].copy(), radius=scale, method="idr_scale_mat")


def normalization_from_points(cameras: Cameras, points: np.ndarray) -> Normalization:
    """From sparse 3D points (COLMAP) and the cameras; rule 2 of the module docstring.

    Args:
        cameras: the capture's cameras (world units).
        points: ``(n_points, 3)`` world points; at least 10 needed.

    Raises:
        CaptureError: too few points near the cameras' target.
    """
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    pts = pts[np.all(np.isfinite(pts), axis=1)]
    if len(pts) < 10:
        raise CaptureError(f"only {len(pts)} finite 3D points; too few to place the region of interest")
    center, eig_min = lookat_point(cameras)
    if eig_min < _PARALLEL_EIGENVALUE or _in_front_fraction(cameras, center) < 0.5:
        # Forward-facing or inside-out: the axes do not meet in front of the cameras; the points decide.
        center = np.median(pts, axis=0)
    cam_dist = np.linalg.norm(cameras.c2w[:, :3, 3] - center, axis=1).mean()
    dist = np.linalg.norm(pts - center, axis=1)
    near = dist[dist <= cam_dist]
    if len(near) < 10:
        raise CaptureError(f"only {len(near)} of {len(pts)} 3D points lie nearer to the cameras' target than "
                           "the cameras themselves; cannot place the region of interest")
    radius = float(np.quantile(near, POINTS_QUANTILE))
    return Normalization(center=center, radius=radius, method="colmap_points")


def max_half_fov(cameras: Cameras) -> float:
    """The largest half field of view over cameras and both axes (radians), honouring off-centre principal points."""
    half_x = np.arctan(np.maximum(cameras.cx, cameras.width - cameras.cx) / cameras.fx)
    half_y = np.arctan(np.maximum(cameras.cy, cameras.height - cameras.cy) / cameras.fy)
    return float(np.max(np.maximum(half_x, half_y)))


def normalization_from_cameras(cameras: Cameras, near_far: np.ndarray | None = None,
                               source: str = "cameras") -> Normalization:
    """From the cameras alone (transforms.json, LLFF); rule 3 of the module docstring.

    Args:
        cameras: the capture's cameras.
        near_far: optional ``(N, 2)`` per-view depth bounds (LLFF), used only when the axes are parallel.
        source: file named in errors.

    Raises:
        CaptureError: the optical axes are parallel (forward-facing) and no bounds are given.
    """
    center, eig_min = lookat_point(cameras)
    degenerate = eig_min < _PARALLEL_EIGENVALUE or _in_front_fraction(cameras, center) < 0.5
    if degenerate:
        if near_far is None:
            raise CaptureError(
                f"{source}: the cameras' optical axes do not converge in front of them (a forward-facing or "
                "inside-out capture), so the region of interest cannot be placed from the cameras alone; "
                "provide a COLMAP model (sparse/0) or an IDR cameras.npz with a scale_mat"
            )
        mid = float(np.median(np.asarray(near_far, dtype=np.float64).mean(axis=1)))
        dirs = cameras.c2w[:, :3, 2]
        mean_dir = dirs.mean(0) / np.linalg.norm(dirs.mean(0))
        center = cameras.c2w[:, :3, 3].mean(0) + mid * mean_dir
    dists = np.linalg.norm(cameras.c2w[:, :3, 3] - center, axis=1)
    radius = float(dists.mean() * np.sin(max_half_fov(cameras)) * FOV_MARGIN)
    # The field-filling sphere is an upper bound on the object; keep every camera outside the model's cube.
    radius = min(radius, float(dists.min()) / MIN_CAMERA_DISTANCE)
    return Normalization(center=center, radius=radius, method="cameras")
