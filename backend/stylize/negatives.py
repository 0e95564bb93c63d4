"""Negative prompts for the contrastive losses: the grouped bank, the removal rule, and per-iteration draws.

Spec Section 10. The bank is data (``negative_prompts.txt``, next to this module): seven groups (base, disney,
cartoon, sketch, zombie, anime/makeup, portrait), one prompt per line, used verbatim. Every group except
``base`` has trigger keywords; **every** group whose triggers occur in the target prompt is removed (the released
code removed only the first match). User-supplied negatives are added to the pool and never removed. Each
iteration draws ``k`` (default 8) distinct negatives from the pool with a caller-supplied generator, shared by the
global and every local contrastive term.

**Leaks.** The group rule only knows its keywords: a prompt that matches no group keeps negatives that mean
nearly what it asks for ("a wolf" keeps "werewolf", "the Joker" keeps "clown makeup"), and the contrastive terms
then push the render away from its own target. :func:`drop_close_negatives` removes, in the text encoder's own
space, the bank negatives that are closer to the target than the source text is, by a margin (issue 12).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "DEFAULT_BANK_PATH",
    "NegativeGroup",
    "NegativePool",
    "build_negative_pool",
    "draw_negatives",
    "drop_close_negatives",
    "load_negative_bank",
    "matching_groups",
    "negative_closeness",
    "normalize_for_matching",
    "parse_negative_bank",
]

#: The project's bank, shipped with the package.
DEFAULT_BANK_PATH = Path(__file__).with_name("negative_prompts.txt")

#: The group that has no triggers and is never removed.
BASE_GROUP = "base"

_TRIGGERS_PREFIX = "triggers:"
_SEPARATORS = re.compile(r"[\W_]+")


@dataclass(frozen=True)
class NegativeGroup:
    """One group of the bank.

    Attributes:
        name: group name (``"portrait"``).
        triggers: keywords, already normalised with :func:`normalize_for_matching`; empty for ``base``.
        prompts: the negative prompts, verbatim.
    """

    name: str
    triggers: tuple[str, ...]
    prompts: tuple[str, ...]


@dataclass(frozen=True)
class NegativePool:
    """The negatives for one job.

    Attributes:
        prompts: bank prompts of the kept groups, then the user's, without duplicates.
        removed_groups: names of the groups the target prompt removed.
        user_prompts: the user's negatives (always in ``prompts``).
        protected: prompts :func:`drop_close_negatives` never drops: the ``base`` group (the source domain the
            style must leave) and the user's negatives.
        dropped: ``(prompt, closeness)`` of the bank prompts dropped as too close to the target.
    """

    prompts: tuple[str, ...]
    removed_groups: tuple[str, ...]
    user_prompts: tuple[str, ...]
    protected: tuple[str, ...] = ()
    dropped: tuple[tuple[str, float], ...] = ()

    def __len__(self) -> int:
        return len(self.prompts)


def normalize_for_matching(text: str) -> str:
    """Lower-case and turn every run of non-alphanumeric characters into one space (``"Self-Portrait!"`` →
    ``"self portrait"``), so that keywords match across hyphens, punctuation and spacing."""
    return _SEPARATORS.sub(" ", text.lower()).strip()


def parse_negative_bank(text: str, source: str = "<string>") -> tuple[NegativeGroup, ...]:
    """Parse the bank format (see ``negative_prompts.txt``).

    Raises:
        ValueError: naming ``source`` and the line number, for: a prompt before the first group, a repeated or
            empty group name, a ``triggers:`` line that is not the group's first, a group other than ``base``
            without triggers, ``base`` with triggers, a group without prompts, or a prompt listed twice.
    """
    groups: list[tuple[str, list[str], list[str], int]] = []
    seen_prompts: dict[str, int] = {}
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{source}:{lineno}"
        if line.startswith("[") and line.endswith("]"):
            name = line[1:-1].strip()
            if not name:
                raise ValueError(f"{where}: empty group name")
            if any(g[0] == name for g in groups):
                raise ValueError(f"{where}: group [{name}] appears twice")
            groups.append((name, [], [], lineno))
            continue
        if not groups:
            raise ValueError(f"{where}: {line!r} comes before the first [group] header")
        name, triggers, prompts, _ = groups[-1]
        if line.lower().startswith(_TRIGGERS_PREFIX):
            if prompts or triggers:
                raise ValueError(f"{where}: the triggers of [{name}] must be one line, right after its header")
            words = [normalize_for_matching(w) for w in line[len(_TRIGGERS_PREFIX):].split(",")]
            triggers.extend(w for w in words if w)
            if not triggers:
                raise ValueError(f"{where}: [{name}] has an empty triggers line")
            continue
        if line in seen_prompts:
            raise ValueError(f"{where}: {line!r} is already listed at line {seen_prompts[line]}")
        seen_prompts[line] = lineno
        prompts.append(line)
    if not groups:
        raise ValueError(f"{source}: no groups found")
    out = []
    for name, triggers, prompts, lineno in groups:
        if not prompts:
            raise ValueError(f"{source}:{lineno}: group [{name}] has no prompts")
        if name == BASE_GROUP and triggers:
            raise ValueError(f"{source}:{lineno}: group [{BASE_GROUP}] is never removed and must have no triggers")
        if name != BASE_GROUP and not triggers:
            raise ValueError(f"{source}:{lineno}: group [{name}] needs a 'triggers:' line")
        out.append(NegativeGroup(name, tuple(triggers), tuple(prompts)))
    return tuple(out)


def load_negative_bank(path: str | Path | None = None) -> tuple[NegativeGroup, ...]:
    """Read and parse a bank file (default: the project's :data:`DEFAULT_BANK_PATH`)."""
    path = DEFAULT_BANK_PATH if path is None else Path(path)
    return parse_negative_bank(path.read_text(encoding="utf-8"), source=str(path))


def _check_text(text: str, what: str) -> None:
    if not isinstance(text, str):
        raise ValueError(f"{what} must be a string, got {type(text).__name__}")
    if not text.strip():
        raise ValueError(f"{what} is empty")


def matching_groups(target: str, groups: Sequence[NegativeGroup]) -> tuple[str, ...]:
    """Names of every group with a trigger keyword in ``target``, in bank order.

    A keyword matches where a word of the normalised prompt starts with it: ``"portrait"`` matches
    ``"self-portrait"`` and ``"portraits"``, but ``"ink"`` does not match ``"pink"``.
    """
    _check_text(target, "target prompt")
    padded = " " + normalize_for_matching(target)
    return tuple(g.name for g in groups if any((" " + kw) in padded for kw in g.triggers))


def build_negative_pool(target: str, user_negatives: Sequence[str] = (),
                        groups: Sequence[NegativeGroup] | None = None) -> NegativePool:
    """The pool of negatives for a target prompt (spec Section 10 removal rule).

    Args:
        target: the target prompt.
        user_negatives: extra negatives from the user; added, never removed.
        groups: the bank (default: :func:`load_negative_bank`).

    Raises:
        ValueError: empty target, an empty user negative, or a user negative equal to the target prompt
            (it would push the render away from the style it is asked to reach).
    """
    groups = load_negative_bank() if groups is None else tuple(groups)
    removed = matching_groups(target, groups)
    prompts: list[str] = []
    seen: set[str] = set()
    for group in groups:
        if group.name in removed:
            continue
        for p in group.prompts:
            if p not in seen:
                seen.add(p)
                prompts.append(p)
    user: list[str] = []
    target_key = normalize_for_matching(target)
    for i, text in enumerate(user_negatives):
        _check_text(text, f"user negative #{i + 1}")
        text = text.strip()
        if normalize_for_matching(text) == target_key:
            raise ValueError(f"user negative {text!r} is the target prompt itself")
        if text not in user:
            user.append(text)
        if text not in seen:
            seen.add(text)
            prompts.append(text)
    base = next((g.prompts for g in groups if g.name == BASE_GROUP), ())
    return NegativePool(prompts=tuple(prompts), removed_groups=removed, user_prompts=tuple(user),
                        protected=tuple(dict.fromkeys([*base, *user])))


#: Default of :func:`drop_close_negatives`: drop a negative a quarter of the way (or more) from the source text's
#: similarity to the target toward the target itself.
DEFAULT_MAX_CLOSENESS = 0.25


def negative_closeness(embed: Callable[[Sequence[str]], torch.Tensor], target: str, source: str,
                       negatives: Sequence[str]) -> dict[str, float]:
    """How close each negative is to the target, on the scale set by the source text.

    .. math:: c(n) = \\frac{\\cos(n, t) - \\cos(s, t)}{1 - \\cos(s, t)}

    with ``t``, ``s``, ``n`` the unit embeddings of the target, the source text and the negative. ``c = 1`` is the
    target itself, ``c = 0`` is as close as the source text (where the render starts), ``c < 0`` is farther. The
    scale makes the rule independent of how crowded an encoder's text space is (CLIP's text embeddings of
    templated sentences are all 0.6-0.9 apart; the analytic stand-in's spread over [-1, 1]).

    Args:
        embed: texts -> ``(J, D)`` unit embeddings in the encoder's space (e.g. templates averaged).
        negatives: the candidates.

    Returns:
        ``{negative: closeness}``.
    """
    if not negatives:
        return {}
    vectors = embed([target, source, *negatives]).float()
    vectors = vectors / vectors.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    sims = vectors[1:] @ vectors[0]  # (1 + J,): source, then the negatives
    src = float(sims[0])
    scale = max(1.0 - src, 1e-6)
    return {n: (float(c) - src) / scale for n, c in zip(negatives, sims[1:], strict=True)}


def drop_close_negatives(pool: NegativePool, closeness: dict[str, float],
                         max_closeness: float = DEFAULT_MAX_CLOSENESS) -> NegativePool:
    """The pool without the bank negatives whose :func:`negative_closeness` is ``>= max_closeness``.

    The ``protected`` prompts (the ``base`` group and the user's negatives) always stay.

    Args:
        closeness: from :func:`negative_closeness`, for (at least) the unprotected prompts of the pool.
        max_closeness: in (0, 1]; 1 drops only exact synonyms of the target.
    """
    if not 0.0 < max_closeness <= 1.0:
        raise ValueError(f"max_closeness must be in (0, 1], got {max_closeness}")
    keep, dropped = [], []
    for prompt in pool.prompts:
        c = closeness.get(prompt)
        if prompt not in pool.protected and c is not None and c >= max_closeness:
            dropped.append((prompt, c))
        else:
            keep.append(prompt)
    return replace(pool, prompts=tuple(keep), dropped=pool.dropped + tuple(dropped))


def draw_negatives(pool: NegativePool | Sequence[str], k: int,
                   generator: torch.Generator | np.random.Generator) -> list[str]:
    """Draw ``k`` distinct negatives, uniformly without replacement (the code's ``random.sample(neg, 8)``).

    Call once per iteration; the draw is shared by the global loss and every crop of the local loss.

    Args:
        pool: a :class:`NegativePool` or a sequence of prompts.
        k: how many (default use: ``StyleLossConfig.n_negatives`` = 8).
        generator: a ``torch.Generator`` or ``numpy.random.Generator``; same seed, same draws.

    Raises:
        ValueError: ``k < 1`` or the pool holds fewer than ``k`` prompts.
    """
    prompts = pool.prompts if isinstance(pool, NegativePool) else tuple(pool)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if len(prompts) < k:
        raise ValueError(f"cannot draw {k} distinct negatives from a pool of {len(prompts)}")
    if isinstance(generator, torch.Generator):
        idx = torch.randperm(len(prompts), generator=generator, device=generator.device)[:k].tolist()
    elif isinstance(generator, np.random.Generator):
        idx = generator.choice(len(prompts), size=k, replace=False).tolist()
    else:
        raise TypeError(f"generator must be a torch.Generator or numpy.random.Generator, got "
                        f"{type(generator).__name__}")
    return [prompts[i] for i in idx]
