"""A **test instrument**: an analytic stand-in for CLIP whose embedding has known semantics (never a CLIP).

No pretrained CLIP can be had on the project's machines, so nothing could show that stylization moves a NeRF
toward its prompt. This encoder fills the gap for tests and benchmarks only: its image embedding is a handful
of differentiable colour, texture and silhouette statistics, and its text encoder maps a small vocabulary ("red",
"golden", "striped", "sketch", "big", "tall", "horns", ...) to known directions in the same space. It plugs into
:class:`ClipModel` unchanged (:func:`load_standin_clip`), so the four NeRF-Art losses, the 80 templates, the
negatives and the crops run exactly as with CLIP. It is not offered to users: no job option selects it, its
``source`` starts with ``"stand-in("``, and a stylization with it is marked *not prompt-driven*, like one with
random CLIP weights.

Embedding space (``D = 259``), axis by axis:

=====  ==========  ======================================================  =====================================
axis   name        image: ``x`` = the 224x224 CLIP input in [0, 1]          text: words that point along it
=====  ==========  ======================================================  =====================================
0      content     the constant 1 (every image is "a photo of a face")     photo, face, head, person, real, ...
1      luminance   ``K_LUM (mean(x) - 0.5)``                               bright, white / dark, black
2-4    chroma      ``K_CHROMA (mean_rgb(x) - mean(x))`` (sums to 0)        red, golden, blue, green, pink, ...
5      saturation  ``K_SAT (mean per-pixel channel std - SAT0)``           colourful, vivid / grey, monochrome
6      edges       ``K_EDGE (mean |d lum/dx| + |d lum/dy| - EDGE0)``       sharp, sketch / smooth, blurry
7      stripes     ``K_STRIPE |mean |d lum/dx| - mean |d lum/dy||``        striped, stripes, zebra
8-255  (text)      always 0 for images                                     unknown words: hashed unit vectors
256    size        ``K_SIZE (area - area_0)``                              big, huge, giant / tiny
257    height      ``K_EXTENT (height - height_0)``                        tall, hat, crown, horns / short
258    width       ``K_EXTENT (width - width_0)``                          wide, broad, horns / narrow, thin
=====  ==========  ======================================================  =====================================

Colour is split into luminance and chroma (the mean colour minus its grey level) so that hue and brightness are
separate meanings: a head on a white ground that turns red gains red chroma without losing "white", so its cosine
with plain "photo"-like texts (the content axis) falls as its red rises.

**Shape (axes 256-258).** The encoder sees what the losses see: RGB renders, composited over the plain
background colour of a "matte" stylization (``StylizeConfig.background``, white by default), then resized and
CLIP-normalised. The subject's silhouette is read back from the colours against that known colour, which the
encoder is given (``background=``, default white, the loop's default). Per pixel, with the mean deviation from
the ground ``δ = mean_c |x_c - bg_c|_ε`` (``|d|_ε = sqrt(d² + ε²) - ε``, ``ε = FG_EPS``: an absolute value whose
sign is not decided by rounding noise on the bare ground), the *foreground-ness* is a logistic step
``m = (σ((δ - SOLID_DEVIATION) / SOLID_SLOPE) - σ_0) / (1 - σ_0)``, ``σ_0`` its value at ``δ = 0``: 0 on the plain
ground, near 1 on clearly visible subject. Faint haze counts almost nothing, so a shape word cannot be answered
with a cloud around the head: the earlier ``1 - exp(-δ / 0.05)`` counted a 5 % tint as 63 % subject, and "a big
hat" raised that stand-in's height from 0.39 to 0.86 through haze while the solid silhouette stayed (×1.002;
``bench/results/shape_cpu_study.md``, addendum of 2026-12-07). Because a render is ``rgb = α c + (1 - α) bg``,
``m`` grows with the opacity ``α`` wherever the subject's colour differs from the ground; its slope peaks where
``δ`` is near ``SOLID_DEVIATION`` (the half-transparent outline) and stays positive, if small, in the air beside
it, so the gradient reaches density at the outline and just outside it, not only inside. From ``m``, over the
``S x S`` CLIP input:

* ``area``: ``mean(m)``, the fraction of the frame the subject covers;
* ``height``: the fraction of rows the outline reaches, ``mean_y (1 - exp(-mean_x m / P_TOUCH))``: a row counts as
  soon as a few percent of it is subject, so a hat or horns above the head raise it while a fuller middle does
  not; ``width``: the same over columns.

Shape words ("big", "tall", "a big hat", "horns", ...) point along them, so a prompt can ask for a bigger or
different outline and the NeRF-Art losses pull density outward to give it, **provided the axes are centred on the
source**: ``shape_reference = (area_0, height_0, width_0)``, by default a head and shoulders that fill about half
the frame (``AREA0``, ``HEIGHT0``, ``WIDTH0``). The losses compare *normalised* embeddings, so when ``F_rec``'s
renders sit far from the reference (a small subject on white reads as "small", with a large negative size
component) the cheapest way to point further along "big" is to shrink that component's share of the norm, and
brightening the whole render (raising the luminance axis) does so as well as growing the outline does, for far
less: the gradient then thins the subject instead of growing it. Shape tests therefore centre the axes on
``F_rec``'s own renders (:func:`shape_reference`, then ``load_standin_clip(shape_reference=...)``), where a
render's shape components start at 0 and only the outline can move them.

Limits, as befits an instrument: a subject pixel of exactly the background colour reads as ground; a silhouette
that already fills the frame cannot grow along that axis; the reference is measured through ``P_dir`` (the whole
view squashed), so the centre crop of the global loss and the local crops see other framings; the released
``(x+1)/2`` input shift (``clip_input_shift``) moves every colour but white, so with it the shape axes are only
meaningful on a white ground; a "contract" stylization (background modelled, no plain ground) gives them no
meaning; a render smaller than 224 px is upsampled bicubically, whose negative lobes spread the per-pixel gradient
around a sharp outline with mixed signs (the net pull of a shape word stays outward). Shape words in a negative
(the bank's "big-eyed ..." heroine) carry their shape meaning there too.

The shape axes come after the text-only block, and unknown words keep the seeds they had before any shape word
existed, so every text without a shape word embeds exactly as it did before they were added (zero on the new
axes): text directions and the negatives dropped for closeness stay the same. Image embeddings do change (they
gained the three shape components), so losses and stylization results measured before shift a little.

A sentence's embedding is the sum of its words' unit vectors (the :class:`ClipModel` normalises it). Function
words and the plain adjectives of open_clip's templates ("a", "bad", "cropped", "of", ...) are *stop words* with no
vector; template words that are in the vocabulary ("bright", "dark", "sketch", "drawing", "black and white") count,
as they would for CLIP. Any other word is *unknown* and gets a fixed hashed direction (``zlib.crc32`` of the word)
in the text-only axes 8-255: images never reach those axes, so an unknown word is neutral to every image, and
negatives or prompts made of unknown words still get a defined, distinct embedding.

Example: "a red face" = n(red + content); after ``T_k`` = "a photo of a {}." it is n(red + 2 content). A render that
gets redder raises its mean red offset, so its cosine with "a red face" rises and its cosine with "photo" (the
content axis alone) falls: the directional loss's ``Δt`` points from content toward red. Likewise "a big hat" =
n(size + hat) with hat = n(height + 0.5 size): a render whose outline reaches higher and covers more of the frame
moves toward it.
"""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Sequence
from types import SimpleNamespace

