"""The NeRF-Art stylization loop: ``F_rec`` in, ``F_sty`` out (spec Sections 1, 2, 5, 6 and 10).

:func:`stylize` fine-tunes a copy of a reconstruction so that its renders follow a text prompt:

1. ``F_sty`` is a fresh copy of ``F_rec`` (same normalization, cameras and reconstruction config); the optimizer
   and counters start fresh (spec Section 1). A *resumed* stylization (``resume=``, after a crash) instead takes
   ``F_sty``, the optimizer, the iteration count and the random generator from its own last checkpoint.
2. The views are the checkpoint's training cameras in dataset order, resized to the stylization resolution, plus
   optional interpolated novel cameras (:mod:`backend.stylize.views`).
3. ``I_src`` for every view the run will visit is ``F_rec``'s render with the same renderer settings and
   background, rendered once before the first step and cached together with its CLIP embedding
   ``E_I(P_dir(I_src))`` (spec Section 10).
   It is rendered by ``F_sty`` before its first update, which holds exactly ``F_rec``'s weights.
4. Each iteration renders one full view and back-propagates
   ``L = L_img(I_tgt, I_src) + λ_reg L_reg`` through deferred back-propagation with exact sample reuse
   (:mod:`backend.stylize.deferred`), then takes one Adam step with ``lr(it) = lr0 · 0.5^(it / iterations)``
   (spec Section 5).
5. Every iteration draws ``n_negatives`` (8) negatives from the job's pool, shared by the global and local
   contrastive terms (spec Section 3.3). The pool leaves out the bank negatives that are as close to the prompt as
   the prompt's own paraphrases (``negative_max_closeness``, :func:`~backend.stylize.negatives.negative_closeness`).

``colour_only`` trains the colour MLP alone: the hash grid and the density MLP (everything that determines
density) are frozen, the occupancy grid is left as it is and ``L_reg`` is skipped, so geometry stays bit-identical.

**Background.** "matte" checkpoints (the subject alone, background not modelled) are rendered over a fixed colour,
white by default, for both ``I_src`` and ``I_tgt``: CLIP sees the subject on a plain ground, as in a cut-out
photo, and the colour never changes, so it carries no gradient and no "style" of its own. "contract" checkpoints
without subject bounds model their background and render premultiplied (their opacity is ~1 everywhere), so the
whole room is stylized with the head.

**Subject bounds (issue 20).** ``ckpt_rec.subject`` (a box or ellipsoid, :mod:`backend.nerf.subject`) splits the
subject from its background. With bounds, every render the stylization makes (``I_src``, pass 1 and pass 2 of
each iteration, the previews) samples only inside them (:mod:`backend.stylize.subject_render`) and composites over
the plain colour above, for "contract" and "matte" checkpoints alike: the losses see the subject alone, as in a
cut-out photo, and no gradient comes from the room. Shape may grow (``shape_freedom``) only in occupancy cells
that touch the bounds, so ``F_sty``'s grid outside them stays ``F_rec``'s. The stylized checkpoint carries the
bounds (``subject``): renders and meshes of it take ``F_sty`` inside them only, and a frame with its background
takes ``F_rec`` outside (:func:`~backend.stylize.subject_render.render_image_with_background`), so the background
keeps its reconstructed look. Without bounds (None) the whole scene is stylized, as before.

**Occupancy (issue 12).** A ray only gets samples, and so gradients, in occupied cells. Updating the grid during
stylization, as the reconstruction does, did two wrong things at once: a cell ``F_rec`` left empty could never grow
new shape (nothing samples it), while density leaking into far-away cells through shared hash entries and coarse
levels got them marked occupied, sampled, and grown into haze. Instead the grid is fixed for the whole run to
``F_rec``'s occupied cells grown by ``shape_freedom`` (below): shape may form that far beyond the reconstruction
and nowhere else. The default is 0, because growth has a price measured on fangzhou: cells ``F_rec`` marked
empty are not empty but *unsupervised* (the reconstruction never sampled them, so never cleared them), and merely
marching one more cell around the head, with no training at all, changed the render (alpha IoU 0.967, depth error
6.9 % of the ROI radius on a small CPU model; two cells: 0.949, 10.6 %). A finished ``F_sty`` keeps ``F_rec``'s
cells and adds the grown cells whose density passes the occupancy threshold
(:meth:`~backend.nerf.occupancy.OccupancyGrid.refresh`), so its renders skip the rest of the shell again.

**Shape freedom (issue 20).** NeRF-Art fine-tunes all of ``F_sty``, so a style may move the shape. ``shape_freedom``
is how far the surface may move outwards, in *head radii*: the reconstruction's unit of model coordinates, the
radius of the region of interest the capture was normalised to (:mod:`captures.normalize`), which frames the head.
0.25 lets a style add a quarter of that radius around ``F_rec``'s shape; :data:`SHAPE_FREEDOM_MAX` (0.5) is
enough for a hat or horns. The region marched is every cell whose centre lies within that distance of one of
``F_rec``'s occupied cells (:meth:`~backend.nerf.occupancy.OccupancyGrid.within_distance`, which converts the
distance to cells with the cell size in model units, contracted cells included), intersected with the cells
touching the subject bounds grown by the freedom when the checkpoint has them (:func:`stylization_subject`):
detected bounds fit a head within a few percent, so without that room a hat could not form. The grown bounds are
where the stylization renders and what its result carries; ``F_rec``'s cells between the bounds and the grown
bounds belong to the room (a wall close behind the head), so they are left out of the march and of the result's
grid, and shape grows only into cells ``F_rec`` left empty that the subject keeps: never into the haze or the
air its cameras saw through that the subject left out (:func:`_allowed_cells`). A head capture also frames
the head closely (fangzhou's fills 95 % of its views' height), so what grows above it would lie outside every
image the losses see: each view whose subject fits inside the frame on a side widens (its focal length shrinks,
:func:`view_zoom`, at most ``1 + shape_freedom``) until the region that may grow fits too. The price is fewer
pixels on the face at high freedom. Freedom without the rates to use it does nothing (at
1e-4 the shape barely moves within a run), so with ``shape_freedom > 0`` the hash grid trains faster, on a log
scale from 1e-4 at 0 to :data:`LR_SHAPE_AT_MAX` at the maximum, for a 400-iteration run and inversely
proportional to the run's length (:func:`shape_learning_rate`: the distance Adam's scale-free steps carry a
parameter is about ``lr x iterations``), and the weight regularization is on (:data:`LAMBDA_REG_SHAPE`) against
the clouds free density forms, with an opacity prior that is not in NeRF-Art (:data:`OPACITY_SHAPE`) so that
what grows grows solid. The density MLP stays at 1e-4 whatever the freedom: it acts on every point at
once, and a faster one grew no more shape on the CPU study (outline area x1.036 against x1.033 with the grid
alone) while on fangzhou it alone had raised the depth error threefold (issue 12). These defaults are
PROVISIONAL: the CPU study with the analytic stand-in encoder (``bench/study_shape_cpu.py``,
``bench/results/shape_cpu_study.md``) found that only a grid rate of about 1e-3 (for 400 iterations) lets a shape
prompt visibly move the outline, and that at such rates a colour prompt shrinks parts of the subject too (the
price of the freedom, which 0 does not pay); ``bench/sweep_shape.py`` on fangzhou is to confirm them. At 0 every rate and weight is as before, so the geometry is bit-identical to the former default.

**Learning rates and Adam (issue 12).** Adam with instant-ngp's ``eps = 1e-15`` and ``β2 = 0.99`` is scale-free:
every parameter a view touches moves by about ``lr`` per step, whatever the size of its gradient. The loss weights
therefore only set the *direction* of each step, and the learning rates of what shapes density set how far the
geometry drifts. At the former 1e-3 for the hash grid and the density MLP (three times the reconstruction's final
rate, ``1e-2 · 0.03``), 400 steps can move a table entry by ~0.3, twice a trained entry's mean magnitude. On the
CPU study scene (``bench/study_stylize_cpu.py``, ``bench/results/stylize_cpu_study.md``: three spheres, the
stand-in encoder, "a red face", 60 iterations) the former rates erased the green sphere (alpha IoU 0.847), each
of the two alone cost IoU (grid: 0.985) or depth (density MLP: 1.4 %), and neither ``λ_reg`` (100: IoU 0.781) nor
``eps = 1e-4`` (0.875) helped. Now the grid and the density MLP train at 1e-4 and the colour MLP at 1e-3: IoU
0.9994, depth error 0.38 %, and the spheres still turn red (redness 0.071 → 0.413; 0.372 with ``colour_only``).
On fangzhou (H200, ``bench/results/stylize_nvidia-h200_2026-12-04*.md``) the density MLP's rate alone took the
depth error from 4.63 % to 1.60 % of the ROI radius.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from backend.nerf.checkpoint import NeRFCheckpoint
from backend.nerf.model import NeRFModel
from backend.nerf.occupancy import OccupancyGrid, cells_within_distance
from backend.nerf.rays import rays_for_image
from backend.nerf.rendering import render_rays_chunked
from backend.nerf.subject import SubjectBounds
from captures.cameras import Cameras

from .clip_model import ClipModel, Template, imagenet_templates
from .deferred import DeferredAborted, deferred_backward, image_from_rays
from .losses import (
    LossWeights,
    StyleLossConfig,
    iterations_for_strength,
    strength_value,
    total_image_loss,
    weights_for_strength,
)
from .negatives import (
    DEFAULT_MAX_CLOSENESS,
    NegativePool,
    build_negative_pool,
    draw_negatives,
    drop_close_negatives,
    negative_closeness,
)
from .perceptual import LpipsLoss, VggRelu33Loss
from .standin_encoder import is_test_instrument
from .subject_render import subject_cells
from .views import StylizationViews, growth_zoom, stylization_views, zoomed_out

__all__ = [
    "LAMBDA_REG_SHAPE",
    "LR_SHAPE_AT_0",
    "LR_SHAPE_AT_MAX",
    "OPACITY_SHAPE",
    "PRESETS",
    "SHAPE_FREEDOM_MAX",
    "SHAPE_LR_ITERATIONS",
    "ProgressFn",
    "StopFn",
    "StylizeConfig",
    "StylizeProgress",
    "canonical_device",
    "check_shape_freedom",
    "copy_model",
    "matmul_precision",
    "preset_config",
    "shape_learning_rate",
    "stylization_subject",
    "stylize",
    "view_zoom",
    "weights_are_random",
]

#: Size presets (see :func:`preset_config`).
PRESETS = ("tiny", "fast", "default", "quality")

# Resolution and iteration multiplier per preset (scale relative to the capture's original size; the paper's
# 270x480 is scale 0.5 of fangzhou's 540x960). PROVISIONAL until bench/bench_stylize.py has run on the GPU.
_PRESET_SCALE = {"fast": 0.25, "default": 0.5, "quality": 1.0}
_PRESET_ITERATION_FACTOR = {"fast": 0.5, "default": 1.0, "quality": 1.0}

#: The largest shape freedom, in head radii: room for a hat or horns (module docstring, "Shape freedom").
SHAPE_FREEDOM_MAX = 0.5
#: The shape parameters' learning rate at shape freedom 0 (module docstring, "Learning rates").
LR_SHAPE_AT_0 = 1e-4
#: ... and at SHAPE_FREEDOM_MAX, for a run of SHAPE_LR_ITERATIONS. PROVISIONAL: checked at the full 400 iterations
#: with the solid-foreground stand-in on the CPU spheres (bench/results/shape_cpu_study.md, 2026-12-07), where 3e-3
#: grew the silhouette less than 1e-3 did; not yet with real CLIP.
LR_SHAPE_AT_MAX = 1e-3
#: The run length the shape rates above are given for (the default strength's iteration count).
SHAPE_LR_ITERATIONS = 400
# Shorter runs scale the shape rates up by at most this much (shape_learning_rate).
_SHAPE_LR_MAX_FACTOR = 10.0
#: λ_reg whenever shape_freedom > 0 (0 otherwise). It brakes growth and haze together (the 400-iteration λ_reg
#: sweep in bench/results/shape_cpu_study.md: no setting keeps the growth and drops the haze); 1 keeps a visible
#: change at the maximum freedom. PROVISIONAL: CPU spheres with the stand-in, not real CLIP.
LAMBDA_REG_SHAPE = 1.0
#: λ_opa (the opacity prior, not in NeRF-Art: losses.opacity_binarization) whenever shape_freedom > 0 (0
#: otherwise). Growing shape starts as faint density; the prior pushes each ray to empty or solid, so it grows as
#: solid shape rather than as haze in front of the face: on the CPU spheres at the maximum freedom, haze in front
#: 9.6 % -> 2.5 % (λ_opa 1: 6.7 %) with the outline grown as far, and "a red face" no longer thinned them
#: (silhouette x1.001, x0.78 without; bench/results/shape_cpu_study.md). PROVISIONAL: CPU spheres with the
#: stand-in, not real CLIP.
OPACITY_SHAPE = 3.0

# LPIPS's VGG reaches relu5_3 after four 2x poolings: smaller images leave it no spatial extent.
_LPIPS_MIN_SIDE = 16


@dataclass(frozen=True)
class StylizeConfig:
    """Settings of one stylization (spec Section 10 defaults; see :func:`preset_config` for the presets).

    Attributes:
        prompt: target text ``t_tgt``.
        source_text: ``t_src`` of the directional loss (default "photo").
        negative_prompts: user negatives, added to the bank's pool (never removed).
        strength: 0..1 (or "low"/"medium"/"high"); picks the loss weights and the default iteration count.
        iterations: one view each; None: ``iterations_for_strength(strength)`` (400 at 0.5).
        colour_only: train the colour MLP only (geometry frozen, no occupancy updates, no ``L_reg``).
        weights: loss weights; None: ``weights_for_strength(strength)``.
        loss: loss options (templates aside): crops, negatives per iteration, InfoNCE/margin, perceptual kind.
            Its ``source_text`` is replaced by this config's ``source_text``, the one authority for ``t_src``.
        n_templates: use the first n of open_clip's 80 ImageNet templates; None: all 80 (spec). Fewer only for
            CPU tests: encoding 80 templates per text costs ~100 s on a CPU.
        lr_grid, lr_density_mlp, lr_mlp: Adam learning rates at iteration 0 for the hash table (None:
            :func:`shape_learning_rate` of ``shape_freedom``, 1e-4 at 0), the density MLP (None: 1e-4,
            :data:`LR_SHAPE_AT_0`, whatever the freedom) and
            the colour MLP (1e-3): what shapes density moves slowly, colour fast; see "Learning rates" and "Shape
            freedom" in the module docstring.
        lr_decay: ``lr(it) = lr0 · lr_decay^(it / iterations)`` (0.5: the released schedule).
        adam_eps: Adam's epsilon (instant-ngp's 1e-15: steps are scale-free, see the module docstring).
        shape_freedom: how far the surface may move outwards, in head radii (model units: the capture's region of
            interest has radius 1), from 0 to :data:`SHAPE_FREEDOM_MAX`. 0 (default) keeps the head: rays march
            exactly where ``F_rec``'s do, so shape may change inside its cells but nothing forms outside them.
            Above 0 the region grows, the shape parameters train faster and ``λ_reg`` is on (see "Shape freedom"
            in the module docstring). Ignored in ``colour_only``.
        negative_max_closeness: drop bank negatives at least this close to the target in the text encoder's space
            (:func:`~backend.stylize.negatives.negative_closeness`; None keeps them all).
        report_gradients_every: every n iterations, also measure each loss term's share of the parameter gradient
            (one extra gradient pass per term) and report it in the progress metrics (``grad_<term>_<group>``);
            0: never.
        scale: stylization image size relative to the capture's original size, in (0, 1].
        max_side: optional cap on the longer image side in pixels (the ``tiny`` preset).
        novel_views: interpolated cameras added between consecutive training views (0: none).
        background: RGB behind the subject for ``I_src`` and ``I_tgt``: of "matte" checkpoints, and of any
            checkpoint with subject bounds (ignored for "contract" ones without bounds, which render their room).
        jitter: stratified step offsets, drawn fresh each iteration (False: the render job's deterministic steps,
            as ``I_src``).
        chunk_render: rays per pass-1 chunk (2^15, the render job's chunk); chunk_grad: rays per pass-2 chunk, which
            bounds the autograd graph held at once (2^14 rays x ~50 samples x a few kB of saved activations per
            sample in the PyTorch hash grid: a few GB; the released code's 1200 rays were sized for a second-order
            SDF graph on a 24 GB card).
        precompute_negatives: encode the whole negative pool at start (spec); False encodes each text when first
            drawn (CPU tests).
        preview_every: a preview image every n iterations (and at the end).
        checkpoint_every: the ``on_checkpoint`` callback every n iterations (0: never; the caller saves the end).
        compile: ``"auto"`` (torch.compile on CUDA), ``"on"`` or ``"off"``.
        tf32: on CUDA, run float32 matrix products (the NeRF's MLPs, CLIP, LPIPS) on TensorFloat-32 tensor cores
            for the duration of the call (:func:`matmul_precision`; about 1e-3 relative error per product, the
            released code ran CLIP in float16). Parameters, the hash grid and the compositing stay float32.
            False keeps IEEE float32 products.
        seed: seeds negatives, crops, jitter and occupancy updates.
    """

    prompt: str
    source_text: str = "photo"
    negative_prompts: tuple[str, ...] = ()
    strength: float | str = 0.5
    iterations: int | None = None
    colour_only: bool = False
    weights: LossWeights | None = None
    loss: StyleLossConfig = field(default_factory=StyleLossConfig)
    n_templates: int | None = None
    lr_grid: float | None = None
    lr_density_mlp: float | None = None
    lr_mlp: float = 1e-3
    lr_decay: float = 0.5
    adam_eps: float = 1e-15
    shape_freedom: float = 0.0
    negative_max_closeness: float | None = DEFAULT_MAX_CLOSENESS
    report_gradients_every: int = 0
    scale: float = 0.5
    max_side: int | None = None
    novel_views: int = 0
    background: tuple[float, float, float] = (1.0, 1.0, 1.0)
    jitter: bool = False
    chunk_render: int = 2**15
    chunk_grad: int = 2**14
    precompute_negatives: bool = True
    preview_every: int = 10
    checkpoint_every: int = 50
    compile: str = "auto"
    tf32: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise ValueError("prompt is empty; give a text such as 'oil painting by Van Gogh'")
        if not isinstance(self.source_text, str) or not self.source_text.strip():
            raise ValueError("source_text is empty; the default is 'photo'")
        if self.prompt.strip().lower() == self.source_text.strip().lower():
            raise ValueError(f"prompt {self.prompt!r} equals the source text, so there is no style direction")
        object.__setattr__(self, "negative_prompts", tuple(self.negative_prompts))
        if self.loss.source_text != self.source_text:
            # total_image_loss reads t_src from the loss config; keep one source of truth.
            object.__setattr__(self, "loss", replace(self.loss, source_text=self.source_text))
        for i, text in enumerate(self.negative_prompts):
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"negative prompt #{i + 1} is empty")
        strength_value(self.strength)  # raises for a bad strength
        if self.iterations is not None and (not isinstance(self.iterations, int) or self.iterations < 1):
            raise ValueError(f"iterations must be an integer >= 1 or None, got {self.iterations!r}")
        if self.n_templates is not None and self.n_templates < 1:
            raise ValueError(f"n_templates must be >= 1 or None, got {self.n_templates}")
        for name in ("lr_grid", "lr_mlp", "lr_density_mlp"):
            value = getattr(self, name)
            if value is None and name != "lr_mlp":
                continue
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        if not 0 < self.lr_decay <= 1:
            raise ValueError(f"lr_decay must be in (0, 1], got {self.lr_decay}")
        if not 0 < self.scale <= 1:
            raise ValueError(f"scale must be in (0, 1], got {self.scale}")
        if self.max_side is not None and self.max_side < _LPIPS_MIN_SIDE:
            raise ValueError(f"max_side must be >= {_LPIPS_MIN_SIDE} or None, got {self.max_side}")
        if self.novel_views < 0:
            raise ValueError(f"novel_views must be >= 0, got {self.novel_views}")
        if len(self.background) != 3 or not all(0.0 <= float(c) <= 1.0 for c in self.background):
            raise ValueError(f"background must be 3 numbers in [0, 1], got {self.background!r}")
        for name in ("chunk_render", "chunk_grad", "preview_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        check_shape_freedom(self.shape_freedom)
        if self.negative_max_closeness is not None and not 0 < self.negative_max_closeness <= 1:
            raise ValueError(f"negative_max_closeness must be in (0, 1] or None, got {self.negative_max_closeness}")
        if not (math.isfinite(self.adam_eps) and self.adam_eps > 0):
            raise ValueError(f"adam_eps must be a finite number > 0, got {self.adam_eps}")
        if self.report_gradients_every < 0:
            raise ValueError(f"report_gradients_every must be >= 0, got {self.report_gradients_every}")
        if self.checkpoint_every < 0:
            raise ValueError(f"checkpoint_every must be >= 0, got {self.checkpoint_every}")
        if self.compile not in ("auto", "on", "off"):
            raise ValueError(f"compile must be 'auto', 'on' or 'off', got {self.compile!r}")

    def resolved_weights(self) -> LossWeights:
        """The loss weights used: ``weights`` if given, else the strength's, with ``λ_reg`` =
        :data:`LAMBDA_REG_SHAPE` and ``λ_opa`` = :data:`OPACITY_SHAPE` when the shape may grow (``shape_freedom >
        0`` and not ``colour_only``)."""
        if self.weights is not None:
            return self.weights
        weights = weights_for_strength(self.strength)
        if self.shape_freedom > 0 and not self.colour_only:
            weights = replace(weights, regularization=LAMBDA_REG_SHAPE, opacity=OPACITY_SHAPE)
        return weights

    def resolved_lr_grid(self) -> float:
        """The hash table's learning rate: ``lr_grid`` if given, else :func:`shape_learning_rate` for the shape
        freedom and the iteration count."""
        if self.lr_grid is not None:
            return float(self.lr_grid)
        return shape_learning_rate(self.shape_freedom, self.resolved_iterations())

    def resolved_lr_density_mlp(self) -> float:
        """The density MLP's learning rate: ``lr_density_mlp`` if given, else :data:`LR_SHAPE_AT_0` (the shape
        freedom speeds up the hash grid only; module docstring, "Shape freedom")."""
        return float(self.lr_density_mlp) if self.lr_density_mlp is not None else LR_SHAPE_AT_0

    def resolved_iterations(self) -> int:
        """The iteration count used: ``iterations`` if given, else the strength's."""
        return self.iterations if self.iterations is not None else iterations_for_strength(self.strength)

    def templates(self) -> tuple[Template, ...]:
        """The prompt templates: the first ``n_templates`` of open_clip's 80 (all when None)."""
        all_templates = imagenet_templates()
        return all_templates if self.n_templates is None else all_templates[: self.n_templates]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able summary (written next to the job's checkpoint)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "weights":
                value = asdict(self.resolved_weights())
            elif f.name == "loss":
                value = asdict(value)
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        out["iterations"] = self.resolved_iterations()
        out["lr_grid"], out["lr_density_mlp"] = self.resolved_lr_grid(), self.resolved_lr_density_mlp()
        return out


def check_shape_freedom(value: Any) -> float:
    """``value`` as a shape freedom (a real number from 0 to :data:`SHAPE_FREEDOM_MAX`), else ValueError."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not 0 <= value <= SHAPE_FREEDOM_MAX:
        raise ValueError(f"shape_freedom must be a number from 0 to {SHAPE_FREEDOM_MAX} (head radii), got {value!r}")
    return float(value)


def shape_learning_rate(shape_freedom: float, iterations: int = SHAPE_LR_ITERATIONS) -> float:
    """The shape parameters' (hash grid, density MLP) learning rate for a shape freedom and a run length.

    0: :data:`LR_SHAPE_AT_0` whatever the length (the rate that keeps the head, as before shape freedom existed).
    Above 0: a log-scale blend from :data:`LR_SHAPE_AT_0` to :data:`LR_SHAPE_AT_MAX` at :data:`SHAPE_FREEDOM_MAX`,
    both meant for :data:`SHAPE_LR_ITERATIONS` iterations, times ``SHAPE_LR_ITERATIONS / iterations``: with Adam's
    scale-free steps a parameter travels about ``lr`` per step, so the distance the shape can move in a run is
    set by ``lr x iterations``, and a shorter run (a preview, a CPU test) needs larger steps to use the same
    freedom (module docstring, "Shape freedom"); at most 10 times larger.
    """
    f = check_shape_freedom(shape_freedom) / SHAPE_FREEDOM_MAX
    if f == 0:
        return LR_SHAPE_AT_0
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise ValueError(f"iterations must be an integer >= 1, got {iterations!r}")
    # Capped: a run of a few iterations (a smoke test) would otherwise take steps that wreck the head at once.
    factor = min(SHAPE_LR_ITERATIONS / iterations, _SHAPE_LR_MAX_FACTOR)
    return float(LR_SHAPE_AT_0 * (LR_SHAPE_AT_MAX / LR_SHAPE_AT_0) ** f * factor)


def preset_config(preset: str, prompt: str, **overrides: Any) -> StylizeConfig:
    """A :class:`StylizeConfig` for a size preset, with explicit overrides applied on top.

    ============  =====================================  ==========================================
    preset        images                                 iterations (strength 0.5) and loss sizes
    ============  =====================================  ==========================================
    ``tiny``      long side <= 48 px (scale 1)           4; 1 template, 2 crops, 2 negatives (CPU tests)
    ``fast``      scale 0.25 (135x240 for fangzhou)      200 (half the strength's count)
    ``default``   scale 0.5 (270x480, the paper's)       400 (the strength's count)
    ``quality``   scale 1.0 (540x960)                    400 (the strength's count)
    ============  =====================================  ==========================================

    ``tiny`` changes the losses (fewer templates, crops and negatives) so that a CPU runs an iteration in about a
    second; it is for tests and smoke runs, not for results. Overrides with value None are ignored.
    """
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {PRESETS}, got {preset!r}")
    kw = {k: v for k, v in overrides.items() if v is not None}
    if preset == "tiny":
        base: dict[str, Any] = {
            "iterations": 4, "scale": 1.0, "max_side": 48, "n_templates": 1,
            "loss": StyleLossConfig(n_crops=2, n_negatives=2), "precompute_negatives": False,
            "chunk_render": 1024, "chunk_grad": 512, "preview_every": 1, "checkpoint_every": 2, "compile": "off",
        }
    else:
        strength = kw.get("strength", 0.5)
        base = {"scale": _PRESET_SCALE[preset],
                "iterations": max(1, round(iterations_for_strength(strength) * _PRESET_ITERATION_FACTOR[preset]))}
    base.update(kw)
    return StylizeConfig(prompt=prompt, **base)


@dataclass
class StylizeProgress:
    """One progress report of :func:`stylize`.

    Attributes:
        stage: ``"sources"`` (rendering ``I_src``), ``"stylizing"`` or ``"done"``.
        step: views rendered (sources) or iterations done (stylizing).
        total: of ``step``.
        losses: last iteration's values: ``total``, ``image`` (``L_img``), the unweighted terms
            (``directional``, ``global_contrastive``, ``local_contrastive``, ``perceptual``) and ``regularization``
            (unweighted ``L_reg``; absent in ``colour_only``).
        metrics: ``lr``, ``view``, ``n_samples``, ``seconds_per_iteration``.
        elapsed_s: seconds since the first iteration (sources excluded).
        eta_s: estimated seconds left.
        preview: ``(H, W, 4)`` float32 RGBA (alpha 1) of the last rendered view, or None.
        done: True for the final report.
    """

    stage: str
    step: int
    total: int
    losses: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    elapsed_s: float = 0.0
    eta_s: float = 0.0
    preview: np.ndarray | None = None
    done: bool = False


ProgressFn = Callable[[StylizeProgress], None]
StopFn = Callable[[], bool]
CheckpointFn = Callable[[NeRFCheckpoint], None]

TRAIN_STATE_KIND = "stylize"


def weights_are_random(clip: ClipModel, perceptual: nn.Module | None) -> bool:
    """True when the result is not prompt-driven: CLIP or the perceptual net carries random (explicitly requested)
    weights, or "CLIP" is the analytic stand-in, a test instrument (:mod:`backend.stylize.standin_encoder`)."""
    sources = [clip.source, getattr(perceptual, "source", "")]
    return any(str(s).startswith("random(") for s in sources) or is_test_instrument(clip.source)


def copy_model(model: NeRFModel, device: torch.device | str, compile: bool = False) -> NeRFModel:
    """A fresh :class:`NeRFModel` with ``model``'s parameters and occupancy grid, on ``device``.

    Built anew rather than deep-copied: a compiled model holds ``torch.compile`` wrappers bound to its *own*
    field, which a deep copy would keep calling. The caller's RNG state is left untouched (module construction
    draws initial weights, which the state dict then overwrites).
    """
    device = torch.device(device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        copy = NeRFModel(model.config, device=device)
    copy.load_state_dict(model.state_dict())
    copy.field.mlp_dtype = model.field.mlp_dtype
    if compile:
        copy.compile_kernels()
    return copy


def canonical_device(device: torch.device | str) -> torch.device:
    """``device`` with its index made explicit (``"cuda"`` -> ``"cuda:0"``), as tensors report it.

    ``torch.device("cuda") != torch.device("cuda:0")``, so device checks must compare indexed devices.
    """
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def _check_texts(clip: ClipModel, config: StylizeConfig, templates: tuple[Template, ...]) -> None:
    """Prompt checks that need only the tokenizer (empty, too long for CLIP's 77 tokens): ValueError."""
    clip.check_prompt(config.prompt, templates, what="prompt")
    clip.check_prompt(config.source_text, templates, what="source text")
    for i, text in enumerate(config.negative_prompts):
        clip.check_prompt(text, templates, what=f"negative prompt #{i + 1}")


def _preview(image: Tensor) -> np.ndarray:  # [1, 3, H, W] -> [H, W, 4]
    rgb = image[0].permute(1, 2, 0).clamp(0, 1).float().cpu().numpy()
    return np.concatenate([rgb, np.ones_like(rgb[..., :1])], axis=-1)


@contextmanager
def matmul_precision(precision: str) -> Iterator[None]:
    """Set ``torch.set_float32_matmul_precision`` for a block and put the previous value back afterwards.

    ``"high"`` lets float32 matrix products use TensorFloat-32 on CUDA, ``"highest"`` keeps IEEE float32. The
    setting is per process: the backend runs one job at a time per process, so no other job's products are
    affected while a stylization holds it.
    """
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(precision)
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)


def stylize(
    ckpt_rec: NeRFCheckpoint,
    config: StylizeConfig,
    device: torch.device | str,
    on_progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
    *,
    clip: ClipModel,
    perceptual: LpipsLoss | VggRelu33Loss | None,
    on_checkpoint: CheckpointFn | None = None,
    resume: NeRFCheckpoint | None = None,
) -> NeRFCheckpoint:
    """Stylize a reconstruction (see the module docstring).

    Args:
        ckpt_rec: ``F_rec`` with its cameras and normalization; left unchanged. Its ``subject`` bounds (model
            coordinates) are the subject that is stylized (see "Subject bounds" in the module docstring); None
            stylizes the whole scene. To stylize within other bounds, pass
            ``dataclasses.replace(ckpt_rec, subject=bounds)``.
        config: the settings.
        device: where to train (CLIP and the perceptual net must live there too).
        on_progress: called while rendering the sources and after every iteration.
        should_stop: polled between iterations and between chunks of an iteration; returning True ends the
            stylization within one chunk, returning the model after its last complete step
            (``metrics["cancelled"] = 1``).
        clip: the frozen CLIP (:func:`~backend.stylize.clip_model.load_clip`).
        perceptual: the frozen perceptual loss (:func:`~backend.stylize.perceptual.load_perceptual`); None only
            when the resolved ``weights.perceptual`` is 0.
        on_checkpoint: called with the current ``F_sty`` checkpoint every ``config.checkpoint_every`` iterations
            (e.g. to save it, so that an interrupted job keeps its latest state). It carries a ``train_state`` to
            resume from.
        resume: a checkpoint with a ``"stylize"`` ``train_state`` written by an earlier run of the same
            stylization (same ``ckpt_rec`` and config): ``I_src`` is rendered from ``F_rec`` again, then ``F_sty``,
            the optimizer, the iteration count, the elapsed time and the random generator are restored, so the
            run continues at the next iteration (and on the same device reproduces the uninterrupted run).

    Returns:
        The stylized :class:`~backend.nerf.checkpoint.NeRFCheckpoint` (same background, normalization, cameras,
        reconstruction config and subject bounds as ``ckpt_rec``; ``metrics`` hold the final losses). When stopped early it
        carries a ``train_state`` (it can be resumed); a finished one does not.

    Raises:
        ValueError: bad prompts (empty, too long for CLIP, no direction from the source text), too few negatives,
            images too small for LPIPS, missing cameras, CLIP / perceptual net on another device, or a ``resume``
            checkpoint of another stylization.
    """
    device = canonical_device(device)
    precision = "high" if config.tf32 and device.type == "cuda" else torch.get_float32_matmul_precision()
    with matmul_precision(precision):
        return _stylize(ckpt_rec, config, device, on_progress, should_stop, clip=clip, perceptual=perceptual,
                        on_checkpoint=on_checkpoint, resume=resume)


def _stylize(
    ckpt_rec: NeRFCheckpoint,
    config: StylizeConfig,
    device: torch.device,
    on_progress: ProgressFn | None,
    should_stop: StopFn | None,
    *,
    clip: ClipModel,
    perceptual: LpipsLoss | VggRelu33Loss | None,
    on_checkpoint: CheckpointFn | None,
    resume: NeRFCheckpoint | None,
) -> NeRFCheckpoint:
    """:func:`stylize` itself, under the matrix-product precision it chose."""
    weights = config.resolved_weights()
    iterations = config.resolved_iterations()
    templates = config.templates()
    stop = should_stop or (lambda: False)

    # -- checks that cost no rendering ------------------------------------------------------------------------
    if ckpt_rec.cameras is None:
        raise ValueError("the reconstruction checkpoint has no cameras to stylize from")
    if canonical_device(clip.device) != device:
        raise ValueError(f"CLIP is on {clip.device} but stylization runs on {device}")
    if weights.perceptual > 0:
        if perceptual is None:
            raise ValueError("the loss weights use a perceptual term (weights.perceptual > 0) but no perceptual "
                             "model was given")
        if canonical_device(perceptual.device) != device:
            raise ValueError(f"the perceptual model is on {perceptual.device} but stylization runs on {device}")
    _check_texts(clip, config, templates)
    pool = _negative_pool(clip, config, templates)
    n_neg = config.loss.n_negatives
    if len(pool) < n_neg:
        raise ValueError(f"the negative pool for {config.prompt!r} holds {len(pool)} texts, fewer than the "
                         f"{n_neg} drawn per iteration")
    views: StylizationViews = stylization_views(
        ckpt_rec.cameras, ckpt_rec.train_indices, resolution_scale=ckpt_rec.config.resolution_scale,
        scale=config.scale, max_side=config.max_side, novel_views=config.novel_views)
    subject = stylization_subject(ckpt_rec.subject, config)
    resume_state = _check_resume(resume, ckpt_rec, iterations, subject) if resume is not None else None
    if weights.perceptual > 0 and isinstance(perceptual, LpipsLoss):
        small = int(np.min(np.minimum(views.cameras.width, views.cameras.height)))
        if small < _LPIPS_MIN_SIDE:
            raise ValueError(f"stylization images would be {small} px on their short side, but LPIPS needs at least "
                             f"{_LPIPS_MIN_SIDE}; raise the scale")

    # Text embeddings once, at start (spec Section 10); the direction also fails here if undefined.
    clip.precompute_texts([config.prompt, config.source_text, *(pool.prompts if config.precompute_negatives else ())],
                          templates)
    clip.text_direction(config.prompt, config.source_text, templates)

    # -- F_sty, views, sources --------------------------------------------------------------------------------
    use_compile = config.compile == "on" or (config.compile == "auto" and device.type == "cuda")
    model = copy_model(ckpt_rec.model, device, compile=use_compile)
    cams_model = views.cameras if ckpt_rec.normalization is None else \
        ckpt_rec.normalization.cameras_to_model(views.cameras)
    # Room in the images for what may grow (module docstring, "Shape freedom"), framed on F_rec as it renders.
    zoom = view_zoom(ckpt_rec, config, cams_model, model)
    cams_model = zoomed_out(cams_model, zoom)
    model.train()
    # Occupancy (module docstring): march through F_rec's occupied cells grown by shape_freedom, and nowhere else.
    allowed = None if config.colour_only else _allowed_cells(model, config.shape_freedom, ckpt_rec.subject,
                                                             ckpt_rec.subject_air)
    if allowed is not None:
        model.occupancy.binary.copy_(allowed)
    density_params = model.field.density_parameters()
    colour_params = model.field.colour_parameters()
    if config.colour_only:
        for p in density_params:
            p.requires_grad_(False)
    background = None
    if ckpt_rec.background == "matte" or subject is not None:
        # With bounds a "contract" scene is cut to its subject too: it gets the plain ground of a cut-out photo.
        background = torch.tensor(config.background, dtype=torch.float32, device=device)
    early_stop_eps = float(ckpt_rec.config.early_stop_eps)
    generator = torch.Generator(device=device)
    generator.manual_seed(config.seed)
    n_views = len(views)

    def report(p: StylizeProgress) -> None:
        if on_progress is not None:
            on_progress(p)

    cancelled = False
    # Only the views this run will visit (iteration it trains view it % n_views): a short run, or a resumed one
    # near its end, renders a few sources instead of all of them.
    start = int(resume_state["done"]) if resume_state is not None else 0
    needed = sorted({it % n_views for it in range(start, iterations)})
    sources: dict[int, tuple[Tensor, Tensor]] = {}
    for k, i in enumerate(needed):
        if stop():
            cancelled = True
            break
        rays_o, rays_d = rays_for_image(cams_model, i, device=device, dtype=torch.float32)
        h, w = int(views.cameras.height[i]), int(views.cameras.width[i])
        # F_sty holds exactly F_rec's weights until the first step: this is F_rec's render (spec Section 10).
        rgb, _, _ = render_rays_chunked(model, rays_o, rays_d, background, chunk=config.chunk_render,
                                        early_stop_eps=early_stop_eps, subject=subject)
        src = image_from_rays(rgb, h, w).contiguous()
        with torch.no_grad():
            embeds = clip.embed_squash(src).detach()
        sources[i] = (src, embeds)
        report(StylizeProgress("sources", k + 1, len(needed)))

    # -- the loop ---------------------------------------------------------------------------------------------
    groups = [{"params": colour_params, "lr": config.lr_mlp, "lr0": config.lr_mlp}]
    if not config.colour_only:
        lr_density, lr_grid = config.resolved_lr_density_mlp(), config.resolved_lr_grid()
        groups.append({"params": list(model.field.density_mlp.parameters()), "lr": lr_density, "lr0": lr_density})
        groups.append({"params": list(model.field.encoding.parameters()), "lr": lr_grid, "lr0": lr_grid})
    # betas/eps as the reconstruction (instant-ngp's): eps 1e-15 keeps Adam's steps scale-free for the tiny
    # gradients hash entries get.
    optimizer = torch.optim.Adam(groups, betas=(0.9, 0.99), eps=config.adam_eps)
    reg_weight = 0.0 if config.colour_only else weights.regularization
    opacity_weight = 0.0 if config.colour_only else weights.opacity
    losses: dict[str, float] = {}
    done = 0
    elapsed = 0.0
    if resume is not None and resume_state is not None:
        # After the sources (rendered from F_rec's weights, as in the first run) and even when stopped during
        # them: a resumed run that stops at once must hand back the state it resumed from, not F_rec.
        model.load_state_dict(resume.model.state_dict())
        optimizer.load_state_dict(resume_state["optimizer"])
        try:
            generator.set_state(resume_state["generator"])
        except (RuntimeError, TypeError, ValueError):  # a state of another device type: reseed
            generator.manual_seed(config.seed + int(resume_state["done"]))
        done, elapsed = int(resume_state["done"]), float(resume_state["elapsed_s"])
        losses = {k: float(v) for k, v in resume_state.get("losses", {}).items()}
    t0 = time.perf_counter() - elapsed  # elapsed time (and the ETA) continue on resume
    last_image: Tensor | None = None

    def current(metrics_extra: dict[str, float], resumable: bool) -> NeRFCheckpoint:
        metrics = {**{f"loss_{k}": v for k, v in losses.items()}, "stylize_iterations": float(done),
                   "view_zoom_mean": float(zoom.mean()), "view_zoom_max": float(zoom.max()),
                   "elapsed_s": elapsed, "prompt_driven": 0.0 if weights_are_random(clip, perceptual) else 1.0,
                   **metrics_extra}
        # Everything the loop carries from one iteration to the next (the sources are rendered again).
        state = {"kind": TRAIN_STATE_KIND, "done": done, "iterations": iterations, "elapsed_s": elapsed,
                 "optimizer": optimizer.state_dict(), "generator": generator.get_state(), "losses": dict(losses)}
        return NeRFCheckpoint(model=model, config=ckpt_rec.config, background=ckpt_rec.background,
                              normalization=ckpt_rec.normalization, cameras=ckpt_rec.cameras,
                              train_indices=list(ckpt_rec.train_indices),
                              heldout_indices=list(ckpt_rec.heldout_indices), step=ckpt_rec.step + done,
                              metrics=metrics, train_state=state if resumable else None, subject=subject)

    while not cancelled and done < iterations:
        if stop():
            cancelled = True
            break
        it = done
        lr_factor = config.lr_decay ** (it / iterations)
        for group in optimizer.param_groups:
            group["lr"] = group["lr0"] * lr_factor
        v = it % n_views
        src, embeds_src = sources[v]
        rays_o, rays_d = rays_for_image(cams_model, v, device=device, dtype=torch.float32)
        h, w = int(views.cameras.height[v]), int(views.cameras.width[v])
        negatives = draw_negatives(pool, n_neg, generator)
        jitter = torch.rand(h * w, device=device, generator=generator) if config.jitter else None

        def image_loss(image: Tensor, src: Tensor = src, embeds_src: Tensor = embeds_src,
                       negatives: list[str] = negatives) -> tuple[Tensor, dict[str, Tensor]]:
            return total_image_loss(image, src, clip=clip, target=config.prompt, negatives=negatives,
                                    generator=generator, perceptual=perceptual, weights=weights, config=config.loss,
                                    templates=templates, embeds_src=embeds_src)

        optimizer.zero_grad(set_to_none=True)
        try:
            measure = config.report_gradients_every > 0 and (it + 1) % config.report_gradients_every == 0
            step = deferred_backward(model, rays_o, rays_d, h, w, image_loss, background, reg_weight=reg_weight,
                                     opacity_weight=opacity_weight, chunk_render=config.chunk_render,
                                     chunk_grad=config.chunk_grad, jitter=jitter,
                                     early_stop_eps=early_stop_eps, should_stop=stop,
                                     term_weights=_term_weights(weights) if measure else None, subject=subject)
        except DeferredAborted:
            # Stopped mid-iteration: drop its partial gradients, keep the model of the last complete step.
            optimizer.zero_grad(set_to_none=True)
            cancelled = True
            break
        optimizer.step()
        done += 1
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        elapsed = time.perf_counter() - t0
        losses = {"total": step.total, "image": step.image_loss, **step.terms}
        if reg_weight > 0:
            losses["regularization"] = step.regularization
        if opacity_weight > 0:
            losses["opacity"] = step.opacity_loss
        last_image = step.image
        per_it = elapsed / done
        lr_shown = config.lr_mlp if config.colour_only else config.resolved_lr_grid()
        metrics = {"lr": lr_shown * lr_factor,
                   "view": float(v), "n_samples": float(step.n_samples), "seconds_per_iteration": per_it}
        for term, norms in (step.gradient_norms or {}).items():
            metrics.update({f"grad_{term}_{group}": value for group, value in norms.items()})
        show = done % config.preview_every == 0 or done == iterations
        report(StylizeProgress("stylizing", done, iterations, losses=dict(losses), metrics=metrics,
                               elapsed_s=elapsed, eta_s=per_it * (iterations - done),
                               preview=_preview(step.image) if show and step.image is not None else None))
        if on_checkpoint is not None and config.checkpoint_every and done % config.checkpoint_every == 0 \
                and done < iterations:
            on_checkpoint(current({"cancelled": 0.0}, resumable=True))

    model.eval()
    for p in density_params:
        p.requires_grad_(True)  # a checkpoint's model is a plain trainable module again
    if allowed is not None and done == iterations:
        # The finished model: F_rec's cells, plus the grown cells where density now passes the occupancy threshold.
        # (F_rec's own cells stay as they were: re-measuring them would drop faint cells F_rec renders, a change
        # of its own; an unfinished run keeps the whole allowed region, which a resumed run marches again. With
        # subject bounds the allowed region grows only inside them, so the cells outside stay F_rec's.)
        rec_cells = ckpt_rec.model.occupancy.binary.to(device)
        if config.shape_freedom > 0:
            model.occupancy.refresh(model.occupancy_eval_fn(), generator, threshold=ckpt_rec.config.occ_threshold,
                                    allowed=allowed & ~rec_cells)
        else:
            model.occupancy.binary.zero_()
        # F_rec's cells that the run marched (all of them but the room's within the grown bounds: those must
        # stay out of the subject's renders).
        model.occupancy.binary |= rec_cells & allowed
    result = current({"cancelled": float(cancelled), "negatives_dropped": float(len(pool.dropped))},
                     resumable=done < iterations)
    report(StylizeProgress("done", done, iterations, losses=dict(losses), elapsed_s=elapsed, eta_s=0.0,
                           preview=None if last_image is None else _preview(last_image), done=True))
    return result


def _negative_pool(clip: ClipModel, config: StylizeConfig, templates: tuple[Template, ...]) -> NegativePool:
    """The bank's pool for the prompt, without the negatives too close to it (``negative_max_closeness``)."""
    pool = build_negative_pool(config.prompt, config.negative_prompts)
    if config.negative_max_closeness is None:
        return pool
    candidates = [p for p in pool.prompts if p not in pool.protected]
    closeness = negative_closeness(lambda texts: clip.text_embeddings_averaged(texts, templates), config.prompt,
                                   config.source_text, candidates)
    return drop_close_negatives(pool, closeness, config.negative_max_closeness)


def stylization_subject(subject: SubjectBounds | None, config: StylizeConfig) -> SubjectBounds | None:
    """The bounds a stylization works in, and its result carries: the subject's own, grown by ``shape_freedom``
    when the shape may grow (module docstring, "Shape freedom": room for what the style adds)."""
    if subject is None or config.colour_only or config.shape_freedom == 0:
        return subject
    return subject.grown(config.shape_freedom)


#: Longest side of the silhouettes :func:`view_zoom` renders (a cheap pass: the framing needs no detail).
ZOOM_SILHOUETTE_SIDE = 96


@torch.no_grad()
def view_zoom(ckpt_rec: NeRFCheckpoint, config: StylizeConfig, cameras_model: Cameras,
              model: NeRFModel | None = None) -> np.ndarray:  # -> [N]
    """How much a stylization widens each of its views (``cameras_model``, model coordinates): 1 unless the
    shape may grow, else :func:`~backend.stylize.views.growth_zoom` of ``F_rec``'s silhouette in each view
    (rendered small, within its bounds when it has them, opacity over one half) grown by ``shape_freedom``, at
    most ``1 + shape_freedom``. The silhouette comes from what ``F_rec`` renders, not from its occupied cells:
    the grid also marks the faint haze around a head, which would make every head look cut off by the frame.

    Args:
        model: ``F_rec``'s model to render (default ``ckpt_rec.model``), on the device to render on.
    """
    if config.colour_only or config.shape_freedom == 0:
        return np.ones(len(cameras_model))
    model = ckpt_rec.model if model is None else model
    device = model.device
    longest = float(np.max(np.maximum(cameras_model.width, cameras_model.height)))
    small = cameras_model.scaled(min(1.0, ZOOM_SILHOUETTE_SIDE / longest))
    subject = ckpt_rec.subject
    centre = np.zeros(3) if subject is None else subject.center  # the look-at point of a head capture
    silhouettes, depths = [], np.zeros(len(cameras_model))
    for i in range(len(small)):
        rays_o, rays_d = rays_for_image(small, i, device=device, dtype=torch.float32)
        _, opacity, _ = render_rays_chunked(model, rays_o, rays_d, None, chunk=config.chunk_render,
                                            early_stop_eps=float(ckpt_rec.config.early_stop_eps), subject=subject)
        silhouettes.append((opacity > 0.5).reshape(int(small.height[i]), int(small.width[i])).cpu().numpy())
        w2c = np.linalg.inv(cameras_model.c2w[i])
        depths[i] = float(w2c[2, :3] @ centre + w2c[2, 3])
    return growth_zoom(cameras_model, silhouettes, depths, config.shape_freedom,
                       max_zoom=1.0 + config.shape_freedom)


def _allowed_cells(model: NeRFModel, shape_freedom: float, subject: SubjectBounds | None,
                   left_out: torch.Tensor | None = None) -> torch.Tensor:
    """The ``(R, R, R)`` cells a stylization marches.

    Without bounds: ``F_rec``'s occupied cells and those within ``shape_freedom`` model units of them. With
    bounds (``subject``, the reconstruction's own): the person's cells (``F_rec``'s cells touching them), the
    empty cells within ``shape_freedom`` of those that touch the bounds grown by it
    (:func:`stylization_subject`), and ``F_rec``'s cells beyond the grown bounds (never sampled by the run's
    renders, kept so the result's grid holds its background). ``F_rec``'s cells *between* the bounds and the
    grown bounds are the room (a wall, a chair back): they are left out, so the losses never see them and the
    result's renders of the subject leave them out too.

    ``left_out`` (``(R, R, R)`` bool, the reconstruction's ``subject_air``) are cells that are not the person: the
    air its cameras saw through around the head and the haze its key put beside it. Growth never enters them.
    Those that hold F_rec's density are haze, not empty space: admitting them brings the haze back at full
    strength on the first iteration (a shell of fog around the head) rather than let shape grow. Those F_rec left
    empty are where a fuller outline would form, but opening them let the stand-in's "a big hat" fill the whole
    grown bounds with an opaque cloud on a real head without mattes
    (``bench/results/sweep_shape_h100_2026-12-08_seen-air-open.md``), so they stay closed until growth there can be
    kept from turning to cloud.
    """
    grid: OccupancyGrid = model.occupancy
    if subject is None or shape_freedom == 0:
        return grid.within_distance(shape_freedom, model.domain)
    cells = grid.binary
    inside = subject_cells(subject, grid.resolution, model.domain, device=cells.device)
    room = subject_cells(subject.grown(shape_freedom), grid.resolution, model.domain, device=cells.device)
    person = cells & inside
    growth = cells_within_distance(person, shape_freedom, model.domain) & room & ~cells
    if left_out is not None:
        growth &= ~left_out.to(cells.device)
    return person | growth | (cells & ~room)


def _same_subject(a: SubjectBounds | None, b: SubjectBounds | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return a.shape == b.shape and bool(np.allclose(a.matrix, b.matrix, rtol=0.0, atol=1e-9))


def _term_weights(weights: LossWeights) -> dict[str, float]:
    """The image-loss terms' weights, keyed as :func:`total_image_loss` names its terms."""
    return {"directional": weights.directional, "global_contrastive": weights.global_contrastive,
            "local_contrastive": weights.local_contrastive, "perceptual": weights.perceptual}


def _check_resume(resume: NeRFCheckpoint, ckpt_rec: NeRFCheckpoint, iterations: int,
                  subject: SubjectBounds | None) -> dict[str, Any]:
    """The ``train_state`` of a stylization checkpoint to resume from, after checking it is this stylization's.

    Raises:
        ValueError: no stylization state, another model, another iteration count, or other subject bounds.
    """
    state = resume.train_state
    if not state or state.get("kind") != TRAIN_STATE_KIND:
        raise ValueError("the checkpoint to resume from holds no stylization state")
    if resume.model.config.to_dict() != ckpt_rec.model.config.to_dict():
        raise ValueError("the checkpoint to resume from has another model configuration than the reconstruction")
    if int(state.get("iterations", -1)) != iterations:
        raise ValueError(f"the checkpoint to resume from was stylized towards {state.get('iterations')} "
                         f"iterations, this run towards {iterations}")
    if not 0 <= int(state.get("done", -1)) <= iterations:
        raise ValueError(f"the checkpoint to resume from has {state.get('done')} iterations done")
    if not _same_subject(resume.subject, subject):
        raise ValueError("the checkpoint to resume from was stylized within other subject bounds")
    return state
