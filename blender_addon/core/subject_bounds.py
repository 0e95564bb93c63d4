"""Subject bounds: the box or ellipsoid that separates the captured subject (head and shoulders) from the
background, as the protocol carries it (``params.subject_bounds`` of every job, and a finished reconstruction's
``outputs.subject_bounds``).

The protocol's bounds are a unit shape (the cube [-1, 1]^3 or the unit sphere) and the affine ``matrix`` that
maps it into *capture-world* coordinates, the frame the cameras are exported in. In Blender they are an empty
drawn as a cube or a sphere, parented to the capture's placement; the empty's ``matrix_world`` maps the unit
shape (times its display size) into the scene, and ``inverse(placement) · matrix_world`` is the protocol's
``matrix``. This module holds the Blender-free half: the default box, the conversions and their checks.

No bpy here (``subject_bpy.py`` creates and reads the empty).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .placement import SubjectFrame

# Protocol shape -> the empty display type that draws exactly that unit shape at display size 1.
SHAPE_DISPLAY = {"box": "CUBE", "ellipsoid": "SPHERE"}
DISPLAY_SHAPE = {v: k for k, v in SHAPE_DISPLAY.items()}

# The default box of Add Subject Bounds, in subject diameters (the head's size as the placement estimates
# it, :func:`.placement.subject_diameter`). The protocol's subject is the head and shoulders: shoulders are
# about twice as wide as a head, so the box is two diameters wide; it reaches a little above the hair and
# down past the shoulders, so its centre sits below the head's centre (the point the cameras look at).
HALF_WIDTH = 1.0
HALF_DEPTH = 0.6
HALF_HEIGHT = 1.0
CENTRE_DROP = 0.4
# A box around a bounding sphere (a scene capture's selection) leaves this much room beyond the sphere.
SPHERE_MARGIN = 1.05

# Below this ratio of an axis' length to the longest axis the bounds are flat: nothing lies inside them.
DEGENERATE_RATIO = 1e-9
# Two bounds are the same when no entry differs by more than this fraction of their size and position
# (Blender keeps an empty's location, rotation and scale in single precision).
SAME_TOLERANCE = 1e-5

AXES = "XYZ"


@dataclass(frozen=True)
class Bounds:
    """Subject bounds in capture-world coordinates.

    Attributes:
        shape: ``"box"`` or ``"ellipsoid"``.
        matrix: ``(4, 4)`` affine map from the unit shape to capture world.
    """

    shape: str
    matrix: np.ndarray

    def to_param(self) -> dict:
        """The protocol's ``subject_bounds`` value."""
        return {"shape": self.shape, "matrix": [[float(x) for x in row] for row in self.matrix]}


def head_and_shoulders(subject: SubjectFrame) -> np.ndarray:
    """The default box around a captured head, capture world: aligned with the subject's left-right, front and
    up, around the point the cameras look at, sized from the subject's diameter.

    Its local axes are those the upright placement gives the scene (:func:`.placement.upright_placement`): +X to
    the subject's left as seen from the front, +Y away from the cameras, +Z up, so an upright capture gets an
    axis-aligned box.
    """
    ez = np.asarray(subject.up, dtype=np.float64)
    ey = -np.asarray(subject.front, dtype=np.float64)
    ex = np.cross(ey, ez)
    d = float(subject.diameter)
    m = np.eye(4)
    m[:3, :3] = np.stack([ex, ey, ez], axis=1) * (d * np.array([HALF_WIDTH, HALF_DEPTH, HALF_HEIGHT]))[None]
    m[:3, 3] = np.asarray(subject.centre, dtype=np.float64) - ez * CENTRE_DROP * d
    return m


def box_around_sphere(centre: Sequence[float] | np.ndarray, radius: float) -> np.ndarray:
    """An axis-aligned box just larger than the sphere (for a scene capture, whose selection is the subject)."""
    m = np.eye(4)
    m[:3, :3] *= SPHERE_MARGIN * float(radius)
    m[:3, 3] = np.asarray(centre, dtype=np.float64).reshape(3)
    return m