import torch
from torch import Tensor, nn

from .clip_model import CLIP_SIZE, ClipModel, preprocess_squash

__all__ = [
    "EMBED_DIM",
    "SHAPE_AXES",
    "STANDIN_SOURCE",
    "VOCABULARY",
    "AnalyticStandInEncoder",
    "StandInTokenizer",
    "is_test_instrument",
    "load_standin_clip",
    "shape_reference",
]

# Axes of the embedding space (see the module docstring): 8 colour and texture axes, then the text-only block that
# unknown words are hashed into, then the shape axes (after it, so that adding them left every text embedding of
# the first version unchanged).
N_IMAGE_AXES = 8
N_TEXT_END = 256
SIZE, HEIGHT, WIDTH = range(N_TEXT_END, N_TEXT_END + 3)
SHAPE_AXES = (SIZE, HEIGHT, WIDTH)

#: Width of the embedding space.
EMBED_DIM = N_TEXT_END + len(SHAPE_AXES)

#: The ``ClipModel.source`` of the stand-in: marks every result made with it as not prompt-driven.
STANDIN_SOURCE = "stand-in(analytic colour, texture and silhouette statistics; a test instrument, not CLIP)"

CONTENT, LUMINANCE, RED, GREEN, BLUE, SATURATION, EDGES, STRIPES = range(N_IMAGE_AXES)

