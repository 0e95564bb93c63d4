"""Where the pretrained weights of the stylization losses live, and the error raised when they are missing.

Three sets of weights are needed (spec Section 10):

* **CLIP** (open_clip ``ViT-B-32``, tag ``openai``): open_clip downloads it from the Hugging Face hub into the
  HF hub cache (``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else ``~/.cache/huggingface/hub``).
* **VGG16 ImageNet** (the LPIPS trunk and the optional relu3_3 loss): torchvision downloads
  ``vgg16-397923af.pth`` into the torch hub checkpoints folder (``$TORCH_HOME/hub/checkpoints``, else
  ``~/.cache/torch/hub/checkpoints``).
* **LPIPS linear layers**: shipped inside the ``lpips`` package; nothing to download.

Every path is resolved when it is needed, from the environment at that moment, never at import time
(``huggingface_hub.constants`` freezes its paths at import, so we do not use them).

Missing weights must stop a job at once with a message that says what to do, instead of hanging on a network
timeout or silently training with random weights. So the loaders first look for the file in the cache (a local
``stat``), and only when it is absent, downloads are allowed and the host answers a short TCP probe, do they let
the library download it. Otherwise :class:`WeightsUnavailableError` is raised within a few seconds.

Downloads are off when ``allow_download=False`` is passed or ``HF_HUB_OFFLINE`` is set to a true value (``1``,
``ON``, ``YES``, ``TRUE``); we apply that variable to the torchvision download too, so one switch makes the whole
backend offline.

The command line that fills the caches once on a machine with network access (way 1 in the error message) is
:mod:`backend.stylize.fetch_weights`.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

# Names under which the job configuration / CLI expose "use this local checkpoint file" (way 2). The loaders
# take the same value as an argument (``load_clip(pretrained=PATH)``, ``load_lpips(vgg_weights=PATH)``).
CLIP_WEIGHTS_OPTION = "clip_pretrained"  # the stylize job parameter; the CLI's --clip-pretrained
VGG_WEIGHTS_OPTION = "vgg_weights"

# torchvision's VGG16_Weights.IMAGENET1K_V1 (the weights lpips and the released perceptual loss use). Written out
# so that resolving the cache path does not import torchvision (~2 s); a test checks it against torchvision.
VGG16_IMAGENET_URL = "https://download.pytorch.org/models/vgg16-397923af.pth"

# A TCP connect to the download host must succeed within this many seconds before a download is attempted.
# Without network, DNS fails in milliseconds; behind a firewall that drops packets, a connect would otherwise
# wait for the OS timeout (minutes).
PROBE_TIMEOUT_S = 3.0

_TRUE_STRINGS = {"1", "on", "yes", "true"}


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights that a job needs are neither cached nor downloadable now.

    The message names the missing weights, where they were looked for, why no download was attempted (or how it
    failed), and the three ways to provide them. ``what``, ``searched`` and ``reason`` hold the same facts for
    programs (the server shows the message to the user verbatim).
    """

    def __init__(self, what: str, searched: list[str], reason: str, ways: list[str]) -> None:
        self.what = what
        self.searched = list(searched)
        self.reason = reason
        self.ways = list(ways)
        lines = [f"{what} are not available: {reason}"]
        if searched:
            lines.append("Looked for:")
            lines.extend(f"  - {s}" for s in searched)
        lines.append("Provide them in one of three ways:")
        lines.extend(f"  {i}. {w}" for i, w in enumerate(ways, start=1))
        super().__init__("\n".join(lines))


# ---------------------------------------------------------------------------------------------------------------
# Cache locations, resolved at call time.


def hf_hub_cache_dir() -> Path:
    """The Hugging Face hub cache that open_clip downloads into, from the environment now.

    Same precedence as ``huggingface_hub.constants``: ``HF_HUB_CACHE``, then the legacy ``HUGGINGFACE_HUB_CACHE``,
    then ``$HF_HOME/hub``, then ``$XDG_CACHE_HOME/huggingface/hub``, then ``~/.cache/huggingface/hub``.
    """
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        value = os.environ.get(var)
        if value:
            return Path(os.path.expandvars(os.path.expanduser(value)))
    hf_home = os.environ.get("HF_HOME")
    if not hf_home:
        xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        hf_home = os.path.join(xdg, "huggingface")
    return Path(os.path.expandvars(os.path.expanduser(hf_home))) / "hub"


