"""An analytic test scene: coloured opaque spheres seen by a ring of cameras (tests and smoke runs).

Rendering is exact ray-sphere intersection, so the images need no NeRF and no data files.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from captures.cameras import Cameras

from .rays import rays_for_image


@dataclass(frozen=True)
class Sphere:
    center: tuple[float, float, float]
    radius: float
    colour: tuple[float, float, float]


DEFAULT_SPHERES = (
    Sphere((0.3, 0.0, 0.0), 0.35, (0.9, 0.2, 0.1)),
    Sphere((-0.3, 0.15, 0.1), 0.3, (0.1, 0.8, 0.3)),
    Sphere((0.0, -0.3, -0.25), 0.25, (0.2, 0.3, 0.9)),
)


def look_at_c2w(position: np.ndarray, target: np.ndarray, up: np.ndarray) -> np.ndarray:
    """``(4, 4)`` OpenCV-axes camera-to-world matrix at ``position`` looking at ``target`` (+Y down)."""
    z = target - position
    z = z / np.linalg.norm(z)
    y = -up + np.dot(up, z) * z
    y = y / np.linalg.norm(y)
    x = np.cross(y, z)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = x, y, z, position
    return c2w


def ring_cameras(n_views: int, size: int, distance: float = 3.0, focal: float | None = None,
                 elevation_deg: float = 20.0) -> Cameras:
    """``n_views`` cameras on a ring around the origin (alternating elevation), ``size`` x ``size`` pixels."""
    focal = focal if focal is not None else 1.1 * size
    c2ws = []
    for i in range(n_views):
        az = 2.0 * np.pi * i / n_views
        el = np.deg2rad(elevation_deg if i % 2 == 0 else -elevation_deg)
        pos = distance * np.array([np.cos(az) * np.cos(el), np.sin(az) * np.cos(el), np.sin(el)])
        c2ws.append(look_at_c2w(pos, np.zeros(3), np.array([0.0, 0.0, 1.0])))
    return Cameras(c2w=np.stack(c2ws), fx=focal, fy=focal, cx=size / 2, cy=size / 2, width=size, height=size)


def render_spheres(cameras: Cameras, spheres: tuple[Sphere, ...] = DEFAULT_SPHERES) -> np.ndarray:
    """Exact renders: ``(n, H, W, 4)`` float32 RGBA, straight alpha (1 on a sphere, 0 elsewhere, RGB 0 there)."""
    images = []
    for i in range(len(cameras)):
        o, d = rays_for_image(cameras, i, dtype=torch.float64)
        best_t = torch.full((o.shape[0],), np.inf, dtype=torch.float64)
        rgba = torch.zeros(o.shape[0], 4, dtype=torch.float64)
        for s in spheres:
            oc = o - torch.tensor(s.center, dtype=torch.float64)
            b = (oc * d).sum(-1)
            c = (oc * oc).sum(-1) - s.radius**2
            disc = b * b - c
            t = -b - torch.sqrt(disc.clamp_min(0.0))
            hit = (disc > 0) & (t > 0) & (t < best_t)
            best_t = torch.where(hit, t, best_t)
            rgba[hit] = torch.tensor([*s.colour, 1.0], dtype=torch.float64)
        images.append(rgba.reshape(int(cameras.height[i]), int(cameras.width[i]), 4).float().numpy())
    return np.stack(images)
