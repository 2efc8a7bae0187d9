"""Check the built sdist and wheel before anyone installs them: metadata and contents.

Usage: ``python tools/check_dist.py dist/`` (run by ``.ci/run`` after ``python -m build``).
Prints one line per artefact and exits 1 naming every problem found. Why: a wheel that builds
can still lack what the code opens at run time (templates, the web page, the 3D viewer), or
declare the wrong dependencies; a user finds out only when a feature fails.
"""

from __future__ import annotations

import re
import sys
import tarfile
import tomllib
import zipfile
from email.parser import Parser
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "bluesky_tomo_hpc"

#: files the package opens at run time (paths inside the package), and the licences it ships
PACKAGE_DATA = (
    "py.typed",
    "jobs/templates/slurm.sbatch",
    "web/static/index.html",
    "web/static/login.html",
    "web/static/app.js",
    "web/static/style.css",
    "web/static/vendor/niivue.umd.js",  # the 3D viewer, committed built (no npm step)
)
#: the licence of the vendored 3D viewer travels with it (BSD-2-Clause asks for its notice)
VENDOR_LICENCE = re.compile(r"web/static/vendor/(LICEN[CS]E|NOTICE|COPYING)[^/]*$")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_names(requirements: list[str]) -> set[str]:
    return {_norm(re.match(r"[A-Za-z0-9._-]+", r).group(0)) for r in requirements}


def check_metadata(text: str, where: str) -> list[str]:
    """The core-metadata fields against ``pyproject.toml``: name, version, licence, Python,
    the core requirements (no extra marker) and every extra."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    meta = Parser().parsestr(text)
    problems = []
    for field, want in (("Name", project["name"]), ("Version", project["version"]),
                        ("Requires-Python", project["requires-python"]),
                        ("License-Expression", project["license"])):
        if meta.get(field) != want:
            problems.append(f"{where}: {field} is {meta.get(field)!r}, pyproject.toml says {want!r}")
    requires = meta.get_all("Requires-Dist") or []
    core = _requirement_names([r for r in requires if "extra ==" not in r])
    want_core = _requirement_names(project["dependencies"])
    if core != want_core:
        problems.append(f"{where}: core requirements differ from pyproject.toml: "
                        f"missing {sorted(want_core - core)}, extra {sorted(core - want_core)}")
    extras = set(meta.get_all("Provides-Extra") or [])
    if extras != set(project["optional-dependencies"]):
        problems.append(f"{where}: extras {sorted(extras)} differ from pyproject.toml's "
                        f"{sorted(project['optional-dependencies'])}")
    if "License-File" not in meta:
        problems.append(f"{where}: no License-File")
    if not (meta.get_payload() or "").strip():
        problems.append(f"{where}: no long description (the README)")
    return problems


def _contents(names: list[str], prefix: str, where: str) -> list[str]:
    inside = {n[len(prefix):] for n in names if n.startswith(prefix)}
    problems = [f"{where}: {PACKAGE}/{p} is missing" for p in PACKAGE_DATA if p not in inside]
    if not any(VENDOR_LICENCE.match(n) for n in inside):
        problems.append(f"{where}: no licence file beside the 3D viewer in {PACKAGE}/web/static/vendor/")
    stray = sorted(n for n in inside if "__pycache__" in n or n.endswith((".pyc", ".partial")))
    if stray:
        problems.append(f"{where}: build leftovers packed: {stray[:5]}")
    return problems


def check_wheel(path: Path) -> list[str]:
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        dist_info = next(n.split("/")[0] for n in names if n.split("/")[0].endswith(".dist-info"))
        problems = check_metadata(z.read(f"{dist_info}/METADATA").decode(), path.name)
        if f"{dist_info}/licenses/LICENSE" not in names:
            problems.append(f"{path.name}: no {dist_info}/licenses/LICENSE")
        entry_points = z.read(f"{dist_info}/entry_points.txt").decode()
        if "bluesky-tomo-hpc = bluesky_tomo_hpc.cli.main:main" not in entry_points:
            problems.append(f"{path.name}: no bluesky-tomo-hpc console script")
        top = {n.split("/")[0] for n in names} - {dist_info}
        if top != {PACKAGE}:
            problems.append(f"{path.name}: top-level entries {sorted(top)}; only {PACKAGE} belongs there")
    return problems + _contents(names, f"{PACKAGE}/", path.name)


def check_sdist(path: Path) -> list[str]:
    with tarfile.open(path) as t:
        names = t.getnames()
        root = names[0].split("/")[0]
        problems = check_metadata(t.extractfile(f"{root}/PKG-INFO").read().decode(), path.name)
    for needed in ("pyproject.toml", "README.md", "LICENSE"):
        if f"{root}/{needed}" not in names:
            problems.append(f"{path.name}: {needed} is missing")
    return problems + _contents(names, f"{root}/{PACKAGE}/", path.name)


def main(argv: list[str]) -> int:
    folder = Path(argv[0]) if argv else ROOT / "dist"
    wheels, sdists = sorted(folder.glob("*.whl")), sorted(folder.glob("*.tar.gz"))
    if len(wheels) != 1 or len(sdists) != 1:
        print(f"{folder}: expected one wheel and one sdist, found {[p.name for p in wheels + sdists]}")
        return 1
    problems = []
    for path, check in ((sdists[0], check_sdist), (wheels[0], check_wheel)):
        found = check(path)
        problems += found
        print(f"{path.name}: {path.stat().st_size / 1e6:.1f} MB, "
              f"{'ok' if not found else f'{len(found)} problem(s)'}")
    for problem in problems:
        print(f"  {problem}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
