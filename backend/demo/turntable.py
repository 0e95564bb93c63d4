"""The turntable camera: an animated camera that orbits the captured subject, one pose keyed per frame.

Where to orbit is read from the capture's own cameras, so the same code serves the embedded ring capture and
a real capture in any world frame: the subject's centre is the point nearest to every camera's optical axis,
"up" is the cameras' mean up vector, and the orbit radius is their median distance. A capture that surrounds
the subject (no gap wider than 90 degrees between camera azimuths) gets a full 360-degree orbit; a frontal
capture (a selfie video) gets a back-and-forth swing across the azimuths it covers, because the NeRF knows
nothing about the far side.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

FULL_ORBIT_MAX_GAP_DEG = 90.0
SWING_FRACTION = 0.8  # a swing stays inside this fraction of the covered azimuth range


@dataclass(frozen=True)
class Orbit:
    """Where the turntable goes, in Blender world coordinates.

    Attributes:
        centre: the point every frame looks at.
        up: unit up axis of the orbit.
        front: unit direction (perpendicular to ``up``) from the centre towards the first frame's camera.
        radius: distance from the centre.
        elevation_deg: height of the orbit above the plane through the centre, in degrees.
        full: True for a 360-degree orbit, False for a swing.
        swing_deg: half the swing's azimuth range (ignored for a full orbit).
    """

    centre: np.ndarray
    up: np.ndarray
    front: np.ndarray
    radius: float
    elevation_deg: float
    full: bool
    swing_deg: float

    def to_dict(self) -> dict[str, Any]:
        return {"centre": self.centre.round(4).tolist(), "up": self.up.round(4).tolist(),
                "radius": round(self.radius, 4), "elevation_deg": round(self.elevation_deg, 2),
                "full_orbit": self.full, "swing_deg": round(self.swing_deg, 2)}


def _unit(v: np.ndarray) -> np.ndarray:
    n = float(np.linalg.norm(v))
    if n < 1e-12:
        raise ValueError("degenerate direction")
    return v / n


def orbit_from_cameras(c2w: np.ndarray) -> Orbit:
    """The orbit that matches a capture's cameras (``(n, 4, 4)`` Blender-axes camera-to-world matrices).

    Raises:
        ValueError: fewer than two cameras, or cameras whose optical axes do not converge.
    """
    c2w = np.asarray(c2w, dtype=np.float64).reshape(-1, 4, 4)
    if len(c2w) < 2:
        raise ValueError("a turntable needs a capture of at least two cameras")
    origins = c2w[:, :3, 3]
    forward = np.stack([_unit(-m[:3, 2]) for m in c2w])  # Blender cameras look down their local -Z
    # Least-squares point nearest to every optical axis: sum (I - d d^T) x = sum (I - d d^T) o.
    a = np.zeros((3, 3))
    b = np.zeros(3)
    for o, d in zip(origins, forward, strict=True):
        p = np.eye(3) - np.outer(d, d)
        a += p
        b += p @ o
    if np.linalg.cond(a) > 1e8:
        raise ValueError("the capture's cameras all look the same way; cannot find the subject's centre")
    centre = np.linalg.solve(a, b)
    up = _unit(np.sum(c2w[:, :3, 1], axis=0))  # mean of the cameras' +Y (image up) axes
    offsets = origins - centre
    radius = float(np.median(np.linalg.norm(offsets, axis=1)))
    flat = offsets - np.outer(offsets @ up, up)  # camera positions projected on the orbit plane
    heights = offsets @ up
    elevations = np.degrees(np.arctan2(heights, np.linalg.norm(flat, axis=1)))
    # Azimuths relative to the first camera; the widest gap between neighbours decides full orbit or swing.
    front0 = _unit(flat[0])
    side0 = np.cross(up, front0)
    az = np.degrees(np.arctan2(flat @ side0, flat @ front0)) % 360.0
    order = np.sort(az)
    gaps = np.diff(np.concatenate([order, [order[0] + 360.0]]))
    widest = int(np.argmax(gaps))
    if gaps[widest] <= FULL_ORBIT_MAX_GAP_DEG:
        return Orbit(centre, up, front0, radius, float(np.clip(np.median(elevations), -10.0, 25.0)), True, 180.0)
    # Middle of the covered range: opposite the middle of the widest gap.
    gap_mid = order[widest] + gaps[widest] / 2.0
    mid = math.radians(gap_mid + 180.0)
    front = _unit(math.cos(mid) * front0 + math.sin(mid) * side0)
    covered = 360.0 - float(gaps[widest])
    return Orbit(centre, up, front, radius, float(np.median(elevations)), False, SWING_FRACTION * covered / 2.0)


def look_at_c2w(eye: np.ndarray, target: np.ndarray, up: np.ndarray) -> np.ndarray:
    """Blender-axes camera-to-world matrix at ``eye`` looking at ``target``, image up along ``up``."""
    z = _unit(eye - target)  # the camera looks down -Z
    x = _unit(np.cross(up, z))
    y = np.cross(z, x)
    m = np.eye(4)
    m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = x, y, z, eye
    return m


def orbit_poses(orbit: Orbit, n_frames: int) -> list[np.ndarray]:
    """``n_frames`` camera-to-world matrices along the orbit; the last frame leads smoothly into the first."""
    if n_frames < 1:
        raise ValueError(f"a turntable needs at least one frame, got {n_frames}")
    side = np.cross(orbit.up, orbit.front)
    el = math.radians(orbit.elevation_deg)
    poses = []
    for k in range(n_frames):
        t = k / n_frames
        if orbit.full:
            az = 2.0 * math.pi * t
        else:  # a sine swing: starts at the front, goes to one side, the other, and back
            az = math.radians(orbit.swing_deg) * math.sin(2.0 * math.pi * t)
        direction = math.cos(el) * (math.cos(az) * orbit.front + math.sin(az) * side) + math.sin(el) * orbit.up
        poses.append(look_at_c2w(orbit.centre + orbit.radius * direction, orbit.centre, orbit.up))
    return poses


def add_turntable_camera(scene: Any, capture_cameras: list[Any], image_size: tuple[int, int], n_frames: int,
                         long_side: int, distance_scale: float = 1.0, name: str = "Turntable Camera"
                         ) -> tuple[Any, Orbit]:
    """Create the animated turntable camera (frames 1..n_frames) and make it the scene camera.

    It copies the lens (and lens shift) of the first capture camera and the aspect of its images (``image_size``, width and
    height), with the long side set to ``long_side`` pixels, and sets the scene's frame range and render size
    to match. ``distance_scale`` below 1 moves the orbit closer than the capture cameras (a tighter framing).
    The add-on must be enabled (its camera helpers convert matrices).
    """
    import bpy
    from nerfart_blender.cameras_bpy import matrix_to_numpy, numpy_to_matrix

    bpy.context.view_layer.update()
    orbit = orbit_from_cameras(np.stack([matrix_to_numpy(o.matrix_world) for o in capture_cameras]))
    orbit = replace(orbit, radius=orbit.radius * distance_scale)
    first = capture_cameras[0]
    data = bpy.data.cameras.new(name)
    # The lens and its shift (the capture's principal point), so frames are framed like the capture's photos.
    for attr in ("lens", "sensor_width", "sensor_height", "sensor_fit", "shift_x", "shift_y"):
        setattr(data, attr, getattr(first.data, attr))
    data.clip_start = max(1e-3, 0.05 * orbit.radius)
    data.clip_end = 20.0 * orbit.radius
    obj = bpy.data.objects.new(name, data)
    scene.collection.objects.link(obj)
    obj.rotation_mode = "QUATERNION"
    for frame, c2w in enumerate(orbit_poses(orbit, n_frames), start=1):
        obj.matrix_world = numpy_to_matrix(c2w)
        obj.keyframe_insert("location", frame=frame)
        obj.keyframe_insert("rotation_quaternion", frame=frame)
    width, height = image_size
    scale = long_side / max(width, height)
    r = scene.render
    r.resolution_x, r.resolution_y = max(8, round(width * scale)), max(8, round(height * scale))
    r.resolution_percentage = 100
    r.pixel_aspect_x = r.pixel_aspect_y = 1.0
    scene.camera = obj
    scene.frame_start, scene.frame_end, scene.frame_step = 1, n_frames, 1
    scene.frame_set(1)
    return obj, orbit
