"""CLIP wrapper, preprocessing and the image losses end to end, on an explicitly random-initialised ViT-B-32.

No pretrained weights exist on the test machines: the model is requested with ``random_init=True``; loading real
weights is covered by the resolution tests in test_stylize_weights.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import backend.stylize.clip_model as clip_model_mod
from backend.stylize import weights as weights_mod
from backend.stylize.clip_model import (
    ClipModel,
    clip_normalize,
    crops_from_images,
    imagenet_templates,
    load_clip,
    preprocess_center,
    preprocess_crops,
    preprocess_squash,
)
from backend.stylize.losses import (
    LossWeights,
    StyleLossConfig,
    directional_clip_loss,
    global_contrastive_loss,
    local_contrastive_loss,
    normalize_safe,
    total_image_loss,
)
from backend.stylize.negatives import build_negative_pool, draw_negatives, load_negative_bank
from backend.stylize.perceptual import load_lpips
from backend.stylize.weights import ModelCache

TARGET = "painting, oil on canvas, Vincent van Gogh self-portrait style"



@pytest.fixture(scope="module")
def clip_cache() -> ModelCache:
    return ModelCache("test-clip")


@pytest.fixture(scope="module")
def clip(clip_cache: ModelCache) -> ClipModel:
    # Explicit random init of the production architecture; never a fallback.
    return load_clip("ViT-B-32", pretrained=None, random_init=True, cache=clip_cache)


@pytest.fixture(scope="module")
def templates() -> tuple:
    # Two of the 80 templates keep text encoding cheap on the CPU; the code paths are the same.
    return imagenet_templates()[:2]


def test_templates_are_open_clips_callables() -> None:
    t = imagenet_templates()
    assert len(t) == 80 and t[0]("cat") == "a bad photo of a cat."
    assert "a photo of many {}." in [x("{}") for x in t]


def test_random_init_is_frozen_shared_and_quickgelu(clip: ClipModel, clip_cache: ModelCache) -> None:
    from open_clip.transformer import QuickGELU

    assert not clip.model.training
    assert all(not p.requires_grad for p in clip.model.parameters())
    # OpenAI ViT-B/32 uses QuickGELU; open_clip 3.3 would build nn.GELU for 'ViT-B-32' unless forced.
    assert any(isinstance(m, QuickGELU) for m in clip.model.modules())
    assert (clip.image_size, clip.context_length, clip.embed_dim) == (224, 77, 512)
    again = load_clip("ViT-B-32", pretrained=None, random_init=True, cache=clip_cache)
    assert again is clip and len(clip_cache) == 1


def test_load_clip_argument_errors() -> None:
    with pytest.raises(ValueError, match="random_init=True"):
        load_clip("ViT-B-32", pretrained=None, cache=None)
    with pytest.raises(ValueError, match="pretrained=None"):
        load_clip("ViT-B-32", pretrained="openai", random_init=True, cache=None)
    with pytest.raises(FileNotFoundError, match="clip_pretrained"):
        load_clip("ViT-B-32", pretrained="/nonexistent/dir/clip.safetensors", cache=None)
    with pytest.raises(ValueError, match="known tags"):
        load_clip("ViT-B-32", pretrained="no_such_tag", cache=None)


def test_cached_tag_loads_by_path_without_network(monkeypatch: pytest.MonkeyPatch, tmp_path, clip: ClipModel) -> None:
    # A pre-filled HF cache (way 3): the loader must find the file locally and hand its path to open_clip,
    # with QuickGELU forced, without probing the network.
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    repo = tmp_path / "hub" / "models--timm--vit_base_patch32_clip_224.openai"
    snap = repo / "snapshots" / ("a" * 40)
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    (snap / "open_clip_model.safetensors").write_bytes(b"stand-in")
    calls = []

    def fake_build(name, pretrained, quick_gelu, device, cache_dir=None):
        calls.append((name, pretrained, quick_gelu, cache_dir))
        return clip.model

    def no_network(*args, **kwargs):
        raise AssertionError("the network must not be probed when the file is cached")

    monkeypatch.setattr(clip_model_mod, "_build", fake_build)
    monkeypatch.setattr(weights_mod, "host_reachable", no_network)
    loaded = load_clip("ViT-B-32", "openai", cache=None)
    assert calls == [("ViT-B-32", str(snap / "open_clip_model.safetensors"), True, None)]
    assert loaded.source.startswith("openai")


@pytest.mark.slow
def test_load_clip_from_local_checkpoint_file(tmp_path) -> None:
    # Way 2 through the real open_clip loader. A small architecture keeps the file at ~170 MB.
    donor = load_clip("ViT-S-32-alt", pretrained=None, random_init=True, random_seed=1, cache=None)
    path = tmp_path / "clip.pt"
    torch.save(donor.model.state_dict(), path)
    loaded = load_clip("ViT-S-32-alt", pretrained=str(path), cache=None)
    assert loaded.source == str(path.resolve())
    for (name, a), b in zip(donor.model.state_dict().items(), loaded.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert all(not p.requires_grad for p in loaded.model.parameters())
    with pytest.raises(ValueError, match="cannot be loaded"):
        load_clip("ViT-S-16-alt", pretrained=str(path), cache=None)  # patch size 16: the file does not fit


# ----------------------------------------------------------------------------------------------------------------
# Text embeddings.


def test_text_cache_encodes_each_string_once(clip: ClipModel, templates: tuple) -> None:
    clip.clear_text_cache()
    texts0, calls0 = clip.n_texts_encoded, clip.n_text_encoder_calls
    e1 = clip.text_embeddings("a cubist portrait", templates)
    e2 = clip.text_embeddings("a cubist portrait", templates)
    assert e1 is e2 and e1.shape == (2, 512) and not e1.requires_grad
    assert (clip.n_texts_encoded, clip.n_text_encoder_calls) == (texts0 + 1, calls0 + 1)
    torch.testing.assert_close(e1.norm(dim=-1), torch.ones(2))
    # Each row is the template applied to the string, through the text encoder, normalised.
    with torch.no_grad():
        direct = clip.model.encode_text(clip.tokenizer([templates[1]("a cubist portrait")]))[0]
    torch.testing.assert_close(e1[1], direct / direct.norm())
    # Several new strings: one encoder call; already cached ones are not re-encoded.
    clip.precompute_texts(["a cubist portrait", "zombie", "anime character"], templates)
    assert (clip.n_texts_encoded, clip.n_text_encoder_calls) == (texts0 + 3, calls0 + 2)
    # Direction: n(mean_k(e_k(tgt) - e_k(src))), cached.
    d = clip.text_direction("zombie", "anime character", templates)
    expected = normalize_safe((clip.text_embeddings("zombie", templates)
                               - clip.text_embeddings("anime character", templates)).mean(0))
    torch.testing.assert_close(d, expected)
    assert clip.text_direction("zombie", "anime character", templates) is d
    assert clip.n_text_encoder_calls == calls0 + 2
    with pytest.raises(ValueError, match="same CLIP text embedding"):
        clip.text_direction("photo", "photo", templates)


def test_text_features_from_the_context_prefix_equal_the_whole_contexts(clip: ClipModel) -> None:
    """The text encoder runs over the shortest prefix holding every text's end token (causal attention, feature
    read at the end token): the same features as ``encode_text`` over the whole padded context, for less work."""
    from backend.stylize.clip_model import encode_text_prefix

    sentences = ["a photo of a zombie.", "x", "a bad photo of the " + "very " * 20 + "large statue made of marble."]
    tokens = clip.tokenizer(sentences)
    assert tokens.shape[1] == 77
    seen: list[int] = []
    hook = clip.model.transformer.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[1]))
    try:
        with torch.no_grad():
            prefix = encode_text_prefix(clip.model, tokens)
            whole = clip.model.encode_text(tokens)
    finally:
        hook.remove()
    longest = int(tokens.argmax(dim=-1).max()) + 1
    assert 20 < longest < 77 and seen == [longest, 77]
    torch.testing.assert_close(prefix, whole, rtol=1e-5, atol=1e-5)
    # A model that reads its feature elsewhere than at the end token gets the whole context.
    class LastPooled(torch.nn.Module):
        text_pool_type = "last"

        def encode_text(self, t: torch.Tensor) -> torch.Tensor:
            return t.float()[:, -1:]

    assert encode_text_prefix(LastPooled(), tokens).shape == (3, 1)


def test_bad_prompts_get_clear_errors(clip: ClipModel, templates: tuple) -> None:
    for bad in ("", "   \n\t"):
        with pytest.raises(ValueError, match="empty"):
            clip.text_embeddings(bad, templates)
    with pytest.raises(ValueError, match="must be a string"):
        clip.check_prompt(None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at most 77 tokens"):
        clip.text_embeddings("oil painting " * 60, templates)
    # Fits alone (72 + 2 tokens) but not inside "a bad photo of a {}.": the template is named.
    prompt = "cat " * 72
    assert clip._n_tokens(prompt) == 74
    with pytest.raises(ValueError, match=r"a bad photo of a \{\}\."):
        clip.check_prompt(prompt, templates)
    clip.check_prompt("cat " * 60, imagenet_templates())  # the longest template still fits


def test_negative_bank_fits_clip_context(clip: ClipModel) -> None:
    all_templates = imagenet_templates()
    for group in load_negative_bank():
        for prompt in group.prompts:
            clip.check_prompt(prompt, all_templates)


# ----------------------------------------------------------------------------------------------------------------
# Preprocessing.


def test_preprocessing_shapes_values_and_shift() -> None:
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    mean = torch.tensor(OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_DATASET_STD).view(1, 3, 1, 1)
    flat = torch.full((2, 3, 90, 160), 0.5)
    out = preprocess_squash(flat)
    assert out.shape == (2, 3, 224, 224)
    torch.testing.assert_close(out, ((0.5 - mean) / std).expand(2, 3, 224, 224))
    # Short side already 224: no resize, centre crop columns [112, 336).
    x = torch.rand(1, 3, 224, 448)
    torch.testing.assert_close(preprocess_center(x), clip_normalize(x[:, :, :, 112:336]))
    torch.testing.assert_close(preprocess_center(x, clip_input_shift=True), preprocess_center((x + 1) / 2))
    assert preprocess_center(torch.rand(1, 3, 480, 270)).shape == (1, 3, 224, 224)
    with pytest.raises(ValueError, match=r"\(1, 4, 8, 8\)"):
        preprocess_squash(torch.rand(1, 4, 8, 8))


def test_crops_are_uniform_inside_and_deterministic() -> None:
    img = torch.rand(2, 3, 50, 80)
    crops, corners = crops_from_images(img, 12, 0.4, torch.Generator().manual_seed(3))
    crops2, corners2 = crops_from_images(img, 12, 0.4, torch.Generator().manual_seed(3))
    assert crops.shape == (2, 12, 3, 20, 20) and torch.equal(corners, corners2) and torch.equal(crops, crops2)
    assert int(corners[..., 0].max()) <= 30 and int(corners[..., 1].max()) <= 60 and int(corners.min()) >= 0
    for b in range(2):
        for c in range(12):
            top, left = corners[b, c].tolist()
            assert torch.equal(crops[b, c], img[b, :, top:top + 20, left:left + 20])
    assert preprocess_crops(crops).shape == (24, 3, 224, 224)
    # Positions are spread over the whole range (not e.g. always the corner).
    _, many = crops_from_images(img, 400, 0.4, torch.Generator().manual_seed(0))
    assert set(np.unique(many[..., 0].numpy())) == set(range(31))


# ----------------------------------------------------------------------------------------------------------------
# End to end: gradients reach the rendered image.


def test_total_image_loss_end_to_end(clip: ClipModel, templates: tuple) -> None:
    gen = torch.Generator().manual_seed(0)
    negatives = draw_negatives(build_negative_pool(TARGET), 4, gen)  # 4 of the usual 8: cheaper text encoding
    image_src = torch.rand(1, 3, 64, 96, generator=torch.Generator().manual_seed(1))
    image_tgt = image_src.clone().requires_grad_(True)  # iteration 0: F_sty == F_rec, so I_tgt == I_src
    lpips = load_lpips(random_init=True)
    total, terms = total_image_loss(image_tgt, image_src, clip=clip, target=TARGET, negatives=negatives,
                                    generator=gen, perceptual=lpips, config=StyleLossConfig(n_crops=2),
                                    templates=templates)
    assert set(terms) == {"directional", "global_contrastive", "local_contrastive", "perceptual"}
    assert terms["directional"].item() == pytest.approx(1.0, abs=1e-6)  # ΔI = 0
    assert terms["perceptual"].item() == pytest.approx(0.0, abs=1e-7)
    w = LossWeights()
    expected = sum(getattr(w, k) * v.item() for k, v in terms.items())
    assert total.item() == pytest.approx(expected, rel=1e-6)
    # Every CLIP term, on its own, sends a finite non-zero gradient to the image, even at I_tgt == I_src (the
    # perceptual term's gradient is exactly zero there).
    for name in ("directional", "global_contrastive", "local_contrastive"):
        (grad,) = torch.autograd.grad(terms[name], image_tgt, retain_graph=True)
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0, name
    # The image-level functions are the same computations as the terms.
    direction = clip.text_direction(TARGET, "photo", templates)
    with torch.no_grad():
        assert directional_clip_loss(clip, image_tgt, image_src, direction).item() == pytest.approx(1.0, abs=1e-6)


def test_one_encoder_batch_gives_the_terms_and_gradients_of_one_call_per_term(clip: ClipModel,
                                                                               templates: tuple) -> None:
    # total_image_loss sends P_dir, P_con and the crops through CLIP in one batch (one forward, one backward):
    # each term and its image gradient must equal the image-level function computed on its own.
    image_src = torch.rand(1, 3, 48, 80, generator=torch.Generator().manual_seed(3))
    noise = torch.rand(1, 3, 48, 80, generator=torch.Generator().manual_seed(4))
    image_tgt = (0.6 * image_src + 0.3 * noise).requires_grad_(True)
    negatives = ["human face", "zombie"]
    _, terms = total_image_loss(image_tgt, image_src, clip=clip, target=TARGET, negatives=negatives,
                                generator=torch.Generator().manual_seed(5), perceptual=None,
                                weights=LossWeights(perceptual=0.0), config=StyleLossConfig(n_crops=3),
                                templates=templates)
    pos = clip.text_embeddings(TARGET, templates)
    negs = clip.text_embeddings_many(negatives, templates)
    direction = clip.text_direction(TARGET, "photo", templates)
    one_by_one = {
        "directional": directional_clip_loss(clip, image_tgt, image_src, direction),
        "global_contrastive": global_contrastive_loss(clip, image_tgt, pos, negs),
        "local_contrastive": local_contrastive_loss(clip, image_tgt, pos, negs, torch.Generator().manual_seed(5),
                                                    n_crops=3),
    }
    assert set(terms) == set(one_by_one)
    for name, value in one_by_one.items():
        assert terms[name].item() == pytest.approx(value.item(), rel=1e-5, abs=1e-6), name
        (g_batch,) = torch.autograd.grad(terms[name], image_tgt, retain_graph=True)
        (g_alone,) = torch.autograd.grad(value, image_tgt, retain_graph=True)
        assert g_alone.abs().sum() > 0, name
        # Float32 sums in another order (batched matrix products): relative error, not bit equality.
        assert float((g_batch - g_alone).norm() / g_alone.norm()) < 1e-4, name


def test_margin_mode_at_iteration_zero(clip: ClipModel, templates: tuple) -> None:
    image_src = torch.rand(1, 3, 40, 40, generator=torch.Generator().manual_seed(4))
    image_tgt = image_src.clone().requires_grad_(True)
    weights = LossWeights(directional=0.0, local_contrastive=0.0, perceptual=0.0)
    total, terms = total_image_loss(image_tgt, image_src, clip=clip, target=TARGET, negatives=["human face"],
                                    generator=torch.Generator(), perceptual=None, weights=weights,
                                    config=StyleLossConfig(global_mode="margin"), templates=templates)
    assert set(terms) == {"global_contrastive"}
    total.backward()
    assert torch.isfinite(total) and torch.isfinite(image_tgt.grad).all() and image_tgt.grad.abs().sum() > 0
