"""Camera poses: Blender (OpenGL axes) ↔ OpenCV axes, placement transforms, look-at.

Conventions, written down once:

* A Blender camera looks down its local −Z with +Y up and +X right (the OpenGL / NeRF-synthetic / nerfstudio
  convention). ``Object.matrix_world`` is its camera-to-world matrix (c2w).
* An OpenCV / COLMAP camera looks down +Z with +Y down. ``c2w_cv = c2w_bl · diag(1, −1, −1, 1)``: this flips
  the camera's own Y and Z axes and leaves the world frame alone. The same product converts back.
* The world stays Blender's world (Z up). Any normalisation into a model's unit region belongs to the
  backend; nothing here bakes a remap in.
* A *placement* is the matrix_world of the empty that carries an imported capture: it maps capture-world
  coordinates into Blender world (a similarity: rotation, translation, one uniform scale).

Matrices are 4×4 ``numpy.ndarray`` float64 in, 4×4 float64 out; :func:`as_nested_list` makes them JSON-able.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# Right-multiplying a c2w by this swaps between OpenGL (Blender) and OpenCV camera axes (it is its own inverse).
OPENGL_TO_OPENCV = np.diag([1.0, -1.0, -1.0, 1.0])

# How far a placement's axis scales may differ before we call the scale non-uniform (relative).
UNIFORM_SCALE_TOLERANCE = 1e-4


def as_matrix4(value: Sequence | np.ndarray, what: str = "matrix") -> np.ndarray:
    """``value`` as a finite ``(4, 4)`` float64 array; a ``(3, 4)`` pose gets its ``[0, 0, 0, 1]`` row.

    Raises:
        ValueError: naming ``what`` and the shape received, or non-finite entries.
    """
    m = np.array(value, dtype=np.float64)
    if m.shape == (3, 4):
        m = np.vstack([m, [0.0, 0.0, 0.0, 1.0]])
    if m.shape != (4, 4):
        raise ValueError(f"{what} must be 4x4 (or 3x4), got shape {m.shape}")
    if not np.all(np.isfinite(m)):
        raise ValueError(f"{what} has non-finite entries")
    return m


def normalized_c2w(c2w: Sequence | np.ndarray) -> np.ndarray:
    """``c2w`` with each rotation column scaled to unit length, as Blender's renderer does (``normalize_m4``).

    Blender ignores a camera object's scale when it renders, so the exported pose must too.
    """
    m = as_matrix4(c2w, "camera matrix")
    norms = np.linalg.norm(m[:3, :3], axis=0)
    if np.any(norms < 1e-12):
        raise ValueError("camera matrix has a zero-length axis (an object scale of 0)")
    m[:3, :3] = m[:3, :3] / norms
    m[3] = (0.0, 0.0, 0.0, 1.0)
    return m


def opencv_from_blender(c2w_blender: Sequence | np.ndarray) -> np.ndarray:
    """OpenCV-axes c2w (+Z forward, +Y down) from a Blender camera's matrix_world (normalised first)."""
    return normalized_c2w(c2w_blender) @ OPENGL_TO_OPENCV


def blender_from_opencv(c2w_opencv: Sequence | np.ndarray) -> np.ndarray:
    """Blender camera matrix (looks down −Z, +Y up) from an OpenCV-axes c2w."""
    return as_matrix4(c2w_opencv, "c2w") @ OPENGL_TO_OPENCV


