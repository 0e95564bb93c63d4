"""The frozen CLIP model of the stylization losses: loading, tensor preprocessing and cached text embeddings.

Spec Sections 2, 3.8 and 10. One shared, frozen (``eval()``, ``requires_grad_(False)``) open_clip instance per
(model name, weights source, QuickGELU flag, device) lives in :data:`CLIP_MODELS`; gradients still flow through it
to the input image. Text embeddings ``e_k(s) = n(E_T(T_k(s)))`` are computed once per string and template set and
cached on the instance, detached.

Preprocessing works on tensors so that it is differentiable (``F.interpolate`` bicubic, then open_clip's
``OPENAI_DATASET_MEAN`` / ``OPENAI_DATASET_STD``):

========================  =============================================  ==========================
Loss                      Resize / crop                                  ``(x+1)/2`` shift
========================  =============================================  ==========================
Directional (``P_dir``)   whole image squashed to 224×224                never
Global contrastive        short side to 224, centre crop 224             only with ``clip_input_shift``
Local contrastive         random square crops, each resized to 224       only with ``clip_input_shift``
========================  =============================================  ==========================

Imports of open_clip are deferred to the functions that need them: importing it costs ~3 s, and importing
:mod:`backend.stylize` must stay cheap and load no weights (style guide, point 8).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .weights import (
    CLIP_WEIGHTS_OPTION,
    ModelCache,
    clip_checkpoint,
    download_blocker,
    missing_clip_error,
)

__all__ = [
    "CLIP_MODELS",
    "CLIP_SIZE",
    "ClipModel",
    "Template",
    "clip_normalize",
    "crops_from_images",
    "imagenet_templates",
    "load_clip",
    "preprocess_center",
    "preprocess_crops",
    "preprocess_squash",
    "resize_bicubic",
    "template_key",
]

#: A prompt template: a callable that puts a text into a sentence, ``t("photo") == "a bad photo of a photo."``.
Template = Callable[[str], str]

#: CLIP ViT-B/32 input side in pixels (spec Section 2).
CLIP_SIZE = 224

#: Shared frozen CLIP models, keyed by (name, weights source, quick_gelu, device). ``CLIP_MODELS.clear()`` frees
#: them. This is the only module-level state of the stylization package.
CLIP_MODELS = ModelCache("clip")

# Text batches larger than this are encoded in pieces, to bound activation memory (80 templates x 10 strings).
_TEXT_BATCH = 256


def _pooled_positions(model: Any, tokens: Tensor) -> Tensor | None:  # [B, C] -> [B] or None
    """Where open_clip's ``text_global_pool`` takes each text's feature (its end token), or None when the model
    pools otherwise (then a prefix of the context would not do)."""
    pool = getattr(model, "text_pool_type", None)
    if pool == "argmax":  # the end token has the highest id
        return tokens.argmax(dim=-1)
    eos = getattr(model, "text_eos_id", None)
    if pool == "eos" and eos is not None:
        return (tokens == eos).int().argmax(dim=-1)
    return None


def _is_causal(mask: Any) -> bool:
    """Whether ``mask`` (``(C, C)`` additive attention mask) lets each position see itself and those before only."""
    if not isinstance(mask, torch.Tensor) or mask.dim() != 2 or mask.shape[0] != mask.shape[1]:
        return False
    upper = torch.triu(torch.ones_like(mask, dtype=torch.bool), diagonal=1)
    return bool(torch.equal(torch.isneginf(mask), upper)) and bool((mask[~upper] == 0).all())


def encode_text_prefix(model: Any, tokens: Tensor) -> Tensor:  # [B, C] int -> [B, D]
    """``model.encode_text(tokens)``, computed over the shortest prefix of the context that holds every text's end
    token.

    CLIP's text transformer is causal and its feature is read at the end token: what comes after it (padding to
    the context length, 77 tokens, where a templated prompt takes about 12) changes nothing of that feature, so
    leaving it out gives the same embedding for about a sixth of the work. Models that pool otherwise, or whose
    mask is not causal, go through ``encode_text`` unchanged.
    """
    needed = ("token_embedding", "positional_embedding", "transformer", "ln_final", "text_projection", "attn_mask")
    positions = _pooled_positions(model, tokens) if all(hasattr(model, a) for a in needed) else None
    if positions is None or not _is_causal(model.attn_mask):
        return model.encode_text(tokens)
    length = int(positions.max()) + 1
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens[:, :length]).to(cast_dtype)  # [B, L, width]
    x = x + model.positional_embedding[:length].to(cast_dtype)
    x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
    x = model.ln_final(x)
    x = x[torch.arange(x.shape[0], device=x.device), positions]  # [B, width]
    projection = model.text_projection
    if projection is None:
        return x
    return projection(x) if isinstance(projection, torch.nn.Module) else x @ projection


def imagenet_templates() -> tuple[Template, ...]:
    """open_clip's 80 OpenAI ImageNet templates (spec Section 10): a tuple of callables, use ``t(s)``."""
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    return tuple(OPENAI_IMAGENET_TEMPLATES)