# Image feature scales and reference levels. They set how far a typical head render sits from the content axis:
# a head on a white ground has mean RGB ~(0.8, 0.75, 0.7): luminance offset ~0.5 after K_LUM, chroma ~0.1 after
# K_CHROMA, against 1 on the content axis; channel std ~0.05-0.15, mean luminance gradient ~0.01-0.05 per pixel.
K_LUM = 2.0
K_CHROMA = 4.0
K_SAT = 4.0
SAT0 = 0.1
K_EDGE = 8.0
EDGE0 = 0.03
K_STRIPE = 8.0
_SMOOTH_EPS = 1e-6  # keeps sqrt differentiable at 0
# Shape: a pixel differing from the ground by SOLID_DEVIATION (mean over channels) is half foreground, one that
# differs by twice that almost all, so skin, hair and clothes on a white ground read as subject while haze of a few
# percent opacity reads as ground; a row (column) counts as reached once P_TOUCH of it is subject. Area, height
# and width span [0, 1]; the gains put a silhouette that fills the frame or vanishes about as far from the content
# axis as a strong colour.
SOLID_DEVIATION = 0.15
SOLID_SLOPE = 0.04
FG_EPS = 1e-3
P_TOUCH = 0.02
K_SIZE = 2.0
AREA0 = 0.5
K_EXTENT = 2.0
HEIGHT0 = 0.8
WIDTH0 = 0.8

# Token ids. 0 pads (as open_clip's tokenizer), then start, end and "stop word"; vocabulary words follow, and
# unknown words are hashed into [_FIRST_HASHED, _FIRST_HASHED + _HASH_BUCKETS).
_PAD, _START, _END, _STOP = 0, 1, 2, 3
_FIRST_WORD = 4
_HASH_BUCKETS = 2**20
# An unknown word's direction is seeded by its hash bucket plus this fixed offset, not by its token id: the ids
# move whenever the vocabulary grows, and the seeds must not, or every unknown word (and every negative and
# prompt made of them) would change meaning. The value is the first hashed id of the colour-only vocabulary.
_HASH_SEED_OFFSET = 72

#: The vocabulary: word -> weights on the named axes (each word's vector is normalised to unit length).
VOCABULARY: dict[str, dict[int, float]] = {}


def _add(words: str, **axes: float) -> None:
    names = {"content": CONTENT, "lum": LUMINANCE, "r": RED, "g": GREEN, "b": BLUE, "sat": SATURATION,
             "edges": EDGES, "stripes": STRIPES, "size": SIZE, "height": HEIGHT, "width": WIDTH}
    for word in words.split():
        VOCABULARY[word] = {names[k]: v for k, v in axes.items()}


_add("photo photos photograph photographs picture image face faces head person people human man woman portrait "
     "selfie headshot real realistic natural skin", content=1.0)
# Hues: chroma weights sum to zero (they are offsets from the grey level).
_add("red crimson scarlet", r=1.0, g=-0.5, b=-0.5, sat=0.5)
_add("orange", r=0.8, g=0.1, b=-0.9, sat=0.5)
_add("yellow", r=0.5, g=0.5, b=-1.0, sat=0.5, lum=0.3)
_add("golden gold", r=0.6, g=0.3, b=-0.9, sat=0.3, lum=0.2)
_add("green", r=-0.5, g=1.0, b=-0.5, sat=0.5)
_add("blue", r=-0.5, g=-0.5, b=1.0, sat=0.5)
_add("purple violet", r=0.5, g=-1.0, b=0.5, sat=0.5)
_add("pink", r=0.7, g=-0.5, b=-0.2, sat=0.3, lum=0.3)
_add("white", lum=1.0, sat=-0.5)
_add("black", lum=-1.0, sat=-0.5)
_add("bright", lum=1.0)
_add("dark", lum=-1.0)
_add("pale", lum=0.5, sat=-1.0)
_add("grey gray silver monochrome monochromatic colourless colorless", sat=-1.0)
_add("colourful colorful vivid saturated neon", sat=1.0)
_add("sharp detailed textured", edges=1.0)
_add("smooth blurry blurred soft", edges=-1.0)
_add("striped stripes stripy zebra", stripes=1.0, edges=0.5)
_add("sketch sketched pencil charcoal drawing drawn ink", sat=-1.0, edges=1.0)
# Shape (axes 256-258). "large" and "small" stay stop words: the templates use them ("a photo of the large {}."),
# where they describe the photo, not the change a prompt asks for.
_add("big bigger biggest huge giant enormous massive oversized bulky voluminous puffy", size=1.0)
_add("tiny miniature", size=-1.0)
_add("tall taller towering elongated", height=1.0)
_add("short squat", height=-1.0)
_add("wide wider broad", width=1.0)
_add("narrow thin slim slender", width=-1.0)
_add("hat hats helmet crown", height=1.0, size=0.5)  # a hat reaches above the head and adds area
_add("horns horned antlers", height=1.0, width=0.5)  # horns reach up and out

