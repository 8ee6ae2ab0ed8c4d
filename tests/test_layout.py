"""The shape docs/architecture.md promises: no import circles, small modules.

Imports are read from the source (ast), module level and function level alike: an import
inside a function is still a dependency, only a later one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("gateway", "routing", "dedup", "bot_bridge", "native")
# The Cython listener and the demo pages' JavaScript are allowed to be longer (issue 11).
LONG_ALLOWED = {"gateway/listener.pyx"}
MAX_LINES = 400


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            rel = path.relative_to(ROOT).with_suffix("")
            parts = list(rel.parts)
            if parts[-1] == "__init__":
                parts.pop()
            mods[".".join(parts)] = path
    return mods


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Project modules `name` imports (a package's __init__ counts as the package)."""
    is_pkg = path.name == "__init__.py"
    base = name.split(".") if is_pkg else name.split(".")[:-1]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                pkg = base[: len(base) - node.level + 1]
                mod = ".".join(pkg + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            targets = [f"{mod}.{a.name}" for a in node.names] + [mod]
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                out.add(t)
    return out


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    known = set(mods)
    graph = {name: _imports(name, path, known) for name, path in mods.items()}
    # A package's __init__ re-exports its modules; importing a module of it does not import a sibling's
    # importers, so edges from a module to its own package's __init__ are not circles of concern.
    for name, deps in graph.items():
        deps.discard(name.rpartition(".")[0])
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state and (found := visit(m)):
                return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (found := visit(n)):
            return found
    return None


def test_no_import_circles_between_modules():
    assert _cycle(_graph()) is None


def test_no_import_circles_between_packages():
    pkgs: dict[str, set[str]] = {}
    for name, deps in _graph().items():
        top = name.split(".")[0]
        pkgs.setdefault(top, set()).update(d.split(".")[0] for d in deps if d.split(".")[0] != top)
    assert _cycle(pkgs) is None, pkgs


def test_the_cycle_finder_finds_one():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("pkg", PACKAGES)
def test_modules_are_small(pkg):
    long = {}
    for path in list((ROOT / pkg).rglob("*.py")) + list((ROOT / pkg).rglob("*.pyx")):
        rel = str(path.relative_to(ROOT))
        n = len(path.read_text().splitlines())
        if n > MAX_LINES and rel not in LONG_ALLOWED:
            long[rel] = n
    assert long == {}
