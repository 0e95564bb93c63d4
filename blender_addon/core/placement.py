"""Where an imported capture lands: its subject upright at the 3D cursor, at head scale.

A capture's own world is whatever made it: COLMAP puts the subject ~22 units from the origin with +Y down,
so imported as is, a selfie capture floats far away, seen from below, at an arbitrary scale. The add-on
carries a capture's cameras under one *placement* empty (``camera.matrix_world = placement · c2w_capture``,
see :mod:`.poses`); this module computes the placement that stands the subject up where the artist works:

* **centre** → the 3D cursor. The subject's centre is where the cameras' optical axes converge: the
  backend's own region-of-interest centre (:attr:`captures.Normalization.center`), which is the
  least-squares point nearest every optical axis (``captures.normalize.lookat_point``, also the IDR/VolSDF
  ``scale_mat`` centre), with the shared reader's fallbacks for forward-facing captures.
* **up** → +Z: the mean of the cameras' image-up axes.
* **front** → −Y: the mean direction from the centre to the cameras, so Blender's Front view (numpad 1,
  looking along +Y) sees the subject from where the capture saw it.
* **size** → ``subject_size`` (0.25 m, a head): the subject's diameter is estimated from the cameras alone
  (:func:`subject_diameter`).

The result is a similarity (rotation, translation, one uniform scale), which is all a NeRF can be moved
by; :func:`.poses.capture_from_world` inverts it exactly when cameras go back to the backend.

No bpy here (``capture_bpy.py`` applies it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# Diameter of a head in metres: the default size of an imported capture's subject.
HEAD_SIZE_M = 0.25
# The fraction of the narrower side of the photos that the subject fills. Measured on fangzhou_nature (a
# selfie video, portrait 540x960): the head, i.e. the widest row of the upper half of the foreground matte,
# spans 350 of the 540 px at the subject's depth, 0.65. NeRF-synthetic lego fills 0.6-0.88 of its 400 px
# frames (alpha), so an object capture lands within ~1.4x of the size too.
SUBJECT_FILL = 0.65
# Below this length the mean of unit vectors has no direction (cameras all round, pointing every way).
_MIN_MEAN_LENGTH = 0.2


@dataclass(frozen=True)
class SubjectFrame:
    """A capture's subject in capture-world coordinates.

    Attributes:
        centre: ``(3,)`` the subject's centre.
        up: ``(3,)`` unit up direction (the cameras' mean image-up).
        front: ``(3,)`` unit direction from the centre towards the cameras, perpendicular to ``up``.
        diameter: estimated subject size (capture units, > 0).
    """

    centre: np.ndarray
    up: np.ndarray
    front: np.ndarray
    diameter: float


def subject_diameter(c2w_opencv: np.ndarray, centre: np.ndarray, fx: np.ndarray, fy: np.ndarray,
                     width: np.ndarray, height: np.ndarray) -> float:
    """The subject's size estimated from the cameras: what they frame at the subject's depth.

    Each camera frames ``2 · depth · tan(half view)`` across the narrower side of its photo at the depth of the
    subject's centre; the subject is taken to fill :data:`SUBJECT_FILL` of that (the median over cameras, so a
    few far or close views do not decide). Cameras only, no image read: the shared reader's region of interest
    (``Normalization.radius``) is not used because it is made to enclose everything the model must hold (hair,
    shoulders, a margin): about twice the head on fangzhou.

    Args:
        c2w_opencv: ``(N, 4, 4)`` camera-to-world, OpenCV axes (+Z is the viewing direction).
        centre: ``(3,)`` the subject's centre.
        fx, fy: ``(N,)`` focal lengths in pixels.
        width, height: ``(N,)`` image sizes in pixels.

    Returns:
        The diameter in capture units. Cameras with the centre behind them are ignored; if every camera has,
        the median distance to the centre times the same framing rule at a 50° view is used.
    """
    c2w = np.asarray(c2w_opencv, dtype=np.float64).reshape(-1, 4, 4)
    offsets = np.asarray(centre, dtype=np.float64)[None] - c2w[:, :3, 3]
    depth = np.einsum("ni,ni->n", offsets, c2w[:, :3, 2])
    tan_half = np.minimum(np.asarray(width, dtype=np.float64) / (2.0 * np.asarray(fx, dtype=np.float64)),
                          np.asarray(height, dtype=np.float64) / (2.0 * np.asarray(fy, dtype=np.float64)))
    ahead = depth > 0
    if np.any(ahead):
        extent = float(np.median(2.0 * depth[ahead] * tan_half[ahead]))
    else:
        extent = float(np.median(np.linalg.norm(offsets, axis=1))) * 2.0 * np.tan(np.radians(25.0))
    return max(extent * SUBJECT_FILL, 1e-9)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def subject_frame(c2w_opencv: np.ndarray, centre: Sequence[float] | np.ndarray, fx: np.ndarray, fy: np.ndarray,
                  width: np.ndarray, height: np.ndarray) -> SubjectFrame:
    """The subject's centre, up, front and size from its cameras (arguments as in :func:`subject_diameter`).

    Degenerate captures still get a frame: if the cameras' image-up axes cancel out, the capture world's +Z
    is up; if the cameras surround the subject evenly (no mean direction), the first camera's direction is
    the front; if that is along ``up``, any direction perpendicular to it.
    """
    c2w = np.asarray(c2w_opencv, dtype=np.float64).reshape(-1, 4, 4)
    centre_v = np.asarray(centre, dtype=np.float64).reshape(3)
    ups = -c2w[:, :3, 1]  # OpenCV +Y points down the image
    ups = ups / np.linalg.norm(ups, axis=1, keepdims=True)
    mean_up = ups.mean(axis=0)
    up = _unit(mean_up) if np.linalg.norm(mean_up) >= _MIN_MEAN_LENGTH else np.array([0.0, 0.0, 1.0])
    offsets = c2w[:, :3, 3] - centre_v[None]
    dirs = offsets / np.maximum(np.linalg.norm(offsets, axis=1, keepdims=True), 1e-12)
    flat = dirs - np.outer(dirs @ up, up)
    front = flat.mean(axis=0)
    if np.linalg.norm(front) < _MIN_MEAN_LENGTH:
        front = flat[0]
    if np.linalg.norm(front) < 1e-6:
        front = np.cross(up, [1.0, 0.0, 0.0] if abs(up[0]) < 0.9 else [0.0, 1.0, 0.0])
    front = _unit(front - (front @ up) * up)
    diameter = subject_diameter(c2w, centre_v, fx, fy, width, height)
    return SubjectFrame(centre=centre_v, up=up, front=front, diameter=diameter)


def upright_placement(subject: SubjectFrame, cursor: Sequence[float] | np.ndarray,
                      size: float = HEAD_SIZE_M) -> np.ndarray:
    """The placement (capture world → Blender world) that stands ``subject`` at ``cursor``, ``size`` across.

    ``placement · [centre, 1] = [cursor, 1]``; the placement's rotation maps ``up`` to +Z and ``front`` to −Y;
    its uniform scale is ``size / subject.diameter``.

    Args:
        subject: from :func:`subject_frame`.
        cursor: ``(3,)`` Blender-world point for the subject's centre (the 3D cursor).
        size: the subject's diameter in Blender units (> 0).

    Returns:
        ``(4, 4)`` float64 similarity.
    """
    if not (np.isfinite(size) and size > 0):
        raise ValueError(f"the subject size must be a positive length, got {size!r}")
    ez = subject.up
    ey = -subject.front
    rot = np.stack([np.cross(ey, ez), ey, ez])  # rows: the Blender axes in capture coordinates
    scale = size / subject.diameter
    m = np.eye(4)
    m[:3, :3] = scale * rot
    m[:3, 3] = np.asarray(cursor, dtype=np.float64).reshape(3) - scale * rot @ subject.centre
    return m
