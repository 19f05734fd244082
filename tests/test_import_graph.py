"""The import graph of mx8, mx8_common, mx8_coordinator and mx8_agent has no cycles, and the
trainer API reaches no daemon package.

Every import statement anywhere in a module counts: top level, inside functions (lazy),
under ``if TYPE_CHECKING:``. ``from a.b import c`` is an edge to ``a.b.c`` when that is a
module, else to ``a.b``; like import-linter, importing ``a.b.c`` is not counted as importing
the package ``a.b`` itself. ``lint-imports`` (scripts/test.sh) holds the layer contracts;
this is the whole-graph check that also sees cycles inside one package.
"""

from __future__ import annotations

import ast
import importlib.util
from collections import deque
from collections.abc import Callable
from pathlib import Path

PACKAGES = ("mx8", "mx8_common", "mx8_coordinator", "mx8_agent")
DAEMONS = ("mx8_coordinator", "mx8_agent")

Graph = dict[str, set[str]]


def _modules(root: Path, package: str) -> dict[str, tuple[Path, bool]]:
    """Dotted name -> (file, is_package) of every module of ``package`` under ``root``."""
    out = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts.pop()
        out[".".join(parts)] = (path, is_package)
    return out


def import_graph(root: Path, packages: tuple[str, ...]) -> Graph:
    """Module -> the modules of ``packages`` it imports, from every import statement."""
    modules: dict[str, tuple[Path, bool]] = {}
    for package in packages:
        modules.update(_modules(root, package))

    def known(name: str) -> str | None:
        # The longest prefix that is one of our modules (``a.b.func`` -> ``a.b``).
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: Graph = {name: set() for name in modules}
    for name, (path, is_package) in modules.items():
        here = name if is_package else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base_parts = here.split(".")[: len(here.split(".")) - node.level + 1]
                    base = ".".join(base_parts + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                targets = [f"{base}.{alias.name}" for alias in node.names] or [base]
            for target in targets:
                found = known(target)
                if found is not None and found != name:
                    graph[name].add(found)
    return graph


def cycles(graph: Graph) -> list[list[str]]:
    """One cycle (``[a, b, ..., a]``) per strongly connected component that has one."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def visit(start: str) -> None:
        # Iterative Tarjan: (node, iterator over its successors).
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, successors = work[-1]
            for nxt in successors:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph[nxt]))))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = set()
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.add(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        components.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    out = []
    for component in components:
        first = min(component)
        inside = {n: graph[n] & component for n in component}
        closes = {n for n in component if first in graph[n]}
        out.append([*_path(inside, first, closes.__contains__), first])
    return out


def _path(graph: Graph, start: str, is_goal: Callable[[str], bool]) -> list[str]:
    """The shortest path from ``start`` to a node where ``is_goal(node)`` (breadth first)."""
    came_from: dict[str, str | None] = {start: None}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        if is_goal(node):
            path = [node]
            while (prev := came_from[path[-1]]) is not None:
                path.append(prev)
            return path[::-1]
        for nxt in sorted(graph.get(node, ())):
            if nxt not in came_from:
                came_from[nxt] = node
                queue.append(nxt)
    return []


def _installed_root() -> Path:
    # The tree the tests import (the editable install), not a path relative to tests/.
    spec = importlib.util.find_spec("mx8")
    assert spec is not None and spec.origin is not None
    return Path(spec.origin).parent.parent


def test_import_graph_has_no_cycles() -> None:
    found = cycles(import_graph(_installed_root(), PACKAGES))
    assert not found, "import cycles:\n" + "\n".join(" -> ".join(c) for c in found)


def test_import_graph_trainer_api_reaches_no_daemon_package() -> None:
    graph = import_graph(_installed_root(), PACKAGES)
    for name in sorted(n for n in graph if n.split(".")[0] == "mx8"):
        path = _path(graph, name, lambda n: n.split(".")[0] in DAEMONS)
        assert not path, "the trainer API imports a daemon: " + " -> ".join(path)


def test_import_graph_counts_lazy_and_type_checking_imports() -> None:
    graph = import_graph(_installed_root(), PACKAGES)
    # mx8.load imports the distributed loader inside the function; mx8/__init__ names
    # DataLoader only under TYPE_CHECKING (it is resolved lazily at run time).
    assert "mx8._distributed" in graph["mx8.loader"]
    assert "mx8.data_loader" in graph["mx8"]


def test_import_graph_finds_a_cycle_through_a_lazy_import(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg.sub import b\n")
    (pkg / "sub" / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..c import C\n"
    )
    (pkg / "c.py").write_text("def f():\n    from . import a\n")
    graph = import_graph(tmp_path, ("pkg",))
    assert graph["pkg.a"] == {"pkg.sub.b"} and graph["pkg.sub.b"] == {"pkg.c"}
    assert cycles(graph) == [["pkg.a", "pkg.sub.b", "pkg.c", "pkg.a"]]
