"""The cameras a stylization iterates over: training views in dataset order, optionally with novel views.

NeRF-Art renders one full training view per iteration, in dataset order (spec Section 1). Because our source
image ``I_src`` is ``F_rec``'s render rather than a photo (spec Section 10), cameras with no photo can join the
set: :func:`interpolate_cameras` places novel cameras between consecutive training cameras (positions and
intrinsics interpolated linearly, rotations by quaternion slerp), and :func:`stylization_views` merges them into
the sequence at their place along the path.

Resolution: ``scale`` is relative to the capture's **original** image size (the paper's 270×480 is scale 0.5 of
fangzhou's 540×960), i.e. the checkpoint's training cameras are resized by ``scale / resolution_scale`` of the
reconstruction. ``max_side`` caps the longer side on top of that (the ``tiny`` preset).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from captures.cameras import Cameras
from captures.colmap import qvec_to_rotmat, rotmat_to_qvec

__all__ = ["StylizationViews", "growth_zoom", "interpolate_cameras", "slerp_rotation", "stylization_views", "zoomed_out"]


def slerp_rotation(r0: np.ndarray, r1: np.ndarray, t: float) -> np.ndarray:  # [3, 3], [3, 3] -> [3, 3]
    """Spherical linear interpolation between two ``(3, 3)`` rotations (shortest arc), ``t`` in [0, 1]."""
    q0, q1 = rotmat_to_qvec(r0), rotmat_to_qvec(r1)
    dot = float(np.dot(q0, q1))
    if dot < 0.0:  # q and -q are the same rotation: take the shorter way round
        q1, dot = -q1, -dot
    if dot > 0.9995:
        q = q0 + t * (q1 - q0)  # nearly equal: linear blend, renormalised below
    else:
        theta = np.arccos(np.clip(dot, -1.0, 1.0))
        q = (np.sin((1.0 - t) * theta) * q0 + np.sin(t * theta) * q1) / np.sin(theta)
    return qvec_to_rotmat(q / np.linalg.norm(q))


def interpolate_cameras(cameras: Cameras, positions: np.ndarray) -> Cameras:
    """Cameras at fractional positions ``u`` along the sequence ``cameras[0], cameras[1], ...``.

    ``u = k + f`` (``0 <= f < 1``) blends camera ``k`` and ``k + 1``: centre and ``fx, fy, cx, cy`` linearly,
    rotation by slerp. Image size and lens distortion are camera ``k``'s (sizes must stay whole pixels).

    Args:
        cameras: ``n >= 2`` cameras in path order.
        positions: ``(m,)`` values in ``[0, n - 1]``.

    Returns:
        ``m`` cameras named ``"novel_<u>"``.
    """
    n = len(cameras)
    u = np.asarray(positions, dtype=np.float64).reshape(-1)
    if n < 2:
        raise ValueError(f"interpolating needs at least 2 cameras, got {n}")
    if u.size and (u.min() < 0 or u.max() > n - 1):
        raise ValueError(f"positions must lie in [0, {n - 1}], got [{u.min()}, {u.max()}]")
    k = np.minimum(np.floor(u).astype(np.int64), n - 2)
    f = u - k
    c2w = np.tile(np.eye(4), (u.size, 1, 1))
    for j in range(u.size):
        a, b = cameras.c2w[k[j]], cameras.c2w[k[j] + 1]
        c2w[j, :3, :3] = slerp_rotation(a[:3, :3], b[:3, :3], float(f[j]))
        c2w[j, :3, 3] = (1.0 - f[j]) * a[:3, 3] + f[j] * b[:3, 3]

    def lerp(x: np.ndarray) -> np.ndarray:
        return (1.0 - f) * x[k] + f * x[k + 1]

    return Cameras(c2w=c2w, fx=lerp(cameras.fx), fy=lerp(cameras.fy), cx=lerp(cameras.cx), cy=lerp(cameras.cy),
                   width=cameras.width[k], height=cameras.height[k], distortion=cameras.distortion[k],
                   names=[f"novel_{v:.3f}" for v in u])


def _novel_positions(n_train: int, n_novel: int) -> np.ndarray:
    """``n_novel`` positions strictly between consecutive training cameras, spread evenly over the gaps.

    Novel view j goes to gap ``floor((j + 0.5) (n - 1) / m)``; a gap holding ``c`` novel views places them at
    fractions ``1/(c+1) .. c/(c+1)``, so no novel camera coincides with a training camera.
    """
    gaps = n_train - 1
    gap_of = np.floor((np.arange(n_novel) + 0.5) * gaps / n_novel).astype(np.int64)
    out = []
    for g in range(gaps):
        c = int((gap_of == g).sum())
        out.extend(g + (i + 1) / (c + 1) for i in range(c))
    return np.asarray(out, dtype=np.float64)


@dataclass
class StylizationViews:
    """The view sequence of a stylization, in world coordinates at the stylization resolution.

    Attributes:
        cameras: ``n_views`` cameras in iteration order (iteration ``i`` uses view ``i % n_views``).
        is_novel: ``n_views`` flags, True for interpolated cameras (no photo exists for them).
        source_index: ``n_views`` indices into the checkpoint's ``cameras`` (-1 for novel views).
        factor: resize factor applied to the checkpoint's training-resolution cameras.
    """

    cameras: Cameras
    is_novel: list[bool]
    source_index: list[int]
    factor: float

    def __len__(self) -> int:
        return len(self.cameras)


def stylization_views(cameras: Cameras, train_indices: list[int], *, resolution_scale: float, scale: float,
                      max_side: int | None = None, novel_views: int = 0) -> StylizationViews:
    """Training views in dataset order, resized for stylization, with ``novel_views`` interpolated cameras.

    Args:
        cameras: the checkpoint's cameras (world coordinates, training resolution).
        train_indices: which of them were trained on (the stylization views); empty means all.
        resolution_scale: the reconstruction's ``resolution_scale`` (training size / original size).
        scale: stylization size / original capture size, in (0, 1] (0.5: the paper's 270×480 for fangzhou).
        max_side: optional cap on the longer image side, in pixels.
        novel_views: interpolated cameras to add (0: training views only).

    Returns:
        :class:`StylizationViews`.
    """
    if not 0 < scale <= 1:
        raise ValueError(f"scale must be in (0, 1], got {scale}")
    if not 0 < resolution_scale <= 1:
        raise ValueError(f"resolution_scale must be in (0, 1], got {resolution_scale}")
    if max_side is not None and max_side < 1:
        raise ValueError(f"max_side must be >= 1 or None, got {max_side}")
    if novel_views < 0:
        raise ValueError(f"novel_views must be >= 0, got {novel_views}")
    index = list(train_indices) if train_indices else list(range(len(cameras)))
    if not index:
        raise ValueError("the checkpoint has no cameras to stylize from")
    if min(index) < 0 or max(index) >= len(cameras):
        raise ValueError(f"train_indices must lie in [0, {len(cameras)}), got [{min(index)}, {max(index)}]")
    train = cameras.select(index)
    factor = scale / resolution_scale
    if max_side is not None:
        longest = float(np.max(np.maximum(train.width, train.height)))
        factor = min(factor, max_side / longest)
    if novel_views and len(train) < 2:
        raise ValueError(f"novel views are interpolated between training views, but there is only {len(train)}")
    u_train = np.arange(len(train), dtype=np.float64)
    u_novel = _novel_positions(len(train), novel_views) if novel_views else np.zeros(0)
    merged = train if not novel_views else _concat(train, interpolate_cameras(train, u_novel))
    u_all = np.concatenate([u_train, u_novel])
    order = np.argsort(u_all, kind="stable")
    cams = merged.select(order).scaled(factor)
    is_novel = [bool(i >= len(train)) for i in order]
    source_index = [index[i] if i < len(train) else -1 for i in order]
    return StylizationViews(cameras=cams, is_novel=is_novel, source_index=source_index, factor=factor)


def _concat(a: Cameras, b: Cameras) -> Cameras:
    return Cameras(c2w=np.concatenate([a.c2w, b.c2w]), fx=np.concatenate([a.fx, b.fx]),
                   fy=np.concatenate([a.fy, b.fy]), cx=np.concatenate([a.cx, b.cx]),
                   cy=np.concatenate([a.cy, b.cy]), width=np.concatenate([a.width, b.width]),
                   height=np.concatenate([a.height, b.height]),
                   distortion=np.concatenate([a.distortion, b.distortion]), names=[*a.names, *b.names])


def zoomed_out(cameras: Cameras, factors: np.ndarray | float) -> Cameras:
    """The same cameras with a wider view: focal lengths divided by ``factors`` (one per camera, or one for
    all, each >= 1); position, rotation, principal point and image size are kept, so the subject appears
    ``1 / factor`` as large around the same image point."""
    f = np.broadcast_to(np.asarray(factors, dtype=np.float64), (len(cameras),))
    if not np.all(np.isfinite(f)) or np.any(f < 1.0):
        raise ValueError(f"zoom-out factors must be finite and >= 1, got {f.tolist()}")
    return Cameras(c2w=cameras.c2w.copy(), fx=cameras.fx / f, fy=cameras.fy / f, cx=cameras.cx.copy(),
                   cy=cameras.cy.copy(), width=cameras.width.copy(), height=cameras.height.copy(),
                   distortion=cameras.distortion.copy(), names=list(cameras.names))


def growth_zoom(cameras: Cameras, silhouettes: list[np.ndarray], depths: np.ndarray, distance: float,
                max_zoom: float) -> np.ndarray:  # -> [N]
    """Per camera, how far to widen the view so that what may grow around the subject is seen.

    A head capture frames the head closely (fangzhou's fills 95 % of the height of its views), so what a style
    adds above or beside it (a hat, horns) would form outside every image the losses see, and no loss could ask
    for it. For each image side (left, right, top, bottom) where the subject's silhouette stays inside the image,
    the view widens until the silhouette grown by ``distance`` (in pixels: ``distance * f / depth``) fits too;
    sides where the silhouette already touches the frame (the shoulders of a head capture) ask for nothing. The
    factor lies in ``[1, max_zoom]``.

    Args:
        cameras: ``N`` cameras.
        silhouettes: ``N`` bool images ``(h, w)`` of where the subject is seen in each view, at any resolution of
            that view (a smaller image of the same field of view).
        depths: ``(N,)`` the subject's distance along each camera's viewing axis (the units of ``distance``);
            views with a depth <= 0 are left as they are.
        distance: how far the subject may grow.
        max_zoom: the largest factor (>= 1).

    Returns:
        ``(N,)`` factors for :func:`zoomed_out`.
    """
    if not (math.isfinite(max_zoom) and max_zoom >= 1.0):
        raise ValueError(f"max_zoom must be a finite number >= 1, got {max_zoom!r}")
    if not (math.isfinite(distance) and distance >= 0):
        raise ValueError(f"distance must be a finite number >= 0, got {distance!r}")
    if len(silhouettes) != len(cameras) or len(np.atleast_1d(depths)) != len(cameras):
        raise ValueError(f"need one silhouette and one depth per camera ({len(cameras)}), got {len(silhouettes)} "
                         f"and {len(np.atleast_1d(depths))}")
    out = np.ones(len(cameras))
    for i, mask in enumerate(silhouettes):
        mask = np.asarray(mask, dtype=bool)
        z = float(np.atleast_1d(depths)[i])
        if not mask.any() or not z > 0 or distance == 0:
            continue
        w, h = float(cameras.width[i]), float(cameras.height[i])
        sx, sy = w / mask.shape[1], h / mask.shape[0]
        cols, rows = np.nonzero(mask.any(axis=0))[0], np.nonzero(mask.any(axis=1))[0]
        # The silhouette's extremes in full-size pixels (outer pixel edges), then grown by the distance.
        left, right = cols[0] * sx, (cols[-1] + 1) * sx
        top, bottom = rows[0] * sy, (rows[-1] + 1) * sy
        gx, gy = distance * float(cameras.fx[i]) / z, distance * float(cameras.fy[i]) / z
        cx, cy = float(cameras.cx[i]), float(cameras.cy[i])
        sides = [  # (the silhouette's reach towards each side, the grown one's), as fractions of the way to the edge
            ((cx - left) / cx, (cx - left + gx) / cx),
            ((right - cx) / (w - cx), (right - cx + gx) / (w - cx)),
            ((cy - top) / cy, (cy - top + gy) / cy),
            ((bottom - cy) / (h - cy), (bottom - cy + gy) / (h - cy)),
        ]
        # A silhouette in the image's outermost pixels touches the frame: the subject goes on beyond it.
        touches = (cols[0] == 0, cols[-1] == mask.shape[1] - 1, rows[0] == 0, rows[-1] == mask.shape[0] - 1)
        need = [grown for (_, grown), touching in zip(sides, touches, strict=True) if not touching]
        if need:
            out[i] = float(np.clip(max(need), 1.0, max_zoom))
    return out
