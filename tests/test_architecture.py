"""The package's shape, checked: unique module names, no import cycles, layers that only look down.

Layers, lowest first: ``extras`` (the one way to import an optional package), ``model``/
``settings``/``metadata`` and ``engine`` (pure arrays; no bluesky, no Tiled), ``sources`` and
``sinks`` (the stream), ``results``, ``batch`` (the reconstruction program an HPC job runs),
``jobs`` (tracking those jobs), ``publishing`` (SciCat) and ``health`` (operations checks),
``steering`` and ``plans`` (what a RunEngine runs, reading results), ``live`` (wiring of a scan),
``web`` (the page), ``cli``. A module may import its own layer and the ones below; imports
inside functions count too, because a lazy import that runs back up is still a cycle a reader has to
untangle. No module grows past 500 lines: past that it mixes concerns.
"""

from __future__ import annotations

import ast
import functools
from collections import Counter
from pathlib import Path

import pytest

PKG_DIR = Path(__file__).resolve().parents[1] / "bluesky_tomo_hpc"
PKG = PKG_DIR.name

#: what each top-level part of the package may import from the package (besides itself and
#: ``extras``, the one way to import an optional package: the floor every layer stands on)
ALLOWED = {
    "extras": set(),
    "model": set(),
    "untrusted": {"model"},
    "engine": {"model"},
    "settings": {"model", "engine"},
    "metadata": {"model", "engine"},
    "sim": {"model", "engine"},
    "sources": {"model", "engine", "sinks", "settings"},
    "sinks": {"model", "engine", "settings", "results"},
    "results": {"model", "engine", "settings", "metadata"},
    "batch": {"model", "engine", "settings", "metadata", "sources", "results"},
    "jobs": {"model", "engine", "settings", "metadata", "sources", "results", "batch"},
    "publishing": {"model", "engine", "settings", "metadata", "results", "jobs"},
    "health": {"model", "engine", "settings", "metadata", "results", "batch", "jobs"},
    "steering": {"model", "engine", "settings", "metadata", "results", "sinks"},  # sinks: the preview stream
    "plans": {"model", "engine", "settings", "metadata", "sim", "results", "steering"},
    "live": {"model", "engine", "settings", "metadata", "sources", "sinks", "results", "batch", "jobs",
             "publishing", "sim"},
    "web": {"model", "engine", "settings", "metadata", "sources", "sinks", "results", "batch", "jobs",
            "health"},
    "cli": {"model", "engine", "settings", "metadata", "sources", "sinks", "results", "batch", "jobs",
            "publishing", "health", "live", "sim", "web"},
    "__init__": {"engine", "settings", "live", "model"},
}
#: the rules for what comes from outside and goes outside (untrusted files, masked secrets): every
#: part above the model follows them
FROM_OUTSIDE = "untrusted"
#: packages the engine must never import: it is pure array code
FOREIGN_TO_ENGINE = ("bluesky", "tiled", "event_model", "ophyd", "ophyd_async", "zmq", "pvapy", "pvaccess")


@functools.cache
def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PKG_DIR.rglob("*.py")):
        rel = path.relative_to(PKG_DIR.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imports_of(name: str, path: Path) -> set[str]:
    """Absolute names of everything ``name`` imports, at any depth of the file."""
    is_pkg = path.name == "__init__.py"
    package = name if is_pkg else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            found.add(mod)
            found.update(f"{mod}.{alias.name}" for alias in node.names)
    return found


@functools.cache
def internal_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports."""
    mods = modules()
    return {name: {t for t in imports_of(name, path) if t in mods and t != name}
            for name, path in mods.items()}


def test_module_names_are_unique() -> None:
    names = Counter(p.stem for p in PKG_DIR.rglob("*.py") if p.stem != "__init__")
    assert [n for n, c in names.items() if c > 1] == []


def test_no_loose_modules_at_the_root() -> None:
    loose = sorted(p.name for p in PKG_DIR.glob("*.py"))
    assert loose == ["__init__.py", "model.py", "settings.py"]


#: the longest a module may grow: past it, a module mixes concerns and a newcomer has to search it
MAX_MODULE_LINES = 500


def test_no_module_over_the_line_limit() -> None:
    long = {name: n for name, path in modules().items()
            if (n := len(path.read_text().splitlines())) > MAX_MODULE_LINES}
    assert long == {}, f"split these by concern (limit {MAX_MODULE_LINES} lines): {long}"


def test_no_import_cycles() -> None:
    graph = internal_graph()
    # packages' __init__ modules re-export lazily; a child importing its parent package is not a cycle
    def edges(mod: str) -> set[str]:
        return {t for t in graph[mod] if not mod.startswith(t + ".")}

    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(mod: str) -> None:
        state[mod] = 1
        stack.append(mod)
        for t in edges(mod):
            if state.get(t) == 1:
                cycles.append(stack[stack.index(t):] + [t])
            elif t not in state:
                visit(t)
        stack.pop()
        state[mod] = 2

    for mod in graph:
        if mod not in state:
            visit(mod)
    assert cycles == []


def _part(mod: str) -> str:
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


@pytest.mark.parametrize("mod", sorted(modules()))
def test_layers_only_look_down(mod: str) -> None:
    part = _part(mod)
    allowed = ALLOWED[part] | {part, "extras"} | ({FROM_OUTSIDE} if part != "model" else set())
    wrong = sorted(t for t in internal_graph()[mod] if _part(t) not in allowed and t != PKG)
    assert wrong == [], f"{mod} ({part}) imports from a layer above it: {wrong}"


@pytest.mark.parametrize("mod", sorted(m for m in modules() if _part(m) == "engine"))
def test_engine_is_pure_array_code(mod: str) -> None:
    foreign = sorted(t for t in imports_of(mod, modules()[mod]) if t.split(".")[0] in FOREIGN_TO_ENGINE)
    assert foreign == []
