"""The subject: the part of a scene that is the person (head and shoulders); everything else is background.

A capture without mattes reconstructs the whole room, but artists stylize, render and mesh *heads*. The
subject bounds are one convex volume, a box or an ellipsoid, that every job shares: reconstruction finds them,
stylization changes only what lies inside, renders return the inside with alpha, meshes hold the inside.

**Representation.** An affine ``matrix`` (4x4) maps the unit shape (the cube ``[-1, 1]^3`` for ``"box"``, the
unit sphere for ``"ellipsoid"``) into model coordinates. A general affine map covers any position, rotation
and three half-sizes (a Blender empty's ``matrix_world`` is one). Both shapes are convex, so a ray meets the
subject in one interval; restricting a ray's marching interval to it (:meth:`SubjectBounds.ray_interval`)
renders the subject alone, exactly at its boundary, through every renderer that marches rays.

**Where they come from** (:func:`detect_subject_bounds`): the cameras of a head capture look at the head, so
the look-at point (the model origin, :mod:`captures.normalize`) lies in the subject; the "up" of the capture
is the cameras' mean up vector and its "front" the mean direction towards the cameras. The extent comes from
what the cameras *see*, not from a density threshold: a reconstruction without mattes leaves its density
weak and smeared where depth is poorly constrained (a frontal capture), so points of the density field rarely
pass a surface threshold and any threshold is fragile (too high: only the face; a little lower: the room joins
in). Instead each view's rays are volume-rendered through the search cube and each ray ends where its opacity
passes one half (its median termination point, :func:`seen_surface_hits`): every opaque pixel gives exactly
one point, however smeared the density. A voxel where the rays of many views end is seen surface; haze (a
smear left in the air) scatters its few hits. Of the connected pieces of seen surface, the one with the most
voxels in the region of interest around the look-at point is the person, and the bounds are the smallest
ellipsoid around it (:func:`fit_ellipsoid`; or its oriented box, :func:`fit_box`), trimmed to the extent
holding all but a sliver of its hits, with a margin. A wall behind is seen at another depth, so it stays
outside; a speck of density inside the head is never seen. The bounds hold what the cameras saw: the back of
a head that only frontal views saw is cut at the deepest surface they saw (the ears, the hair's edge), which
is where renders from those views need it.

**World form.** The protocol carries the bounds in capture-world coordinates (the cameras' frame);
:meth:`SubjectBounds.to_world` and :meth:`SubjectBounds.from_world` convert with the capture's normalization.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from captures.cameras import Cameras, project_points
from captures.normalize import Normalization

from .rays import rays_for_image

SHAPES = ("box", "ellipsoid")
# Extent searched for the person around the look-at point, in model units along each oriented axis (the head's
# region of interest is the unit sphere; shoulders and torso reach past it downwards and sideways).
SEARCH_HALF_EXTENT = 1.6
# Voxels per axis of the search grid (about 0.033 model units each: a few per centimetre of a real head).
SEARCH_RESOLUTION = 96
# Views the surface is seen from (spread over the capture), and the largest side of each view's resampled image.
DETECT_VIEWS = 24
MAX_DETECT_PIXELS = 256
# A ray ends where its opacity passes one half: optical depth ln 2.
HALF_OPACITY_DEPTH = math.log(2.0)
# A voxel is seen surface when the rays ending in it number at least this fraction of the views (a surface
# seen face-on collects about one per view; haze scatters its hits).
SURFACE_HIT_FRACTION = 0.25
# Fraction of the person's hits left outside the box at each end of each axis.
EXTENT_TAIL = 0.005
# Margin around the person's seen surface: hair and skin edges are softer than the median termination point,
# and the boundary must not clip them.
MARGIN_FRACTION = 0.04
MARGIN_VOXELS = 2
# The region of interest around the look-at point where the person is looked for (model units: the head's
# radius, captures.normalize), and the smallest solid piece that counts as a person rather than a speck.
ROI_RADIUS = 1.0
MIN_PERSON_SIZE = 0.2
# Seen air: a voxel that the rays of at least this fraction of the views crossed while still under half opaque
# (before they ended) is empty space the cameras saw through; what density the reconstruction left there (haze in
# front of a plain wall, a floater beside the neck) is not the person. Voxels within AIR_GUARD_VOXELS of the
# person's seen surface stay the person's: a surface turns opaque over a voxel or so, and hair is soft.
AIR_VIEW_FRACTION = 0.25
AIR_GUARD_VOXELS = 2
# Default half-sizes (up, side, front) when no density is known: the region of interest, a little taller.
DEFAULT_HALF_EXTENTS = (1.2, 1.0, 1.0)
# The shape a detection fits (module docstring).
DETECTED_SHAPE = "ellipsoid"

DensityFn = Callable[[torch.Tensor], torch.Tensor]  # [N, 3] model points -> [N] densities


class SubjectBoundsError(ValueError):
    """Subject bounds that cannot be used (unknown shape, degenerate or non-affine matrix)."""


@dataclass(frozen=True)
class SubjectBounds:
    """A box or ellipsoid in model coordinates.

    Attributes:
        shape: ``"box"`` (unit cube ``[-1, 1]^3``) or ``"ellipsoid"`` (unit sphere).
        matrix: ``(4, 4)`` float64 affine map from the unit shape to model coordinates (last row 0 0 0 1).
    """

    shape: str
    matrix: np.ndarray

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise SubjectBoundsError(f"subject bounds shape must be one of {SHAPES}, got {self.shape!r}")
        m = np.asarray(self.matrix, dtype=np.float64)
        if m.shape != (4, 4) or not np.all(np.isfinite(m)):
            raise SubjectBoundsError("subject bounds matrix must be 4x4 finite numbers")
        if not np.allclose(m[3], (0.0, 0.0, 0.0, 1.0), atol=1e-9):
            raise SubjectBoundsError(f"subject bounds matrix must be affine (last row 0 0 0 1), got {m[3].tolist()}")
        # Degenerate when one of its axes has (almost) no length: the volume would be flat and hold nothing.
        singular = np.linalg.svd(m[:3, :3], compute_uv=False)
        if singular.min() <= 1e-9 * max(1.0, singular.max()):
            raise SubjectBoundsError("subject bounds have zero size along an axis (a scale of 0); give them a "
                                     "size in every direction")
        object.__setattr__(self, "matrix", m)

    # ---- conversions ------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Model-coordinate form (for checkpoints)."""
        return {"shape": self.shape, "matrix": self.matrix.tolist()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SubjectBounds:
        return cls(str(d["shape"]), np.asarray(d["matrix"], dtype=np.float64))

    def to_world(self, normalization: Normalization) -> dict[str, Any]:
        """The protocol's form: ``{"shape", "matrix"}`` mapping the unit shape into capture-world coordinates."""
        return {"shape": self.shape, "matrix": (_model_to_world(normalization) @ self.matrix).tolist()}

    @classmethod
    def from_world(cls, d: dict[str, Any], normalization: Normalization) -> SubjectBounds:
        """Bounds from the protocol's capture-world form (raises :class:`SubjectBoundsError` on bad values)."""
        try:
            m = np.asarray(d["matrix"], dtype=np.float64)
            shape = d["shape"]
        except (KeyError, TypeError, ValueError) as exc:
            raise SubjectBoundsError(f"subject bounds need 'shape' and a 4x4 'matrix': {exc}") from exc
        if m.shape != (4, 4):
            raise SubjectBoundsError(f"subject bounds matrix must be 4x4, got shape {m.shape}")
        return cls(shape, np.linalg.inv(_model_to_world(normalization)) @ m)

    # ---- geometry ---------------------------------------------------------------------------------------

    @property
    def center(self) -> np.ndarray:  # (3,)
        return self.matrix[:3, 3].copy()

    def aabb(self) -> tuple[np.ndarray, np.ndarray]:
        """Axis-aligned ``(lo (3,), hi (3,))`` box around the bounds, model coordinates."""
        a = self.matrix[:3, :3]
        # A box's corners reach sum |a_ij|; an ellipsoid's support along axis i is the row's length.
        half = np.abs(a).sum(axis=1) if self.shape == "box" else np.linalg.norm(a, axis=1)
        return self.center - half, self.center + half

    def grown(self, distance: float) -> SubjectBounds:
        """The same shape, centre and axes with each half-axis lengthened by ``distance`` model units.

        Stylization gives a shape that may grow (``shape_freedom``) this much room around the subject
        (:mod:`backend.stylize.loop`). The axes are the matrix's columns; each keeps its direction.
        """
        if not (math.isfinite(distance) and distance >= 0):
            raise ValueError(f"distance must be a finite number >= 0, got {distance!r}")
        m = self.matrix.copy()
        lengths = np.linalg.norm(m[:3, :3], axis=0)  # (3,) half-axis lengths
        m[:3, :3] = m[:3, :3] * ((lengths + distance) / lengths)[None, :]
        return SubjectBounds(self.shape, m)

    def _unit_frame(self, x: torch.Tensor) -> torch.Tensor:  # [..., 3] -> [..., 3]
        inv = torch.as_tensor(np.linalg.inv(self.matrix), dtype=x.dtype, device=x.device)
        return x @ inv[:3, :3].T + inv[:3, 3]

    def contains(self, x: torch.Tensor) -> torch.Tensor:  # [..., 3] -> [...] bool
        """Whether model points lie inside (boundary included)."""
        u = self._unit_frame(x)
        if self.shape == "box":
            return (u.abs() <= 1.0).all(dim=-1)
        return (u * u).sum(dim=-1) <= 1.0

    def clamp(self, points: np.ndarray) -> np.ndarray:  # [N, 3] -> [N, 3]
        """Model points moved onto the bounds where they lie outside them (points inside are unchanged).

        In the unit shape's frame a box clamps each coordinate to ``[-1, 1]`` and an ellipsoid pulls a point
        radially onto the unit sphere, so a surface cut by the bounds ends exactly on their boundary.
        """
        p = np.asarray(points, dtype=np.float64)
        inv = np.linalg.inv(self.matrix)
        u = p @ inv[:3, :3].T + inv[:3, 3]
        if self.shape == "box":
            u = np.clip(u, -1.0, 1.0)
        else:
            r = np.linalg.norm(u, axis=-1, keepdims=True)
            u = np.where(r > 1.0, u / np.maximum(r, 1e-300), u)
        return u @ self.matrix[:3, :3].T + self.matrix[:3, 3]

    def ray_interval(
        self,
        rays_o: torch.Tensor,  # [n_rays, 3]
        rays_d: torch.Tensor,  # [n_rays, 3]
    ) -> tuple[torch.Tensor, torch.Tensor]:  # [n_rays], [n_rays]
        """Entry and exit distances of rays through the bounds, in the rays' own parameter ``t``.

        Rays that miss get ``t_max <= t_min``. The rays are mapped into the unit shape's frame, where ``t`` is
        unchanged (an affine map keeps the parameter of a line).
        """
        inv = torch.as_tensor(np.linalg.inv(self.matrix), dtype=rays_o.dtype, device=rays_o.device)
        o = rays_o @ inv[:3, :3].T + inv[:3, 3]
        d = rays_d @ inv[:3, :3].T
        if self.shape == "box":
            inv_d = 1.0 / torch.where(d.abs() < 1e-12, torch.full_like(d, 1e-12), d)
            t0 = (-1.0 - o) * inv_d
            t1 = (1.0 - o) * inv_d
            return torch.minimum(t0, t1).amax(dim=-1), torch.maximum(t0, t1).amin(dim=-1)
        a = (d * d).sum(dim=-1)
        b = (o * d).sum(dim=-1)
        c = (o * o).sum(dim=-1) - 1.0
        disc = b * b - a * c
        root = disc.clamp_min(0.0).sqrt()
        t_min = (-b - root) / a
        t_max = (-b + root) / a
        miss = disc < 0
        return torch.where(miss, torch.ones_like(t_min), t_min), torch.where(miss, torch.zeros_like(t_max), t_max)


def _model_to_world(normalization: Normalization) -> np.ndarray:  # (4, 4)
    s = np.eye(4)
    s[:3, :3] *= normalization.radius
    s[:3, 3] = normalization.center
    return s


def capture_frame(cameras: Cameras) -> np.ndarray:
    """``(3, 3)`` rotation whose columns are the subject's (side, up, front) axes in model/world axes.

    Up is the cameras' mean up vector (OpenCV cameras: -Y), front the mean direction from the subject towards
    the cameras (-Z), made orthogonal to up. A capture whose cameras disagree on up (rolled half-way round)
    still gets a right-handed frame; its axes are then only a guess, which the density refinement tolerates
    because the bounds are fitted to the seen surface in this frame, whatever it is.
    """
    rot = cameras.c2w[:, :3, :3]
    up = -rot[:, :, 1].mean(axis=0)
    front = -rot[:, :, 2].mean(axis=0)
    if np.linalg.norm(up) < 1e-6:
        up = np.array([0.0, 0.0, 1.0])
    up = up / np.linalg.norm(up)
    front = front - up * float(front @ up)
    if np.linalg.norm(front) < 1e-6:
        helper = np.array([1.0, 0.0, 0.0]) if abs(up[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
        front = helper - up * float(helper @ up)
    front = front / np.linalg.norm(front)
    side = np.cross(up, front)
    return np.stack([side, up, front], axis=1)


def default_subject_bounds(cameras_model: Cameras) -> SubjectBounds:
    """Bounds from the cameras alone (model coordinates): a box around the look-at point, upright in the
    capture's frame, the size of the region of interest (used when no density is known yet)."""
    frame = capture_frame(cameras_model)
    m = np.eye(4)
    side, up, front = DEFAULT_HALF_EXTENTS[1], DEFAULT_HALF_EXTENTS[0], DEFAULT_HALF_EXTENTS[2]
    m[:3, :3] = frame @ np.diag([side, up, front])
    return SubjectBounds("box", m)


@dataclass(frozen=True)
class Detection:
    """What :func:`detect_subject_bounds` found.

    Attributes:
        bounds: the subject bounds, model coordinates.
        found: whether the seen surface decided them (False: the cameras' default, with ``reason``).
        surface_voxels: voxels of the person's seen surface (0 when not found).
        reason: why the default was used ("" when found).
        air: the empty space the cameras saw through around the person (None when not found).
        views: the detection views, model coordinates, at the size their rays were marched (about one pixel per
            search voxel at the look-at point); empty when not found.
        person: ``(n, n, n)`` bool, the person's seen surface over the search grid (None when not found).
    """

    bounds: SubjectBounds
    found: bool
    surface_voxels: int
    reason: str = ""
    air: SeenAir | None = None
    views: tuple[Cameras, ...] = ()
    person: np.ndarray | None = None


def search_voxel(x: torch.Tensor, frame: torch.Tensor, half_extent: float, n: int) -> torch.Tensor:
    """``(..., 3)`` integer voxel of model points ``x`` in the ``n^3`` search cube of half size ``half_extent``
    around the model origin, along the capture ``frame``'s axes (``(3, 3)``, columns side, up, front; same dtype as
    ``x``). Not clamped: points outside the cube get indices outside ``[0, n)``."""
    return ((x @ frame + half_extent) / (2.0 * half_extent / n)).floor().long()


@dataclass(frozen=True)
class SeenAir:
    """Voxels of the detection's search grid that are not the person, whatever density the reconstruction left
    there: the space the cameras saw through (see :data:`AIR_VIEW_FRACTION`), and what the views' keys put beside
    the person (:mod:`backend.nerf.subject_key`).

    Attributes:
        voxels: ``(n, n, n)`` bool over the search cube, indexed along the capture frame's axes.
        frame: ``(3, 3)`` the capture frame (columns side, up, front) in model axes.
        half_extent: half size of the search cube around the model origin, model units.
    """

    voxels: np.ndarray
    frame: np.ndarray
    half_extent: float

    def contains(self, x: torch.Tensor) -> torch.Tensor:  # [..., 3] model points -> [...] bool
        """Whether model points lie in seen air (points outside the search cube do not)."""
        n = self.voxels.shape[0]
        frame = torch.as_tensor(self.frame, dtype=torch.float64, device=x.device)
        idx = search_voxel(x.double(), frame, self.half_extent, n)
        inside = ((idx >= 0) & (idx < n)).all(dim=-1)
        idx = idx.clamp(0, n - 1)
        grid = torch.as_tensor(self.voxels, dtype=torch.bool, device=x.device)
        return grid[idx[..., 0], idx[..., 1], idx[..., 2]] & inside

    @torch.no_grad()
    def cells(self, resolution: int, domain: Any, device: torch.device | str = "cpu") -> torch.Tensor:
        """``(R, R, R)`` bool: the occupancy cells (``resolution^3`` over ``domain``'s unit cube, indexed as
        :attr:`~backend.nerf.occupancy.OccupancyGrid.binary`) whose centre lies in seen air."""
        return cells_with_centre(self.contains, resolution, domain, device)


@torch.no_grad()
def cells_with_centre(inside: Callable[[torch.Tensor], torch.Tensor], resolution: int, domain: Any,
                      device: torch.device | str = "cpu") -> torch.Tensor:
    """``(R, R, R)`` bool: the occupancy cells (``resolution^3`` over ``domain``'s unit cube, indexed as
    :attr:`~backend.nerf.occupancy.OccupancyGrid.binary`) whose centre satisfies ``inside`` (``[N, 3]`` float64
    model points -> ``[N]`` bool)."""
    r = int(resolution)
    ticks = (torch.arange(r, dtype=torch.float64, device=device) + 0.5) / r
    u = torch.stack(torch.meshgrid(ticks, ticks, ticks, indexing="ij"), dim=-1).reshape(-1, 3)
    return inside(domain.from_unit_cube(u)).reshape(r, r, r)


def detection_views(cameras_model: Cameras, n_views: int) -> np.ndarray:
    """Indices of at most ``n_views`` cameras spread evenly over the capture (in its order)."""
    n = len(cameras_model)
    return np.unique(np.linspace(0, n - 1, min(n, n_views)).round().astype(np.int64))


@torch.no_grad()
def seen_surface_hits(
    density_fn: DensityFn,
    cameras_model: Cameras,
    frame: np.ndarray,  # (3, 3) capture frame, columns (side, up, front)
    device: torch.device | str,
    *,
    resolution: int,
    half_extent: float,
    n_views: int = DETECT_VIEWS,
    chunk: int = 1 << 20,
) -> tuple[np.ndarray, np.ndarray, list[Cameras]]:  # (n, n, n) int64 hits, (n, n, n) int64 seen through
    """Per voxel of the search grid (capture frame axes), how many camera rays end in it, and how many views saw
    through it; and the views used (model coordinates, at the size their rays were marched).

    Each ray of a view is marched through the search cube in steps of half a voxel, the density composited as
    the renderer does; where its opacity passes one half (its median termination point) it ends, and the voxel
    there counts one hit. Rays that stay under half opaque inside the cube end nowhere. Each view's image is
    resampled so that one of its pixels spans about one voxel at the look-at point: a surface seen face-on
    collects about one hit per view. A voxel a view's ray crossed while still under half opaque counts one view
    that saw through it.
    """
    n = int(resolution)
    voxel = 2.0 * half_extent / n
    step = voxel / 2.0
    cube = np.eye(4)
    cube[:3, :3] = frame * half_extent
    cube_bounds = SubjectBounds("box", cube)
    rot = torch.as_tensor(frame, dtype=torch.float32, device=device)
    hits = torch.zeros(n**3, dtype=torch.int64, device=device)
    through = torch.zeros(n**3, dtype=torch.int64, device=device)
    views = detection_views(cameras_model, n_views)
    marched: list[Cameras] = []

    def voxel_index(points: torch.Tensor) -> torch.Tensor:  # [m, 3] model points -> [m] flat voxel index
        idx = search_voxel(points, rot, half_extent, n).clamp(0, n - 1)
        return (idx[:, 0] * n + idx[:, 1]) * n + idx[:, 2]

    for v in views:
        cam = cameras_model.select([int(v)])
        distance = float(np.linalg.norm(cam.c2w[0, :3, 3]))
        focal = float(min(cam.fx[0], cam.fy[0]))
        factor = min(distance / (focal * voxel), MAX_DETECT_PIXELS / float(max(cam.width[0], cam.height[0])))
        view = cam.scaled(factor)
        marched.append(view)
        rays_o, rays_d = rays_for_image(view, 0, device=device, dtype=torch.float32)
        t_in, t_out = cube_bounds.ray_interval(rays_o.double(), rays_d.double())
        t_in, t_out = t_in.float().clamp_min(0.0), t_out.float()
        enter = t_out > t_in
        rays_o, rays_d, t_in, t_out = rays_o[enter], rays_d[enter], t_in[enter], t_out[enter]
        if rays_o.shape[0] == 0:
            continue
        n_steps = math.ceil(float((t_out - t_in).max()) / step)
        window = max(1, min(n_steps, chunk // max(1, rays_o.shape[0])))
        depth = torch.zeros_like(t_in)  # optical depth so far
        end = torch.full_like(t_in, -1.0)  # median termination distance, -1 while not reached
        seen_through = torch.zeros(n**3, dtype=torch.bool, device=device)  # this view's
        active = torch.arange(rays_o.shape[0], device=device)
        for k0 in range(0, n_steps, window):
            if active.numel() == 0:
                break
            k = torch.arange(k0, min(n_steps, k0 + window), device=device, dtype=torch.float32)
            t = t_in[active, None] + (k[None, :] + 0.5) * step  # [a, w]
            inside = t < t_out[active, None]
            pts = rays_o[active, None, :] + rays_d[active, None, :] * t[..., None]
            sigma = density_fn(pts.reshape(-1, 3)).float().reshape(t.shape).clamp_min(0.0)
            od = depth[active, None] + torch.cumsum(torch.where(inside, sigma, 0.0) * step, dim=1)
            passed = od >= HALF_OPACITY_DEPTH
            clear = inside & ~passed
            if bool(clear.any()):
                seen_through[voxel_index(pts[clear])] = True
            crossed = passed.any(dim=1)
            first = passed.float().argmax(dim=1)
            end[active[crossed]] = t[crossed, first[crossed]]
            depth[active] = od[:, -1]
            still = ~crossed & inside[:, -1]
            active = active[still]
        through += seen_through
        ended = end >= 0
        if bool(ended.any()):
            where = voxel_index(rays_o[ended] + rays_d[ended] * end[ended, None])
            hits += torch.bincount(where, minlength=n**3)
    return hits.reshape(n, n, n).cpu().numpy(), through.reshape(n, n, n).cpu().numpy(), marched


def _trimmed_extent(coords: np.ndarray, weights: np.ndarray, tail: float) -> tuple[float, float]:
    """The range of ``coords`` (1-D) holding all but a ``tail`` fraction of ``weights`` at each end."""
    order = np.argsort(coords, kind="stable")
    cum = np.cumsum(weights[order]) / weights.sum()
    lo = coords[order][min(len(order) - 1, int(np.searchsorted(cum, tail)))]
    hi = coords[order][min(len(order) - 1, int(np.searchsorted(cum, 1.0 - tail)))]
    return float(lo), float(hi)


@torch.no_grad()
def detect_subject_bounds(
    density_fn: DensityFn,
    cameras_model: Cameras,
    device: torch.device | str,
    *,
    shape: str = DETECTED_SHAPE,
    resolution: int = SEARCH_RESOLUTION,
    half_extent: float = SEARCH_HALF_EXTENT,
    n_views: int = DETECT_VIEWS,
    chunk: int = 1 << 20,
) -> Detection:
    """The subject's bounds from the surface the cameras see (see the module docstring).

    Args:
        density_fn: ``[N, 3]`` model points -> ``[N]`` densities (the model's ``density``).
        cameras_model: the capture's cameras in model coordinates (they set the orientation and are the views
            the surface is seen from; pass the training views).
        device: where the density is evaluated.
        shape: ``"ellipsoid"`` (fitted to the seen surface, :func:`fit_ellipsoid`) or ``"box"`` (its oriented
            extent, :func:`fit_box`).
        resolution: search grid voxels per axis.
        half_extent: half size of the searched cube around the look-at point, model units.
        n_views: cameras the surface is seen from (spread over the capture).
        chunk: density evaluations per call.
    """
    if shape not in SHAPES:
        raise SubjectBoundsError(f"subject bounds shape must be one of {SHAPES}, got {shape!r}")
    frame = capture_frame(cameras_model)
    hits, through, views = seen_surface_hits(density_fn, cameras_model, frame, device, resolution=int(resolution),
                                             half_extent=half_extent, n_views=n_views, chunk=chunk)
    found = bounds_from_hits(hits, len(views), frame, half_extent, default_subject_bounds(cameras_model), shape,
                             seen_through=through)
    return dataclasses.replace(found, views=tuple(views)) if found.found else found


def bounds_from_hits(
    hits: np.ndarray,  # (n, n, n) rays ending per voxel, capture frame axes
    views: int,
    frame: np.ndarray,  # (3, 3) columns (side, up, front)
    half_extent: float,
    fallback: SubjectBounds,
    shape: str = DETECTED_SHAPE,
    seen_through: np.ndarray | None = None,  # (n, n, n) views that saw through each voxel
) -> Detection:
    """The person's piece of seen surface in ``hits`` (:func:`seen_surface_hits`) and its bounds; with
    ``seen_through``, also the air around the person that the views saw through (:class:`SeenAir`)."""
    # scikit-image: imported here, only where bounds are detected
    from skimage.measure import label

    n = hits.shape[0]
    voxel = 2 * half_extent / n
    if not hits.any():
        return Detection(fallback, False, 0, "nothing opaque where the cameras look (no camera ray turns half "
                                             "opaque near the look-at point)")
    # A surface seen face-on collects about one hit per view and voxel; haze (a smear of density the
    # reconstruction left in the air, or a background without depth) scatters its hits, one or two per voxel.
    surface = hits >= max(2, math.ceil(SURFACE_HIT_FRACTION * views))
    # The person is the connected piece of seen surface with the most voxels in the region of interest (the
    # ball the capture was normalised to, around where the cameras look). A wall behind is seen at another
    # depth, so it is not connected to the person through the seen surface.
    labels = label(surface, connectivity=3)
    idx = np.argwhere(labels > 0)
    if idx.size == 0:
        return Detection(fallback, False, 0, "no surface seen consistently where the cameras look (only haze: "
                                             "no voxel gathers the rays of several views)")
    centre = (n - 1) / 2.0
    r2 = ((idx - centre) ** 2).sum(axis=1) * voxel**2
    in_roi = labels[tuple(idx[r2 <= ROI_RADIUS**2].T)]
    if in_roi.size == 0:
        distance = math.sqrt(float(r2.min()))
        return Detection(fallback, False, 0, f"no surface seen within {ROI_RADIUS:g} head radius of where the "
                                             f"cameras look (the nearest lies {distance:.2f} head radii away)")
    person_mask = labels == int(np.argmax(np.bincount(in_roi)))
    person = np.argwhere(person_mask)
    size = float((person.max(axis=0) - person.min(axis=0) + 1).max()) * voxel
    if size < MIN_PERSON_SIZE:
        return Detection(fallback, False, 0, f"the surface seen where the cameras look is only specks ({size:.2f} "
                                             f"head radii across at most), no head")
    # Voxel centres in the capture frame, model units, and how many rays ended in each.
    points = (person + 0.5) * voxel - half_extent
    weights = hits[tuple(person.T)].astype(np.float64)
    fit = fit_box if shape == "box" else fit_ellipsoid
    local = fit(points, weights, voxel, half_extent)  # (4, 4) unit shape -> capture frame
    to_model = np.eye(4)
    to_model[:3, :3] = frame
    air = None
    if seen_through is not None:
        # scipy comes with scikit-image
        from scipy.ndimage import binary_dilation

        guard = binary_dilation(person_mask, np.ones((3, 3, 3), bool), iterations=AIR_GUARD_VOXELS)
        air_voxels = (seen_through >= max(2, math.ceil(AIR_VIEW_FRACTION * views))) & ~guard
        air = SeenAir(air_voxels, np.asarray(frame, dtype=np.float64), float(half_extent))
    return Detection(SubjectBounds(shape, to_model @ local), True, len(person), air=air, person=person_mask)


def off_matte_voxels(
    mattes: list[np.ndarray],  # per view (H, W) bool
    views: list[Cameras],  # one camera each, model coordinates, the mattes' size
    frame: np.ndarray,  # (3, 3) columns (side, up, front)
    half_extent: float,
    resolution: int,
    fraction: float,
) -> np.ndarray:  # (n, n, n) bool over the search grid
    """Voxels of the search grid that at least ``fraction`` of the views that frame them (and at least two) put
    off their matte of the person, as a visual hull of the mattes would carve them. Each voxel centre is projected
    into each view with its lens."""
    n = int(resolution)
    ticks = (np.arange(n) + 0.5) * (2.0 * half_extent / n) - half_extent
    local = np.stack(np.meshgrid(ticks, ticks, ticks, indexing="ij"), axis=-1).reshape(-1, 3)
    points = local @ np.asarray(frame, dtype=np.float64).T  # model coordinates
    framed = np.zeros(n**3, dtype=np.int32)
    off = np.zeros(n**3, dtype=np.int32)
    for matte, view in zip(mattes, views, strict=True):
        h, w = matte.shape
        uv, z = project_points(view, 0, points)
        col, row = np.floor(uv[:, 0]), np.floor(uv[:, 1])
        inside = (z > 0) & (col >= 0) & (col < w) & (row >= 0) & (row < h)
        framed += inside
        off[inside] += ~matte[row[inside].astype(np.int64), col[inside].astype(np.int64)]
    need = np.maximum(2, np.ceil(fraction * framed))
    return ((framed > 0) & (off >= need)).reshape(n, n, n)


def _trimmed_box(points: np.ndarray, weights: np.ndarray, voxel: float) -> tuple[np.ndarray, np.ndarray]:
    """``(lo (3,), hi (3,))``: the extent along each axis holding all but a sliver of the hits (a few stray hits
    at the edge, a wisp of haze touching the hair, do not stretch it), voxels included whole."""
    ext = np.array([_trimmed_extent(points[:, a], weights, EXTENT_TAIL) for a in range(3)])
    return ext[:, 0] - voxel / 2, ext[:, 1] + voxel / 2


def fit_box(points: np.ndarray, weights: np.ndarray, voxel: float, half_extent: float) -> np.ndarray:
    """``(4, 4)`` map of the unit cube onto the seen surface's axis-aligned extent with a margin.

    Args:
        points: ``(N, 3)`` seen-surface voxel centres in the capture frame (side, up, front), model units.
        weights: ``(N,)`` rays ending in each.
        voxel: voxel size; half_extent: half size of the searched cube (the box stays inside it).
    """
    lo, hi = _trimmed_box(points, weights, voxel)
    margin = MARGIN_FRACTION * (hi - lo) + MARGIN_VOXELS * voxel
    lo = np.maximum(lo - margin, -half_extent)
    hi = np.minimum(hi + margin, half_extent)
    m = np.eye(4)
    m[:3, :3] = np.diag((hi - lo) / 2.0)
    m[:3, 3] = (hi + lo) / 2.0
    return m


def fit_ellipsoid(points: np.ndarray, weights: np.ndarray, voxel: float, half_extent: float) -> np.ndarray:
    """``(4, 4)`` map of the unit sphere onto the smallest ellipsoid holding the seen surface, with a margin.

    A head and shoulders is round where a box has corners: above the head and beside the neck a box holds
    haze the reconstruction left in the air, which the subject's alpha then shows. The smallest enclosing
    ellipsoid (any orientation) of the seen surface's voxels, trimmed to :func:`_trimmed_box` so that stray hits
    do not stretch it, follows the head's top and reaches down to the shoulders.

    Args: as :func:`fit_box`.
    """
    lo, hi = _trimmed_box(points, weights, voxel)
    kept = np.clip(points, lo + voxel / 2, hi - voxel / 2)
    # Each voxel whole: its 8 corners. The hull's vertices decide the enclosing ellipsoid.
    offsets = (np.array(list(np.ndindex(2, 2, 2)), dtype=np.float64) - 0.5) * voxel  # (8, 3)
    corners = np.unique((kept[:, None, :] + offsets[None]).reshape(-1, 3).round(9), axis=0)
    # scipy comes with scikit-image
    from scipy.spatial import ConvexHull

    corners = corners[ConvexHull(corners).vertices]
    centre, axes = min_volume_ellipsoid(corners)
    scale = 1.0 + 2.0 * MARGIN_FRACTION
    axes = axes * scale + MARGIN_VOXELS * voxel * axes / np.linalg.norm(axes, axis=0, keepdims=True)
    m = np.eye(4)
    m[:3, :3] = axes
    m[:3, 3] = centre
    return m


def min_volume_ellipsoid(points: np.ndarray, tol: float = 1e-4, max_iter: int = 5000) -> tuple[np.ndarray, np.ndarray]:
    """Khachiyan's algorithm: the smallest ellipsoid holding ``(N, 3)`` points, as ``(centre (3,), axes (3, 3))``
    with points ``centre + axes @ u`` for ``|u| <= 1`` (the columns of ``axes`` are its semi-axes)."""
    p = np.asarray(points, dtype=np.float64)
    n, d = p.shape
    q = np.concatenate([p, np.ones((n, 1))], axis=1)  # (N, 4)
    u = np.full(n, 1.0 / n)
    for _ in range(max_iter):
        x = q.T @ (u[:, None] * q)
        m = np.einsum("ij,jk,ik->i", q, np.linalg.inv(x), q)
        j = int(np.argmax(m))
        step = (m[j] - d - 1.0) / ((d + 1.0) * (m[j] - 1.0))
        if step <= tol:
            break
        u *= 1.0 - step
        u[j] += step
    centre = p.T @ u
    cov = p.T @ (u[:, None] * p) - np.outer(centre, centre)
    # (x - c)^T (cov d)^-1 (x - c) <= 1 at the optimum; a sliver of slack for the tolerance.
    vals, vecs = np.linalg.eigh(cov * d)
    radii = np.sqrt(np.maximum(vals, 0.0))
    worst = np.sqrt(max(1.0, float(np.max(np.einsum("ij,jk,ik->i", p - centre,
                                                             np.linalg.pinv(cov * d), p - centre)))))
    axes = vecs * (radii * worst)[None, :]
    # The same ellipsoid whatever the order and signs of its semi-axes: put the one nearest each coordinate axis
    # in that axis' column, pointing its way, so that the bounds read as (side, up, front) in the capture frame
    # and, shown as a Blender empty, carry no mirroring.
    order: list[int] = []
    for k in range(d):
        rest = [j for j in range(d) if j not in order]
        order.append(max(rest, key=lambda j: abs(vecs[k, j])))
    axes = axes[:, order]
    axes = axes * np.where(np.diag(axes) < 0, -1.0, 1.0)[None, :]
    if np.linalg.det(axes) < 0:
        axes[:, 0] = -axes[:, 0]
    return centre, axes
