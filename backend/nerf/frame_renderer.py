"""Fast rendering of whole frames (no gradients): the ``render`` job, turntables, previews.

Training renders with :func:`~backend.nerf.rendering.render_rays`, which culls samples with a density-only
pass and then evaluates the full field on the survivors: right for training (the kept samples are what
back-propagation needs) but every visible sample pays the hash encoding twice. A frame renderer needs
no samples afterwards, so :class:`FrameRenderer` marches in *windows* instead (instant-ngp's inference
loop): each round evaluates the full field once on the next window of occupied steps of every ray that is
still visible, composites them into per-ray accumulators and retires the rays whose transmittance fell
below ``early_stop_eps``. Windows double in length, so a frame takes a handful of rounds.

On CUDA the field is the fused Triton kernel (:class:`~backend.nerf._triton_field.FusedField`, float16
tables and weights with float32 accumulation) when the architecture allows it; elsewhere it is the model's
own (PyTorch) field, so the CPU tests exercise the same marching and compositing code.

Compositing passes (:meth:`FrameRenderer.render_passes`, what an OpenEXR render asks for) add, per pixel,
Blender's Depth pass (``Z``: distance along the camera's view axis, in the units of the scene the camera
lives in, :data:`BACKGROUND_DEPTH` where the pixel is mostly empty) and its Normal pass (world-space
normals, weighted by coverage as Cycles accumulates them). Normals are the negated, normalised density
gradient (central differences of the model's PyTorch density: the fused kernel gives no gradients) at the
samples that carry visible weight, accumulated with those weights; they cost extra only when asked for.

**The subject.** Given subject bounds (:class:`~backend.nerf.subject.SubjectBounds`), every ray is marched
only where it crosses them, so a frame shows the subject alone, transparent elsewhere (the background of a
capture without mattes is never sampled). Given a second model for the background too (the reconstruction a
stylized model came from), each ray is marched in three segments: the background model before the bounds, the
subject's model inside them, the background model after them; :func:`composite_segments` joins them exactly,
so the background keeps its reconstructed look around a stylized subject.

Example::

    renderer = FrameRenderer(checkpoint)
    rgba, depth = renderer.render(cameras, 0)     # (H, W, 4) premultiplied, (H, W) world units along the ray
    passes = renderer.render_passes(cameras, 0, placement=placement)   # + Z and normals in scene units
    subject_only = FrameRenderer(stylized, subject=stylized.subject)         # alpha 0 outside the bounds
    with_room = FrameRenderer(stylized, subject=stylized.subject, background=reconstruction)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from captures.cameras import Cameras

from .checkpoint import NeRFCheckpoint
from .marching import MarchSettings, _intervals, occupied_steps, ray_interval
from .model import NeRFModel
from .occupancy import OccupancyGrid
from .packed import packed_info_from_ray_indices
from .rays import rays_for_image
from .subject import SubjectBounds
from .volrend import exclusive_sum_packed

# What Cycles writes into its Depth pass where a pixel saw nothing (``film_get_pass_pixel_depth``: an empty
# depth sample reads back as 1e10; checked on a Cycles render in Blender 4.2, 5.0 and 5.2). Blender's Z Combine
# then keeps whatever the other input has there.
BACKGROUND_DEPTH = 1e10
# Cycles takes the Depth pass from one sample per pixel (not anti-aliased): a pixel's Z is its surface's or
# the background's. The surface's where the NeRF covers at least this much of the pixel (its likelier value).
DEPTH_MIN_OPACITY = 0.5
# Samples whose weight is below this add no normal (their direction is noise and they would cost the
# gradient's six density evaluations); the sum is renormalised, so the dropped weight only tilts it.
NORMAL_MIN_WEIGHT = 0.02


@dataclass
class FramePasses:
    """One frame's compositing passes (all float32 on the renderer's device).

    Attributes:
        rgba: ``(H, W, 4)`` premultiplied colour and opacity, as :meth:`FrameRenderer.render` returns.
        depth: ``(H, W)`` Blender Depth pass: distance along the camera's view axis (camera-space ``-z`` in
            Blender's axes) in scene units; :data:`BACKGROUND_DEPTH` where opacity < :data:`DEPTH_MIN_OPACITY`.
        normal: ``(H, W, 3)`` Blender Normal pass: scene-world unit normals times opacity (0 where empty), or
            None when not asked for.
    """

    rgba: torch.Tensor
    depth: torch.Tensor
    normal: torch.Tensor | None


@dataclass
class RayAccum:
    """What marching one segment of each ray leaves: sums over its samples of the weight ``w`` times a quantity.

    Weights are relative to the segment's start (its first sample has transmittance 1), so ``opacity`` is one
    minus the segment's transmittance.

    Attributes:
        rgb: ``(n_rays, 3)`` premultiplied colour ``sum w c``.
        opacity: ``(n_rays,)`` ``sum w``.
        depth_sum: ``(n_rays,)`` ``sum w t`` (ray distance ``t`` in model units).
        normal_sum: ``(n_rays, 3)`` ``sum w n`` of unit normals, or None when normals were not asked for.
    """

    rgb: torch.Tensor
    opacity: torch.Tensor
    depth_sum: torch.Tensor
    normal_sum: torch.Tensor | None

    @classmethod
    def zeros(cls, n_rays: int, device: torch.device, with_normals: bool) -> RayAccum:
        z = torch.zeros(n_rays, device=device, dtype=torch.float32)
        z3 = torch.zeros(n_rays, 3, device=device, dtype=torch.float32)
        return cls(z3, z, z.clone(), z3.clone() if with_normals else None)

    def depth(self) -> torch.Tensor:  # [n_rays]
        """Expected ray distance ``sum w t / sum w`` (0 where the rays met nothing)."""
        return torch.where(self.opacity > 0, self.depth_sum / self.opacity.clamp_min(1e-10),
                           torch.zeros_like(self.depth_sum))


def composite_segments(parts: Sequence[RayAccum]) -> RayAccum:
    r"""Join the accumulators of consecutive segments of the same rays (front to back) into the whole ray's.

    A later segment's weights are scaled by the transmittance ``T_k = 1 - opacity_k`` of every segment before
    it, and every accumulated quantity is a sum of weights times something, so colour, opacity, depth and normal
    sums compose alike:

    .. math::

        C = C_1 + T_1 \left(C_2 + T_2 \left(C_3 + \dots\right)\right)

    This is exactly the volume-rendering integral of the whole ray when the segments partition it.

    Args:
        parts: one or more :class:`RayAccum` of the same ``n_rays`` rays, in ray order. Normal sums are joined
            when every part has them.

    Returns:
        The joined :class:`RayAccum` (one segment comes back as it is).
    """
    if not parts:
        raise ValueError("composite_segments needs at least one segment")
    n = parts[0].opacity.shape
    if any(p.opacity.shape != n for p in parts):
        raise ValueError(f"segments of different ray counts: {[tuple(p.opacity.shape) for p in parts]}")
    with_normals = all(p.normal_sum is not None for p in parts)
    acc = parts[-1]
    rgb, opacity, depth_sum = acc.rgb, acc.opacity, acc.depth_sum
    normal_sum = acc.normal_sum if with_normals else None
    for p in reversed(parts[:-1]):
        t = 1.0 - p.opacity
        rgb = p.rgb + t[:, None] * rgb
        opacity = p.opacity + t * opacity
        depth_sum = p.depth_sum + t * depth_sum
        if normal_sum is not None and p.normal_sum is not None:
            normal_sum = p.normal_sum + t[:, None] * normal_sum
    return RayAccum(rgb, opacity, depth_sum, normal_sum)


class FrameRenderer:
    """Renders frames of one model; build it once per job (it snapshots the field for the fused kernel).

    Args:
        target: a checkpoint (cameras in world coordinates) or a bare model (cameras in model coordinates).
        subject: render only what lies inside these bounds (model coordinates): frames hold the subject alone,
            transparent elsewhere. None renders the whole scene.
        background: a second checkpoint or model in the same model coordinates (the reconstruction a stylized
            ``target`` came from) that renders everything outside ``subject`` (which it then needs): rays are
            marched in front of the bounds, inside and behind them, and joined by :func:`composite_segments`.
        early_stop_eps: a ray stops once its transmittance is below this (the colour error it allows is at
            most this, far under one 8-bit level at the default).
        fused: ``"auto"`` (fused Triton field on CUDA when supported), ``"on"`` (required) or ``"off"``.
        max_rays: rays marched at once (bounds the packed-step arrays: about 16 bytes per occupied step).
        max_samples: samples evaluated per field call (bounds the intermediates of the PyTorch field).
        first_window: occupied steps per ray in the first round; each later window is twice as long.
    """

    def __init__(
        self,
        target: NeRFCheckpoint | NeRFModel,
        *,
        subject: SubjectBounds | None = None,
        background: NeRFCheckpoint | NeRFModel | None = None,
        early_stop_eps: float | None = None,
        fused: str = "auto",
        max_rays: int = 2**19,
        max_samples: int = 2**24,
        first_window: int = 64,
    ) -> None:
        if isinstance(target, NeRFCheckpoint):
            self.model, self.normalization = target.model, target.normalization
            default_eps = target.config.early_stop_eps
        elif isinstance(target, NeRFModel):
            self.model, self.normalization = target, None
            default_eps = 1e-4
        else:
            raise ValueError(f"expected a NeRFCheckpoint or NeRFModel, got {type(target).__name__}")
        if fused not in ("auto", "on", "off"):
            raise ValueError(f"fused must be 'auto', 'on' or 'off', got {fused!r}")
        self.early_stop_eps = default_eps if early_stop_eps is None else float(early_stop_eps)
        if not 0.0 < self.early_stop_eps < 1.0:
            raise ValueError(f"early_stop_eps must be in (0, 1), got {self.early_stop_eps}")
        if min(max_rays, max_samples, first_window) < 1:
            raise ValueError("max_rays, max_samples and first_window must be >= 1")
        self.max_rays, self.max_samples, self.first_window = max_rays, max_samples, first_window
        self._fused = self._fused_field(fused)  # None: the model's own (PyTorch) field
        self.subject = subject
        self._background: FrameRenderer | None = None
        self._union: OccupancyGrid | None = None  # both models' cells, where the background has cells of its own
        if background is not None:
            if subject is None:
                raise ValueError("a background model is rendered outside the subject bounds: give subject too")
            bg = FrameRenderer(background, early_stop_eps=self.early_stop_eps, fused=fused, max_rays=max_rays,
                               max_samples=max_samples, first_window=first_window)
            if bg.device != self.device:
                raise ValueError(f"the background model is on {bg.device}, the subject's on {self.device}")
            if not _same_normalization(bg.normalization, self.normalization):
                raise ValueError("the background model has another normalization (world <-> model mapping) than "
                                 "the subject's: they must come from the same reconstruction")
            if (bg.model.domain != self.model.domain
                    or bg.model.occupancy.resolution != self.model.occupancy.resolution):
                raise ValueError("the background model has another scene domain or occupancy grid than the "
                                 "subject's: they must come from the same reconstruction")
            self._background = bg
            # Inside the bounds the subject's model owns its own occupied cells and the background model the rest
            # of its own: the room a stylization's grown bounds took in but left out of its grid (a wall close
            # behind the head) still renders, as the stylization's own compositing showed it
            # (backend.stylize.subject_render). Marched over the union of both grids.
            own, theirs = self.model.occupancy.binary, bg.model.occupancy.binary
            if bool((theirs & ~own).any()):  # else (e.g. the same model twice) the subject's grid is the union
                self._union = OccupancyGrid(self.model.occupancy.resolution, device=self.device)
                self._union.binary.copy_(own | theirs)

    @property
    def field_impl(self) -> str:
        """``"fused-triton"`` or ``"pytorch"``: which field evaluates the samples."""
        return "pytorch" if self._fused is None else "fused-triton"

    @property
    def has_background_model(self) -> bool:
        """Whether a second model renders the background outside the subject bounds."""
        return self._background is not None

    def _fused_field(self, fused: str) -> Any:
        """The :class:`~backend.nerf._triton_field.FusedField` snapshot, or None where it cannot be used."""
        why = "fused kernel turned off"
        if fused != "off":
            why = "the fused field kernel needs a CUDA device"
            if self.model.device.type == "cuda":
                try:
                    from ._triton_field import FusedField, fused_field_supported
                except ImportError as exc:  # no Triton
                    why = f"Triton is not importable ({exc})"
                else:
                    why = fused_field_supported(self.model.field) or ""
                    if not why:
                        return FusedField(self.model.field)
        if fused == "on":
            raise ValueError(f"fused='on' but {why}")
        return None

    @property
    def device(self) -> torch.device:
        return self.model.device

    @torch.no_grad()
    def render_rays(
        self,
        rays_o: torch.Tensor,  # [n_rays, 3] model coordinates
        rays_d: torch.Tensor,  # [n_rays, 3] unit directions
        check_cancel: Callable[[], None] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # [n_rays, 3], [n_rays], [n_rays]
        """Premultiplied ``rgb (n_rays, 3)``, ``opacity (n_rays,)`` and expected ``depth (n_rays,)`` (model
        units, 0 where nothing was hit) of model-coordinate rays.

        ``check_cancel`` is called before every chunk of rays and every batch of at most ``max_samples``
        samples; whatever it raises ends the render there (a job's cancel lands within one batch, not one frame).
        """
        rgb, opacity, depth, _ = self._march(rays_o, rays_d, check_cancel, with_normals=False)
        return rgb, opacity, depth

    def _march(
        self,
        rays_o: torch.Tensor,  # [n_rays, 3]
        rays_d: torch.Tensor,  # [n_rays, 3]
        check_cancel: Callable[[], None] | None,
        with_normals: bool,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """:meth:`render_rays` plus, ``with_normals``, the weighted sum of unit normals ``(n_rays, 3)``."""
        if rays_o.ndim != 2 or rays_o.shape[-1] != 3 or rays_d.shape != rays_o.shape:
            raise ValueError(f"rays_o and rays_d must both be (n_rays, 3), got {tuple(rays_o.shape)} and "
                             f"{tuple(rays_d.shape)}")
        check = check_cancel or _no_check
        parts = [self._render_chunk(rays_o[c0:c0 + self.max_rays], rays_d[c0:c0 + self.max_rays], check,
                                    with_normals)
                 for c0 in range(0, rays_o.shape[0], self.max_rays)]
        if not parts:
            z = rays_o.new_zeros(0)
            return rays_o.new_zeros(0, 3), z, z.clone(), rays_o.new_zeros(0, 3) if with_normals else None
        rgb, opacity, depth, normals = zip(*parts, strict=True)
        return (torch.cat(rgb), torch.cat(opacity), torch.cat(depth),
                torch.cat(normals) if with_normals else None)  # type: ignore[arg-type]

    def _render_chunk(
        self,
        rays_o: torch.Tensor,  # [n, 3]
        rays_d: torch.Tensor,  # [n, 3]
        check_cancel: Callable[[], None],
        with_normals: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        check_cancel()
        rays_o = rays_o.float().contiguous()
        rays_d = rays_d.float().contiguous()
        acc = self._march_segments(rays_o, rays_d, check_cancel, with_normals)
        return acc.rgb, acc.opacity, acc.depth(), acc.normal_sum

    def _march_segments(
        self,
        rays_o: torch.Tensor,  # [n, 3] float32
        rays_d: torch.Tensor,  # [n, 3] float32
        check_cancel: Callable[[], None],
        with_normals: bool,
    ) -> RayAccum:
        """The whole scene, the subject alone, or background + subject + background (see the class)."""
        model = self.model
        if self._background is None:
            # With subject bounds each ray's interval is cut to them: only the subject is sampled.
            t_min, t_max = ray_interval(rays_o, rays_d, model.domain, model.settings, self.subject)
            return self._march_interval(rays_o, rays_d, t_min, t_max, check_cancel, with_normals)
        bg, subject = self._background, self.subject
        if subject is None:  # __init__ refuses a background model without bounds
            raise RuntimeError("a background model without subject bounds")
        s_min, s_max = subject.ray_interval(rays_o, rays_d)
        b_min, b_max = ray_interval(rays_o, rays_d, bg.model.domain, bg.model.settings)
        hit = s_max > s_min
        # A ray that misses the bounds is all front segment; one that starts inside them has no front segment.
        front_end = torch.where(hit, torch.minimum(b_max, s_min), b_max)
        back_start = torch.where(hit, torch.maximum(b_min, s_max), b_max)
        i_min, i_max = ray_interval(rays_o, rays_d, model.domain, model.settings, subject)
        front = bg._march_interval(rays_o, rays_d, b_min, front_end, check_cancel, with_normals)
        tau = _optical_depth(front.opacity)
        inside = self._march_interval(rays_o, rays_d, i_min, i_max, check_cancel, with_normals, tau_start=tau,
                                      room=None if self._union is None else bg)
        tau = tau + _optical_depth(inside.opacity)
        back = bg._march_interval(rays_o, rays_d, back_start, b_max, check_cancel, with_normals, tau_start=tau)
        return composite_segments([front, inside, back])

    def _march_interval(
        self,
        rays_o: torch.Tensor,  # [n, 3] float32
        rays_d: torch.Tensor,  # [n, 3] float32
        t_min: torch.Tensor,  # [n] start of each ray's segment
        t_max: torch.Tensor,  # [n] end of each ray's segment (<= t_min: empty)
        check_cancel: Callable[[], None],
        with_normals: bool,
        tau_start: torch.Tensor | None = None,  # [n] optical depth in front of the segment
        room: FrameRenderer | None = None,
    ) -> RayAccum:
        """March this renderer's model over ``[t_min, t_max]`` of each ray, weights relative to ``t_min``.

        ``tau_start`` only moves the early stop: a ray stops once the optical depth before the segment plus
        inside it makes the whole ray's transmittance fall below ``early_stop_eps`` (rays already past it are
        not marched at all). ``room``: the background renderer, which renders the samples that fall in its
        occupied cells but not in this model's (the union of both grids is marched).
        """
        model, settings = self.model, self.model.settings
        occupancy = model.occupancy if room is None or self._union is None else self._union
        n = rays_o.shape[0]
        acc = RayAccum.zeros(n, rays_o.device, with_normals)
        tau_stop = -math.log(self.early_stop_eps)
        if tau_start is not None:
            t_max = torch.where(tau_start > tau_stop, t_min, t_max)
        occ_rays, occ_steps = occupied_steps(rays_o, rays_d, t_min, t_max, occupancy, model.domain, settings,
                                             mask_fn=model._mask_fn)
        if occ_rays.numel() == 0:
            return acc
        info = packed_info_from_ray_indices(occ_rays, n)
        counts = info[:, 1]
        rank = torch.arange(occ_rays.shape[0], device=rays_o.device) - info[:, 0][occ_rays]
        tau_ray = torch.zeros(n, device=rays_o.device, dtype=torch.float32)  # optical depth so far
        # Optical depth in front of the segment, for the early stop only (the weights start at this segment).
        tau_before = torch.zeros_like(tau_ray) if tau_start is None else tau_start.float()
        alive = counts > 0
        lo, width = 0, self.first_window
        while True:
            hi = lo + width
            sel = torch.nonzero((rank >= lo) & (rank < hi) & alive[occ_rays]).squeeze(-1)  # one host sync
            if sel.numel() == 0:
                break
            # Sub-batches keep ray order, so a ray split between two of them continues from tau_ray.
            for part in sel.split(self.max_samples):
                check_cancel()
                ray, step = occ_rays[part], occ_steps[part]
                if room is None:
                    rgbs, sd, t_mid = self._window(rays_o, rays_d, t_min, t_max, ray, step, settings)
                else:
                    rgbs, sd, t_mid = self._window_with_room(room, rays_o, rays_d, t_min, t_max, ray, step)
                tau = exclusive_sum_packed(sd, ray, packed_info_from_ray_indices(ray, n)) + tau_ray[ray]
                w = torch.exp(-tau) * -torch.expm1(-sd)
                acc.rgb.index_add_(0, ray, w[:, None] * rgbs.float())
                acc.opacity.index_add_(0, ray, w)
                acc.depth_sum.index_add_(0, ray, w * t_mid)
                tau_ray.index_add_(0, ray, sd)
                if acc.normal_sum is not None:
                    self._add_normals(acc.normal_sum, rays_o, rays_d, ray, t_mid, w, check_cancel, room)
            if hi >= settings.max_steps:
                break
            alive = alive & (tau_ray + tau_before <= tau_stop) & (counts > hi)
            lo, width = hi, width * 2
        return acc

    def _window(
        self,
        rays_o: torch.Tensor,  # [n, 3]
        rays_d: torch.Tensor,  # [n, 3]
        t_min: torch.Tensor,  # [n]
        t_max: torch.Tensor,  # [n]
        ray: torch.Tensor,  # [N] sample's ray
        step: torch.Tensor,  # [N] sample's step of ``settings``' schedule from t_min
        settings: MarchSettings,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # [N, 3], [N], [N]
        """This model's ``rgb (N, 3)``, optical thickness ``(N,)`` and interval midpoint ``(N,)`` of the
        samples ``(ray, step)``, float32."""
        if self._fused is not None:  # intervals, positions and field in one kernel
            return self._fused.window(rays_o, rays_d, t_min, t_max, ray, step, settings)
        t0, t1, pos = _intervals(rays_o, rays_d, t_min, t_max, ray, step, settings)
        rgbs, sigmas = self.model.radiance(pos, rays_d[ray])
        return rgbs.float(), sigmas.float() * (t1 - t0), 0.5 * (t0 + t1)

    def _window_with_room(
        self,
        room: FrameRenderer,
        rays_o: torch.Tensor,  # [n, 3]
        rays_d: torch.Tensor,  # [n, 3]
        t_min: torch.Tensor,  # [n]
        t_max: torch.Tensor,  # [n]
        ray: torch.Tensor,  # [N]
        step: torch.Tensor,  # [N]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # [N, 3], [N], [N]
        """:meth:`_window` on this model's step schedule, each sample from the model whose cell it lies in:
        this one's where it has one, else ``room``'s."""
        settings = self.model.settings
        _, _, pos = _intervals(rays_o, rays_d, t_min, t_max, ray, step, settings)
        own = self.model.occupied(pos)
        rgbs = pos.new_empty(ray.shape[0], 3)
        sd, t_mid = pos.new_empty(ray.shape[0]), pos.new_empty(ray.shape[0])
        for renderer, pick in ((self, own), (room, ~own)):
            idx = torch.nonzero(pick).squeeze(-1)
            if idx.numel():
                rgbs[idx], sd[idx], t_mid[idx] = renderer._window(rays_o, rays_d, t_min, t_max, ray[idx], step[idx],
                                                                  settings)
        return rgbs, sd, t_mid

    def _add_normals(
        self,
        normals: torch.Tensor,  # [n, 3] accumulator
        rays_o: torch.Tensor,  # [n, 3]
        rays_d: torch.Tensor,  # [n, 3]
        ray: torch.Tensor,  # [N] sample's ray
        t_mid: torch.Tensor,  # [N] sample's distance along its ray
        w: torch.Tensor,  # [N] sample's rendering weight
        check_cancel: Callable[[], None],
        room: FrameRenderer | None = None,
    ) -> None:
        """Add ``w * n`` of the samples with weight >= :data:`NORMAL_MIN_WEIGHT` to their rays' ``normals``,
        ``n`` the negated, normalised density gradient at the sample (model coordinates); with ``room``, of
        the density of whichever model owns the point's cell (as :meth:`_window_with_room`)."""
        density = self.model.density
        if room is not None:
            def density(x: torch.Tensor) -> torch.Tensor:  # [N, 3] -> [N]
                return torch.where(self.model.occupied(x), self.model.density(x), room.model.density(x))
        keep = torch.nonzero(w >= NORMAL_MIN_WEIGHT).squeeze(-1)
        if keep.numel() == 0:
            return
        # Six points per sample: chunks of max_samples / 6 keep the field's intermediates as bounded as colour's.
        for part in keep.split(max(1, self.max_samples // 6)):
            check_cancel()
            r = ray[part]
            pos = rays_o[r] + rays_d[r] * t_mid[part, None]
            grad = density_gradient(density, pos, self.normal_step)
            n = -grad / grad.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            normals.index_add_(0, r, w[part, None] * n)

    @property
    def normal_step(self) -> float:
        """Finite-difference step of the normals, model units: one marching step (the finest distance the
        renderer resolves; smaller steps only add the hash grid's cell-to-cell noise)."""
        return float(self.model.settings.dt_min)

    @torch.no_grad()
    def render(
        self,
        cameras: Cameras,
        i: int,
        background: tuple[float, float, float] | torch.Tensor | None = None,
        check_cancel: Callable[[], None] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:  # [H, W, 4], [H, W]
        """Frame of camera ``i`` (world coordinates for a checkpoint, model coordinates for a bare model).

        ``check_cancel``: called between batches of samples (see :meth:`render_rays`).

        Returns:
            ``rgba (H, W, 4)`` float32 on the model's device (RGB premultiplied, or composited over
            ``background`` when given) and ``depth (H, W)`` float32 (world units for a checkpoint with a
            normalization; 0 where nothing was hit).
        """
        if not 0 <= i < len(cameras):
            raise ValueError(f"camera index {i} out of range for {len(cameras)} cameras")
        cams, scale = cameras, 1.0
        if self.normalization is not None:
            cams, scale = self.normalization.cameras_to_model(cameras), float(self.normalization.radius)
        rays_o, rays_d = rays_for_image(cams, i, device=self.device, dtype=torch.float32)
        rgb, opacity, depth = self.render_rays(rays_o, rays_d, check_cancel)
        if background is not None:
            bg = torch.as_tensor(background, dtype=torch.float32, device=self.device)
            rgb = rgb + (1.0 - opacity)[:, None] * bg
        h, w = int(cameras.height[i]), int(cameras.width[i])
        rgba = torch.cat([rgb, opacity[:, None]], dim=-1).reshape(h, w, 4)
        return rgba, (depth * scale).reshape(h, w)

    @torch.no_grad()
    def render_passes(
        self,
        cameras: Cameras,
        i: int,
        placement: np.ndarray | None = None,  # [4, 4]
        normals: bool = True,
        check_cancel: Callable[[], None] | None = None,
    ) -> FramePasses:
        """Colour, Blender Depth and Blender Normal passes of camera ``i`` (for a multilayer OpenEXR).

        The units chain: the model's ray distance ``t`` (model units, unit directions) times the
        normalization radius is capture-world distance; times ``d . forward`` (cosine between the ray and
        the camera's optical axis) it is view-axis depth; times the placement's uniform scale it is in the
        units of the Blender scene whose camera was sent (the add-on sends cameras mapped into capture world
        by ``inv(placement)``). Normals need only the rotations: model axes are capture-world axes (the
        normalization is a translation and a scale), and the placement's rotation turns them into scene axes.

        Args:
            cameras: as :meth:`render` (world cameras for a checkpoint).
            i: camera index.
            placement: ``(4, 4)`` matrix_world of the capture's placement empty (maps capture world into the
                scene: a similarity), or None (the scene is capture world).
            normals: whether to compute the Normal pass (the only pass that costs extra field evaluations).
            check_cancel: as :meth:`render_rays`.

        Raises:
            ValueError: a camera index out of range, or a placement that is not a similarity.
        """
        if not 0 <= i < len(cameras):
            raise ValueError(f"camera index {i} out of range for {len(cameras)} cameras")
        rotation, scale = placement_rotation_scale(placement)
        cams, radius = cameras, 1.0
        if self.normalization is not None:
            cams, radius = self.normalization.cameras_to_model(cameras), float(self.normalization.radius)
        rays_o, rays_d = rays_for_image(cams, i, device=self.device, dtype=torch.float32)
        rgb, opacity, t, summed = self._march(rays_o, rays_d, check_cancel, with_normals=normals)
        # OpenCV c2w: column 2 is the optical axis (Blender's camera -Z), unchanged by the normalization.
        forward = torch.as_tensor(cams.c2w[i][:3, 2], dtype=torch.float32, device=self.device)
        forward = forward / forward.norm()
        z = t * (rays_d @ forward) * (radius * scale)
        z = torch.where(opacity >= DEPTH_MIN_OPACITY, z, torch.full_like(z, BACKGROUND_DEPTH))
        h, w = int(cameras.height[i]), int(cameras.width[i])
        normal = None
        if summed is not None:
            rot = torch.as_tensor(rotation, dtype=torch.float32, device=self.device)
            length = summed.norm(dim=-1, keepdim=True)
            # Unit direction times coverage: a solid surface's normal is as long as its pixel coverage, as in
            # Cycles (which averages its samples' normals, the background's counting as 0).
            unit = torch.where(length > 1e-12, summed / length.clamp_min(1e-12), 0.0)
            normal = ((unit @ rot.T) * opacity[:, None]).reshape(h, w, 3)
        return FramePasses(rgba=torch.cat([rgb, opacity[:, None]], dim=-1).reshape(h, w, 4),
                           depth=z.reshape(h, w), normal=normal)


def density_gradient(
    density_fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,  # [N, 3]
    step: float,
) -> torch.Tensor:  # [N, 3]
    r"""Gradient of a density field by central differences (six evaluations per point).

    .. math::

        \partial_k \sigma(x) \approx \frac{\sigma(x + h e_k) - \sigma(x - h e_k)}{2h}

    Second-order accurate: the even terms cancel. (A four-point tetrahedral stencil is first-order only: across
    a surface a few steps thick its curvature term tilted normals by up to 20 degrees.)

    Args:
        density_fn: ``(M, 3) -> (M,)`` density.
        x: ``(N, 3)`` points.
        step: ``h``.

    Returns:
        ``(N, 3)`` float32 gradient.
    """
    e = torch.eye(3, dtype=torch.float32, device=x.device)
    offsets = torch.cat([e, -e]) * step  # [6, 3]
    sigma = density_fn((x.float()[:, None, :] + offsets[None]).reshape(-1, 3)).float().reshape(-1, 6)
    return (sigma[:, :3] - sigma[:, 3:]) / (2.0 * step)


def placement_rotation_scale(placement: np.ndarray | None) -> tuple[np.ndarray, float]:
    """The rotation ``(3, 3)`` and uniform scale of a placement matrix (identity and 1 for None).

    Raises:
        ValueError: when it is not a similarity (non-uniform scale, shear, mirror, zero scale) or not finite.
    """
    if placement is None:
        return np.eye(3), 1.0
    m = np.asarray(placement, dtype=np.float64)
    if m.shape != (4, 4) or not np.all(np.isfinite(m)):
        raise ValueError(f"placement must be a finite 4x4 matrix, got shape {m.shape}")
    scales = np.linalg.norm(m[:3, :3], axis=0)
    if np.any(scales < 1e-12) or np.ptp(scales) > 1e-4 * np.max(scales):
        raise ValueError(f"placement must scale uniformly (axis scales {np.round(scales, 6).tolist()})")
    rot = m[:3, :3] / scales
    if not np.allclose(rot.T @ rot, np.eye(3), atol=1e-4) or np.linalg.det(rot) < 0:
        raise ValueError("placement must be a rotation, a translation and one positive scale")
    return rot, float(np.mean(scales))


def _optical_depth(opacity: torch.Tensor) -> torch.Tensor:  # [n] -> [n]
    """``-log T`` of a segment from its opacity ``1 - T`` (large but finite where it is opaque)."""
    return -torch.log((1.0 - opacity).clamp_min(1e-30))


def _same_normalization(a: Any, b: Any) -> bool:
    """Whether two normalizations (or two Nones) map world to model coordinates the same way."""
    if a is None or b is None:
        return a is None and b is None
    return bool(np.allclose(a.center, b.center, rtol=0, atol=1e-9 * max(1.0, float(np.abs(a.center).max())))
                and math.isclose(float(a.radius), float(b.radius), rel_tol=1e-9))


def _no_check() -> None:
    """The default ``check_cancel``: a render that nothing cancels."""
