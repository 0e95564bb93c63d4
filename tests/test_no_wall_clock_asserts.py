"""The suite's rule on time (tests/waits.py): no test asserts how long something took.

A wall-clock bound that holds on an idle machine fails now and then on 2 shared cores (a cancel "within 0.5 s"
took 1.1 s there). This scans the tests' syntax for an ``assert`` on a duration: a difference of clock readings
(``time.monotonic() - t0``), directly or through a name it was assigned to. Waiting with a deadline
(``while time.monotonic() < deadline``) reads the clock without asserting a duration, and is not flagged.
"""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent
CLOCKS = {"monotonic", "perf_counter", "time", "monotonic_ns", "perf_counter_ns", "time_ns"}


def _reads_clock(node: ast.AST) -> bool:
    return any(isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr in CLOCKS
               and isinstance(n.func.value, ast.Name) and n.func.value.id == "time" for n in ast.walk(node))


def _is_duration(node: ast.AST, durations: set[str]) -> bool:
    """``node`` computes a clock difference, or uses a name that holds one."""
    for n in ast.walk(node):
        if isinstance(n, ast.BinOp) and isinstance(n.op, ast.Sub) and (_reads_clock(n.left) or _reads_clock(n.right)):
            return True
        if isinstance(n, ast.Name) and n.id in durations:
            return True
    return False


def duration_asserts(source: str) -> list[int]:
    """Line numbers of ``assert`` statements that compare a duration."""
    tree = ast.parse(source)
    durations: set[str] = set()
    for node in ast.walk(tree):  # names assigned a clock difference, anywhere in the file
        if isinstance(node, ast.Assign) and _is_duration(node.value, set()):
            durations |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    return [node.lineno for node in ast.walk(tree) if isinstance(node, ast.Assert)
            and any(_is_duration(c, durations) for c in ast.walk(node.test) if isinstance(c, ast.Compare))]


def test_the_scan_finds_duration_asserts_and_leaves_deadlines_alone() -> None:
    flagged = duration_asserts(
        "t0 = time.monotonic()\n"
        "assert time.monotonic() - t0 < 3\n"
        "took = time.perf_counter() - t0\n"
        "assert took < 0.5, 'slow'\n"
        "deadline = time.monotonic() + 10\n"
        "while time.monotonic() < deadline:\n"
        "    assert time.monotonic() < deadline, 'hang'\n"
        "assert ckpt.step < 10\n")
    assert flagged == [2, 4]


def test_no_test_asserts_a_duration() -> None:
    found = {f"{path.relative_to(TESTS)}:{line}" for path in sorted(TESTS.rglob("*.py"))
             for line in duration_asserts(path.read_text())}
    assert not found, f"assert on a wall-clock duration (count steps or events; measure speed in bench/): {found}"
