"""The NeRF model: field + occupancy grid + scene domain + marching settings, in model coordinates."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from .contraction import SCENE_KINDS, SceneDomain
from .field import FieldConfig, HashNeRFField
from .marching import MarchSettings, dense_occupied_mask, steps_to_cover
from .occupancy import OccupancyGrid
from .volrend import accumulate_along_rays, render_weight_from_density


@dataclass
class ModelConfig:
    """Everything needed to rebuild a :class:`NeRFModel` (stored in checkpoints).

    Attributes:
        field: network architecture.
        scene: ``"bounded"`` (box ``[-bound, bound]^3``; used with mattes / alpha) or ``"contract"``
            (unbounded, mip-NeRF 360 contraction; used when the background must be modelled).
        bound: box half size in model units (the ROI is the unit sphere).
        occupancy_resolution: occupancy grid cells per axis.
        render_steps: steps across the box diagonal (bounded) or across the ROI cube diagonal (contract);
            sets the smallest step ``dt_min = 2 sqrt(3) * extent / render_steps``.
        cone_angle: step growth with distance (0: uniform steps).
        near, far: marching range along rays; ``far`` only matters for contracted scenes.
    """

    field: FieldConfig = field(default_factory=FieldConfig)
    scene: str = "bounded"
    bound: float = 1.5
    occupancy_resolution: int = 128
    render_steps: int = 1024
    cone_angle: float = 0.0
    near: float = 0.05
    far: float = 1000.0

    def __post_init__(self) -> None:
        if isinstance(self.field, dict):
            self.field = FieldConfig.from_dict(self.field)
        if self.scene not in SCENE_KINDS:
            raise ValueError(f"scene must be one of {SCENE_KINDS}, got {self.scene!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})

    def domain(self) -> SceneDomain:
        return SceneDomain(self.scene, self.bound)

    def march_settings(self) -> MarchSettings:
        extent = self.bound if self.scene == "bounded" else 1.0
        dt_min = 2.0 * math.sqrt(3.0) * extent / self.render_steps
        if self.scene == "bounded":
            # The longest chord of the box, walked at (at least) dt_min.
            max_steps = math.ceil(2.0 * math.sqrt(3.0) * self.bound / dt_min) + 1
            far = self.far
        else:
            far = self.far
            max_steps = steps_to_cover(self.near, far, dt_min, self.cone_angle, 1e10) + 1
        return MarchSettings(dt_min=dt_min, cone_angle=self.cone_angle, dt_max=1e10, near=self.near, far=far,
                             max_steps=max_steps)


class NeRFModel(nn.Module):
    """A hash-grid NeRF in model coordinates (``x_model = (x_world - center) / radius``).

    Attributes:
        config: the :class:`ModelConfig`.
        field: :class:`~backend.nerf.field.HashNeRFField` (``density(x)``, ``forward(x, dirs)``).
        occupancy: :class:`~backend.nerf.occupancy.OccupancyGrid` over the domain's unit cube.
        domain, settings: scene domain and step schedule.

    ``compile_kernels()`` swaps in ``torch.compile``d versions of the field and the dense march for the
    GPU; the eager versions stay available (and are what the CPU tests use).
    """

    def __init__(self, config: ModelConfig, device: torch.device | str = "cpu") -> None:
        super().__init__()
        self.config = config
        self.domain = config.domain()
        self.settings = config.march_settings()
        self.field = HashNeRFField(config.field, self.domain, device=device)
        self.occupancy = OccupancyGrid(config.occupancy_resolution, device=device)
        self._density_fn: Callable[[torch.Tensor], torch.Tensor] = self.field.density
        self._field_fn: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] = self.field.forward
        self._mask_fn: Callable[..., torch.Tensor] = dense_occupied_mask
        self._composite_fn: Callable[..., tuple[torch.Tensor, ...]] = self._composite_impl
        self.compiled = False

    @property
    def device(self) -> torch.device:
        return self.occupancy.occs.device

    def compile_kernels(self) -> None:
        """Use ``torch.compile`` for the field (dynamic sample counts) and the dense march."""
        # dynamic=True: sample and ray counts change every step; static shapes would recompile each time.
        self._density_fn = torch.compile(self.field.density, dynamic=True)
        self._field_fn = torch.compile(self.field.forward, dynamic=True)
        self._mask_fn = torch.compile(dense_occupied_mask, dynamic=True)
        # Field + compositing as one graph: fewer, fused launches (a training step is launch-bound).
        self._composite_fn = torch.compile(self._composite_impl, dynamic=True)
        self.compiled = True

    def density(self, x: torch.Tensor) -> torch.Tensor:  # [N, 3] -> [N]
        """Density at ``(N, 3)`` model-coordinate points (for culling, occupancy updates, mesh extraction)."""
        if x.shape[0] < 2:
            # Compiled code specialises sizes 0 and 1; such tiny calls run eagerly instead of recompiling.
            return self.field.density(x)
        return self._density_fn(x)

    def occupied(self, x: torch.Tensor) -> torch.Tensor:  # [N, 3] -> [N] bool
        """Whether ``(N, 3)`` model-coordinate points lie in an occupied cell of the grid: what renders sample."""
        return self.occupancy.query(self.domain.to_unit_cube(x))

    def radiance(self, x: torch.Tensor, dirs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(rgb (N, 3), sigmas (N,))`` at ``(N, 3)`` points seen along unit ``(N, 3)`` directions."""
        if x.shape[0] < 2:
            return self.field.forward(x, dirs)
        return self._field_fn(x, dirs)

    def _composite_impl(
        self,
        positions: torch.Tensor,  # [all_samples, 3]
        dirs: torch.Tensor,  # [all_samples, 3]
        t_starts: torch.Tensor,  # [all_samples]
        t_ends: torch.Tensor,  # [all_samples]
        ray_indices: torch.Tensor,  # [all_samples]
        packed_info: torch.Tensor,  # [n_rays, 2]
        background: torch.Tensor | None,  # [n_rays, 3]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        n_rays = packed_info.shape[0]
        rgbs, sigmas = self.field(positions, dirs)
        weights = render_weight_from_density(t_starts, t_ends, sigmas, ray_indices, packed_info)
        rgb = accumulate_along_rays(weights, rgbs, ray_indices, n_rays)
        opacity = accumulate_along_rays(weights, None, ray_indices, n_rays)[:, 0]
        t_mid = 0.5 * (t_starts + t_ends)
        depth = accumulate_along_rays(weights, t_mid[:, None], ray_indices, n_rays)[:, 0] / opacity.clamp_min(1e-10)
        if background is not None:
            rgb = rgb + (1.0 - opacity)[:, None] * background
        return rgb, opacity, depth, weights

    def composite(
        self,
        positions: torch.Tensor,  # [all_samples, 3]
        dirs: torch.Tensor,  # [all_samples, 3]
        t_starts: torch.Tensor,  # [all_samples]
        t_ends: torch.Tensor,  # [all_samples]
        ray_indices: torch.Tensor,  # [all_samples]
        packed_info: torch.Tensor,  # [n_rays, 2]
        background: torch.Tensor | None = None,  # [n_rays, 3]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Evaluate the field on packed samples and volume-render them (see :func:`render_samples`).

        Returns:
            ``rgb (n_rays, 3)``, ``opacity (n_rays,)``, ``depth (n_rays,)``, ``weights (all_samples,)``.
        """
        if positions.shape[0] < 2:
            return self._composite_impl(positions, dirs, t_starts, t_ends, ray_indices, packed_info, background)
        return self._composite_fn(positions, dirs, t_starts, t_ends, ray_indices, packed_info, background)

    @torch.no_grad()
    def update_occupancy(self, step: int, generator: torch.Generator | None = None, threshold: float = 0.01,
                         ema_decay: float = 0.95, warmup_steps: int = 256) -> None:
        """One occupancy update: opacity proxy ``density * dt_min`` at random points of the cells."""
        self.occupancy.update(step, self.occupancy_eval_fn(), generator=generator, threshold=threshold,
                              ema_decay=ema_decay, warmup_steps=warmup_steps)

    def occupancy_eval_fn(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """Unit-cube points ``(n, 3)`` -> opacity proxy ``density * dt_min`` ``(n,)``, what the grid stores."""
        dt = self.settings.dt_min

        def occ_eval(u: torch.Tensor) -> torch.Tensor:
            return self.density(self.domain.from_unit_cube(u)) * dt

        return occ_eval
