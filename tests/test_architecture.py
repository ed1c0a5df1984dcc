"""The import structure of samft: which packages may import which, and no import cycles.

Read from the source with ``ast`` (nothing is imported), so the rules hold for every import,
including the lazy ones inside functions. The layers, bottom up:

* leaves, importing nothing from samft but ``errors`` (the base class of user errors, itself importing
  nothing): ``registry``, ``checks`` (option checks), ``archs`` (model sizes), ``prompting`` (prompt labels
  and samplers), ``signed_distance`` (Kervadec's distance map), ``safe_load``, ``entry`` (runs a command);
* the library: ``models``, ``data``, ``schedules``, ``losses`` (may use ``schedules``),
  ``weighting`` (may use ``schedules``), ``metrics``;
* the application: ``engine``, ``tracking``, ``config``, ``export``, ``cli``, ``predict``. Its commands
  import each other's modules lazily (training validates with the everything sweep, which reads images
  with predict's reader), so no module imports a command's entry point: they all run through ``entry``.

When a rule fails, do not add an exception here: move what both sides need into a module below both
(as ``samft.prompting`` holds the prompt labels and samplers that data, the forward pass and the engine use).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "samft"

LEAVES = ("samft.archs", "samft.checks", "samft.entry", "samft.errors", "samft.prompting", "samft.registry",
          "samft.safe_load", "samft.signed_distance")
ROOT_ERROR = "samft.errors"  # the one module leaves may import
APPLICATION = ("samft.cli", "samft.config", "samft.engine", "samft.export", "samft.predict", "samft.predict_cli",
               "samft.tracking")
#: package -> the samft packages it must not import (besides the application, which no library package imports)
FORBIDDEN = {
    "samft.models": ("samft.data", "samft.losses", "samft.schedules", "samft.weighting", "samft.metrics"),
    "samft.data": ("samft.losses", "samft.models", "samft.schedules", "samft.weighting", "samft.metrics"),
    "samft.losses": ("samft.data", "samft.models", "samft.weighting", "samft.metrics"),
    "samft.schedules": ("samft.data", "samft.losses", "samft.models", "samft.weighting", "samft.metrics"),
    "samft.weighting": ("samft.data", "samft.losses", "samft.models", "samft.metrics"),
    "samft.metrics": ("samft.data", "samft.losses", "samft.models", "samft.schedules", "samft.weighting"),
}


class Import(NamedTuple):
    source: str  # the importing module
    target: str  # the samft module (or package) imported
    line: int
    lazy: bool  # inside a function: runs when called, not when the module is imported

    def __str__(self) -> str:
        kind = "lazily " if self.lazy else ""
        return f"{self.source} {kind}imports {self.target} (samft/{_path(self.source)}:{self.line})"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _path(module: str) -> str:
    return str(MODULES[module].relative_to(PACKAGE))


def _known(name: str) -> str:
    """The samft module a dotted name lives in (``samft.prompting.PAD`` -> ``samft.prompting``)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name


def _imports_of(module: str) -> Iterator[Import]:
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]

    def visit(node: ast.AST, lazy: bool) -> Iterator[Import]:
        for child in ast.iter_child_nodes(node):
            inner = lazy or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            names: list[str] = []
            if isinstance(child, ast.Import):
                names = [alias.name for alias in child.names]
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:  # relative: from the package, one level up per extra dot
                    anchor = package.split(".")[: len(package.split(".")) - (child.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                # ``from pkg import mod`` imports the module pkg.mod; ``from mod import name``, mod
                names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in child.names]
            for name in names:
                target = _known(name) if name.split(".")[0] == "samft" else ""
                if target and target != module:
                    yield Import(module, target, child.lineno, lazy)
            yield from visit(child, inner)

    yield from visit(ast.parse(path.read_text(encoding="utf-8"), str(path)), False)


IMPORTS = [imp for module in MODULES for imp in _imports_of(module)]


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _cycles(imports: list[Import]) -> list[list[str]]:
    """The import cycles (strongly connected components of more than one module), Tarjan's algorithm."""
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for imp in imports:
        graph[imp.source].add(imp.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
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
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return found


def test_the_parser_sees_module_level_and_lazy_imports():
    """Guards the guard: the rules below would pass vacuously on a parser that finds nothing."""
    edges = {(i.source, i.target, i.lazy) for i in IMPORTS}
    assert ("samft.models.forward", "samft.prompting", False) in edges
    assert ("samft.losses", "samft.losses.boundary", False) in edges  # from samft.losses import boundary
    assert ("samft.cli", "samft.engine.trainer", True) in edges  # inside a function
    assert all(i.target in MODULES for i in IMPORTS)


@pytest.mark.parametrize("leaf", LEAVES)
def test_leaf_modules_import_nothing_from_samft(leaf):
    assert leaf in MODULES
    found = list(dict.fromkeys(str(i) for i in IMPORTS if i.source == leaf and i.target != ROOT_ERROR))
    assert not found, (f"{leaf} is a leaf every package may import, so it imports nothing from samft "
                       f"but {ROOT_ERROR}: {found}")
    assert not [i for i in IMPORTS if i.source == ROOT_ERROR]


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_library_packages_import_only_downwards(package):
    forbidden = FORBIDDEN[package] + APPLICATION
    found = list(dict.fromkeys(str(i) for i in IMPORTS
                               if _within(i.source, package) and any(_within(i.target, f) for f in forbidden)))
    assert not found, (
        f"{package} must not import {', '.join(forbidden)}; move what both sides need into a module below "
        "both (e.g. samft/prompting.py, samft/checks.py, samft/signed_distance.py):\n" + "\n".join(found)
    )


def test_no_import_cycle_at_module_level():
    cycles = _cycles([i for i in IMPORTS if not i.lazy])
    assert not cycles, f"import cycles among samft modules: {cycles}"


def test_no_import_cycle_even_through_lazy_imports():
    """A lazy import hides a cycle only until someone moves it to the top, so there is none at all,
    in the library or the application (once cli -> engine.trainer -> engine.everything -> predict -> cli)."""
    cycles = _cycles(IMPORTS)
    assert not cycles, f"import cycles among samft modules (counting lazy imports): {cycles}"


def test_the_cycle_finder_sees_a_lazy_cycle():
    """Guards the guard: the cycle that predict's lazy import of the cli once closed is found."""
    planted = Import("samft.predict", "samft.cli", 1, True)
    assert ["samft.cli", "samft.engine.everything", "samft.engine.trainer", "samft.predict"] in _cycles(
        [*IMPORTS, planted])
