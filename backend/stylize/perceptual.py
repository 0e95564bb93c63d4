"""Perceptual (content-preservation) losses between the stylized render and the source image.

* **Default, LPIPS** (spec Section 10): ``lpips.LPIPS(net='vgg')`` — VGG16 ImageNet trunk, the learned linear
  layers that ship inside the ``lpips`` package — frozen, eval mode, on [0, 1] images with ``normalize=True``
  semantics, at the stylization resolution without resizing.
* **Option, the released code's loss** (spec Section 3.5): VGG16 relu3_3 (torchvision ``features[:16]``) L1 after
  ImageNet normalisation and a bilinear resize to 224×224.

Both load the VGG16 ImageNet weights through :func:`backend.stylize.weights.resolve_vgg16_weights`: the torch hub
cache file torchvision itself uses (``vgg16-397923af.pth``), downloaded with torchvision's URL and hash check only
when allowed and reachable, or a local file (job option ``vgg_weights``). LPIPS is built with a random trunk
(``pnet_rand=True``, which avoids torchvision's own unguarded download) and the trunk weights are then copied from
that file; the result is the same network as ``lpips.LPIPS(net='vgg')``.

One shared frozen instance per (kind, weights source, device) lives in :data:`PERCEPTUAL_MODELS`.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .weights import ModelCache, load_vgg16_features_state, resolve_vgg16_weights

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "PERCEPTUAL_MODELS",
    "LpipsLoss",
    "VggRelu33Loss",
    "load_lpips",
    "load_perceptual",
    "load_vgg_relu3_3",
]

#: Shared frozen perceptual models, keyed by (kind, weights source, device). ``PERCEPTUAL_MODELS.clear()`` frees
#: them.
PERCEPTUAL_MODELS = ModelCache("perceptual")

#: torchvision's ImageNet normalisation (spec Section 3.5).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# LPIPS's VGG slices end at relu5_3, four 2x poolings deep: smaller images leave no spatial extent.
_LPIPS_MIN_SIDE = 16


def _check_pair(image_tgt: Tensor, image_src: Tensor, device: torch.device) -> None:
    for name, x in (("image_tgt", image_tgt), ("image_src", image_src)):
        if x.ndim != 4 or x.shape[1] != 3 or not x.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor of shape (B, 3, H, W) in [0, 1], got shape "
                             f"{tuple(x.shape)} and dtype {x.dtype}")
        if x.device != device:
            raise ValueError(f"{name} is on {x.device} but the perceptual model is on {device}")
    if image_tgt.shape != image_src.shape:
        raise ValueError(f"image_tgt and image_src must have the same shape, got {tuple(image_tgt.shape)} and "
                         f"{tuple(image_src.shape)}")


def _unit_channels(feats: Tensor, eps: float = 1e-10) -> Tensor:
    # lpips.normalize_tensor is f / (sqrt(sum_c f^2) + eps); sqrt has an infinite derivative at 0, so a pixel
    # whose channels are all zero after a ReLU (flat regions, padded borders) would turn the gradient into NaN.
    # The tiny term under the root (1e-20) changes the value by at most 1e-10 relative and keeps it finite.
    return feats / (torch.sqrt(feats.pow(2).sum(dim=1, keepdim=True) + eps * eps) + eps)


class LpipsLoss(nn.Module):
    """LPIPS-VGG distance between two images, averaged over the batch (spec Section 10).

    .. math::

        L_{per} = \\sum_l \\frac{1}{H_l W_l} \\sum_{h,w} \\sum_c w_{l,c}
                  \\big( \\hat f^l_{hwc}(I_{tgt}) - \\hat f^l_{hwc}(I_{src}) \\big)^2

    with ``f̂`` the channel-normalised VGG16 activations relu1_2 … relu5_3 of ``2x − 1`` after LPIPS's scaling
    layer, and ``w_l`` the learned linear weights. This evaluates ``lpips.LPIPS.forward(normalize=True)`` with the
    package's own modules; only the channel normalisation is made zero-safe (see ``_unit_channels``).

    Args (forward):
        image_tgt: ``(B, 3, H, W)`` in [0, 1], ``H, W >= 16``; gradients flow to it.
        image_src: ``(B, 3, H, W)`` in [0, 1]; treated as a constant.

    Returns (forward):
        scalar.
    """

    def __init__(self, lpips_model: nn.Module, source: str) -> None:
        super().__init__()
        lpips_model.eval()
        lpips_model.requires_grad_(False)
        self.lpips = lpips_model
        self.source = source
        self.eval()

    def train(self, mode: bool = True) -> LpipsLoss:
        # Frozen: stays in eval mode even inside a parent module switched to training (dropout in lins off).
        return super().train(False)

    @property
    def device(self) -> torch.device:
        return next(self.lpips.parameters()).device

    def _features(self, images: Tensor) -> list[Tensor]:
        x = self.lpips.scaling_layer(2.0 * images - 1.0)  # normalize=True: [0, 1] -> [-1, 1]
        return [_unit_channels(f) for f in self.lpips.net(x)]

    def per_image(self, image_tgt: Tensor, image_src: Tensor) -> Tensor:
        """LPIPS per image: ``(B,)``."""
        _check_pair(image_tgt, image_src, self.device)
        if min(image_tgt.shape[-2:]) < _LPIPS_MIN_SIDE:
            raise ValueError(f"LPIPS needs images of at least {_LPIPS_MIN_SIDE}x{_LPIPS_MIN_SIDE} pixels, got "
                             f"{tuple(image_tgt.shape)}")
        dtype = next(self.lpips.parameters()).dtype
        feats_tgt = self._features(image_tgt.to(dtype))
        with torch.no_grad():
            feats_src = self._features(image_src.to(dtype))
        total = image_tgt.new_zeros(image_tgt.shape[0], dtype=dtype)
        for lin, f_t, f_s in zip(self.lpips.lins, feats_tgt, feats_src, strict=True):
            total = total + lin((f_t - f_s).pow(2)).mean(dim=(1, 2, 3))
        return total

    def forward(self, image_tgt: Tensor, image_src: Tensor) -> Tensor:
        return self.per_image(image_tgt, image_src).mean()


class VggRelu33Loss(nn.Module):
    """The released code's perceptual loss (spec Section 3.5), an option.

    .. math:: L_{per} = \\operatorname{mean} \\big| φ_{relu3\\_3}(P_{vgg}(I_{tgt})) - φ_{relu3\\_3}(P_{vgg}(I_{src})) \\big|

    ``P_vgg``: ImageNet normalisation, then bilinear resize to 224×224 (``align_corners=False``, no
    anti-aliasing, as in the code); ``φ`` = torchvision VGG16 ``features[:16]``.

    Args (forward):
        image_tgt, image_src: ``(B, 3, H, W)`` in [0, 1]; gradients flow to ``image_tgt``.

    Returns (forward):
        scalar, mean over every element (batch included).
    """

    def __init__(self, features: nn.Module, source: str) -> None:
        super().__init__()
        features.eval()
        features.requires_grad_(False)
        self.features = features
        self.source = source
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.eval()

    def train(self, mode: bool = True) -> VggRelu33Loss:
        # Frozen: stays in eval mode even inside a parent module switched to training.
        return super().train(False)

    @property
    def device(self) -> torch.device:
        return self.mean.device

    def _phi(self, images: Tensor) -> Tensor:
        x = (images.to(self.mean.dtype) - self.mean) / self.std
        x = F.interpolate(x, size=(224, 224), mode="bilinear", align_corners=False)
        return self.features(x)

    def forward(self, image_tgt: Tensor, image_src: Tensor) -> Tensor:
        _check_pair(image_tgt, image_src, self.device)
        feat_tgt = self._phi(image_tgt)
        with torch.no_grad():
            feat_src = self._phi(image_src)
        return (feat_tgt - feat_src).abs().mean()


@contextmanager
def _private_rng(seed: int) -> Iterator[None]:
    # Modules are initialised under a private RNG stream: the same seed gives the same random weights, and the
    # caller's RNG state is neither consumed nor changed (pretrained weights overwrite the init anyway).
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _build_lpips_random_trunk(seed: int) -> nn.Module:
    import lpips

    with _private_rng(seed), warnings.catch_warnings():
        # lpips passes torchvision's deprecated `pretrained=` argument; the warning is not actionable here.
        warnings.simplefilter("ignore", UserWarning)
        # pretrained=True loads the linear layers shipped in the lpips package (no download);
        # pnet_rand=True leaves the VGG trunk random instead of letting torchvision download it unguarded.
        return lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=True, verbose=False)


def _load_lpips_trunk(model: nn.Module, state: dict[str, Tensor]) -> None:
    trunk = model.net  # lpips.pretrained_networks.vgg16: slice1..slice5 hold features[i] under the name str(i)
    mapped = {}
    for slice_name, block in trunk.named_children():
        for idx, _ in block.named_children():
            for param in ("weight", "bias"):
                if f"{idx}.{param}" in state:
                    mapped[f"{slice_name}.{idx}.{param}"] = state[f"{idx}.{param}"]
    trunk.load_state_dict(mapped, strict=True)


def load_lpips(device: str | torch.device = "cpu", *, random_init: bool = False, random_seed: int = 0,
               vgg_weights: str | os.PathLike[str] | None = None, allow_download: bool = True,
               cache: ModelCache | None = PERCEPTUAL_MODELS) -> LpipsLoss:
    """Load the frozen LPIPS-VGG loss.

    Args:
        device: where the model lives.
        random_init: random VGG trunk (from ``random_seed``), for tests only; must be asked for explicitly. The
            linear layers are the real ones (they ship with the package).
        vgg_weights: local VGG16 checkpoint file (job option ``vgg_weights``) instead of the torch hub cache.
        allow_download: may missing VGG16 weights be downloaded now (also off under ``HF_HUB_OFFLINE``).
        cache: shared-instance cache; None builds a private instance.

    Raises:
        WeightsUnavailableError: VGG16 weights not cached and not downloadable now (raised within seconds).
        FileNotFoundError: ``vgg_weights`` does not exist.
    """
    device = torch.device(device)
    if random_init:
        if vgg_weights is not None:
            raise ValueError("random_init=True conflicts with vgg_weights; give one of them")
        source = f"random(seed={random_seed})"

        def factory() -> LpipsLoss:
            return LpipsLoss(_build_lpips_random_trunk(random_seed), source).to(device)

        key: tuple[Any, ...] = ("lpips", source, str(device))
    else:
        path = resolve_vgg16_weights(vgg_weights, allow_download)
        source = str(path.resolve())

        def factory() -> LpipsLoss:
            # Read (and check) the file before the ~1 s LPIPS build, so a bad file fails at once.
            state = load_vgg16_features_state(path, n_layers=30)  # relu5_3 is features[29]
            model = _build_lpips_random_trunk(0)
            _load_lpips_trunk(model, state)
            return LpipsLoss(model, source).to(device)

        key = ("lpips", source, str(device))
    return factory() if cache is None else cache.get_or_create(key, factory)


def load_vgg_relu3_3(device: str | torch.device = "cpu", *, random_init: bool = False, random_seed: int = 0,
                     vgg_weights: str | os.PathLike[str] | None = None, allow_download: bool = True,
                     cache: ModelCache | None = PERCEPTUAL_MODELS) -> VggRelu33Loss:
    """Load the frozen VGG16 relu3_3 L1 loss (the released code's perceptual loss). Arguments as :func:`load_lpips`."""
    from torchvision.models.vgg import cfgs, make_layers

    def vgg16_features_to_relu3_3() -> nn.Sequential:
        # torchvision's own VGG16 ("D") feature definition, without building the 120M-parameter classifier
        # that vgg16() would initialise only to be thrown away (~1 s).
        return make_layers(cfgs["D"])[:16]

    device = torch.device(device)
    if random_init:
        if vgg_weights is not None:
            raise ValueError("random_init=True conflicts with vgg_weights; give one of them")
        source = f"random(seed={random_seed})"

        def factory() -> VggRelu33Loss:
            with _private_rng(random_seed):
                features = vgg16_features_to_relu3_3()
            return VggRelu33Loss(features, source).to(device)
    else:
        path = resolve_vgg16_weights(vgg_weights, allow_download)
        source = str(path.resolve())

        def factory() -> VggRelu33Loss:
            with _private_rng(0):
                features = vgg16_features_to_relu3_3()
            features.load_state_dict(load_vgg16_features_state(path, n_layers=16), strict=True)
            return VggRelu33Loss(features, source).to(device)

    key = ("vgg_relu3_3", source, str(device))
    return factory() if cache is None else cache.get_or_create(key, factory)


def load_perceptual(kind: Literal["lpips", "vgg_relu3_3"] = "lpips", device: str | torch.device = "cpu",
                    **kwargs: Any) -> LpipsLoss | VggRelu33Loss:
    """Load the perceptual loss named by ``StyleLossConfig.perceptual``; keyword arguments as :func:`load_lpips`."""
    if kind == "lpips":
        return load_lpips(device, **kwargs)
    if kind == "vgg_relu3_3":
        return load_vgg_relu3_3(device, **kwargs)
    raise ValueError(f"perceptual loss kind must be 'lpips' or 'vgg_relu3_3', got {kind!r}")