# Words with no meaning to the stand-in: function words and the plain adjectives of open_clip's 80 templates
# ("a bad photo of the {}."). The templates' style nouns ("painting", "sculpture", "cartoon", "doodle", ...) are
# unknown words like any other: each adds its hashed direction to the target and the source alike, as a CLIP
# template adds its own meaning to both. The tests check that every template word is a stop word, a vocabulary
# word, or one of those style nouns.
_STOP_WORDS = frozenset([
    "a", "an", "the", "of", "in", "on", "at", "to", "for", "from", "by", "with", "and", "or", "my", "one",
    "many", "this", "that", "is", "it", "its", "be", "bad", "good", "hard", "see", "low", "resolution",
    "cropped", "clean", "dirty", "cool", "close", "up", "large", "small", "nice", "weird", "jpeg", "corrupted",
    "pixelated", "itap",
])

_WORD = re.compile(r"[a-z0-9]+")
_WORD_IDS = {word: _FIRST_WORD + i for i, word in enumerate(VOCABULARY)}
_FIRST_HASHED = _FIRST_WORD + len(VOCABULARY)


def words_of(text: str) -> list[str]:
    """Lower-cased alphanumeric words of ``text`` (``"Self-Portrait!"`` -> ``["self", "portrait"]``)."""
    return _WORD.findall(text.lower())


def is_test_instrument(source: str) -> bool:
    """Whether a ``ClipModel.source`` names the stand-in (results made with it are not prompt-driven)."""
    return str(source).startswith("stand-in(")


class StandInTokenizer:
    """Words to ids for :class:`AnalyticStandInEncoder`, with open_clip's calling convention.

    ``tokenizer(texts)`` returns ``(len(texts), context_length)`` int64 ids (start, words, end, zero padding);
    ``encode(text)`` returns the word ids alone, which :class:`ClipModel` uses to count a prompt's tokens.
    """

    context_length = 77

    def encode(self, text: str) -> list[int]:
        ids = []
        for word in words_of(text):
            if word in _WORD_IDS:
                ids.append(_WORD_IDS[word])
            elif word in _STOP_WORDS:
                ids.append(_STOP)
            else:
                ids.append(_FIRST_HASHED + zlib.crc32(word.encode("utf-8")) % _HASH_BUCKETS)
        return ids

    def __call__(self, texts: str | Sequence[str]) -> Tensor:
        texts = [texts] if isinstance(texts, str) else list(texts)
        out = torch.zeros(len(texts), self.context_length, dtype=torch.int64)
        for row, text in enumerate(texts):
            words = self.encode(text)[: self.context_length - 2]  # open_clip truncates the same way
            ids = [_START, *words, _END]
            out[row, : len(ids)] = torch.tensor(ids, dtype=torch.int64)
        return out


def _hashed_direction(token: int) -> Tensor:  # -> [EMBED_DIM]
    """The fixed unit vector of an unknown word's id, in the text-only axes (same on every machine)."""
    gen = torch.Generator().manual_seed(token - _FIRST_HASHED + _HASH_SEED_OFFSET)
    vec = torch.zeros(EMBED_DIM)
    vec[N_IMAGE_AXES:N_TEXT_END] = torch.randn(N_TEXT_END - N_IMAGE_AXES, generator=gen)
    return vec / vec.norm()