def template_key(templates: Sequence[Template]) -> tuple[str, ...]:
    """A hashable key for a template set: each template applied to ``"{}"``.

    Keys the text cache by what the templates produce, not by function identity, so re-created lambdas with the
    same wording share cache entries.
    """
    return tuple(t("{}") for t in templates)


# ---------------------------------------------------------------------------------------------------------------
# Tensor preprocessing (differentiable).


def _check_images(images: Tensor, name: str = "images") -> None:
    if not isinstance(images, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(images).__name__}")
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"{name} must have shape (B, 3, H, W), got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor in [0, 1], got dtype {images.dtype}")
    if images.shape[0] == 0 or images.shape[2] == 0 or images.shape[3] == 0:
        raise ValueError(f"{name} must be non-empty, got shape {tuple(images.shape)}")


def clip_normalize(images: Tensor) -> Tensor:
    """Apply CLIP's mean/std normalisation (open_clip ``OPENAI_DATASET_MEAN`` / ``OPENAI_DATASET_STD``).

    .. math:: x' = (x - \\mu) / \\sigma

    Args:
        images: ``(B, 3, H, W)`` images in [0, 1].

    Returns:
        ``(B, 3, H, W)``, same dtype and device.
    """
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    _check_images(images)
    mean = torch.tensor(OPENAI_DATASET_MEAN, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_DATASET_STD, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    return (images - mean) / std


def resize_bicubic(images: Tensor, size: tuple[int, int]) -> Tensor:
    """Bicubic resize to ``size = (height, width)``, anti-aliased when shrinking.

    Anti-aliasing (``antialias=True``) averages over the footprint when downsampling, so a 960-row render does
    not alias into CLIP's 224 rows. It has no effect when enlarging (crops). The released code used a 2022
    torchvision ``Resize`` on tensors, which did not anti-alias; this is a deliberate improvement. Values are
    not clamped: bicubic overshoot stays, as in the code, and clamping would zero some gradients.

    Args:
        images: ``(B, 3, H, W)``.
        size: output ``(height, width)``.

    Returns:
        ``(B, 3, height, width)``.
    """
    _check_images(images)
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    return F.interpolate(images, size=size, mode="bicubic", align_corners=False, antialias=True)


def _shift(images: Tensor, clip_input_shift: bool) -> Tensor:
    # The released code maps x -> (x+1)/2, a StyleGAN-NADA leftover for GAN outputs in [-1, 1]; on [0, 1]
    # renders it washes the image out to [0.5, 1]. Reproduced only on request (spec Section 3.2, Section 10).
    return (images + 1.0) * 0.5 if clip_input_shift else images


def preprocess_squash(images: Tensor, size: int = CLIP_SIZE) -> Tensor:
    """``P_dir`` (spec Section 3.1): squash the whole image to ``size × size`` (aspect not kept), normalise.

    No crop and no ``(x+1)/2`` shift, as in the released directional loss.

    Args:
        images: ``(B, 3, H, W)`` in [0, 1].

    Returns:
        ``(B, 3, size, size)`` CLIP input.
    """
    return clip_normalize(resize_bicubic(images, (size, size)))


def preprocess_center(images: Tensor, size: int = CLIP_SIZE, clip_input_shift: bool = False) -> Tensor:
    """``P_con`` (spec Section 3.2): short side to ``size`` (bicubic), centre crop ``size × size``, normalise.

    The long side becomes ``int(size * long / short)`` and the crop offset ``round((long' - size) / 2)``, as
    torchvision's ``Resize(size)`` + ``CenterCrop(size)`` (the code's CLIP preprocessing) compute them.

    Args:
        images: ``(B, 3, H, W)`` in [0, 1].
        clip_input_shift: apply the released ``(x+1)/2`` quirk before resizing.

    Returns:
        ``(B, 3, size, size)`` CLIP input.
    """
    _check_images(images)
    h, w = images.shape[-2:]
    if h <= w:
        new_h, new_w = size, max(size, int(size * w / h))
    else:
        new_h, new_w = max(size, int(size * h / w)), size
    resized = resize_bicubic(_shift(images, clip_input_shift), (new_h, new_w))
    top = round((new_h - size) / 2.0)
    left = round((new_w - size) / 2.0)
    return clip_normalize(resized[:, :, top:top + size, left:left + size])


def crops_from_images(images: Tensor, n_crops: int, crop_frac: float,
                      generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Draw ``n_crops`` random square crops per image (spec Section 10, local contrastive loss).

    The side is ``s = round(crop_frac · min(H, W))`` (at least 1 pixel); the top-left corner is uniform over every
    position that keeps the crop inside the image (no padding, unlike the released code's pad-and-shrink).

    Args:
        images: ``(B, 3, H, W)``.
        n_crops: crops per image, ``N >= 1``.
        crop_frac: side as a fraction of the short image side, in (0, 1].
        generator: the random source; must live on ``images.device``'s type (CPU generator for CPU images). The
            corners are drawn on the generator's device.

    Returns:
        ``crops`` ``(B, N, 3, s, s)`` (views into a gather of ``images``, differentiable) and ``corners``
        ``(B, N, 2)`` int64 ``(top, left)`` on the CPU.
    """
    _check_images(images)
    if n_crops < 1:
        raise ValueError(f"n_crops must be >= 1, got {n_crops}")
    if not 0.0 < crop_frac <= 1.0:
        raise ValueError(f"crop_frac must be in (0, 1], got {crop_frac}")
    b, _, h, w = images.shape
    side = max(1, round(crop_frac * min(h, w)))
    gen_device = generator.device
    # randint's upper bound is exclusive: positions 0..H-s inclusive.
    tops = torch.randint(0, h - side + 1, (b, n_crops), generator=generator, device=gen_device)
    lefts = torch.randint(0, w - side + 1, (b, n_crops), generator=generator, device=gen_device)
    corners = torch.stack([tops, lefts], dim=-1).cpu()
    # Gather with index arithmetic instead of a Python loop: rows (B, N, s) and columns (B, N, s).
    ar = torch.arange(side, device=images.device)
    rows = corners[..., 0].to(images.device)[..., None] + ar  # (B, N, s)
    cols = corners[..., 1].to(images.device)[..., None] + ar  # (B, N, s)
    bidx = torch.arange(b, device=images.device)[:, None, None, None]  # (B, 1, 1, 1)
    # images[b, :, rows, cols] -> advanced indexing puts the indexed dims first: (B, N, s, s, 3).
    crops = images.permute(0, 2, 3, 1)[bidx, rows[:, :, :, None], cols[:, :, None, :]]
    return crops.permute(0, 1, 4, 2, 3), corners


def preprocess_crops(crops: Tensor, size: int = CLIP_SIZE, clip_input_shift: bool = False) -> Tensor:
    """``P_patch`` (spec Section 3.3 / 10): resize each crop to ``size × size`` (bicubic), normalise.

    Args:
        crops: ``(B, N, 3, s, s)`` from :func:`crops_from_images`.
        clip_input_shift: apply the released ``(x+1)/2`` quirk.

    Returns:
        ``(B * N, 3, size, size)`` CLIP input, crop-major within each image.
    """
    if crops.ndim != 5 or crops.shape[2] != 3:
        raise ValueError(f"crops must have shape (B, N, 3, s, s), got {tuple(crops.shape)}")
    flat = crops.reshape(-1, *crops.shape[2:])
    return clip_normalize(resize_bicubic(_shift(flat, clip_input_shift), (size, size)))


# ---------------------------------------------------------------------------------------------------------------
# The frozen model with its text cache.


class ClipModel:
    """A frozen open_clip model, its tokenizer, and a per-string cache of template text embeddings.

    Build it with :func:`load_clip`. Parameters never require gradients, but :meth:`encode_images` keeps the
    autograd graph to its input, so losses back-propagate into the rendered image.

    Attributes:
        model: the open_clip ``CLIP`` module, in eval mode.
        name: open_clip model name.
        source: where the weights came from (tag, file path, or ``"random(seed=…)"``).
        device: device of the parameters.
        dtype: parameter dtype (float32: open_clip loads fp32, unlike the code's fp16 ``clip.load``).
        image_size: CLIP input side (224 for ViT-B-32).
        context_length: tokenizer context (77 tokens for CLIP, start and end tokens included).
        embed_dim: embedding width D (512 for ViT-B-32).
        n_text_encoder_calls: how many batches went through the text encoder (cache misses only).
        n_texts_encoded: how many distinct strings were encoded.
    """

    def __init__(self, model: torch.nn.Module, tokenizer: Any, *, name: str, source: str,
                 device: torch.device) -> None:
        model.eval()
        model.requires_grad_(False)
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.source = source
        # The device the parameters really live on: tensors report an indexed device ("cuda:0"), and
        # torch.device("cuda") != torch.device("cuda:0"), so keeping the caller's unindexed "cuda" would make
        # encode_images reject every CUDA image.
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        image_size = model.visual.image_size
        self.image_size = int(image_size[0] if isinstance(image_size, (tuple, list)) else image_size)
        self.context_length = int(getattr(tokenizer, "context_length", 77))
        self.embed_dim = int(model.visual.output_dim)
        self._text_cache: dict[tuple[str, tuple[str, ...]], Tensor] = {}
        self._direction_cache: dict[tuple[str, str, tuple[str, ...]], Tensor] = {}
        self._lock = threading.Lock()
        self.n_text_encoder_calls = 0
        self.n_texts_encoded = 0

    def __repr__(self) -> str:
        return (f"ClipModel({self.name!r}, source={self.source!r}, device={self.device}, "
                f"{len(self._text_cache)} cached texts)")

    # -- prompts -------------------------------------------------------------------------------------------------

    def _n_tokens(self, text: str) -> int:
        """Tokens of ``text`` including the start and end tokens, before any truncation."""
        encode = getattr(self.tokenizer, "encode", None)
        if callable(encode):
            return len(encode(text)) + 2
        # Tokenizers without .encode (HF-based): a full row may have been truncated; report it as over the limit.
        ids = self.tokenizer([text])[0]
        n = int((ids != 0).sum())
        return n + 1 if n >= self.context_length else n

    def check_prompt(self, text: str, templates: Sequence[Template] | None = None, what: str = "prompt") -> None:
        """Raise ``ValueError`` if ``text`` is not a usable prompt.

        A prompt must be a non-empty string with some non-whitespace character, and every templated sentence
        ``T_k(text)`` must fit CLIP's context (77 tokens including start and end): open_clip would silently
        truncate it, cutting the end of the prompt, often the style words.
        """
        if not isinstance(text, str):
            raise ValueError(f"{what} must be a string, got {type(text).__name__}")
        if not text.strip():
            raise ValueError(f"{what} is empty; give a text such as 'oil painting by Van Gogh'")
        templates = imagenet_templates() if templates is None else templates
        longest, worst = 0, ""
        for t in templates or (lambda s: s,):
            n = self._n_tokens(t(text))
            if n > longest:
                longest, worst = n, t("{}")
        if longest > self.context_length:
            bare = self._n_tokens(text)
            raise ValueError(
                f"{what} is too long for CLIP: {longest} tokens with the template {worst!r} (the prompt alone is "
                f"{bare} tokens, start/end included) but the CLIP text encoder takes at most "
                f"{self.context_length} tokens; the rest would be cut off. Shorten it by about "
                f"{longest - self.context_length} tokens (roughly that many words).")

    # -- text embeddings -------------------------------------------------------------------------------------------

    @torch.no_grad()
    def _encode_sentences(self, sentences: list[str]) -> Tensor:
        """``(S, D)`` unit text embeddings of already-templated sentences, in float32 on ``self.device``."""
        self.n_text_encoder_calls += 1
        out = []
        for i in range(0, len(sentences), _TEXT_BATCH):
            tokens = self.tokenizer(sentences[i:i + _TEXT_BATCH]).to(self.device)
            feats = encode_text_prefix(self.model, tokens).float()
            out.append(feats / feats.norm(dim=-1, keepdim=True).clamp_min(1e-12))
        return torch.cat(out, dim=0)

    def precompute_texts(self, texts: Sequence[str], templates: Sequence[Template] | None = None) -> None:
        """Encode every not-yet-cached text in one batch (job start: target, source, all negatives).

        Raises:
            ValueError: a text is empty or too long (the message names it).
        """
        templates = imagenet_templates() if templates is None else tuple(templates)
        if not templates:
            raise ValueError("templates must not be empty")
        key = template_key(templates)
        with self._lock:
            missing: list[str] = []
            for text in texts:
                if (text, key) not in self._text_cache and text not in missing:
                    self.check_prompt(text, templates, what=f"text {text!r}")
                    missing.append(text)
            if not missing:
                return
            sentences = [t(text) for text in missing for t in templates]
            embeds = self._encode_sentences(sentences).view(len(missing), len(templates), -1)
            for text, emb in zip(missing, embeds, strict=True):
                self._text_cache[(text, key)] = emb.clone()
            self.n_texts_encoded += len(missing)

    def text_embeddings(self, text: str, templates: Sequence[Template] | None = None) -> Tensor:
        """``e_k(text) = n(E_T(T_k(text)))`` for every template k (spec Section 2), cached per string.

        Returns:
            ``(K_T, D)`` float32 unit vectors on ``self.device``, no gradient. Do not modify in place.
        """
        templates = imagenet_templates() if templates is None else tuple(templates)
        key = (text, template_key(templates))
        cached = self._text_cache.get(key)
        if cached is None:
            self.precompute_texts([text], templates)
            cached = self._text_cache[key]
        return cached

    def text_embeddings_many(self, texts: Sequence[str], templates: Sequence[Template] | None = None) -> Tensor:
        """Stack :meth:`text_embeddings` of several texts: ``(J, K_T, D)``."""
        if len(texts) == 0:
            raise ValueError("texts must not be empty")
        self.precompute_texts(texts, templates)
        return torch.stack([self.text_embeddings(t, templates) for t in texts], dim=0)

    def text_embeddings_averaged(self, texts: Sequence[str], templates: Sequence[Template] | None = None) -> Tensor:
        """``n(mean_k e_k(text))`` per text: ``(J, D)`` unit vectors, the templates averaged (one per text)."""
        mean = self.text_embeddings_many(texts, templates).mean(dim=1)
        return mean / mean.norm(dim=-1, keepdim=True).clamp_min(1e-12)

    def text_direction(self, target: str, source: str, templates: Sequence[Template] | None = None) -> Tensor:
        """``Δt = n(mean_k(e_k(target) − e_k(source)))`` (spec Section 3.1), cached per pair.

        Returns:
            ``(D,)`` float32 unit vector, no gradient.

        Raises:
            ValueError: a prompt is invalid, or both texts give the same embedding (the direction is undefined;
                e.g. target == source).
        """
        templates = imagenet_templates() if templates is None else tuple(templates)
        key = (target, source, template_key(templates))
        cached = self._direction_cache.get(key)
        if cached is not None:
            return cached
        self.precompute_texts([target, source], templates)
        diff = (self.text_embeddings(target, templates) - self.text_embeddings(source, templates)).mean(dim=0)
        norm = float(diff.norm())
        if norm < 1e-6:
            raise ValueError(f"target text {target!r} and source text {source!r} give the same CLIP text embedding, "
                             "so the style direction is undefined; use a different target")
        direction = diff / norm
        self._direction_cache[key] = direction
        return direction

    def clear_text_cache(self) -> None:
        """Forget all cached text embeddings and directions."""
        with self._lock:
            self._text_cache.clear()
            self._direction_cache.clear()

    @property
    def n_cached_texts(self) -> int:
        return len(self._text_cache)

    # -- images ----------------------------------------------------------------------------------------------------

    def encode_images(self, pixels: Tensor) -> Tensor:
        """``E_I`` on preprocessed CLIP input; gradients flow to ``pixels``.

        Args:
            pixels: ``(B, 3, S, S)`` normalised CLIP input with S = ``image_size``, on ``self.device``.

        Returns:
            ``(B, D)`` raw (not normalised) image embeddings in ``self.dtype``.
        """
        if pixels.ndim != 4 or pixels.shape[1] != 3 or tuple(pixels.shape[-2:]) != (self.image_size,) * 2:
            raise ValueError(f"pixels must have shape (B, 3, {self.image_size}, {self.image_size}), "
                             f"got {tuple(pixels.shape)}")
        if pixels.device != self.device:
            raise ValueError(f"pixels are on {pixels.device} but the CLIP model is on {self.device}")
        return self.model.encode_image(pixels.to(self.dtype))

    def embed_squash(self, images: Tensor) -> Tensor:
        """``E_I(P_dir(images))``: ``(B, 3, H, W)`` in [0, 1] → ``(B, D)`` raw embeddings."""
        return self.encode_images(preprocess_squash(images, self.image_size))

    def embed_center(self, images: Tensor, clip_input_shift: bool = False) -> Tensor:
        """``E_I(P_con(images))``: ``(B, 3, H, W)`` in [0, 1] → ``(B, D)`` raw embeddings."""
        return self.encode_images(preprocess_center(images, self.image_size, clip_input_shift))

    def embed_crops(self, crops: Tensor, clip_input_shift: bool = False) -> Tensor:
        """``E_I(P_patch(c))`` for crops ``(B, N, 3, s, s)`` → ``(B, N, D)`` raw embeddings."""
        emb = self.encode_images(preprocess_crops(crops, self.image_size, clip_input_shift))
        return emb.view(crops.shape[0], crops.shape[1], -1)

    def embed_views(self, images: Tensor, *, squash: bool = False, center: bool = False, crops: Tensor | None = None,
                    clip_input_shift: bool = False) -> dict[str, Tensor]:
        """The embeddings one iteration's losses need, through the image encoder in **one** batch.

        Equal to :meth:`embed_squash`, :meth:`embed_center` and :meth:`embed_crops` called one by one, but a
        single forward (and backward) pass: a ViT-B-32 pass over one image costs about as much as over fourteen
        (kernel launches, not arithmetic, bound it; ``bench/results/stylize-profile_*.md``).

        Args:
            images: ``(B, 3, H, W)`` in [0, 1].
            squash: include ``P_dir(images)`` (key ``"squash"``, ``(B, D)``).
            center: include ``P_con(images)`` (key ``"center"``, ``(B, D)``).
            crops: ``(B, N, 3, s, s)`` crops (key ``"crops"``, ``(B, N, D)``), or None.
            clip_input_shift: the released ``(x+1)/2`` quirk, for ``P_con`` and the crops (never ``P_dir``).

        Returns:
            the raw embeddings asked for, by key.
        """
        parts: list[tuple[str, Tensor]] = []
        if squash:
            parts.append(("squash", preprocess_squash(images, self.image_size)))
        if center:
            parts.append(("center", preprocess_center(images, self.image_size, clip_input_shift)))
        if crops is not None:
            parts.append(("crops", preprocess_crops(crops, self.image_size, clip_input_shift)))
        if not parts:
            return {}
        emb = self.encode_images(torch.cat([x for _, x in parts]))
        out = dict(zip([key for key, _ in parts], emb.split([x.shape[0] for _, x in parts]), strict=True))
        if crops is not None:
            out["crops"] = out["crops"].reshape(crops.shape[0], crops.shape[1], -1)
        return out


# ---------------------------------------------------------------------------------------------------------------
# Loading.


def _default_quick_gelu(name: str) -> bool:
    # The OpenAI weights were trained with QuickGELU. open_clip 3.3's create_model only *warns* when the built
    # model disagrees with the tag, and 'ViT-B-32' builds with nn.GELU, so the flag must be forced. Random-init
    # and local-file models default to the same architecture as the tag 'openai' of that name.
    from open_clip.pretrained import get_pretrained_cfg

    return bool(get_pretrained_cfg(name, "openai").get("quick_gelu", False))


def _build(name: str, pretrained: str | None, quick_gelu: bool, device: torch.device,
           cache_dir: str | None = None) -> torch.nn.Module:
    import open_clip

    # create_model_and_transforms is the documented entry point (spec Section 10); the image transforms are not
    # used because preprocessing runs on tensors here.
    model, _, _ = open_clip.create_model_and_transforms(
        name, pretrained=pretrained, force_quick_gelu=quick_gelu, device=device, cache_dir=cache_dir)
    return model


def load_clip(name: str = "ViT-B-32", pretrained: str | os.PathLike[str] | None = "openai", *,
              device: str | torch.device = "cpu", random_init: bool = False, random_seed: int = 0,
              quick_gelu: bool | None = None, allow_download: bool = True,
              cache: ModelCache | None = CLIP_MODELS) -> ClipModel:
    """Load a frozen open_clip model, shared per (name, weights source, quick_gelu, device).

    Weights sources, exactly one of:

    * a pretrained tag (default ``"openai"``): loaded from the Hugging Face cache if the file is there (no
      network contact at all); otherwise downloaded by open_clip, but only if ``allow_download`` is true,
      ``HF_HUB_OFFLINE`` is not set and the hub answers a 3 s probe;
    * a local checkpoint file (an open_clip state dict, ``.safetensors`` / ``.bin`` / ``.pt``), the job option
      ``clip_weights``;
    * ``random_init=True`` with ``pretrained=None``: random weights from ``random_seed``, for tests only. It is
      never a fallback; it has to be asked for.

    Args:
        name: open_clip model name (``"ViT-B-32"``).
        pretrained: tag or checkpoint path; None only together with ``random_init=True``.
        device: where the model lives; images passed to it must be on the same device.
        random_init: build an untrained model of the same architecture.
        random_seed: seed for ``random_init`` (the global RNG is left untouched).
        quick_gelu: force QuickGELU on or off; None uses the tag's setting (for files and random init: the
            setting of the ``openai`` tag of ``name``, True for ViT-B-32).
        allow_download: may a missing tag be downloaded now.
        cache: the shared-instance cache; None builds a private instance.

    Raises:
        WeightsUnavailableError: the tag's weights are not cached and cannot be downloaded now (raised within a
            few seconds; the message lists the three ways to provide them).
        FileNotFoundError: ``pretrained`` looks like a path but no such file exists.
        ValueError: conflicting arguments, unknown tag, or a checkpoint that does not fit ``name``.
    """
    device = torch.device(device)
    if random_init:
        if pretrained is not None:
            raise ValueError(f"random_init=True builds untrained weights, but pretrained={str(pretrained)!r} was also "
                             "given; pass pretrained=None to ask for random weights explicitly")
        qg = _default_quick_gelu(name) if quick_gelu is None else quick_gelu
        source = f"random(seed={random_seed})"
        key: tuple[Any, ...] = (name, source, qg, str(device))

        def factory() -> ClipModel:
            # fork_rng keeps the caller's CPU RNG stream unchanged; the model is built on the CPU, then moved, so
            # the same seed gives the same weights on every device.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(random_seed)
                model = _build(name, None, qg, torch.device("cpu"))
            return _wrap(model.to(device), name, source, device)

    elif pretrained is None:
        raise ValueError("pretrained=None loads no weights: pass a tag (default 'openai'), a checkpoint file "
                         f"(option `{CLIP_WEIGHTS_OPTION}`), or random_init=True for tests")
    else:
        text = os.fspath(pretrained)
        path = Path(text).expanduser()
        if path.is_file():
            qg = _default_quick_gelu(name) if quick_gelu is None else quick_gelu
            source = str(path.resolve())
            key = (name, source, qg, str(device))

            def factory() -> ClipModel:
                try:
                    model = _build(name, source, qg, device)
                except (RuntimeError, AssertionError, KeyError, ValueError) as exc:
                    # open_clip's strict state-dict load reports a wrong architecture or a file that is not a
                    # checkpoint with any of these (its position-embedding resize uses a bare assert).
                    raise ValueError(f"CLIP checkpoint {source!r} (option `{CLIP_WEIGHTS_OPTION}`) cannot be loaded "
                                     f"into {name!r}: {exc}") from exc
                return _wrap(model, name, source, device)

        elif os.sep in text or (os.altsep and os.altsep in text) or path.suffix in (
                ".pt", ".pth", ".bin", ".safetensors", ".ckpt"):
            raise FileNotFoundError(f"CLIP checkpoint file {text!r} (option `{CLIP_WEIGHTS_OPTION}`) does not exist")
        else:
            ckpt = clip_checkpoint(name, text)  # ValueError for an unknown tag
            qg = ckpt.quick_gelu if quick_gelu is None else quick_gelu
            key = (name, f"tag:{text}", qg, str(device))

            def factory() -> ClipModel:
                cached = ckpt.cached_file()
                if cached is not None:
                    # Load the cached file by path: open_clip's tag path would call hf_hub_download, which
                    # contacts the hub to check for updates (slow or hanging offline).
                    return _wrap(_build(name, str(cached), qg, device), name, f"{text} ({cached})", device)
                blocker = download_blocker(allow_download, ckpt.download_url())
                if blocker is not None:
                    raise missing_clip_error(ckpt, f"they are not in the cache and {blocker}.")
                try:
                    model = _build(name, text, qg, device, cache_dir=str(ckpt.cache_dir))
                except Exception as exc:  # network, disk or hub errors all mean "not available"
                    raise missing_clip_error(ckpt, f"the download failed ({type(exc).__name__}: {exc}).") from exc
                return _wrap(model, name, text, device)

    if cache is None:
        return factory()
    return cache.get_or_create(key, factory)


def _wrap(model: torch.nn.Module, name: str, source: str, device: torch.device) -> ClipModel:
    import open_clip

    return ClipModel(model, open_clip.get_tokenizer(name), name=name, source=source, device=device)
