"""The beamline IPython profile, started for real: IPython runs the startup files, a simulated
scan goes through the RunEngine, and the reconstruction is found in the Tiled catalog after
IPython has exited (so it was written, not only held in memory)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
PROFILE = ROOT / "profile_collection"
EXPECTED_PLANS = {"tomo_scan", "tomo_fly_scan", "tomo_dark_flat", "tomo_dark_flat_and_scan"}


def profile_env(tmp_path: Path) -> dict[str, str]:
    """Settings through the environment only, as on a beamline; nothing from the developer's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BLUESKY_TOMO_HPC")}
    env.update(
        IPYTHONDIR=str(tmp_path / "ipython"),
        MPLBACKEND="Agg",
        BLUESKY_TOMO_HPC__DATA_DIR=str(tmp_path / "data"),
        BLUESKY_TOMO_HPC__JOBS__EXECUTOR="none",
        BLUESKY_TOMO_PROGRESS="0",
        TOMO_SIM_SHAPE="32x64",
        BEAMLINE_ID="test-tomo",
    )
    return env


def copy_profile(tmp_path: Path) -> Path:
    """IPython writes history and security files into its profile: run a copy, not the repo."""
    dest = tmp_path / "profile_collection"
    shutil.copytree(PROFILE, dest, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


SCAN = """
import json
(uid,) = RE(tomo_scan(det, stage, num_projections=36, num_darks=2, num_flats=2))
ok = tomo.wait(120)
print("RESULT " + json.dumps({"uid": uid, "ok": ok, "center_px": sim_beamline.rotation_center_px,
                              "beamline_id": RE.md["beamline_id"]}))
"""


@pytest.mark.slow
def test_ipython_profile_reconstructs_a_scan_into_tiled(tmp_path):
    profile = copy_profile(tmp_path)
    env = profile_env(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "IPython", f"--profile-dir={profile}", "--no-banner", "--colors=NoColor",
         "--HistoryManager.enabled=False", "-c", SCAN],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=240,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert "Traceback" not in output, output
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert lines, output
    result = json.loads(lines[-1][len("RESULT "):])
    assert result["ok"] is True
    assert result["beamline_id"] == "test-tomo"

    # IPython has exited (and closed its server): open the same catalog afresh, as
    # `bluesky-tomo-hpc serve --data-dir` does (volumes registered in place live in the data folder)
    from bluesky_tomo_hpc.results.tiled_results import find_reconstructions
    from bluesky_tomo_hpc.results.tiled_server import EmbeddedTiledServer

    with EmbeddedTiledServer(tmp_path / "data" / "tiled", readable_storage=[tmp_path / "data"]) as server:
        client = server.client()
        run = client["raw"][result["uid"]]
        assert run.metadata["start"]["tomo"]["layout"] == "streams"
        assert run.metadata["start"]["beamline_id"] == "test-tomo"
        (node,) = find_reconstructions(client["processed"], raw_uid=result["uid"], kind="full")
        volume = node["volume"].read()
        assert volume.shape == (32, 64, 64)
        assert np.isfinite(volume).all() and volume.std() > 0
        assert abs(node.metadata["center"] - result["center_px"]) < 1.0


CHECK_NAMESPACE = """
import inspect, json, runpy, sys
from pathlib import Path
startup = Path(sys.argv[1]) / "startup"
try:  # what the queue server's worker does: its own loader, with the worker flag set
    from bluesky_queueserver.manager.profile_ops import (existing_plans_and_devices_from_nspace,
                                                         load_profile_collection)
    from bluesky_queueserver.manager.profile_tools import set_re_worker_active
except ImportError:
    loader = "runpy"
    ns = {}
    for f in sorted(startup.glob("*.py")):
        ns = runpy.run_path(str(f), init_globals=ns, run_name="__main__")
    plans = sorted(k for k, v in ns.items() if not k.startswith("_") and inspect.isgeneratorfunction(v))
    devices = []
else:
    loader = "queueserver"
    set_re_worker_active()
    ns = load_profile_collection(startup)
    plans_found, devices_found, _, _ = existing_plans_and_devices_from_nspace(nspace=ns)
    plans, devices = sorted(plans_found), sorted(devices_found)
from IPython import get_ipython
ns["tomo"].close()
print("RESULT " + json.dumps({"loader": loader, "plans": plans, "devices": devices,
                              "shell": get_ipython() is not None,
                              "names": sorted(k for k in ns if not k.startswith("_"))}))
"""


def test_profile_loads_without_ipython_and_offers_only_real_plans(tmp_path):
    """What a queue server worker does: load the startup files without IPython (with the queue
    server's own loader when it is installed) and list the plans and devices it would offer."""
    profile = copy_profile(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-c", CHECK_NAMESPACE, str(profile)],
        env=profile_env(tmp_path), cwd=tmp_path, capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads([ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1][7:])
    assert set(result["plans"]) == EXPECTED_PLANS, result["plans"]
    assert not result["shell"]  # really no IPython shell, as in a queue server worker
    assert {"RE", "det", "stage", "tomo", "settings"} <= set(result["names"])
    if result["loader"] == "queueserver":
        assert {"det", "rot"} <= set(result["devices"]), result["devices"]


def test_profile_holds_no_secrets():
    """Secrets come from the environment: no API key, token or password literal in the profile."""
    text = "\n".join(p.read_text() for p in PROFILE.rglob("*.py"))
    for word in ("api_key=", "token=", "password", "secret="):
        assert word not in text.lower(), word
