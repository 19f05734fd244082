"""pyproject.toml declares every third-party package the code imports.

The four packages' module-level imports must be core dependencies (a plain ``pip install
mx8`` must import); imports made lazily (inside a function, or guarded by ``except
ImportError``) may come from an extra. ``scripts/``, ``benchmarks/`` and ``tests/`` may also
use the extras, and the benchmark baselines ``scripts/install_bench.sh`` installs.
"""

from __future__ import annotations

import ast
import functools
import importlib.metadata
import re
import sys
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("mx8", "mx8_common", "mx8_coordinator", "mx8_agent")
TOOLS = ("scripts", "benchmarks", "tests")
#: Import names that are this repository's own code.
FIRST_PARTY = {*PACKAGES, "benchmarks", "scripts", "support", "conftest"}
#: Baselines that are no extra (their pins clash with ours): import name -> what
#: install_bench.sh installs for it (the CRT client comes with s3torchconnector).
BENCH_SCRIPT = {
    "s3torchconnector": "s3torchconnector",
    "s3torchconnectorclient": "s3torchconnector",
    "streaming": "mosaicml-streaming",
}


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _names(requirements: list[str]) -> set[str]:
    return {_canonical(re.match(r"[A-Za-z0-9._-]+", r).group(0)) for r in requirements}  # type: ignore[union-attr]


def _declared() -> tuple[set[str], set[str]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = {n for reqs in project["optional-dependencies"].values() for n in _names(reqs)}
    return _names(project["dependencies"]), extras


def _catches_import_error(node: ast.Try) -> bool:
    for handler in node.handlers:
        names = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
        if any(isinstance(n, ast.Name) and n.id.endswith("ImportError") for n in names):
            return True
    return False


def _lazy(node: ast.AST) -> bool:
    """A body that runs later (a function) or only when an import may fail or type-checks."""
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
        return True
    if isinstance(node, ast.Try):
        return _catches_import_error(node)
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _imports(tree: ast.AST, eager: bool = True) -> Iterator[tuple[str, bool, int]]:
    """``(top-level module, imported eagerly at module load, line)`` for every import."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name.partition(".")[0], eager, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0 and node.module:
                yield node.module.partition(".")[0], eager, node.lineno
        elif _lazy(node):
            yield from _imports(node, eager=False)
        else:
            yield from _imports(node, eager)


def _third_party(folders: tuple[str, ...]) -> Iterator[tuple[str, bool, str]]:
    for folder in folders:
        for path in sorted((ROOT / folder).rglob("*.py")):
            if "/proto/" in path.as_posix():
                continue
            for module, eager, line in _imports(ast.parse(path.read_text())):
                if module in sys.stdlib_module_names or module in FIRST_PARTY:
                    continue
                yield module, eager, f"{path.relative_to(ROOT)}:{line}"


#: Lazy imports of an extra the test environment does not install: import name ->
#: the distribution that provides it (checked against the extras when not installed).
OPTIONAL_EXTRAS = {"azure": "azure-identity"}


@functools.cache
def _distributions(module: str) -> frozenset[str]:
    """The installed distributions that provide import name ``module``."""
    found = _packages_distributions().get(module, [])
    if not found and module in OPTIONAL_EXTRAS:
        found = [OPTIONAL_EXTRAS[module]]
    return frozenset(_canonical(d) for d in found)


@functools.cache
def _packages_distributions() -> Mapping[str, list[str]]:
    return importlib.metadata.packages_distributions()


def test_dependencies_every_import_of_the_packages_is_declared() -> None:
    core, extras = _declared()
    problems = []
    for module, eager, where in _third_party(PACKAGES):
        allowed = core if eager else core | extras
        dists = _distributions(module)
        if not dists & allowed:
            need = "dependencies" if eager else "dependencies or an extra"
            problems.append(
                f"{where}: imports {module} ({sorted(dists) or 'not installed'}), "
                f"not in pyproject {need}"
            )
    assert not problems, "\n".join(problems)


def test_dependencies_every_import_of_scripts_benchmarks_and_tests_is_declared() -> None:
    core, extras = _declared()
    bench_script = (ROOT / "scripts/install_bench.sh").read_text()
    problems = []
    for module, _eager, where in _third_party(TOOLS):
        if module in BENCH_SCRIPT:
            if BENCH_SCRIPT[module] not in bench_script:
                problems.append(f"{where}: {module} is not installed by install_bench.sh")
            continue
        dists = _distributions(module)
        if not dists & (core | extras):
            problems.append(
                f"{where}: imports {module} ({sorted(dists) or 'not installed'}), "
                "declared neither as a dependency nor in an extra"
            )
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("import yaml\n", [("yaml", True)]),
        ("def f():\n    import yaml\n", [("yaml", False)]),
        ("try:\n    import torch\nexcept ImportError:\n    pass\n", [("torch", False)]),
        ("try:\n    import torch\nexcept OSError:\n    pass\n", [("torch", True)]),
        ("if TYPE_CHECKING:\n    from torch import Tensor\n", [("torch", False)]),
        ("from . import x\nfrom .y import z\n", []),
    ],
)
def test_dependencies_import_walk_tells_eager_from_lazy(
    source: str, expected: list[tuple[str, bool]]
) -> None:
    assert [(m, e) for m, e, _ in _imports(ast.parse(source))] == expected