class AnalyticStandInEncoder(nn.Module):
    """TEST INSTRUMENT, not CLIP: analytic image and text embeddings with known semantics (module docstring).

    Offers what :class:`ClipModel` uses of an open_clip model: ``encode_image``, ``encode_text``,
    ``visual.image_size`` / ``visual.output_dim`` and one (frozen) parameter that carries device and dtype.

    Args:
        device: where the embeddings are computed.
        background: the plain RGB colour in [0, 1] the renders are composited over (``StylizeConfig.background``
            of the stylization it serves); the shape axes measure the silhouette against it.
        shape_reference: ``(area_0, height_0, width_0)`` at which the shape axes are 0 (module docstring); None:
            ``(AREA0, HEIGHT0, WIDTH0)``.
    """

    def __init__(self, device: torch.device | str = "cpu",
                 background: tuple[float, float, float] = (1.0, 1.0, 1.0),
                 shape_reference: tuple[float, float, float] | None = None) -> None:
        super().__init__()
        from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

        if len(background) != 3 or not all(0.0 <= float(c) <= 1.0 for c in background):
            raise ValueError(f"background must be 3 numbers in [0, 1], got {background!r}")
        reference = (AREA0, HEIGHT0, WIDTH0) if shape_reference is None else tuple(float(v) for v in shape_reference)
        if len(reference) != 3 or not all(0.0 <= v <= 1.0 for v in reference):
            raise ValueError(f"shape_reference must be 3 fractions in [0, 1], got {shape_reference!r}")
        self.shape_reference = reference
        self.visual = SimpleNamespace(image_size=CLIP_SIZE, output_dim=EMBED_DIM)
        # No weights: this parameter only tells ClipModel the device and dtype.
        self.anchor = nn.Parameter(torch.zeros(1, device=device), requires_grad=False)
        self.register_buffer("clip_mean", torch.tensor(OPENAI_DATASET_MEAN, device=device).view(1, 3, 1, 1))
        self.register_buffer("clip_std", torch.tensor(OPENAI_DATASET_STD, device=device).view(1, 3, 1, 1))
        self.register_buffer("background", torch.tensor([float(c) for c in background], dtype=torch.float32,
                                                        device=device).view(1, 3, 1, 1))
        table = torch.zeros(_FIRST_WORD + len(VOCABULARY), EMBED_DIM)
        for word, axes in VOCABULARY.items():
            for axis, value in axes.items():
                table[_WORD_IDS[word], axis] = value
        norms = table.norm(dim=1, keepdim=True)
        self._word_vectors_cpu = table / norms.clamp_min(1e-12)
        self._hashed: dict[int, Tensor] = {}

    def deviation(self, pixels: Tensor) -> Tensor:  # [B, 3, S, S] -> [B, S, S]
        """Per-pixel mean colour deviation ``δ`` of CLIP-normalised input from the known background (module
        docstring), in [0, 1]."""
        x = pixels * self.clip_std.to(pixels.dtype) + self.clip_mean.to(pixels.dtype)
        d = x - self.background.to(pixels.dtype)
        return ((d.pow(2) + FG_EPS**2).sqrt() - FG_EPS).mean(dim=1)

    def foreground(self, pixels: Tensor) -> Tensor:  # [B, 3, S, S] -> [B, S, S]
        """Per-pixel foreground-ness ``m`` in [0, 1) of CLIP-normalised input against the known background
        (module docstring): 0 on the plain ground and under faint haze, near 1 on clearly visible subject."""
        floor = 1.0 / (1.0 + math.exp(SOLID_DEVIATION / SOLID_SLOPE))  # the step at δ = 0: bare ground reads 0
        step = torch.sigmoid((self.deviation(pixels) - SOLID_DEVIATION) / SOLID_SLOPE)
        return ((step - floor) / (1.0 - floor)).clamp_min(0.0)

    def image_features(self, pixels: Tensor) -> dict[str, Tensor]:
        """The named statistics of ``(B, 3, S, S)`` CLIP-normalised input, each ``(B,)`` (``rgb``: ``(B, 3)``).

        Colour and texture: ``rgb``, ``luminance``, ``saturation``, ``edges``, ``stripes``; shape: ``area``,
        ``height``, ``width`` (fractions of the frame, module docstring).
        """
        x = pixels * self.clip_std.to(pixels.dtype) + self.clip_mean.to(pixels.dtype)  # back to [0, 1]
        lum = x.mean(dim=1)  # (B, S, S)
        centred = x - lum[:, None]
        saturation = (centred.pow(2).mean(dim=1) + _SMOOTH_EPS).sqrt().mean(dim=(1, 2))
        grad_x = (lum[:, :, 1:] - lum[:, :, :-1]).abs().mean(dim=(1, 2))
        grad_y = (lum[:, 1:, :] - lum[:, :-1, :]).abs().mean(dim=(1, 2))
        m = self.foreground(pixels)  # (B, S, S), rows then columns
        reached_rows = 1.0 - torch.exp(-m.mean(dim=2) / P_TOUCH)  # (B, S)
        reached_cols = 1.0 - torch.exp(-m.mean(dim=1) / P_TOUCH)  # (B, S)
        return {"rgb": x.mean(dim=(2, 3)), "luminance": lum.mean(dim=(1, 2)), "saturation": saturation,
                "edges": grad_x + grad_y,
                "stripes": ((grad_x - grad_y).pow(2) + _SMOOTH_EPS).sqrt(),
                "area": m.mean(dim=(1, 2)), "height": reached_rows.mean(dim=1), "width": reached_cols.mean(dim=1)}

    def encode_image(self, pixels: Tensor) -> Tensor:  # [B, 3, S, S] -> [B, D]
        """Image embedding (not normalised): content 1, then the scaled statistics, zeros on the text axes."""
        f = self.image_features(pixels)
        b = pixels.shape[0]
        area0, height0, width0 = self.shape_reference
        parts = [pixels.new_ones(b, 1), K_LUM * (f["luminance"] - 0.5)[:, None],
                 K_CHROMA * (f["rgb"] - f["luminance"][:, None]), K_SAT * (f["saturation"] - SAT0)[:, None],
                 K_EDGE * (f["edges"] - EDGE0)[:, None], K_STRIPE * f["stripes"][:, None],
                 pixels.new_zeros(b, N_TEXT_END - N_IMAGE_AXES),
                 K_SIZE * (f["area"] - area0)[:, None], K_EXTENT * (f["height"] - height0)[:, None],
                 K_EXTENT * (f["width"] - width0)[:, None]]
        return torch.cat(parts, dim=1)

    def _vector(self, token: int) -> Tensor:  # -> [EMBED_DIM] on the CPU
        if token < _FIRST_HASHED:
            return self._word_vectors_cpu[token]  # start, end, stop and padding rows are zero
        if token not in self._hashed:
            self._hashed[token] = _hashed_direction(token)
        return self._hashed[token]

    @torch.no_grad()
    def encode_text(self, tokens: Tensor) -> Tensor:  # [S, context] -> [S, D]
        """Sum of the words' unit vectors per sentence (not normalised). Built on the CPU (thousands of tiny
        sums), then moved to the model's device in one copy."""
        rows = []
        for row in tokens.tolist():
            words = [self._vector(t) for t in row if t >= _FIRST_WORD]
            rows.append(torch.stack(words).sum(dim=0) if words else torch.zeros(EMBED_DIM))
        return torch.stack(rows).to(device=self.anchor.device, dtype=self.anchor.dtype)


