"""The negative-prompt bank, the group removal rule and the per-iteration draws (backend.stylize.negatives)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from backend.stylize.negatives import (
    DEFAULT_BANK_PATH,
    build_negative_pool,
    draw_negatives,
    drop_close_negatives,
    load_negative_bank,
    matching_groups,
    negative_closeness,
    normalize_for_matching,
    parse_negative_bank,
)

GROUPS = ("base", "disney", "cartoon", "sketch", "zombie", "anime", "portrait")


@pytest.fixture(scope="module")
def bank():
    return load_negative_bank()


def test_bank_has_the_seven_groups_as_data(bank) -> None:
    assert tuple(g.name for g in bank) == GROUPS
    sizes = {g.name: len(g.prompts) for g in bank}
    assert all(n >= 10 for n in sizes.values()), sizes
    all_prompts = [p for g in bank for p in g.prompts]
    assert len(all_prompts) == len(set(all_prompts))
    assert bank[0].triggers == () and all(g.triggers for g in bank[1:])
    # Stored verbatim, one per line: entries with dots are not split (the released parser's bug).
    assert "Monkey D. Luffy" in dict((g.name, g.prompts) for g in bank)["anime"]
    assert DEFAULT_BANK_PATH.read_text(encoding="utf-8").count("\nMonkey D. Luffy\n") == 1
    assert "Mona Lisa by Leonardo da Vinci" in bank[-1].prompts


@pytest.mark.parametrize(("prompt", "removed"), [
    ("painting, oil on canvas, Vincent van Gogh self-portrait style", ("portrait",)),
    ("a Pixar character", ("disney",)),
    ("Superman cartoon", ("cartoon",)),
    ("a rotting ZOMBIE in anime style with heavy stage make-up", ("zombie", "anime")),
    ("charcoal sketches of a Disney princess, comic book, Mona-Lisa", ("disney", "cartoon", "sketch", "portrait")),
    ("Tolkien Elf", ()),
    ("a pink-haired elf", ()),  # "ink" (sketch) must not match inside "pink"
    ("photo of a man", ()),  # base is never removed
])
def test_every_matching_group_is_removed(bank, prompt: str, removed: tuple[str, ...]) -> None:
    assert matching_groups(prompt, bank) == removed
    pool = build_negative_pool(prompt, groups=bank)
    assert pool.removed_groups == removed
    kept = [p for g in bank if g.name not in removed for p in g.prompts]
    assert pool.prompts == tuple(kept)
    assert "photo" in pool.prompts


def test_user_negatives_are_added_and_never_removed(bank) -> None:
    target = "painting, oil on canvas, Vincent van Gogh self-portrait style"
    user = ["Self-Portrait by Van Gogh", "a Rembrandt painting", "blurry", "blurry", "photo"]
    pool = build_negative_pool(target, user, groups=bank)
    assert pool.removed_groups == ("portrait",)
    assert pool.user_prompts == ("Self-Portrait by Van Gogh", "a Rembrandt painting", "blurry", "photo")
    for p in pool.user_prompts:
        assert pool.prompts.count(p) == 1  # kept once, even when also in a kept bank group ("photo")
    with pytest.raises(ValueError, match="user negative #2 is empty"):
        build_negative_pool(target, ["ok", "  "], groups=bank)
    with pytest.raises(ValueError, match="is the target prompt itself"):
        build_negative_pool("Oil Painting", ["oil painting"], groups=bank)
    with pytest.raises(ValueError, match="target prompt is empty"):
        build_negative_pool("   ", groups=bank)


def test_draws_are_distinct_and_reproducible(bank) -> None:
    pool = build_negative_pool("a Pixar character", groups=bank)
    a = draw_negatives(pool, 8, torch.Generator().manual_seed(7))
    b = draw_negatives(pool, 8, torch.Generator().manual_seed(7))
    c = draw_negatives(pool, 8, torch.Generator().manual_seed(8))
    assert a == b and a != c and len(set(a)) == 8 and set(a) <= set(pool.prompts)
    n1 = draw_negatives(pool.prompts, 8, np.random.default_rng(3))
    assert n1 == draw_negatives(pool, 8, np.random.default_rng(3)) and len(set(n1)) == 8
    # Uniform: over many draws every prompt appears, none wildly more often than k/N.
    gen = torch.Generator().manual_seed(0)
    counts = {p: 0 for p in pool.prompts}
    for _ in range(400):
        for p in draw_negatives(pool, 8, gen):
            counts[p] += 1
    expected = 400 * 8 / len(pool)
    assert min(counts.values()) > 0.4 * expected and max(counts.values()) < 1.8 * expected
    with pytest.raises(ValueError, match="cannot draw 8 distinct negatives from a pool of 3"):
        draw_negatives(["a", "b", "c"], 8, torch.Generator())
    with pytest.raises(TypeError, match="Generator"):
        draw_negatives(pool, 8, 42)  # type: ignore[arg-type]


def test_parse_errors_name_the_line() -> None:
    cases = {
        "stray\n[base]\nphoto\n": "<string>:1: 'stray' comes before",
        "[base]\nphoto\n[cartoon]\ncartoon character\n": "group [cartoon] needs a 'triggers:' line",
        "[base]\ntriggers: photo\nphoto\n": "[base] is never removed",
        "[base]\nphoto\n[x]\ntriggers: a\nphoto\n": "<string>:5: 'photo' is already listed at line 2",
        "[base]\nphoto\n[x]\ntriggers: a\nb\ntriggers: c\n": "<string>:6: the triggers of [x] must be one line",
        "[base]\n[x]\ntriggers: a\nb\n": "group [base] has no prompts",
        "[base]\nphoto\n[base]\nselfie\n": "group [base] appears twice",
    }
    for text, message in cases.items():
        with pytest.raises(ValueError) as info:
            parse_negative_bank(text)
        assert message in str(info.value), (text, str(info.value))


def test_normalize_for_matching() -> None:
    assert normalize_for_matching("  Self-Portrait,  by VAN_GOGH!! ") == "self portrait by van gogh"


def test_negatives_close_to_the_target_are_dropped_in_the_encoders_space() -> None:
    """Issue 12: a prompt that matches no group keeps near-synonyms among the negatives; they are dropped by their
    closeness in the text encoder's own space (here the analytic stand-in, whose meanings are known)."""
    from backend.stylize.clip_model import imagenet_templates
    from backend.stylize.standin_encoder import load_standin_clip

    clip, templates = load_standin_clip(), imagenet_templates()

    def embed(texts):
        return clip.text_embeddings_averaged(texts, templates)

    target = "a golden statue"
    pool = build_negative_pool(target, ["golden statue replica"])
    assert pool.removed_groups == () and "Klimt portrait with gold leaf" in pool.prompts
    closeness = negative_closeness(embed, target, "photo", pool.prompts)
    assert closeness["Klimt portrait with gold leaf"] > 0.25  # shares "gold" with the target
    assert closeness["human face"] < 0.1 and closeness["zombie"] < 0.1
    kept = drop_close_negatives(pool, closeness)
    assert [p for p, _ in kept.dropped] == ["Klimt portrait with gold leaf"]
    assert "Klimt portrait with gold leaf" not in kept.prompts and len(kept) == len(pool) - 1
    # The user's negatives and the base group are never dropped, however close.
    assert closeness["golden statue replica"] > 0.25 and "golden statue replica" in kept.prompts
    everything = drop_close_negatives(pool, {p: 1.0 for p in pool.prompts}, max_closeness=1.0)
    assert set(everything.prompts) == set(pool.protected) and "human face" in everything.prompts
    # The scale: the target itself is 1, the source text 0.
    assert negative_closeness(embed, target, "photo", [target, "photo"]) == pytest.approx({target: 1.0, "photo": 0.0})
    with pytest.raises(ValueError, match="max_closeness"):
        drop_close_negatives(pool, closeness, max_closeness=0.0)


def test_closeness_runs_with_a_random_clip() -> None:
    """Wiring with a real open_clip text tower (random weights: the values mean nothing, the shapes do)."""
    from backend.stylize.clip_model import imagenet_templates, load_clip

    clip = load_clip("ViT-S-32", pretrained=None, random_init=True, device="cpu")
    templates = imagenet_templates()[:1]
    pool = build_negative_pool("a wolf")
    candidates = [p for p in pool.prompts if p not in pool.protected][:12]
    closeness = negative_closeness(lambda t: clip.text_embeddings_averaged(t, templates), "a wolf", "photo",
                                   candidates)
    assert set(closeness) == set(candidates) and all(np.isfinite(list(closeness.values())))
    assert all(c <= 1.0 + 1e-5 for c in closeness.values())
