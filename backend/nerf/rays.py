"""Rays from the capture cameras (:class:`captures.Cameras`): pixel centres, lens inversion, world rays.

The torch side of the camera model whose conventions :mod:`captures.cameras` writes down (OpenCV axes, pixel
centres at +0.5, OpenCV ``k1 k2 p1 p2`` lens). The shared, numpy-only reader package stays free of torch so
that Blender can import it; everything that makes tensors lives here.
"""

from __future__ import annotations

import numpy as np
import torch

from captures.cameras import Cameras, distortion_terms


def distort(xy: torch.Tensor, dist: torch.Tensor) -> torch.Tensor:
    """Apply the OpenCV ``k1 k2 p1 p2`` model to normalised camera coordinates (the tensor twin of
    :func:`captures.cameras.distort`; both evaluate :func:`captures.cameras.distortion_terms`).

    Args:
        xy: ``(..., 2)`` undistorted normalised coordinates (x/z, y/z).
        dist: ``(..., 4)`` or ``(4,)`` coefficients ``k1 k2 p1 p2``.

    Returns:
        ``(..., 2)`` distorted normalised coordinates.
    """
    xd, yd = distortion_terms(xy[..., 0], xy[..., 1], dist[..., 0], dist[..., 1], dist[..., 2], dist[..., 3])
    return torch.stack([xd, yd], dim=-1)


def undistort(xy_distorted: torch.Tensor, dist: torch.Tensor, iterations: int = 10) -> torch.Tensor:
    """Invert :func:`distort` with Newton's method (the same scheme as nerfstudio and COLMAP).

    Args:
        xy_distorted: ``(..., 2)`` distorted normalised coordinates.
        dist: ``(..., 4)`` or ``(4,)`` coefficients ``k1 k2 p1 p2``.
        iterations: Newton steps; 10 reach float32 precision for the distortions real lenses have.

    Returns:
        ``(..., 2)`` undistorted normalised coordinates.
    """
    target = xy_distorted
    xy = xy_distorted.clone()
    k1, k2, p1, p2 = dist[..., 0], dist[..., 1], dist[..., 2], dist[..., 3]
    for _ in range(iterations):
        x, y = xy[..., 0], xy[..., 1]
        r2 = x * x + y * y
        radial = 1.0 + r2 * (k1 + k2 * r2)
        d_radial_dr2 = k1 + 2.0 * k2 * r2
        xd, yd = distortion_terms(x, y, k1, k2, p1, p2)
        fx_, fy_ = xd - target[..., 0], yd - target[..., 1]
        # Jacobian of the distorted point with respect to (x, y).
        j_xx = radial + 2.0 * x * x * d_radial_dr2 + 2.0 * p1 * y + 6.0 * p2 * x
        j_xy = 2.0 * x * y * d_radial_dr2 + 2.0 * p1 * x + 2.0 * p2 * y
        j_yx = 2.0 * x * y * d_radial_dr2 + 2.0 * p2 * y + 2.0 * p1 * x
        j_yy = radial + 2.0 * y * y * d_radial_dr2 + 6.0 * p1 * y + 2.0 * p2 * x
        det = j_xx * j_yy - j_xy * j_yx
        det = torch.where(det.abs() < 1e-12, torch.full_like(det, 1e-12), det)
        dx = (fx_ * j_yy - fy_ * j_xy) / det
        dy = (fy_ * j_xx - fx_ * j_yx) / det
        xy = torch.stack([x - dx, y - dy], dim=-1)
    return xy


def pixel_centers(width: int, height: int, device: torch.device | str = "cpu",
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Continuous coordinates of every pixel centre in raster order (index = row * width + col).

    Returns:
        ``(height * width, 2)`` tensor of (u, v) = (col + 0.5, row + 0.5).
    """
    v, u = torch.meshgrid(
        torch.arange(height, device=device, dtype=dtype) + 0.5,
        torch.arange(width, device=device, dtype=dtype) + 0.5,
        indexing="ij",
    )
    return torch.stack([u.reshape(-1), v.reshape(-1)], dim=-1)


def rays_from_pixels(
    cameras: Cameras,
    camera_indices: torch.Tensor,  # [n_rays]
    pixels_uv: torch.Tensor,  # [n_rays, 2]
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """World-space rays through continuous pixel coordinates of the given cameras.

    Lens distortion is inverted per pixel. Directions are unit length; the ray parameter ``t`` is therefore
    a Euclidean distance from the camera centre.

    Args:
        cameras: the camera set.
        camera_indices: ``(n_rays,)`` int64 index of each ray's camera.
        pixels_uv: ``(n_rays, 2)`` continuous pixel coordinates (pixel centres at +0.5).
        device, dtype: of the returned tensors. Intermediate maths runs in float64 on ``device`` (CPU
            tensors are tiny; on CUDA float64 costs little at these sizes) for exact round trips.

    Returns:
        ``rays_o`` ``(n_rays, 3)`` and ``rays_d`` ``(n_rays, 3)``, unit length.
    """
    idx = camera_indices.to(device=device, dtype=torch.long)
    f64 = torch.float64
    fx = torch.as_tensor(cameras.fx, device=device, dtype=f64)[idx]
    fy = torch.as_tensor(cameras.fy, device=device, dtype=f64)[idx]
    cx = torch.as_tensor(cameras.cx, device=device, dtype=f64)[idx]
    cy = torch.as_tensor(cameras.cy, device=device, dtype=f64)[idx]
    c2w = torch.as_tensor(cameras.c2w, device=device, dtype=f64)[idx]
    uv = pixels_uv.to(device=device, dtype=f64)
    xy = torch.stack([(uv[:, 0] - cx) / fx, (uv[:, 1] - cy) / fy], dim=-1)
    if np.any(cameras.distortion != 0):
        dist = torch.as_tensor(cameras.distortion, device=device, dtype=f64)[idx]
        xy = undistort(xy, dist)
    dirs_cam = torch.cat([xy, torch.ones_like(xy[:, :1])], dim=-1)
    dirs = torch.einsum("nij,nj->ni", c2w[:, :3, :3], dirs_cam)
    dirs = dirs / dirs.norm(dim=-1, keepdim=True)
    origins = c2w[:, :3, 3]
    return origins.to(dtype), dirs.to(dtype)


def rays_for_image(cameras: Cameras, i: int, device: torch.device | str = "cpu",
                   dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """All rays of camera ``i`` in raster order: ``(H*W, 3)`` origins and unit directions."""
    uv = pixel_centers(int(cameras.width[i]), int(cameras.height[i]), device=device, dtype=torch.float64)
    idx = torch.full((uv.shape[0],), i, dtype=torch.long, device=device)
    return rays_from_pixels(cameras, idx, uv, device=device, dtype=dtype)
