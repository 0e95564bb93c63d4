"""The difference key: which haze around a person the subject leaves out, from the colours of the reconstruction.

A capture without mattes leaves dense haze hugging a head: rays of many views stop in it, so it joins the person's
seen surface (:func:`backend.nerf.subject.seen_surface_hits`) and no rule of depth alone can tell it from hair.
Its colour can. Haze stands in for the wall behind it (that is why the reconstruction put it there), so the render
through it looks like the *background plate*, the render of the same view without anything inside the subject
bounds. A compositor's difference key follows: in each detection view, the person's matte is where the render
differs from its plate (:data:`KEY_THRESHOLD`). Two kinds of pixel are the person's whatever their colour:

- where the plate is transparent (nothing lies behind the bounds, as in a capture with mattes), the render's own
  opacity decides;
- where the plate's matter lies just behind the bounds (:data:`BODY_GAP`: the torso or the back of the head goes
  on past them), the plate shows the person too, so the colours say nothing.

Each view's matte is cleaned (holes are filled: dark eyes on a dark wall; an opening removes specks of noise) and a voxel of the search grid that at least :data:`KEY_VIEW_FRACTION` of the views framing it put off their
mattes is not the person (:func:`backend.nerf.subject.off_matte_voxels`), as a visual hull of the mattes carves it.
Unlike the seen air, nothing near the person's seen surface is guarded: the key's whole point is the haze *on*
that surface. A person's voxel projects inside every view's matte, so only views whose key fails (a grey sweater
in front of a grey wall) argue against it, and a vote of three quarters of the views outweighs them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from captures.cameras import Cameras

from .evaluate import render_image
from .model import NeRFModel
from .rays import rays_for_image
from .subject import SubjectBounds, cells_with_centre, off_matte_voxels

# The largest per-channel difference (colours in [0, 1]) between a render and its plate that still counts as the
# plate showing through: haze the colour of the wall behind it. Calibrated on fangzhou_nature with its mattes
# withheld (bench/results/subject_key_cpu_*.md); a wall within this of a person's colours defeats the key there.
KEY_THRESHOLD = 0.06
# Model units (head radii) behind the bounds' far side within which the plate's matter is taken as the person going
# on past the bounds (shoulders, the back of the head), where the key cannot decide. Wider keeps a wall that stands
# close behind the shoulders (0.5 kept the wall's haze beside the neck); narrower loses the torso (0 lost it all):
# bench/results/subject_key_gap_cpu_2026-12-08.md, two reconstructions.
BODY_GAP = 0.2
# The fraction of the views framing a voxel that must put it off their mattes.
KEY_VIEW_FRACTION = 0.75


@dataclass(frozen=True)
class Plate:
    """One view's render and its background plate, ``(H, W)`` arrays.

    Attributes:
        rgba: the render of everything, ``(H, W, 4)`` premultiplied colour and opacity.
        plate_rgba: the render without what lies inside the subject bounds, ``(H, W, 4)`` likewise.
        plate_depth: the plate's expected ray distance (model units; meaningless where it is transparent).
        exit_t: the ray distance at which each pixel's ray leaves the bounds (-1 where it misses them).
    """

    rgba: np.ndarray
    plate_rgba: np.ndarray
    plate_depth: np.ndarray
    exit_t: np.ndarray


PlateFn = Callable[[Cameras], Plate]  # one camera (model coordinates) -> its Plate


def raw_key_matte(plate: Plate, threshold: float = KEY_THRESHOLD, body_gap: float = BODY_GAP) -> np.ndarray:
    """``(H, W)`` bool: the person's matte in one view (module docstring), before cleaning."""
    opaque = plate.rgba[..., 3] > 0.5
    plate_opaque = plate.plate_rgba[..., 3] > 0.5
    differs = np.abs(plate.rgba[..., :3] - plate.plate_rgba[..., :3]).max(axis=-1) > threshold
    body_behind = (plate.exit_t > 0) & (plate.plate_depth < plate.exit_t + body_gap)
    return opaque & (~plate_opaque | differs | body_behind)


def key_matte(plate: Plate, threshold: float = KEY_THRESHOLD, body_gap: float = BODY_GAP) -> np.ndarray:
    """``(H, W)`` bool: the person's matte in one view (module docstring), cleaned."""
    # scipy comes with scikit-image
    from scipy.ndimage import binary_fill_holes, binary_opening

    matte = raw_key_matte(plate, threshold, body_gap)
    # Holes first (an eye the wall's colour), so that the opening does not eat the ring around one.
    return binary_opening(binary_fill_holes(matte), np.ones((3, 3), dtype=bool))


def model_plates(model: NeRFModel, bounds: SubjectBounds) -> PlateFn:
    """A :data:`PlateFn` rendering ``model``: the plate marches the occupancy grid without the cells whose centre
    lies inside ``bounds`` (restored after each call)."""
    grid = model.occupancy
    inside = cells_with_centre(bounds.contains, grid.resolution, model.domain, grid.binary.device)

    def plate(camera: Cameras) -> Plate:
        rgba, _ = render_image(model, camera, 0)
        kept = grid.binary.clone()
        try:
            grid.binary &= ~inside
            plate_rgba, plate_depth = render_image(model, camera, 0)
        finally:
            grid.binary.copy_(kept)
        rays_o, rays_d = rays_for_image(camera, 0, device="cpu", dtype=torch.float64)
        t_in, t_out = bounds.ray_interval(rays_o, rays_d)
        exit_t = torch.where(t_out > t_in.clamp_min(0.0), t_out, torch.full_like(t_out, -1.0))
        h, w = int(camera.height[0]), int(camera.width[0])
        return Plate(rgba.cpu().numpy(), plate_rgba.cpu().numpy(), plate_depth.cpu().numpy(),
                     exit_t.reshape(h, w).numpy())

    return plate


def keyed_out_voxels(
    plates: PlateFn,
    views: tuple[Cameras, ...] | list[Cameras],  # one camera each, model coordinates
    frame: np.ndarray,  # (3, 3) the capture frame, columns (side, up, front)
    half_extent: float,
    resolution: int,
) -> np.ndarray:  # (n, n, n) bool over the detection's search grid
    """Voxels of the search grid that the views' difference keys put off the person (module docstring)."""
    mattes = [key_matte(plates(view)) for view in views]
    return off_matte_voxels(mattes, list(views), frame, half_extent, resolution, KEY_VIEW_FRACTION)
