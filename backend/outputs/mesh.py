"""Mesh extraction: density on a grid -> marching cubes -> floaters removed -> per-vertex colours.

Functional, nerfacc-style: the field comes in as callables, so this module imports no model and is tested
on an analytic density.

**Isolevel rule.** A density NeRF has no zero level set, so the surface is defined by opacity: it is where a
layer :data:`SURFACE_LAYER` thick (1 % of the head's radius, in model units where the region of interest is
the unit sphere) would be half opaque:

.. math::
    \\sigma_{iso} = \\ln 2 / 0.01 \\approx 69.3

Skin and hair reach densities far above that; the thin haze a NeRF leaves in empty space stays below it, so
the rule keeps the head and drops the haze, independently of the grid resolution.

**Floaters.** Connected components of the occupied voxels (``density > isolevel``, 26-connectivity) smaller
than :data:`MIN_COMPONENT_FRACTION` of the largest one are removed before marching cubes.

**Colours.** Each vertex is coloured by volume-rendering a short segment that starts outside the surface along
the vertex normal and looks back through it, i.e. the stylized radiance as seen from outside.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

SURFACE_LAYER = 0.01
DEFAULT_ISOLEVEL = math.log(2.0) / SURFACE_LAYER
MIN_COMPONENT_FRACTION = 0.05
MAX_RESOLUTION = 1024
# Points per field call while meshing. Cancels are checked between calls, so on the CPU the chunk is small
# enough to keep that under a second (a tiny model takes ~0.3 s for 2^15 points on one core).
GPU_CHUNK = 1 << 20
CPU_CHUNK = 1 << 15

DensityFn = Callable[[torch.Tensor], torch.Tensor]  # (n, 3) model points -> (n,) densities
# (x (n, 3), dirs (n, 3)) -> (rgb (n, 3) in [0, 1], sigma (n,)), model coordinates
RadianceFn = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class Mesh:
    """A triangle mesh with per-vertex colours.

    Attributes:
        vertices: ``(n_vertices, 3)`` float32.
        faces: ``(n_faces, 3)`` int32, counter-clockwise seen from outside (normals point out).
        colors: ``(n_vertices, 4)`` uint8 sRGB RGBA.
    """

    vertices: np.ndarray
    faces: np.ndarray
    colors: np.ndarray


AABB = tuple[float, float] | tuple[np.ndarray, np.ndarray]  # a cube's (lo, hi), or a box's lo (3,), hi (3,)


@dataclass(frozen=True)
class MeshGrid:
    """The marching-cubes grid over a box: cubic voxels, ``resolution`` of them along the box's longest side.

    Attributes:
        lo, hi: ``(3,)`` float64 corners of the grid (the box, grown to a whole number of voxels per axis,
            about its centre).
        dims: ``(3,)`` cells per axis.
        voxel: the cells' side (model units).
    """

    lo: np.ndarray
    hi: np.ndarray
    dims: tuple[int, int, int]
    voxel: float


def mesh_grid(aabb: AABB, resolution: int) -> MeshGrid:
    """The grid of ``resolution`` cells along the longest side of ``aabb`` (a cube keeps ``resolution^3``).

    Raises:
        ValueError: a box that is not finite or has no extent along an axis.
    """
    lo = np.broadcast_to(np.asarray(aabb[0], dtype=np.float64), (3,)).copy()
    hi = np.broadcast_to(np.asarray(aabb[1], dtype=np.float64), (3,)).copy()
    extent = hi - lo
    if not (np.all(np.isfinite(extent)) and np.all(extent > 0)):
        raise ValueError(f"bad bounding box {aabb}")
    voxel = float(extent.max()) / resolution
    dims = np.maximum(1, np.ceil(extent / voxel - 1e-6)).astype(np.int64)
    grow = dims * voxel - extent  # 0 along the longest side (and every side of a cube)
    return MeshGrid(lo - grow / 2, hi + grow / 2, (int(dims[0]), int(dims[1]), int(dims[2])), voxel)


def density_grid(density_fn: DensityFn, resolution: int | tuple[int, int, int], aabb: AABB,
                 device: torch.device | str, chunk: int = 1 << 20,
                 check_cancel: Callable[[], None] | None = None) -> np.ndarray:
    """Sample ``density_fn`` at the cell centres of a grid over ``aabb``.

    Args:
        resolution: cells per axis, one number for all three or ``(nx, ny, nz)``.
        aabb: the cube ``(lo, hi)`` or the box ``(lo (3,), hi (3,))`` sampled.
        chunk: points per call of ``density_fn`` (keeps memory flat at any resolution).
        check_cancel: called before every chunk; whatever it raises stops the sampling there.

    Returns:
        ``(nx, ny, nz)`` float32 array indexed ``[ix, iy, iz]``.
    """
    dims = (resolution,) * 3 if isinstance(resolution, int) else tuple(int(r) for r in resolution)
    lo = np.broadcast_to(np.asarray(aabb[0], dtype=np.float64), (3,))
    hi = np.broadcast_to(np.asarray(aabb[1], dtype=np.float64), (3,))
    axes = []
    for a in range(3):
        step = (hi[a] - lo[a]) / dims[a]
        axes.append(torch.linspace(lo[a] + step / 2, hi[a] - step / 2, dims[a], device=device))
    nx, ny, nz = dims
    n = nx * ny * nz
    out = torch.empty(n, dtype=torch.float32, device=device)
    with torch.no_grad():
        for n0 in range(0, n, chunk):
            if check_cancel is not None:
                check_cancel()
            # Flat indices of the chunk, x slowest: chunks need not be whole x-slabs, so their size (and the
            # time between cancel checks) does not grow with the resolution.
            idx = torch.arange(n0, min(n0 + chunk, n), device=device)
            ix, rest = idx // (ny * nz), idx % (ny * nz)
            pts = torch.stack([axes[0][ix], axes[1][rest // nz], axes[2][rest % nz]], dim=-1)
            out[n0:n0 + pts.shape[0]] = density_fn(pts).reshape(-1).float()
    return out.reshape(nx, ny, nz).cpu().numpy()


def remove_floaters(occupied: np.ndarray, min_fraction: float = MIN_COMPONENT_FRACTION,
                    keep_largest_only: bool = False) -> np.ndarray:
    """Occupied voxels with the small disconnected components removed.

    Args:
        occupied: ``(R, R, R)`` bool.
        min_fraction: components smaller than this fraction of the largest are dropped.
        keep_largest_only: keep just the largest component.
    """
    from skimage.measure import label

    labels, count = label(occupied, connectivity=3, return_num=True)
    if count <= 1:
        return occupied
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    largest = sizes.max()
    keep = sizes >= (largest if keep_largest_only else min_fraction * largest)
    keep[0] = False
    return keep[labels]


def extract_mesh(density_fn: DensityFn, radiance_fn: RadianceFn | None, *, resolution: int = 256,
                 aabb: AABB = (-1.0, 1.0), isolevel: float | None = None,
                 keep_largest_only: bool = False, device: torch.device | str = "cpu",
                 progress: Callable[[str, int, int], None] | None = None,
                 check_cancel: Callable[[], None] | None = None) -> Mesh:
    """A coloured mesh of the field's surface, in model coordinates.

    Args:
        density_fn: ``(n, 3)`` points -> ``(n,)`` densities (model coordinates).
        radiance_fn: ``(x, dirs) -> (rgb, sigma)`` of the field at ``(n, 3)`` points seen along ``(n, 3)``
            unit directions; None gives grey vertices.
        resolution: grid cells along the longest side of ``aabb`` (16 to 1024); the cells are cubes (see
            :func:`mesh_grid`).
        aabb: the cube ``[lo, hi]^3``, or the box ``(lo (3,), hi (3,))``, sampled.
        isolevel: density of the surface; None applies the module's rule (:data:`DEFAULT_ISOLEVEL`).
        keep_largest_only: drop every component but the largest.
        progress: called as ``progress(stage, step, total)``.
        check_cancel: called between chunks of density samples and of vertex colours (about every
            :data:`CPU_CHUNK` points on the CPU, :data:`GPU_CHUNK` on a GPU), and between stages; whatever it
            raises stops the extraction there. Marching cubes itself cannot be interrupted.

    Raises:
        ValueError: a resolution outside 16..1024, a bad box or isolevel, or no surface found.
    """
    if not 16 <= resolution <= MAX_RESOLUTION:
        raise ValueError(f"mesh resolution must be between 16 and {MAX_RESOLUTION}, got {resolution} "
                         f"({resolution}^3 samples would not fit in memory)" if resolution > MAX_RESOLUTION
                         else f"mesh resolution must be between 16 and {MAX_RESOLUTION}, got {resolution}")
    grid_box = mesh_grid(aabb, resolution)
    level = DEFAULT_ISOLEVEL if isolevel is None else float(isolevel)
    if not (math.isfinite(level) and level > 0):
        raise ValueError(f"isolevel must be a positive number, got {isolevel}")
    report = progress or (lambda *_: None)

    check = check_cancel or (lambda: None)
    chunk = GPU_CHUNK if torch.device(device).type == "cuda" else CPU_CHUNK
    report("sampling density", 0, 3)
    grid = density_grid(density_fn, grid_box.dims, (grid_box.lo, grid_box.hi), device, chunk=chunk,
                        check_cancel=check)
    check()
    occupied = remove_floaters(grid > level, keep_largest_only=keep_largest_only)
    if not occupied.any():
        raise ValueError(f"no surface: the density never exceeds the isolevel {level:.3g} inside the box "
                         f"(max density {float(grid.max()):.3g}); lower the isolevel")
    # Removed floaters are pushed below the isolevel so marching cubes does not see them.
    grid = np.where(occupied | (grid <= level), grid, 0.0).astype(np.float32)
    # Pad so surfaces touching the box are closed.
    grid = np.pad(grid, 1, constant_values=0.0)

    report("marching cubes", 1, 3)
    from skimage.measure import marching_cubes

    step = grid_box.voxel
    verts, faces, normals, _ = marching_cubes(grid, level=level, spacing=(step, step, step),
                                              gradient_direction="descent")
    # Grid index 0 is the padding; index 1 is the first cell centre at lo + step / 2.
    verts = verts + (grid_box.lo + step / 2 - step)
    normals = np.ascontiguousarray(normals)
    faces = _orient_outward(verts, faces, normals)

    check()
    report("colouring", 2, 3)
    if radiance_fn is None or len(verts) == 0:
        rgb = np.full((len(verts), 3), 0.8, dtype=np.float32)
    else:
        rgb = vertex_colors(radiance_fn, verts, normals, step, device, chunk=max(1, chunk // 32),
                            check_cancel=check)
    colors = np.concatenate([_to_u8(rgb),
                             np.full((len(verts), 1), 255, np.uint8)], axis=1)
    report("done", 3, 3)
    return Mesh(verts.astype(np.float32), faces.astype(np.int32), colors)


def vertex_colors(radiance_fn: RadianceFn, verts: np.ndarray, normals: np.ndarray, voxel: float,
                  device: torch.device | str, n_samples: int = 32, chunk: int = 1 << 16,
                  check_cancel: Callable[[], None] | None = None) -> np.ndarray:
    """Colours seen from outside: volume-render a segment from 4 voxels out along each normal to 4 voxels in.

    The colour is normalised by the segment's opacity, so it is the surface's colour, not darkened by the
    background behind a thin shell. ``check_cancel`` is called before every ``chunk`` of vertices.

    Returns:
        ``(n_vertices, 3)`` float32 in [0, 1].
    """
    half = 4.0 * voxel
    delta = 2.0 * half / n_samples
    t = (torch.arange(n_samples, device=device, dtype=torch.float32) + 0.5) * delta  # [n_samples]
    out = np.empty((len(verts), 3), dtype=np.float32)
    with torch.no_grad():
        for i in range(0, len(verts), chunk):
            if check_cancel is not None:
                check_cancel()
            v = torch.as_tensor(verts[i:i + chunk], dtype=torch.float32, device=device)
            n = torch.nn.functional.normalize(torch.as_tensor(normals[i:i + chunk], dtype=torch.float32,
                                                              device=device), dim=-1)
            origins, dirs = v + half * n, -n
            x = origins[:, None, :] + t[None, :, None] * dirs[:, None, :]  # [m, n_samples, 3]
            rgb, sigma = radiance_fn(x.reshape(-1, 3), dirs.repeat_interleave(n_samples, dim=0))
            rgb, sigma = rgb.reshape(-1, n_samples, 3).float(), sigma.reshape(-1, n_samples).float()
            alpha = 1.0 - torch.exp(-sigma.clamp(min=0) * delta)
            trans = torch.cumprod(torch.cat([torch.ones_like(alpha[:, :1]), 1.0 - alpha[:, :-1]], dim=1), dim=1)
            weights = alpha * trans
            colour = (weights[..., None] * rgb).sum(1) / weights.sum(1, keepdim=True).clamp(min=1e-6)
            out[i:i + chunk] = colour.clamp(0, 1).cpu().numpy()
    return out


def _to_u8(rgb: np.ndarray) -> np.ndarray:
    # The NeRF's colours are already display (sRGB) values, like the photos it was trained on.
    return np.clip(np.round(rgb * 255.0), 0, 255).astype(np.uint8)


def _orient_outward(verts: np.ndarray, faces: np.ndarray, normals: np.ndarray) -> np.ndarray:
    """Faces wound counter-clockwise seen from outside (Blender computes normals from the winding)."""
    if len(faces) == 0:
        return faces
    a, b, c = verts[faces[:, 0]], verts[faces[:, 1]], verts[faces[:, 2]]
    face_normals = np.cross(b - a, c - a)
    agree = np.einsum("ij,ij->i", face_normals, normals[faces].sum(axis=1))
    if np.sum(agree < 0) > np.sum(agree > 0):
        faces = faces[:, [0, 2, 1]]
    return faces
