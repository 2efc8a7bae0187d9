"""The examples run as shipped: the two scripts, and the notebook executed by a real kernel."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def clean_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BLUESKY_TOMO_HPC")}
    env.update(MPLBACKEND="Agg", IPYTHONDIR=str(tmp_path / "ipython"))
    return env


def last_json(stdout: str) -> dict:
    """The JSON object a script prints last (it may log before it)."""
    start = stdout.rindex("\n{") + 1 if "\n{" in stdout else stdout.index("{")
    return json.loads(stdout[start:])


def test_reconstruct_file_finds_the_tooth_centre(tmp_path, shared_data):
    tooth = shared_data / "tomopy_tooth" / "tooth.h5"
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / "reconstruct_file.py"), str(tooth), "--out", str(tmp_path / "rec")],
        env=clean_env(tmp_path), capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = last_json(proc.stdout)
    assert abs(summary["center"] - 296) <= 1.0  # peers: 296 +/- 1 (see shared/data/README.md)
    assert summary["shape"] == [2, 640, 640]
    import zarr

    vol = zarr.open_array(str(tmp_path / "rec" / "volume.ome.zarr" / "0"), mode="r")
    assert vol.shape == (2, 640, 640) and float(abs(vol[1]).max()) > 0
    prov = json.loads((tmp_path / "rec" / "provenance.json").read_text())
    assert prov["params_hash"] == summary["params_hash"]
    assert Path(summary["png"]).stat().st_size > 0


@pytest.mark.slow
def test_subscribe_run_engine_script_reconstructs_into_tiled(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / "subscribe_run_engine.py"), "--data-dir", str(tmp_path / "data"),
         "--projections", "60", "--shape", "24x48"],
        env=clean_env(tmp_path), cwd=tmp_path, capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = last_json(proc.stdout)
    assert summary["volume_shape"] == [24, 48, 48]
    assert abs(summary["center"] - summary["true_center"]) < 1.0
    assert Path(summary["preview_png"]).is_file()


@pytest.mark.slow
def test_notebook_executes_and_shows_its_results(tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(EXAMPLES / "tomo_demo.ipynb", as_version=4)
    for cell in nb.cells:
        assert not cell.get("outputs"), "commit the notebook without outputs"
    env_backup = dict(os.environ)
    os.environ.update(clean_env(tmp_path))
    for key in [k for k in os.environ if k.startswith("BLUESKY_TOMO_HPC")] + ["MPLBACKEND"]:
        del os.environ[key]  # the kernel's own inline backend shows the figures
    try:
        client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=180,
                                         resources={"metadata": {"path": str(tmp_path)}})
        client.execute()
    finally:
        os.environ.clear()
        os.environ.update(env_backup)
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    images = [o for o in outputs if o.output_type == "display_data" and "image/png" in o.get("data", {})]
    assert len(images) >= 3, text  # live preview, saved orthoslices, comparison with the phantom
    assert "live preview updates; the last one final: True" in text, text
    assert "errors: []" in text, text
    assert "2 reconstructed" in text, text
    corr = float(text.split("correlation with the phantom (middle slice):")[1].split()[0])
    assert corr > 0.7, text