def load_standin_clip(device: torch.device | str = "cpu",
                      background: tuple[float, float, float] = (1.0, 1.0, 1.0),
                      shape_reference: tuple[float, float, float] | None = None) -> ClipModel:
    """The stand-in as a :class:`ClipModel` (TEST INSTRUMENT: tests and benchmarks only, never offered to users).

    A fresh instance each call (it is cheap); it shares no cache with real CLIP models. ``background`` is the
    plain colour the stylization composites its renders over (``StylizeConfig.background``), against which the
    shape axes read the silhouette; ``shape_reference`` centres the shape axes (:func:`shape_reference` of
    ``F_rec``'s renders for shape prompts; None: a head filling about half the frame).
    """
    return ClipModel(AnalyticStandInEncoder(device, background, shape_reference), StandInTokenizer(),
                     name="analytic-stand-in", source=STANDIN_SOURCE, device=torch.device(device))


@torch.no_grad()
def shape_reference(images: Tensor, background: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> tuple[
        float, float, float]:
    """Mean ``(area, height, width)`` of renders as the directional loss's ``P_dir`` shows them to the stand-in.

    Pass ``F_rec``'s renders of the stylization's views (``I_src``) to centre the shape axes on the source
    (``load_standin_clip(shape_reference=...)``; module docstring).

    Args:
        images: ``(B, 3, H, W)`` renders in [0, 1], composited over ``background``.
        background: the plain colour behind them.

    Returns:
        the three fractions, each averaged over the ``B`` images.
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must have shape (B, 3, H, W), got {tuple(images.shape)}")
    encoder = AnalyticStandInEncoder(images.device, background)
    f = encoder.image_features(preprocess_squash(images.float(), CLIP_SIZE))
    return float(f["area"].mean()), float(f["height"].mean()), float(f["width"].mean())
