"""Camera rings for "capture from scene": poses that orbit the selected objects and look at their centre.

Each ring sits at one elevation (degrees above the horizontal plane through the target, world Z up) and holds
``count`` cameras spaced evenly in azimuth; successive rings are offset by half a step so that views
interleave. All cameras look at the target with world +Z as their up hint.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .poses import look_at


@dataclass(frozen=True)
class RingCamera:
    """A generated camera: its name and Blender matrix_world (OpenGL axes, looks at the target)."""

    name: str
    matrix_world: np.ndarray  # (4, 4)
    azimuth_deg: float
    elevation_deg: float


def framing_distance(sphere_radius: float, fov_x: float, fov_y: float, margin: float = 1.15) -> float:
    """Distance from a sphere's centre at which it fits in view with ``margin`` to spare.

    Args:
        sphere_radius: radius of the bounding sphere of the subject.
        fov_x, fov_y: horizontal and vertical field of view in radians.
        margin: multiplier (> 1 leaves space around the subject).
    """
    if sphere_radius <= 0:
        raise ValueError(f"the subject's bounding radius must be positive, got {sphere_radius}")
    half = 0.5 * min(fov_x, fov_y)
    if not 0 < half < math.pi / 2:
        raise ValueError(f"field of view must be between 0 and 180 degrees, got {math.degrees(2 * half):.1f}")
    return float(margin * sphere_radius / math.sin(half))


def bounding_sphere(points: np.ndarray) -> tuple[np.ndarray, float]:
    """Centre (of the axis-aligned box) and radius enclosing ``points`` ``(n, 3)``."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    if pts.shape[0] == 0:
        raise ValueError("nothing selected to frame: the selection has no geometry")
    centre = 0.5 * (pts.min(axis=0) + pts.max(axis=0))
    radius = float(np.max(np.linalg.norm(pts - centre, axis=1)))
    return centre, max(radius, 1e-6)


def ring_cameras(
    center: Sequence[float],
    radius: float,
    count: int,
    elevations_deg: Sequence[float] = (0.0,),
    start_azimuth_deg: float = 0.0,
    prefix: str = "NeRFArt_Ring",
) -> list[RingCamera]:
    """Cameras on rings around ``center``.

    Args:
        center: ``(3,)`` the point every camera looks at.
        radius: distance from the centre to each camera.
        count: cameras per ring (≥ 1).
        elevations_deg: one ring per elevation, each strictly between −90 and 90 degrees.
        start_azimuth_deg: azimuth of the first camera of the first ring, measured from world −Y (the
            default "front" view of a Blender scene) counter-clockwise seen from above.
        prefix: camera names are ``{prefix}_{ring:02d}_{index:03d}``.

    Returns:
        ``len(elevations_deg) * count`` cameras, ring by ring.
    """
    if count < 1:
        raise ValueError(f"a ring needs at least 1 camera, got {count}")
    if radius <= 0 or not math.isfinite(radius):
        raise ValueError(f"ring radius must be positive, got {radius}")
    if not elevations_deg:
        raise ValueError("at least one ring elevation is needed")
    c = np.asarray(center, dtype=np.float64)
    out: list[RingCamera] = []
    step = 360.0 / count
    for ring, elevation in enumerate(elevations_deg):
        if not -90.0 < elevation < 90.0:
            raise ValueError(f"ring elevation must be strictly between -90 and 90 degrees, got {elevation}")
        el = math.radians(elevation)
        offset = 0.5 * step * (ring % 2)
        for i in range(count):
            az_deg = start_azimuth_deg + offset + i * step
            az = math.radians(az_deg)
            # Azimuth 0 = in front of the subject (at -Y), increasing counter-clockwise seen from +Z.
            direction = np.array([math.sin(az) * math.cos(el), -math.cos(az) * math.cos(el), math.sin(el)])
            eye = c + radius * direction
            out.append(RingCamera(f"{prefix}_{ring:02d}_{i:03d}", look_at(eye, c), az_deg % 360.0, float(elevation)))
    return out


def parse_elevations(text: str) -> list[float]:
    """Parse a comma-separated list of elevations in degrees (the UI's text field), e.g. ``"-10, 15, 40"``.

    Raises:
        ValueError: with the offending item quoted.
    """
    values = []
    for item in text.replace(";", ",").split(","):
        item = item.strip()
        if not item:
            continue
        try:
            v = float(item)
        except ValueError:
            raise ValueError(f"ring elevations must be numbers in degrees separated by commas; {item!r} is not "
                             "a number") from None
        if not -90.0 < v < 90.0:
            raise ValueError(f"ring elevation {v:g} is outside -90..90 degrees")
        values.append(v)
    if not values:
        raise ValueError("give at least one ring elevation in degrees, e.g. '0, 30'")
    return values
