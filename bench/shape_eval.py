"""Shape metrics of one stylization against its reconstruction, shared by the shape study and sweep (issue 20).

:func:`shape_metrics` renders ``F_rec`` and ``F_sty`` from the same cameras and reports what a shape prompt should
change (silhouette area and outline) and what no prompt should (haze in front of the face, opacity outside the
silhouette and new occupied cells outside the subject bounds), with the alpha IoU and depth error a colour prompt
is judged by. Nothing here needs mattes.
"""

from __future__ import annotations

import torch

from backend.nerf.checkpoint import NeRFCheckpoint
from backend.stylize.evaluation import geometry_change, haze_change, render_views, silhouette_change
from backend.stylize.subject_render import subject_cells
from captures.cameras import Cameras

#: The columns of :func:`shape_metrics`, in table order, with their headers.
COLUMNS = (
    ("area_ratio", "silhouette area ratio"),
    ("outline_growth_rel", "outline growth (head heights)"),
    ("outline_max_rel", "outline max (head heights)"),
    ("haze", "haze in front"),
    ("front_solid", "front solid"),
    ("outside_opacity", "opacity outside silhouette"),
    ("cells_outside_bounds", "new cells outside bounds"),
    ("alpha_iou", "alpha IoU"),
    ("depth_err_rel", "depth error / ROI"),
)


def shape_metrics(rec: NeRFCheckpoint, sty: NeRFCheckpoint, cameras: Cameras) -> dict[str, float]:
    """The :data:`COLUMNS` of ``sty`` against ``rec`` over world ``cameras``.

    ``cells_outside_bounds`` counts ``F_sty``'s occupied cells outside the cells touching ``rec.subject`` that
    ``F_rec`` did not occupy (0 without bounds: nothing to leave).
    """
    radius = 1.0 if rec.normalization is None else float(rec.normalization.radius)
    before, after = render_views(rec, cameras), render_views(sty, cameras)
    geo = geometry_change(before, after, radius)
    sil = silhouette_change(before.alpha, after.alpha)
    hz = haze_change(rec, sty, cameras)
    outside = 0
    if rec.subject is not None:
        grid = rec.model.occupancy
        inside = subject_cells(rec.subject, grid.resolution, rec.model.domain, device=grid.binary.device)
        new = sty.model.occupancy.binary.to(grid.binary.device) & ~grid.binary
        outside = int((new & ~inside).sum())
    return {"area_ratio": sil.area_ratio, "outline_growth_rel": sil.outline_growth_rel,
            "outline_max_rel": sil.outline_max_rel, "haze": hz.haze, "front_solid": hz.front_solid,
            "outside_opacity": hz.outside_opacity, "cells_outside_bounds": float(outside),
            "alpha_iou": float(geo["alpha_iou"]), "depth_err_rel": float(geo["depth_err_rel"])}


def format_metrics(m: dict[str, float]) -> list[str]:
    """Table cells for :data:`COLUMNS`."""
    cells = []
    for key, _ in COLUMNS:
        v = m[key]
        if key in ("haze", "front_solid", "outside_opacity", "depth_err_rel"):
            cells.append(f"{100 * v:.2f} %")
        elif key == "cells_outside_bounds":
            cells.append(f"{int(v)}")
        else:
            cells.append(f"{v:.3f}")
    return cells


def shape_source_images(rec: NeRFCheckpoint, cameras: Cameras) -> torch.Tensor:  # -> [n, 3, H, W]
    """``F_rec``'s renders over white, as the stand-in's ``shape_reference`` wants them."""
    return render_views(rec, cameras).rgb.permute(0, 3, 1, 2).contiguous()