def placement_scale(placement: Sequence | np.ndarray) -> float:
    """The uniform scale of a placement matrix.

    Raises:
        ValueError: if the scale is not uniform (a squashed capture has no pinhole equivalent), or zero.
    """
    m = as_matrix4(placement, "placement matrix")
    scales = np.linalg.norm(m[:3, :3], axis=0)
    if np.any(scales < 1e-12):
        raise ValueError("the capture placement has a zero scale")
    if np.ptp(scales) > UNIFORM_SCALE_TOLERANCE * np.max(scales):
        raise ValueError("the capture placement is scaled non-uniformly "
                         f"({scales[0]:.4g}, {scales[1]:.4g}, {scales[2]:.4g}); a NeRF can only be moved, rotated "
                         "and scaled uniformly — give the placement empty one scale on all axes")
    rot = m[:3, :3] / scales
    if not np.allclose(rot.T @ rot, np.eye(3), atol=1e-4):
        raise ValueError("the capture placement is sheared (a parent with non-uniform scale?); "
                         "a NeRF can only be moved, rotated and scaled uniformly")
    if np.linalg.det(rot) < 0:
        raise ValueError("the capture placement is mirrored (negative scale); use positive scales")
    return float(np.mean(scales))


def capture_from_world(c2w_world: Sequence | np.ndarray, placement: Sequence | np.ndarray | None) -> np.ndarray:
    """A Blender-world camera matrix expressed in capture world: ``inv(placement) · c2w``, axes normalised.

    Args:
        c2w_world: ``(4, 4)`` camera matrix_world (Blender axes).
        placement: ``(4, 4)`` matrix_world of the capture's placement empty, or None for identity.

    Returns:
        ``(4, 4)`` c2w in capture-world coordinates, Blender camera axes, unit-length rotation columns.
    """
    if placement is None:
        return normalized_c2w(c2w_world)
    placement_scale(placement)  # validates: similarity only
    return normalized_c2w(np.linalg.inv(as_matrix4(placement, "placement matrix")) @ as_matrix4(c2w_world))


def world_from_capture(points: np.ndarray, placement: Sequence | np.ndarray | None) -> np.ndarray:
    """Capture-world points ``(n, 3)`` mapped into Blender world by the placement (identity if None)."""
    pts = np.asarray(points, dtype=np.float64)
    if placement is None:
        return pts.copy()
    m = as_matrix4(placement, "placement matrix")
    return pts @ m[:3, :3].T + m[:3, 3]


def look_at(eye: Sequence[float], target: Sequence[float], up: Sequence[float] = (0.0, 0.0, 1.0)) -> np.ndarray:
    """Blender camera matrix at ``eye`` looking at ``target`` with its +Y as close to ``up`` as possible.

    Args:
        eye, target: ``(3,)`` world points; must differ.
        up: ``(3,)`` preferred up direction (world +Z by default). If the view is parallel to it, world +Y
            (or +X) is used instead so the result is always a proper rotation.

    Returns:
        ``(4, 4)`` c2w, Blender camera axes (the camera's −Z points at ``target``).
    """
    eye_v = np.asarray(eye, dtype=np.float64)
    forward = np.asarray(target, dtype=np.float64) - eye_v
    dist = np.linalg.norm(forward)
    if dist < 1e-12:
        raise ValueError("look_at: eye and target coincide")
    forward /= dist
    for candidate in (up, (0.0, 1.0, 0.0), (1.0, 0.0, 0.0)):
        right = np.cross(forward, np.asarray(candidate, dtype=np.float64))
        if np.linalg.norm(right) > 1e-6:
            break
    right /= np.linalg.norm(right)
    cam_up = np.cross(right, forward)
    m = np.eye(4)
    m[:3, 0] = right
    m[:3, 1] = cam_up
    m[:3, 2] = -forward
    m[:3, 3] = eye_v
    return m


def is_rotation(m: np.ndarray, atol: float = 1e-5) -> bool:
    """Whether the top-left 3×3 of ``m`` is a proper rotation (orthonormal, determinant +1)."""
    r = np.asarray(m, dtype=np.float64)[:3, :3]
    return bool(np.allclose(r.T @ r, np.eye(3), atol=atol) and np.linalg.det(r) > 0)


def as_nested_list(m: np.ndarray) -> list[list[float]]:
    """A 4×4 array as four lists of four Python floats (row-major), for JSON."""
    return [[float(x) for x in row] for row in np.asarray(m, dtype=np.float64)]