def check_matrix(m: np.ndarray, what: str) -> np.ndarray:
    """``m`` as a (4, 4) float64 affine with a size along every axis.

    Raises:
        ValueError: not 4x4 and finite, a last row other than 0 0 0 1, or flat along an axis (zero scale),
            saying which axis.
    """
    m = np.asarray(m, dtype=np.float64)
    if m.shape != (4, 4) or not np.all(np.isfinite(m)):
        raise ValueError(f"{what} are not a 4x4 matrix of finite numbers")
    if not np.allclose(m[3], [0.0, 0.0, 0.0, 1.0], atol=1e-9):
        raise ValueError(f"{what} are not an affine map (the last row is not 0 0 0 1)")
    if _flat(m[:3, :3]):
        lengths = np.linalg.norm(m[:3, :3], axis=0)
        flat = [AXES[i] for i in range(3) if lengths[i] <= DEGENERATE_RATIO * max(float(lengths.max()), 1e-300)]
        where = (f"along their local {', '.join(flat)} axis (scale 0)" if flat else
                 "in one direction (their axes lie in one plane)")
        raise ValueError(f"{what} have no size {where}")
    return m


def _flat(a: np.ndarray) -> bool:
    """Whether the 3x3 linear part ``a`` squashes space flat (zero along some direction)."""
    singular = np.linalg.svd(a, compute_uv=False)
    return bool(singular.max() <= 0.0 or singular.min() <= DEGENERATE_RATIO * singular.max())


def bounds_from_param(value: object) -> Bounds:
    """A protocol ``subject_bounds`` value (e.g. a reconstruction's outputs) as :class:`Bounds`.

    Raises:
        ValueError: an unknown shape or a matrix that is not an invertible affine 4x4.
    """
    if not isinstance(value, dict):
        raise ValueError("the subject bounds are not an object with 'shape' and 'matrix'")
    shape = value.get("shape")
    if shape not in SHAPE_DISPLAY:
        raise ValueError(f"the subject bounds' shape {shape!r} is neither 'box' nor 'ellipsoid'")
    try:
        matrix = np.array(value.get("matrix"), dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError("the subject bounds' matrix is not 4 rows of 4 numbers") from None
    return Bounds(str(shape), check_matrix(matrix, "the subject bounds"))


def bounds_in_capture(placement_world: np.ndarray | None, empty_world: np.ndarray, display_size: float,
                      shape: str, name: str = "the subject bounds") -> Bounds:
    """The bounds an empty draws, in capture world: ``inverse(placement) · matrix_world · display_size``.

    The display size is part of the map so that what is sent is what the viewport draws, whatever the size.

    Raises:
        ValueError: a degenerate placement or empty (zero scale), naming ``name``.
    """
    world = np.asarray(empty_world, dtype=np.float64) @ np.diag([display_size, display_size, display_size, 1.0])
    if placement_world is not None:
        placement = np.asarray(placement_world, dtype=np.float64)
        if placement.shape != (4, 4) or not np.all(np.isfinite(placement)) or _flat(placement[:3, :3]):
            raise ValueError("the capture placement has a zero scale, so the subject bounds cannot be sent")
        world = np.linalg.solve(placement, world)
        world[3] = (0.0, 0.0, 0.0, 1.0)  # exactly affine, whatever the rounding of the solve
    return Bounds(shape, check_matrix(world, name))


def same_bounds(a: Bounds, b: Bounds) -> bool:
    """Whether two bounds are the same shape and place, to Blender's single precision."""
    if a.shape != b.shape:
        return False
    scale = max(1.0, float(np.abs(b.matrix[:3]).max()), float(np.abs(a.matrix[:3]).max()))
    return bool(np.abs(a.matrix - b.matrix).max() <= SAME_TOLERANCE * scale)
