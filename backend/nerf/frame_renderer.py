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

Example::

    renderer = FrameRenderer(checkpoint)
    rgba, depth = renderer.render(cameras, 0)     # (H, W, 4) premultiplied, (H, W) world units
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from captures.cameras import Cameras

from .checkpoint import NeRFCheckpoint
from .marching import _intervals, occupied_steps, ray_interval
from .model import NeRFModel
from .packed import packed_info_from_ray_indices
from .rays import rays_for_image
from .volrend import exclusive_sum_packed


class FrameRenderer:
    """Renders frames of one model; build it once per job (it snapshots the field for the fused kernel).

    Args:
        target: a checkpoint (cameras in world coordinates) or a bare model (cameras in model coordinates).
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

    @property
    def field_impl(self) -> str:
        """``"fused-triton"`` or ``"pytorch"``: which field evaluates the samples."""
        return "pytorch" if self._fused is None else "fused-triton"

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
        if rays_o.ndim != 2 or rays_o.shape[-1] != 3 or rays_d.shape != rays_o.shape:
            raise ValueError(f"rays_o and rays_d must both be (n_rays, 3), got {tuple(rays_o.shape)} and "
                             f"{tuple(rays_d.shape)}")
        check = check_cancel or _no_check
        parts = [self._render_chunk(rays_o[c0:c0 + self.max_rays], rays_d[c0:c0 + self.max_rays], check)
                 for c0 in range(0, rays_o.shape[0], self.max_rays)]
        if not parts:
            z = rays_o.new_zeros(0)
            return rays_o.new_zeros(0, 3), z, z.clone()
        return tuple(torch.cat(p) for p in zip(*parts, strict=True))  # type: ignore[return-value]

    def _render_chunk(
        self,
        rays_o: torch.Tensor,  # [n, 3]
        rays_d: torch.Tensor,  # [n, 3]
        check_cancel: Callable[[], None],
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        check_cancel()
        model, settings = self.model, self.model.settings
        n = rays_o.shape[0]
        rays_o = rays_o.float().contiguous()
        rays_d = rays_d.float().contiguous()
        rgb = torch.zeros(n, 3, device=rays_o.device, dtype=torch.float32)
        opacity = torch.zeros(n, device=rays_o.device, dtype=torch.float32)
        depth = torch.zeros(n, device=rays_o.device, dtype=torch.float32)
        t_min, t_max = ray_interval(rays_o, rays_d, model.domain, settings)
        occ_rays, occ_steps = occupied_steps(rays_o, rays_d, t_min, t_max, model.occupancy, model.domain, settings,
                                             mask_fn=model._mask_fn)
        if occ_rays.numel() == 0:
            return rgb, opacity, depth
        info = packed_info_from_ray_indices(occ_rays, n)
        counts = info[:, 1]
        rank = torch.arange(occ_rays.shape[0], device=rays_o.device) - info[:, 0][occ_rays]
        tau_ray = torch.zeros(n, device=rays_o.device, dtype=torch.float32)  # optical depth so far
        tau_stop = -math.log(self.early_stop_eps)
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
                if self._fused is not None:  # intervals, positions and field in one kernel
                    rgbs, sd, t_mid = self._fused.window(rays_o, rays_d, t_min, t_max, ray, step, settings)
                else:
                    t0, t1, pos = _intervals(rays_o, rays_d, t_min, t_max, ray, step, settings)
                    rgbs, sigmas = self.model.radiance(pos, rays_d[ray])
                    sd, t_mid = sigmas.float() * (t1 - t0), 0.5 * (t0 + t1)
                tau = exclusive_sum_packed(sd, ray, packed_info_from_ray_indices(ray, n)) + tau_ray[ray]
                w = torch.exp(-tau) * -torch.expm1(-sd)
                rgb.index_add_(0, ray, w[:, None] * rgbs.float())
                opacity.index_add_(0, ray, w)
                depth.index_add_(0, ray, w * t_mid)
                tau_ray.index_add_(0, ray, sd)
            if hi >= settings.max_steps:
                break
            alive = alive & (tau_ray <= tau_stop) & (counts > hi)
            lo, width = hi, width * 2
        depth = torch.where(opacity > 0, depth / opacity.clamp_min(1e-10), torch.zeros_like(depth))
        return rgb, opacity, depth

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


def _no_check() -> None:
    """The default ``check_cancel``: a render that nothing cancels."""
