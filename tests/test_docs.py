"""The documentation builds without a single warning, and its tutorial runs as written."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
TUTORIAL = DOCS / "tutorials" / "first-scan.md"
FENCE = re.compile(r"^```python[^\n]*\n(.*?)^```\s*$", re.S | re.M)


def python_blocks(markdown: str) -> list[str]:
    """The ```python fenced blocks of a MyST page, in order (other languages are not run)."""
    return [m.group(1) for m in FENCE.finditer(markdown)]


def clean_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BLUESKY_TOMO_HPC")}
    env.update(MPLBACKEND="Agg", IPYTHONDIR=str(tmp_path / "ipython"))
    return env


def test_python_blocks_are_found():
    blocks = python_blocks("text\n```python\na = 1\n```\n```bash\nls\n```\n```python\nb = 2\n```\n")
    assert blocks == ["a = 1\n", "b = 2\n"]


@pytest.mark.slow
def test_sphinx_builds_without_warnings(tmp_path):
    pytest.importorskip("sphinx")
    pytest.importorskip("myst_parser")
    proc = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-j", "auto", "-b", "html", "-d",
         str(tmp_path / "doctrees"), str(DOCS), str(tmp_path / "html")],
        cwd=ROOT, env=clean_env(tmp_path), capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    html = tmp_path / "html"
    cli = (html / "reference" / "cli.html").read_text()
    # generated from the parser, not copied: every subcommand's help is there
    from bluesky_tomo_hpc.cli.main import build_parser

    for action in build_parser()._subparsers._group_actions:
        for name in action.choices:
            assert f"bluesky-tomo-hpc {name}" in cli, name
    config = (html / "reference" / "config.html").read_text()
    assert "BLUESKY_TOMO_HPC__JOBS__EXECUTOR" in config
    assert "BLUESKY_TOMO_HPC__RECON__FILTER_NAME" in config
    assert (html / "tutorials" / "first-scan.html").is_file()


@pytest.mark.slow
def test_tutorial_runs_as_written(tmp_path):
    blocks = python_blocks(TUTORIAL.read_text())
    assert len(blocks) >= 4
    script = tmp_path / "tutorial.py"
    script.write_text("\n".join(blocks))
    work = tmp_path / "work"
    work.mkdir()
    proc = subprocess.run([sys.executable, str(script)], cwd=work, env=clean_env(tmp_path),
                          capture_output=True, text=True, timeout=240)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "Traceback" not in out, out
    centre = re.search(r"centre found: ([\d.]+) px; true centre: ([\d.]+)", proc.stdout)
    assert centre, out
    assert abs(float(centre.group(1)) - float(centre.group(2))) < 1.0
    assert "volume: (32, 64, 64) float32" in proc.stdout
    assert "1 reconstructed" in proc.stdout, out  # the re-processing step
    assert list((work / "tomo_data" / "previews").glob("*.png")), "no preview picture written"
    assert (work / "tomo_data" / "tiled" / "catalog.db").is_file()
