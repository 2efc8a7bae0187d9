"""The feature notebook (sample metadata, time series, steering, SciCat) runs as shipped."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.slow
def test_feature_notebook_executes(tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(EXAMPLES / "features.ipynb", as_version=4)
    assert not any(cell.get("outputs") for cell in nb.cells), "commit the notebook without outputs"
    env_backup = dict(os.environ)
    for key in [k for k in os.environ if k.startswith("BLUESKY_TOMO_HPC")] + ["MPLBACKEND"]:
        del os.environ[key]
    os.environ["IPYTHONDIR"] = str(tmp_path / "ipython")
    try:
        nbclient.NotebookClient(nb, kernel_name="python3", timeout=300,
                                resources={"metadata": {"path": str(tmp_path)}}).execute()
    finally:
        os.environ.clear()
        os.environ.update(env_backup)
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "refused: sample metadata refused: conditions.temperature" in text, text
    assert "runs in Tiled after the refusal: 0" in text and "found by material: True" in text, text
    assert "series stopped after 3 of 5 scans" in text, text
    assert "4D volume (t, z, y, x): (3, 8, 48, 48)" in text, text
    assert any(o.output_type == "display_data" and "image/png" in o.get("data", {}) for o in outputs)
    assert "raw demo/" in text and "derived demo/" in text and "derived links to: ['demo/" in text, text
