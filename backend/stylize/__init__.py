"""NeRF-Art stylization: losses, frozen CLIP / LPIPS models, negative prompts (spec: docs/nerfart-method.md).

Importing this package loads no weights and does not import open_clip or lpips (that happens in the loaders).

Modules:
    weights      where pretrained weights live; :class:`WeightsUnavailableError`; shared-model caches.
    clip_model   :func:`load_clip`, :class:`ClipModel` (tensor preprocessing, cached text embeddings).
    losses       the four NeRF-Art losses, :class:`LossWeights`, :func:`total_image_loss`, strength mapping.
    perceptual   LPIPS-VGG (default) and VGG16 relu3_3 L1 (released code) perceptual losses.
    negatives    the grouped negative-prompt bank, the removal rule, per-iteration draws, the closeness filter.
    deferred     deferred back-propagation, each term's share of the gradient, the exactness check.
    loop         :func:`stylize` (F_rec in, F_sty out).
    evaluation   geometry change, haze in front of the surface and outside the silhouette, silhouette change,
                 similarity to the prompt (benchmarks, tests; no matte needed).
    standin_encoder  the analytic stand-in encoder: a TEST INSTRUMENT with known semantics (colour, texture,
                 silhouette), never a CLIP.
"""

from .clip_model import (
    CLIP_MODELS,
    ClipModel,
    crops_from_images,
    imagenet_templates,
    load_clip,
    preprocess_center,
    preprocess_crops,
    preprocess_squash,
)
from .losses import (
    DEFAULT_ITERATIONS,
    DIR_EPS,
    STRENGTH_LEVELS,
    LossWeights,
    StyleLossConfig,
    directional_clip_loss,
    directional_from_embeddings,
    distortion_from_samples,
    distortion_loss,
    distortion_random_pair_from_samples,
    global_contrastive_loss,
    global_margin_loss,
    infonce_from_embeddings,
    iterations_for_strength,
    local_contrastive_from_embeddings,
    local_contrastive_loss,
    margin_contrastive_from_embeddings,
    normalize_safe,
    strength_value,
    total_image_loss,
    weights_for_strength,
)
from .negatives import (
    NegativeGroup,
    NegativePool,
    build_negative_pool,
    draw_negatives,
    load_negative_bank,
    matching_groups,
)
from .perceptual import (
    PERCEPTUAL_MODELS,
    LpipsLoss,
    VggRelu33Loss,
    load_lpips,
    load_perceptual,
    load_vgg_relu3_3,
)
from .weights import ModelCache, WeightsUnavailableError, hf_hub_cache_dir, torch_hub_checkpoints_dir

__all__ = [
    "CLIP_MODELS",
    "DEFAULT_ITERATIONS",
    "DIR_EPS",
    "PERCEPTUAL_MODELS",
    "STRENGTH_LEVELS",
    "ClipModel",
    "LossWeights",
    "LpipsLoss",
    "ModelCache",
    "NegativeGroup",
    "NegativePool",
    "StyleLossConfig",
    "VggRelu33Loss",
    "WeightsUnavailableError",
    "build_negative_pool",
    "crops_from_images",
    "directional_clip_loss",
    "directional_from_embeddings",
    "distortion_from_samples",
    "distortion_loss",
    "distortion_random_pair_from_samples",
    "draw_negatives",
    "global_contrastive_loss",
    "global_margin_loss",
    "hf_hub_cache_dir",
    "imagenet_templates",
    "infonce_from_embeddings",
    "iterations_for_strength",
    "load_clip",
    "load_lpips",
    "load_negative_bank",
    "load_perceptual",
    "load_vgg_relu3_3",
    "local_contrastive_from_embeddings",
    "local_contrastive_loss",
    "margin_contrastive_from_embeddings",
    "matching_groups",
    "normalize_safe",
    "preprocess_center",
    "preprocess_crops",
    "preprocess_squash",
    "strength_value",
    "torch_hub_checkpoints_dir",
    "total_image_loss",
    "weights_for_strength",
]