def torch_hub_checkpoints_dir() -> Path:
    """The folder torchvision downloads ImageNet weights into: ``torch.hub.get_dir()/checkpoints``.

    ``torch.hub.get_dir`` reads ``TORCH_HOME`` (else ``$XDG_CACHE_HOME/torch``, else ``~/.cache/torch``) on every
    call, unless a program called ``torch.hub.set_dir``.
    """
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


def downloads_disabled_by_env() -> bool:
    """True when ``HF_HUB_OFFLINE`` (or the older ``TRANSFORMERS_OFFLINE``) is set to a true value now."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().lower() in _TRUE_STRINGS


def host_reachable(url: str, timeout_s: float = PROBE_TIMEOUT_S) -> tuple[bool, str]:
    """Try a TCP connection to the host of ``url`` within ``timeout_s`` seconds.

    The probe runs in a daemon thread because name resolution (``getaddrinfo``) ignores socket timeouts and can
    block far longer than ``timeout_s``; a probe still blocked at the deadline is abandoned.

    Returns:
        ``(reachable, detail)``; ``detail`` says why not, for the error message.
    """
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    result: dict[str, Any] = {}

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout_s):
                result["ok"] = True
        except OSError as exc:  # gaierror, timeout and refused connections are all OSErrors
            result["error"] = f"{type(exc).__name__}: {exc}"

    thread = threading.Thread(target=probe, name=f"probe-{host}", daemon=True)
    thread.start()
    thread.join(timeout_s + 0.5)
    if result.get("ok"):
        return True, ""
    detail = result.get("error", f"no answer within {timeout_s:g} s")
    return False, f"{host}:{port} is not reachable ({detail})"


def download_blocker(allow_download: bool, url: str) -> str | None:
    """Why a download from ``url`` must not be attempted now, or None if it may be.

    Checks, cheapest first: the caller's flag, ``HF_HUB_OFFLINE``, then a TCP probe of the host.
    """
    if not allow_download:
        return "downloading was turned off (allow_download=False)"
    if downloads_disabled_by_env():
        return "downloading is turned off by HF_HUB_OFFLINE"
    reachable, detail = host_reachable(url)
    if not reachable:
        return f"there is no network access: {detail}"
    return None


# ---------------------------------------------------------------------------------------------------------------
# CLIP (open_clip) checkpoints.


@dataclass(frozen=True)
class ClipCheckpoint:
    """Where the weights for one open_clip (model name, pretrained tag) pair come from.

    Attributes:
        name: open_clip model name, e.g. ``"ViT-B-32"``.
        tag: pretrained tag, e.g. ``"openai"``.
        hf_repo: Hugging Face repository open_clip downloads from ("" if the tag only has a URL).
        filenames: file names open_clip tries in that repository, in its order (safetensors first).
        url: direct URL used when the tag has no hub repository.
        quick_gelu: whether the weights were trained with QuickGELU (OpenAI's are); open_clip 3.3 only *warns*
            when the built model disagrees, so the loader must force it.
        cache_dir: the HF hub cache to look in and download into.
    """

    name: str
    tag: str
    hf_repo: str
    filenames: tuple[str, ...]
    url: str
    quick_gelu: bool
    cache_dir: Path

    def cached_file(self) -> Path | None:
        """The cached checkpoint file, or None. Looks only at the local disk (no network, no HEAD request)."""
        if self.hf_repo:
            from huggingface_hub import try_to_load_from_cache

            for filename in self.filenames:
                found = try_to_load_from_cache(self.hf_repo, filename, cache_dir=str(self.cache_dir))
                if isinstance(found, str) and os.path.isfile(found):
                    return Path(found)
            return None
        # URL-only tags: open_clip's download_pretrained_from_url(url, cache_dir) stores the file by its basename.
        candidate = self.cache_dir / os.path.basename(urlsplit(self.url).path)
        return candidate if candidate.is_file() else None

    def searched(self) -> list[str]:
        """Human-readable list of the places :meth:`cached_file` looks in."""
        if self.hf_repo:
            return [f"{self.cache_dir / ('models--' + self.hf_repo.replace('/', '--'))} (HF hub cache entry for "
                    f"{self.hf_repo}, files {', '.join(self.filenames)})"]
        return [str(self.cache_dir / os.path.basename(urlsplit(self.url).path))]

    def download_url(self) -> str:
        """A URL on the host a download would contact (used for the reachability probe)."""
        if self.hf_repo:
            endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
            return f"{endpoint}/{self.hf_repo}"
        return self.url


def clip_checkpoint(name: str, tag: str) -> ClipCheckpoint:
    """Look up open_clip's pretrained config for ``(name, tag)`` and where its file would be cached.

    Raises:
        ValueError: ``tag`` is not a known open_clip tag for ``name``; the message lists the known tags.
    """
    import open_clip
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME
    from open_clip.pretrained import get_pretrained_cfg

    cfg = get_pretrained_cfg(name, tag)
    if not cfg:
        known = open_clip.list_pretrained_tags_by_model(name)
        raise ValueError(
            f"{tag!r} is neither a known open_clip pretrained tag for {name!r} nor an existing checkpoint file; "
            f"known tags: {known}")
    hf_hub = cfg.get("hf_hub", "")
    repo, filename = os.path.split(hf_hub) if hf_hub else ("", "")
    if hf_hub:
        # Mirror open_clip.pretrained.download_pretrained_from_hf: it tries the safetensors twin first.
        filename = filename or HF_WEIGHTS_NAME
        if filename == HF_WEIGHTS_NAME:
            filenames: tuple[str, ...] = (HF_SAFE_WEIGHTS_NAME, filename)
        elif filename.endswith((".bin", ".pth")):
            filenames = (filename[:-4] + ".safetensors", filename)
        else:
            filenames = (filename,)
    else:
        filenames = ()
    return ClipCheckpoint(name=name, tag=tag, hf_repo=repo, filenames=filenames, url=cfg.get("url", ""),
                          quick_gelu=bool(cfg.get("quick_gelu", False)), cache_dir=hf_hub_cache_dir())


def clip_ways(name: str, tag: str, cache_dir: Path) -> list[str]:
    """The three ways to provide CLIP weights, with the paths resolved now."""
    return [
        f"Run once with network access so that open_clip downloads {name}/{tag} into the Hugging Face cache "
        f"{cache_dir} (for example `python -m backend.stylize.fetch_weights --fetch`); later runs load it from there "
        f"offline.",
        f"Point to a local checkpoint file: job option `{CLIP_WEIGHTS_OPTION}` / "
        f"`load_clip(pretrained=PATH)` (an open_clip state dict for {name}, e.g. the `open_clip_model.safetensors` "
        f"of the hub repository).",
        f"Copy a pre-filled Hugging Face cache directory from another machine to {cache_dir}, or set HF_HOME "
        f"(cache in $HF_HOME/hub) or HF_HUB_CACHE to a directory that holds one.",
    ]


def missing_clip_error(ckpt: ClipCheckpoint, reason: str) -> WeightsUnavailableError:
    """Build the error for CLIP weights that are not cached and cannot be downloaded."""
    return WeightsUnavailableError(
        what=f"CLIP weights {ckpt.name!r} / pretrained {ckpt.tag!r}",
        searched=ckpt.searched(), reason=reason, ways=clip_ways(ckpt.name, ckpt.tag, ckpt.cache_dir))


# ---------------------------------------------------------------------------------------------------------------
# VGG16 (torchvision) checkpoint.


def vgg16_cached_path() -> Path:
    """Where torchvision keeps (or would keep) the VGG16 ImageNet checkpoint."""
    return torch_hub_checkpoints_dir() / os.path.basename(urlsplit(VGG16_IMAGENET_URL).path)


def vgg_ways(cache_path: Path) -> list[str]:
    """The three ways to provide the VGG16 ImageNet weights, with the paths resolved now."""
    return [
        f"Run once with network access so that torchvision downloads VGG16 (ImageNet) into the torch hub "
        f"checkpoints folder {cache_path.parent} (for example `python -m backend.stylize.fetch_weights --fetch`).",
        f"Point to a local checkpoint file from Python with `load_lpips({VGG_WEIGHTS_OPTION}=PATH)` (a torchvision "
        f"VGG16 state dict such as {cache_path.name}; only its `features.*` entries are used). Jobs have no such "
        f"option yet: they read {cache_path}, so copy the file there.",
        f"Copy a pre-filled torch hub directory from another machine so that {cache_path} exists, or set "
        f"TORCH_HOME to a directory whose hub/checkpoints holds {cache_path.name}.",
    ]


def resolve_vgg16_weights(vgg_weights: str | os.PathLike[str] | None, allow_download: bool) -> Path:
    """Return a local path to VGG16 ImageNet weights, downloading them only if allowed and reachable.

    Args:
        vgg_weights: a local checkpoint file (way 2), or None to use the torch hub cache.
        allow_download: whether a missing cache file may be downloaded (also off under ``HF_HUB_OFFLINE``).

    Raises:
        FileNotFoundError: ``vgg_weights`` was given but is not a file.
        WeightsUnavailableError: not cached, and no download possible (or it failed).
    """
    if vgg_weights is not None:
        path = Path(vgg_weights).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"VGG16 weights file {str(path)!r} (option `{VGG_WEIGHTS_OPTION}`) does not exist")
        return path
    cached = vgg16_cached_path()
    if cached.is_file():
        return cached
    what = "VGG16 ImageNet weights (torchvision vgg16-397923af.pth, for LPIPS / the VGG perceptual loss)"
    blocker = download_blocker(allow_download, VGG16_IMAGENET_URL)
    if blocker is not None:
        raise WeightsUnavailableError(what, [str(cached)], f"not in the torch hub cache and {blocker}.",
                                      vgg_ways(cached))
    import torch.hub

    try:
        # The function and target folder torchvision itself uses, with its hash check.
        torch.hub.load_state_dict_from_url(VGG16_IMAGENET_URL, model_dir=str(cached.parent), map_location="cpu",
                                           check_hash=True, progress=True)
    except Exception as exc:  # any network / disk / hash failure: report it with the three ways
        raise WeightsUnavailableError(what, [str(cached)], f"the download failed ({type(exc).__name__}: {exc}).",
                                      vgg_ways(cached)) from exc
    return cached


def load_vgg16_features_state(path: str | os.PathLike[str], n_layers: int) -> dict[str, Any]:
    """Read the ``features.<i>.*`` entries with ``i < n_layers`` from a VGG16 checkpoint file.

    Accepts a full torchvision VGG16 state dict, a features-only one (keys ``features.<i>.weight``), or the same
    wrapped in ``{"state_dict": ...}``. Returned keys drop the ``features.`` prefix (``"0.weight"`` ...).

    Raises:
        ValueError: a needed convolution is missing from the file.
    """
    import torch

    state = torch.load(str(path), map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    out: dict[str, Any] = {}
    for key, value in state.items():
        if key.startswith("features."):
            rest = key[len("features."):]
            if int(rest.split(".", 1)[0]) < n_layers:
                out[rest] = value
    # VGG16 convolutions sit at these feature indices; every one below n_layers must be present.
    conv_indices = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]
    missing = [f"features.{i}.{p}" for i in conv_indices if i < n_layers for p in ("weight", "bias")
               if f"{i}.{p}" not in out]
    if missing:
        raise ValueError(f"VGG16 checkpoint {str(path)!r} lacks {len(missing)} needed entries "
                         f"({', '.join(missing[:4])}{', ...' if len(missing) > 4 else ''}); expected a torchvision "
                         f"VGG16 state dict")
    return out


# ---------------------------------------------------------------------------------------------------------------
# Shared frozen models.

_T = TypeVar("_T")


class ModelCache:
    """A small thread-safe cache of frozen models, keyed by everything that determines them.

    This is the one piece of shared state in :mod:`backend.stylize`: CLIP and VGG are large (600 MB / 530 MB)
    and frozen, so every job on a device reuses one instance. Keys must include the weights source and the
    device. ``clear()`` drops every entry (tests, or freeing GPU memory between jobs).
    """

    def __init__(self, label: str) -> None:
        self.label = label
        self._items: dict[Hashable, Any] = {}
        self._lock = threading.Lock()

    def get_or_create(self, key: Hashable, factory: Callable[[], _T]) -> _T:
        """Return the cached value for ``key``, building it with ``factory()`` on a miss.

        The lock is held while building, so two threads never build the same model twice.
        """
        with self._lock:
            if key not in self._items:
                self._items[key] = factory()
            return self._items[key]

    def keys(self) -> list[Hashable]:
        with self._lock:
            return list(self._items)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def __repr__(self) -> str:
        return f"ModelCache({self.label!r}, {len(self)} entries)"
