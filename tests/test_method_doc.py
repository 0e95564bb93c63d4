"""docs/method.md states the stylization defaults; this keeps it honest against the code, cheaply.

Every table row whose ``code`` cell is one backticked expression (``LossWeights.directional``,
``iterations_for_strength(0.5)``, ``preset_config("default").scale``) and whose ``default`` cell starts with a
backticked Python literal must agree with the code; the strength and preset tables are recomputed. Nothing is
trained and no weights are loaded.
"""

from __future__ import annotations

import ast
import math
import re
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest

from backend.stylize.loop import StylizeConfig, preset_config
from backend.stylize.losses import LossWeights, StyleLossConfig, iterations_for_strength, weights_for_strength

DOC = Path(__file__).resolve().parents[1] / "docs" / "method.md"
PROMPT = "a marble statue"
_ONE_BACKTICKED = re.compile(r"^`([^`]+)`$")
_LEADING_LITERAL = re.compile(r"^`([^`]+)`")


def _tables(text: str) -> list[list[dict[str, str]]]:
    """Every markdown table of ``text`` as a list of rows keyed by the header's cells."""
    tables, block = [], []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            block.append([c.strip() for c in line.strip().strip("|").split(" | ")])
            continue
        if len(block) > 2:
            header = block[0]
            tables.append([dict(zip(header, row, strict=True)) for row in block[2:]])
        block = []
    return tables


def _table_with(header: tuple[str, ...]) -> list[dict[str, str]]:
    found = [t for t in _tables(DOC.read_text(encoding="utf-8")) if t and tuple(t[0])[: len(header)] == header]
    assert len(found) == 1, f"docs/method.md should hold one table starting with columns {header}"
    return found[0]


def _namespace() -> dict[str, Any]:
    """What a ``code`` cell may name: the default instances of the settings classes and the default functions."""
    return {"LossWeights": LossWeights(), "StyleLossConfig": StyleLossConfig(),
            "StylizeConfig": StylizeConfig(prompt=PROMPT), "iterations_for_strength": iterations_for_strength,
            "preset_config": lambda preset: preset_config(preset, PROMPT)}


def _same(doc_value: Any, code_value: Any) -> bool:
    if isinstance(doc_value, float) or isinstance(code_value, float):
        return isinstance(code_value, (int, float)) and math.isclose(doc_value, code_value, rel_tol=1e-9)
    return doc_value == code_value


def _stated_defaults() -> list[tuple[str, Any, str]]:
    """``(code expression, stated value, row)`` of every checkable row of the defaults tables."""
    out = []
    for table in _tables(DOC.read_text(encoding="utf-8")):
        for row in table:
            default = row.get("default")
            code = row.get("code", row.get("code default"))
            if default is None or code is None:
                continue
            expr, literal = _ONE_BACKTICKED.match(code), _LEADING_LITERAL.match(default)
            if expr and literal:
                out.append((expr.group(1), ast.literal_eval(literal.group(1)), " | ".join(row.values())))
    return out


def test_stated_defaults_are_the_codes() -> None:
    namespace = _namespace()
    stated = _stated_defaults()
    wrong = []
    for expr, value, row in stated:
        # The expressions are the repository's own page, evaluated with nothing but the names above.
        code = eval(expr, {"__builtins__": {}}, namespace)
        if not _same(value, code):
            wrong.append(f"{expr}: docs/method.md says {value!r}, the code has {code!r} (row: {row})")
    assert not wrong, "\n".join(wrong)
    # Every loss weight and every loss option is stated, so a new one cannot be left out of the page.
    named = {expr for expr, _, _ in stated}
    for cls in (LossWeights, StyleLossConfig):
        missing = {f"{cls.__name__}.{f.name}" for f in fields(cls)} - named
        assert not missing, f"docs/method.md states no default for {sorted(missing)}"


def test_strength_table_is_the_mapping() -> None:
    rows = _table_with(("s", "λ_con^g", "λ_con^l", "λ_per", "λ_dir", "iterations"))
    assert [float(r["s"]) for r in rows] == [0.0, 0.25, 0.5, 0.75, 1.0]
    for r in rows:
        w = weights_for_strength(float(r["s"]))
        for column, value in (("λ_con^g", w.global_contrastive), ("λ_con^l", w.local_contrastive),
                              ("λ_per", w.perceptual), ("λ_dir", w.directional)):
            assert float(r[column]) == pytest.approx(value, abs=5e-4), (r["s"], column)
        assert int(r["iterations"]) == iterations_for_strength(float(r["s"]))


def test_preset_table_is_the_presets() -> None:
    rows = _table_with(("preset", "scale", "iterations at strength 0.5"))
    assert [r["preset"] for r in rows] == ["tiny", "fast", "default", "quality"]
    for r in rows:
        config = preset_config(r["preset"], PROMPT)
        assert (float(r["scale"]), int(r["iterations at strength 0.5"])) == (config.scale,
                                                                            config.resolved_iterations())


def test_every_cited_file_exists() -> None:
    """Paths the page cites as evidence (bench results, code files) are in the repository."""
    root = DOC.parents[1]
    cited = set(re.findall(r"`((?:backend|bench|tests|docs)/[\w./-]+\.(?:py|md|txt))`", DOC.read_text(encoding="utf-8")))
    assert len(cited) > 10
    missing = sorted(p for p in cited if not (root / p).is_file())
    assert not missing, f"docs/method.md cites files that do not exist: {missing}"
