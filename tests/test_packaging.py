"""What ``pip install bluesky-tomo-hpc`` brings, checked against the code that imports it.

Every third-party package the package imports is a core dependency in ``pyproject.toml``, or a
package of an extra that only ``bluesky_tomo_hpc.extras`` imports (so its absence is the one line
naming that extra). The built sdist and wheel are checked by ``tools/check_dist.py`` in
``.ci/run``, which also installs the wheel with no extras and runs ``demo`` and ``recon``.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

from bluesky_tomo_hpc.extras import ELSEWHERE, EXTRAS

ROOT = Path(__file__).resolve().parents[1]
PKG_DIR = ROOT / "bluesky_tomo_hpc"
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _name(requirement: str) -> str:
    """The normalised distribution name of a requirement string (PEP 503)."""
    return re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9._-]+", requirement).group(0)).lower()


def third_party_imports() -> dict[str, set[str]]:
    """Top-level module -> files of the package that import it (stdlib and the package excluded)."""
    found: dict[str, set[str]] = {}
    for path in PKG_DIR.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.partition(".")[0]
                if top not in sys.stdlib_module_names and top != PKG_DIR.name:
                    found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


def test_extras_table_matches_pyproject():
    extras = PROJECT["optional-dependencies"]
    for module, (extra, distribution) in EXTRAS.items():
        assert extra in extras, f"{module}: extra {extra!r} is not in pyproject.toml"
        assert _name(distribution) in {_name(r) for r in extras[extra]}, (module, extra, extras[extra])
    core = {_name(r) for r in PROJECT["dependencies"]}
    assert not core & {_name(d) for _, d in EXTRAS.values()}, "a package is both core and an extra"


def test_optional_packages_are_imported_only_through_extras():
    """``import pvaccess`` anywhere else would fail as an internal error without the extra."""
    direct = {top: files for top, files in third_party_imports().items() if top in EXTRAS or top in ELSEWHERE}
    assert direct == {}, "import these with bluesky_tomo_hpc.extras.require (or optional)"


def test_every_other_import_is_a_core_dependency():
    """A package the code imports that the core install lacks fails as a plain user runs it."""
    owners = importlib.metadata.packages_distributions()
    core = {_name(r) for r in PROJECT["dependencies"]}
    undeclared = {}
    for top, files in third_party_imports().items():
        if top in EXTRAS or top in ELSEWHERE:
            continue
        distributions = {_name(d) for d in owners.get(top, [])}
        if not distributions & core:
            undeclared[top] = (sorted(distributions), sorted(files)[:2])
    assert undeclared == {}, "add these to [project] dependencies, or make them an extra"


def test_readme_first_screen_is_what_ci_runs():
    """The set-up command is the user's (no extras) and the test command installs what the tests
    need; ``.ci/run`` runs both (the first from the wheel it built and checked)."""
    blocks = re.findall(r"^```bash\n(.*?)^```", (ROOT / "README.md").read_text(), re.S | re.M)
    setup, tests = blocks[0].strip(), blocks[1].strip()
    assert setup == "python3 -m venv .venv && .venv/bin/pip install . && .venv/bin/bluesky-tomo-hpc demo"
    assert tests == '.venv/bin/pip install -e ".[test]" && .venv/bin/python -m pytest'
    ci = (ROOT / ".ci" / "run").read_text()
    assert '-m pip install -q -e ".[test]"' in ci and ".venv/bin/python -m pytest" in ci
    assert "-m pip install -q --no-compile dist/*.whl" in ci
    assert "bluesky-tomo-hpc demo" in ci and "bluesky-tomo-hpc recon" in ci
