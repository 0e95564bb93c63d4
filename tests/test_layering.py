"""Layering of ``backend/``: the job-store layer and the executors stand without the front ends, and nothing in
``backend/`` imports in a circle.

The import graph is read statically (``ast``), every import counted wherever it sits (module level, inside a
function, under ``TYPE_CHECKING``): a deferred import that closes a circle is still a circle in the design, it
only fails later. Two graphs are checked: modules, and the packages directly under ``backend/`` (``server``,
``cluster``, ``jobs``, ...; a top-level module such as ``cli.py`` is its own node), where a cycle means two
parts that each need the other.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def module_name(path: Path, root: Path) -> str:
    """``backend/jobstore/store.py`` -> ``backend.jobstore.store``; a package's ``__init__.py`` is the package."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_names(path: Path, module: str) -> set[str]:
    """Every name ``path`` (the module ``module``) imports from, relative imports made absolute.

    ``from pkg import name`` yields ``pkg.name``: :func:`import_graph` takes it as the module ``pkg.name`` when
    there is one (``from . import mdp``), else as ``pkg`` (a name defined in ``pkg``).
    """
    is_package = path.name == "__init__.py"
    package_parts = module.split(".") if is_package else module.split(".")[:-1]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package_parts[:len(package_parts) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    """Module -> the modules of ``package`` (under ``root``) it imports, itself excluded."""
    files = {module_name(p, root): p for p in (root / package).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        targets = set()
        for name in imported_names(path, module):
            # The longest prefix that is a module of the graph: backend.jobstore.store.JobStore -> backend.jobstore.store.
            parts = name.split(".")
            while parts and ".".join(parts) not in files:
                parts.pop()
            if parts and ".".join(parts) != module:
                targets.add(".".join(parts))
        graph[module] = targets
    return graph


def package_graph(graph: dict[str, set[str]], package: str) -> dict[str, set[str]]:
    """The graph folded onto the parts directly under ``package`` (``backend.jobstore.store`` -> ``backend.jobstore``)."""
    def part(module: str) -> str:
        return ".".join(module.split(".")[:2]) if module != package else module

    folded: dict[str, set[str]] = {}
    for module, targets in graph.items():
        node = part(module)
        folded.setdefault(node, set()).update(part(t) for t in targets if part(t) != node)
    return folded


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (``[a, b, ..., a]``) per strongly connected component that has one (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(component)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [_cycle_in(graph, set(c)) for c in components]


def _cycle_in(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """The shortest cycle through the component's first node (breadth first, inside the component)."""
    start = min(component)
    parents: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph.get(v, ())):
                if w == start:
                    back = [v]
                    while back[-1] != start:
                        back.append(parents[back[-1]])
                    return [*reversed(back), start]
                if w in component and w not in parents:
                    parents[w] = v
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"no cycle through {start} in its strongly connected component")


def _describe(cycles: list[list[str]]) -> str:
    return "; ".join(" -> ".join(c) for c in cycles)


def test_backend_modules_import_no_cycle() -> None:
    cycles = find_cycles(import_graph(ROOT, "backend"))
    assert not cycles, f"import cycles between modules of backend/: {_describe(cycles)}"


def test_backend_packages_import_no_cycle() -> None:
    cycles = find_cycles(package_graph(import_graph(ROOT, "backend"), "backend"))
    assert not cycles, f"import cycles between the parts of backend/: {_describe(cycles)}"


def test_cycle_finder_names_a_cycle(tmp_path: Path) -> None:
    """The checks above can fail: a synthetic package with a deferred circular import is caught and named."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .sub import b\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "b.py").write_text("def f():\n    from ..c import g\n")
    (pkg / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import a\n")
    (pkg / "d.py").write_text("import pkg.a\nfrom pkg.sub import b\n")  # imports into the cycle, not part of it
    graph = import_graph(tmp_path, "pkg")
    assert graph["pkg.a"] == {"pkg.sub.b"}
    assert find_cycles(graph) == [["pkg.a", "pkg.sub.b", "pkg.c", "pkg.a"]]
    # Folded onto packages: pkg.sub <-> pkg.a and pkg.c.
    assert find_cycles(package_graph(graph, "pkg")) == [["pkg.a", "pkg.sub", "pkg.c", "pkg.a"]]
    (pkg / "c.py").write_text("import json\n")
    assert find_cycles(import_graph(tmp_path, "pkg")) == []


def test_cycle_finder_sees_package_cycles_that_modules_do_not(tmp_path: Path) -> None:
    """``x.one -> y.two`` and ``y.three -> x.four`` are no module cycle, but x and y need each other."""
    for name in ("x", "y"):
        (tmp_path / "pkg" / name).mkdir(parents=True)
        (tmp_path / "pkg" / name / "__init__.py").write_text("")
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "x" / "one.py").write_text("from pkg.y.two import f\n")
    (tmp_path / "pkg" / "y" / "two.py").write_text("")
    (tmp_path / "pkg" / "y" / "three.py").write_text("from ..x import four\n")
    (tmp_path / "pkg" / "x" / "four.py").write_text("")
    graph = import_graph(tmp_path, "pkg")
    assert find_cycles(graph) == []
    assert find_cycles(package_graph(graph, "pkg")) == [["pkg.x", "pkg.y", "pkg.x"]]


# The layer below the front ends: importing it must not pull in a front end (the ZeroMQ server, the Ray
# executor) nor Ray. Run in a fresh interpreter, so that what other tests imported does not count.
FRONT_ENDS = ("backend.server", "backend.scaleout", "ray")


@pytest.mark.parametrize("module", ["backend.jobstore", "backend.jobs", "backend.jobs.local"])
def test_lower_layers_import_without_the_front_ends(module: str) -> None:
    code = (f"import importlib, json, sys; importlib.import_module({module!r}); "
            "print(json.dumps(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    loaded = json.loads(out.stdout)
    front = [m for m in loaded if any(m == f or m.startswith(f + ".") for f in FRONT_ENDS)]
    assert module in loaded
    assert not front, f"importing {module} imported {front}"


def test_the_import_check_sees_a_front_end() -> None:
    """The check above can fail: importing the server does load backend.server."""
    code = "import backend.server.server, sys; print('backend.server' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"
