"""Reconstruction settings (a flat dataclass, JSON-able through ``to_dict`` / ``from_dict``)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from .field import FieldConfig
from .model import ModelConfig

BACKGROUND_MODES = ("auto", "matte", "contract")
HELDOUT_METRICS = ("auto", "full", "matte")


@dataclass
class ReconstructConfig:
    """How to train a hash-grid NeRF from a capture.

    Training stops at ``steps`` or after ``time_budget_s`` seconds of training (evaluation excluded),
    whichever comes first; the learning-rate schedule follows whichever of the two is further along.

    Attributes:
        steps: maximum optimizer steps.
        time_budget_s: optional training-time limit in seconds.
        batch_rays: rays in the first step; later steps adapt the ray count so that about
            ``target_samples`` samples survive marching (nerfacc's dynamic batch), within
            ``[min_batch_rays, max_batch_rays]``. ``target_samples = 0`` keeps ``batch_rays`` fixed.
        lr: Adam learning rate after warm-up; decays log-linearly to ``lr * lr_final_factor``.
        warmup_steps: linear learning-rate warm-up.
        resolution_scale: images (and intrinsics) are resized by this factor, in (0, 1].
        holdout_every: every n-th view is held out for PSNR (0: none; ignored when an explicit held-out
            capture is given).
        background: ``"matte"`` reconstructs the subject alone (bounded box, random background colours
            while training, alpha out); ``"contract"`` models the background (mip-NeRF 360 contraction);
            ``"auto"`` picks ``"matte"`` when the capture has mattes or alpha, else ``"contract"``.
        seed: seeds model initialisation and every random draw of training.
        n_levels .. geo_feat_dim: hash grid and MLP sizes (instant-ngp defaults). ``max_resolution=None``
            picks the finest grid so that its cells are about half a pixel footprint at the median camera
            distance (see :meth:`auto_max_resolution`): finer levels only memorise the training views.
        scene_bound: box half size in model units for ``"matte"`` (None: 1.0 for images with their own
            alpha, i.e. object renders that the normalization fits in the unit sphere; 1.5 for photos with
            mattes, whose shoulders and hair reach past the head's sphere).
        occupancy_resolution, render_steps: see :class:`~backend.nerf.model.ModelConfig`.
        cone_angle: step growth (None: 0 for ``"matte"``, 1/256 for ``"contract"``).
        near, far: marching range (model units).
        occ_update_every, occ_warmup_steps, occ_threshold, occ_ema_decay: occupancy grid updates.
        early_stop_eps, alpha_thre, cull_first_round: sample culling while marching (see
            :func:`~backend.nerf.marching.march_rays`).
        eval_every_s / eval_every_steps: held-out evaluation cadence (training seconds / steps; None: only
            at the end). ``eval_max_views`` caps the views evaluated in the periodic evaluations.
        eval_background: ``"white"`` or ``"black"``: what ``"matte"`` renders are composited on for PSNR.
        heldout_metric: ``"full"`` image PSNR, ``"matte"`` PSNR inside the matte (alpha >= 0.5), or
            ``"auto"`` (inside the matte for captures with separate mattes, full image otherwise).
        eval_chunk: rays per chunk when rendering full images.
        progress_every_s: minimum seconds between progress reports.
        compile: ``"auto"`` (torch.compile on CUDA), ``"on"`` or ``"off"``.
    """

    steps: int = 20000
    time_budget_s: float | None = None
    batch_rays: int = 4096
    target_samples: int = 2**18
    min_batch_rays: int = 256
    max_batch_rays: int = 2**17
    lr: float = 1e-2
    lr_final_factor: float = 0.03
    warmup_steps: int = 100
    resolution_scale: float = 1.0
    holdout_every: int = 10
    background: str = "auto"
    seed: int = 0
    n_levels: int = 16
    n_features: int = 2
    log2_table_size: int = 19
    base_resolution: int = 16
    max_resolution: int | None = None
    hidden_dim: int = 64
    geo_feat_dim: int = 15
    scene_bound: float | None = None
    occupancy_resolution: int = 128
    render_steps: int = 1024
    cone_angle: float | None = None
    near: float = 0.05
    far: float = 1000.0
    occ_update_every: int = 16
    occ_warmup_steps: int = 256
    occ_threshold: float = 0.01
    occ_ema_decay: float = 0.95
    early_stop_eps: float = 1e-4
    alpha_thre: float = 0.0
    cull_first_round: int = 32
    eval_every_s: float | None = None
    eval_every_steps: int | None = None
    eval_max_views: int | None = None
    eval_background: str = "white"
    heldout_metric: str = "auto"
    eval_chunk: int = 2**15
    progress_every_s: float = 0.5
    compile: str = "auto"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad field."""
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.time_budget_s is not None and not self.time_budget_s > 0:
            raise ValueError(f"time_budget_s must be > 0 or None, got {self.time_budget_s}")
        if not 0 < self.resolution_scale <= 1:
            raise ValueError(f"resolution_scale must be in (0, 1], got {self.resolution_scale}")
        if self.background not in BACKGROUND_MODES:
            raise ValueError(f"background must be one of {BACKGROUND_MODES}, got {self.background!r}")
        if self.heldout_metric not in HELDOUT_METRICS:
            raise ValueError(f"heldout_metric must be one of {HELDOUT_METRICS}, got {self.heldout_metric!r}")
        if self.eval_background not in ("white", "black"):
            raise ValueError(f"eval_background must be 'white' or 'black', got {self.eval_background!r}")
        if self.compile not in ("auto", "on", "off"):
            raise ValueError(f"compile must be 'auto', 'on' or 'off', got {self.compile!r}")
        if not (1 <= self.min_batch_rays <= self.batch_rays <= self.max_batch_rays):
            raise ValueError(
                f"need 1 <= min_batch_rays <= batch_rays <= max_batch_rays, got {self.min_batch_rays}, "
                f"{self.batch_rays}, {self.max_batch_rays}"
            )
        if self.holdout_every < 0 or self.holdout_every == 1:
            raise ValueError(f"holdout_every must be 0 (none) or >= 2, got {self.holdout_every}")
        if not (self.lr > 0 and 0 < self.lr_final_factor <= 1):
            raise ValueError(f"bad learning rate {self.lr} / final factor {self.lr_final_factor}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ReconstructConfig:
        """Build from a dict; unknown keys are ignored (newer clients), missing keys take defaults."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    @classmethod
    def tiny(cls, **overrides: Any) -> ReconstructConfig:
        """A small model and short schedule that trains in seconds on a CPU (tests, smoke runs)."""
        base = cls(
            steps=300, batch_rays=512, target_samples=2**14, min_batch_rays=128, max_batch_rays=2048,
            lr=2e-2, warmup_steps=10, n_levels=6, n_features=2, log2_table_size=14, base_resolution=4,
            max_resolution=64, hidden_dim=32, occupancy_resolution=32, render_steps=128,
            occ_update_every=8, occ_warmup_steps=64, eval_chunk=4096, compile="off",
        )
        return replace(base, **overrides)

    def resolved_background(self, has_alpha: bool) -> str:
        """``"matte"`` or ``"contract"`` for a capture whose images have (``has_alpha``) a matte/alpha or not."""
        if self.background != "auto":
            return self.background
        return "matte" if has_alpha else "contract"

    @staticmethod
    def auto_max_resolution(pixel_footprint: float, scene: str, bound: float) -> int:
        """Finest hash-grid resolution for a pixel footprint (model units per pixel at the subject).

        Two cells per footprint across the grid's extent (the box, or for contracted scenes the unit
        ROI, which covers half of the contracted cube), rounded to a power of two in [256, 4096].
        """
        extent = 2.0 * bound if scene == "bounded" else 4.0
        cells = 2.0 * extent / max(pixel_footprint, 1e-9)
        return int(min(4096, max(256, 2 ** round(math.log2(cells)))))

    def model_config(self, background: str, separate_matte: bool, pixel_footprint: float | None = None) -> ModelConfig:
        """The :class:`ModelConfig` for a resolved background mode.

        Args:
            background: ``"matte"`` or ``"contract"``.
            separate_matte: the alpha comes from separate matte files (a photo capture) rather than from
                the images themselves (an object render); picks the default box size.
            pixel_footprint: model units per pixel at the subject (for ``max_resolution=None``; without
                it the default is 2048).
        """
        if background not in ("matte", "contract"):
            raise ValueError(f"background must be resolved to 'matte' or 'contract', got {background!r}")
        bound = self.scene_bound if self.scene_bound is not None else (1.5 if separate_matte else 1.0)
        cone = self.cone_angle if self.cone_angle is not None else (0.0 if background == "matte" else 1.0 / 256)
        scene = "bounded" if background == "matte" else "contract"
        max_res = self.max_resolution
        if max_res is None:
            max_res = 2048 if pixel_footprint is None else self.auto_max_resolution(pixel_footprint, scene, bound)
        field = FieldConfig(
            n_levels=self.n_levels, n_features=self.n_features, log2_table_size=self.log2_table_size,
            base_resolution=self.base_resolution, max_resolution=max_res,
            hidden_dim=self.hidden_dim, geo_feat_dim=self.geo_feat_dim,
        )
        return ModelConfig(
            field=field, scene=scene, bound=bound,
            occupancy_resolution=self.occupancy_resolution, render_steps=self.render_steps, cone_angle=cone,
            near=self.near, far=self.far,
        )

    def learning_rate(self, step: int, progress: float) -> float:
        """Warm-up over ``warmup_steps``, then log-linear decay over training ``progress`` in [0, 1]."""
        warm = min(1.0, (step + 1) / max(1, self.warmup_steps))
        return self.lr * warm * math.exp(math.log(self.lr_final_factor) * min(max(progress, 0.0), 1.0))
