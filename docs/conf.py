"""Sphinx configuration: MyST Markdown pages, autodoc for the API, generated CLI and settings tables."""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "_ext"))

import bluesky_tomo_hpc  # noqa: E402

project = "bluesky_tomo_hpc"
author = "bluesky_tomo_hpc developers"
copyright = "2026, bluesky_tomo_hpc developers"
release = version = bluesky_tomo_hpc.__version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    "sphinx_copybutton",
    "tomo_docs",
]

source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "README.md"]
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

autodoc_default_options = {"members": True, "show-inheritance": False}
autodoc_member_order = "bysource"
autodoc_typehints = "description"
napoleon_google_docstring = True
napoleon_numpy_docstring = False

html_theme = "furo"
html_title = f"bluesky_tomo_hpc {release}"
html_static_path: list[str] = []
copybutton_prompt_text = r"\$ |>>> "
copybutton_prompt_is_regexp = True
