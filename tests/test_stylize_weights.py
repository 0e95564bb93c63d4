"""Weight resolution (backend.stylize.weights): missing weights fail fast with the three ways; caches and local files
are found. Every test points HF_HOME / TORCH_HOME at a temporary folder, so nothing here touches real caches.

"Fast" is counted, not timed: the host names looked up (every connection starts with one) show that nothing
was tried on the network, or only the one reachability probe per host and no download after it."""

from __future__ import annotations

import collections
import socket
from pathlib import Path

import pytest
import torch

from backend.stylize import fetch_weights
from backend.stylize import weights as weights_mod
from backend.stylize.clip_model import load_clip
from backend.stylize.perceptual import load_lpips, load_vgg_relu3_3
from backend.stylize.weights import (
    ModelCache,
    WeightsUnavailableError,
    clip_checkpoint,
    hf_hub_cache_dir,
    torch_hub_checkpoints_dir,
    vgg16_cached_path,
)

VGG16_CONVS = {0: (64, 3), 2: (64, 64), 5: (128, 64), 7: (128, 128), 10: (256, 128), 12: (256, 256),
               14: (256, 256), 17: (512, 256), 19: (512, 512), 21: (512, 512), 24: (512, 512), 26: (512, 512),
               28: (512, 512)}


@pytest.fixture
def empty_caches(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_ENDPOINT"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path


@pytest.fixture
def lookups(monkeypatch: pytest.MonkeyPatch) -> collections.Counter[str]:
    """Host names looked up from now on (still looked up for real), by count."""
    seen: collections.Counter[str] = collections.Counter()
    real = socket.getaddrinfo

    def getaddrinfo(host, *args, **kwargs):  # type: ignore[no-untyped-def]
        seen[str(host)] += 1
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return seen


def fake_vgg16_features(seed: int) -> dict[str, torch.Tensor]:
    """A features-only VGG16 state dict with random values (a stand-in for vgg16-397923af.pth)."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for i, (c_out, c_in) in VGG16_CONVS.items():
        state[f"features.{i}.weight"] = torch.randn(c_out, c_in, 3, 3, generator=g) * 0.05
        state[f"features.{i}.bias"] = torch.randn(c_out, generator=g) * 0.01
    return state


def test_cache_dirs_follow_the_environment_at_call_time(empty_caches: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert hf_hub_cache_dir() == empty_caches / "hf" / "hub"
    assert torch_hub_checkpoints_dir() == empty_caches / "torch" / "hub" / "checkpoints"
    monkeypatch.setenv("HF_HUB_CACHE", str(empty_caches / "elsewhere"))
    assert hf_hub_cache_dir() == empty_caches / "elsewhere"
    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.delenv("HF_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(empty_caches / "xdg"))
    assert hf_hub_cache_dir() == empty_caches / "xdg" / "huggingface" / "hub"


def test_vgg_url_is_torchvisions() -> None:
    from torchvision.models import VGG16_Weights

    assert VGG16_Weights.IMAGENET1K_V1.url == weights_mod.VGG16_IMAGENET_URL


def test_clip_checkpoint_names_the_hub_files() -> None:
    ckpt = clip_checkpoint("ViT-B-32", "openai")
    assert ckpt.hf_repo == "timm/vit_base_patch32_clip_224.openai"
    assert ckpt.filenames == ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
    assert ckpt.quick_gelu


def _assert_three_ways(message: str, *needles: str) -> None:
    assert "Provide them in one of three ways:" in message
    for n in ("  1. ", "  2. ", "  3. ", *needles):
        assert n in message, (n, message)


def test_missing_clip_weights_fail_fast(empty_caches: Path, lookups: collections.Counter[str]) -> None:
    with pytest.raises(WeightsUnavailableError) as info:
        load_clip("ViT-B-32", "openai", allow_download=False, cache=None)
    assert not lookups, f"the network was tried: {lookups}"
    hub = str(empty_caches / "hf" / "hub")
    _assert_three_ways(str(info.value), "CLIP weights 'ViT-B-32' / pretrained 'openai'", hub,
                       "python -m backend.stylize.fetch_weights --fetch", "clip_pretrained", "load_clip(pretrained=PATH)",
                       "HF_HOME", "HF_HUB_CACHE", "allow_download=False")
    assert isinstance(info.value, RuntimeError) and info.value.searched and hub in info.value.searched[0]


def test_offline_env_blocks_download(empty_caches: Path, monkeypatch: pytest.MonkeyPatch,
                                     lookups: collections.Counter[str]) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsUnavailableError, match="HF_HUB_OFFLINE"):
        load_clip("ViT-B-32", "openai", cache=None)
    with pytest.raises(WeightsUnavailableError, match="HF_HUB_OFFLINE") as info:
        load_lpips(cache=None)
    assert not lookups, f"the network was tried: {lookups}"
    checkpoints = str(empty_caches / "torch" / "hub" / "checkpoints")
    _assert_three_ways(str(info.value), "VGG16", checkpoints, "vgg_weights", "TORCH_HOME", "vgg16-397923af.pth")


def test_unreachable_hub_is_probed_once_and_nothing_downloaded(empty_caches: Path, monkeypatch: pytest.MonkeyPatch,
                                                              lookups: collections.Counter[str]) -> None:
    # Downloads allowed, but the host does not resolve (.invalid is reserved, RFC 2606): the probe fails and no
    # download is attempted. (The probe gives up after PROBE_TIMEOUT_S, also when a name lookup hangs.)
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.invalid")
    monkeypatch.setattr(weights_mod, "VGG16_IMAGENET_URL", "https://download.invalid/models/vgg16-397923af.pth")
    with pytest.raises(WeightsUnavailableError, match=r"no network access.*hub\.invalid"):
        load_clip("ViT-B-32", "openai", cache=None)
    with pytest.raises(WeightsUnavailableError, match=r"download\.invalid"):
        load_vgg_relu3_3(cache=None)
    assert lookups == {"hub.invalid": 1, "download.invalid": 1}, lookups


def test_cached_vgg_file_is_used(empty_caches: Path) -> None:
    # Way 1/3: the file torchvision would have downloaded is in $TORCH_HOME/hub/checkpoints.
    state = fake_vgg16_features(seed=5)
    path = vgg16_cached_path()
    path.parent.mkdir(parents=True)
    torch.save(state, path)
    vgg = load_vgg_relu3_3(allow_download=False, cache=None)
    assert vgg.source == str(path.resolve())
    for i in (0, 7, 14):
        assert torch.equal(vgg.features[i].weight, state[f"features.{i}.weight"])
    assert len(vgg.features) == 16 and isinstance(vgg.features[15], torch.nn.ReLU)
    assert all(not p.requires_grad for p in vgg.parameters()) and not vgg.training
    lp = load_lpips(allow_download=False, cache=None)
    assert torch.equal(getattr(lp.lpips.net.slice1, "0").weight, state["features.0.weight"])
    assert torch.equal(getattr(lp.lpips.net.slice5, "28").bias, state["features.28.bias"])
    assert all(not p.requires_grad for p in lp.parameters()) and not lp.training


def test_local_vgg_file_and_errors(empty_caches: Path) -> None:
    # Way 2: an explicit file, wrapped in {"state_dict": ...}; the empty cache is not consulted.
    state = fake_vgg16_features(seed=6)
    path = empty_caches / "my_vgg.pth"
    torch.save({"state_dict": state}, path)
    vgg = load_vgg_relu3_3(vgg_weights=path, allow_download=False, cache=None)
    assert torch.equal(vgg.features[12].weight, state["features.12.weight"])
    with pytest.raises(FileNotFoundError, match="vgg_weights"):
        load_vgg_relu3_3(vgg_weights=empty_caches / "missing.pth", cache=None)
    partial = {k: v for k, v in state.items() if k.startswith(("features.0.", "features.2."))}
    torch.save(partial, empty_caches / "partial.pth")
    with pytest.raises(ValueError, match=r"lacks 10 needed entries \(features\.5\.weight"):
        load_vgg_relu3_3(vgg_weights=empty_caches / "partial.pth", cache=None)
    with pytest.raises(ValueError, match=r"lacks 22 needed entries"):
        load_lpips(vgg_weights=empty_caches / "partial.pth", cache=None)
    with pytest.raises(ValueError, match="random_init"):
        load_lpips(random_init=True, vgg_weights=path, cache=None)


def test_model_cache_builds_once_and_clears() -> None:
    cache = ModelCache("t")
    built = []

    def factory() -> object:
        built.append(1)
        return object()

    a = cache.get_or_create(("k", "cpu"), factory)
    assert cache.get_or_create(("k", "cpu"), factory) is a and len(built) == 1 and len(cache) == 1
    assert cache.get_or_create(("k", "cuda"), factory) is not a and len(built) == 2
    cache.clear()
    assert len(cache) == 0 and cache.get_or_create(("k", "cpu"), factory) is not a


def test_cli_reports_missing(empty_caches: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert fetch_weights.main([]) == 1
    out = capsys.readouterr().out
    assert "CLIP ViT-B-32/openai: MISSING" in out and "VGG16: MISSING" in out
