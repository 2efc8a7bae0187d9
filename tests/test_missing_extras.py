"""Each optional feature without its extra: one line naming the feature and the extra, exit 2.

The command runs in a fresh interpreter where the packages are made not installed (an import
hook fails their import exactly as a missing package does), so these checks hold on a machine
that has every extra, as the test environment has. A missing package must never read as a
service that cannot be reached (exit 5) nor as a bug (exit 70).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from bluesky_tomo_hpc.cli.errors import EXIT_SERVICE, EXIT_USAGE, describe
from bluesky_tomo_hpc.extras import MissingPackage, how_to_install
from bluesky_tomo_hpc.results.volume_files import VolumeWriteError

#: ``python -c`` program: block the packages named in argv[1], then run the command line
WITHOUT = """
import sys
blocked = set(filter(None, sys.argv[1].split(",")))

class NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in blocked:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, NotInstalled())
from bluesky_tomo_hpc.cli.main import main
sys.exit(main(sys.argv[2:]))
"""


#: feature -> (packages made absent, command line, environment, what its one line says)
CASES: dict[str, tuple[list[str], list[str], dict[str, str], str]] = {
    "pva": (["pvaccess"], ["worker", "--pva", "TEST:image", "--timeout", "5"], {},
            "PV Access frames (worker --pva) needs pvapy, which is not installed: "
            "pip install 'bluesky-tomo-hpc[pva]'"),
    "nersc": (["sfapi_client"], ["jobs", "--journal", "j.sqlite", "follow", "--timeout", "1"],
              {"BLUESKY_TOMO_HPC__JOBS__EXECUTOR": "nersc"},
              "the NERSC executor (jobs.executor: nersc) needs sfapi-client, which is not installed: "
              "pip install 'bluesky-tomo-hpc[hpc]'"),
    "alcf": (["globus_compute_sdk", "globus_sdk"],
             ["jobs", "--journal", "j.sqlite", "follow", "--timeout", "1"],
             {"BLUESKY_TOMO_HPC__JOBS__EXECUTOR": "alcf"},
             "the ALCF executor (jobs.executor: alcf) needs globus-compute-sdk, which is not installed: "
             "pip install 'bluesky-tomo-hpc[hpc]'"),
    "gpu": (["cupy", "cupyx", "cufinufft"], ["recon", "scan.h5", "--center", "12", "--params", "gpu.yml"], {},
            "GPU reconstruction (device: gpu) needs cupy-cuda12x, which is not installed: "
            "pip install 'bluesky-tomo-hpc[gpu]'"),
    "tomopy": (["tomopy"], ["recon", "scan.h5", "--center", "12", "--params", "tomopy.yml"], {},
               "needs tomopy, which is not installed: conda install -c conda-forge tomopy"),
    "core ome-zarr": (["ome_zarr"], ["recon", "scan.h5", "--center", "12"], {},
                      "writing OME-Zarr volumes needs ome_zarr, which is not installed: bluesky-tomo-hpc "
                      "itself installs it, so this installation is incomplete: "
                      "pip install --force-reinstall bluesky-tomo-hpc"),
}


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory) -> dict[str, tuple[int, str, Path]]:
    """Every case's command, started at once (each waits mostly on imports): feature ->
    (exit status, stderr, its folder)."""
    procs = {}
    for feature, (blocked, argv, env, _) in CASES.items():
        folder = tmp_path_factory.mktemp(feature.replace(" ", "_"))
        scan_file(folder / "scan.h5")
        (folder / "gpu.yml").write_text("device: gpu\n")
        (folder / "tomopy.yml").write_text("engine: tomopy\n")
        unset = ("NERSC_SFAPI_KEY", "GLOBUS_COMPUTE_ENDPOINT")
        environ = {k: v for k, v in os.environ.items()
                   if not k.startswith("BLUESKY_TOMO_HPC") and k not in unset}
        environ.update(BLUESKY_TOMO_HPC__DATA_DIR=str(folder / "data"), EPICS_PVA_AUTO_ADDR_LIST="NO",
                       MPLBACKEND="Agg", **env)
        procs[feature] = (folder, subprocess.Popen(
            [sys.executable, "-c", WITHOUT, ",".join(blocked), *argv], cwd=folder, env=environ,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    return {feature: (proc.wait(timeout=180), proc.stderr.read(), folder)
            for feature, (folder, proc) in procs.items()}


def scan_file(path: Path) -> Path:
    """A small data-exchange file: 24 projections of 4 rows x 24 columns."""
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        f["/exchange/data"] = (100 + 900 * rng.uniform(0.3, 0.9, (24, 4, 24))).astype(np.float32)
        f["/exchange/data_white"] = np.full((3, 4, 24), 1000, np.float32)
        f["/exchange/data_dark"] = np.full((3, 4, 24), 100, np.float32)
        f["/exchange/theta"] = np.linspace(0, 180, 24, endpoint=False)
    return path


@pytest.mark.parametrize("feature", list(CASES))
def test_feature_without_its_package_is_one_line_exit_2(outcomes, feature):
    code, err, folder = outcomes[feature]
    command, says = CASES[feature][1][0], CASES[feature][3]
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.startswith(f"bluesky-tomo-hpc {command}: ")]
    assert len(lines) == 1, err
    assert code == EXIT_USAGE, err
    assert says in lines[0], lines[0]
    assert "0MQ" not in lines[0] and "internal error" not in lines[0], lines[0]
    assert list(folder.glob("scan_rec*")) == []  # refused before any work: no result, no .partial


def test_scicat_without_pyscicat_says_so_before_publishing(tmp_path):
    """SciCat is chosen in the settings of a profile (``configure``), not on the command line:
    the publisher refuses to start, naming the extra, before anything is queued."""
    program = (
        "import sys\n"
        "class NotInstalled:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.partition('.')[0] == 'pyscicat':\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, NotInstalled())\n"
        "from bluesky_tomo_hpc.publishing.scicat import ScicatPublisher\n"
        "from bluesky_tomo_hpc.publishing.scicat_outbox import ScicatOutbox\n"
        "from bluesky_tomo_hpc.settings import Settings\n"
        "settings = Settings(data_dir=sys.argv[1], scicat={'uri': 'http://127.0.0.1:9/api/v3'})\n"
        "try:\n"
        "    ScicatPublisher(settings.scicat, ScicatOutbox(settings.journal_path), start_thread=False)\n"
        "except ModuleNotFoundError as exc:\n"
        "    print(exc)\n"
    )
    proc = subprocess.run([sys.executable, "-c", program, str(tmp_path)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == ("SciCat publishing (scicat.uri in the settings) needs pyscicat, which is "
                                   "not installed: pip install 'bluesky-tomo-hpc[scicat]'"), proc.stdout


# -- in this process: the error classes ----------------------------------------------------------------
def test_a_wrapped_missing_package_is_not_a_service_nor_a_file():
    """What the issue saw: a volume write failing for want of ome_zarr read as a 0MQ address."""
    try:
        try:
            raise ModuleNotFoundError("No module named 'ome_zarr'", name="ome_zarr")
        except ModuleNotFoundError as exc:
            raise VolumeWriteError(5, "writing rec failed: No module named 'ome_zarr'") from exc
    except VolumeWriteError as wrapped:
        code, line = describe(wrapped)
    assert code == EXIT_USAGE
    assert line.startswith("the Python module ome_zarr is not installed: ") and "--force-reinstall" in line
    assert "0MQ" not in line


def test_an_os_error_is_0mq_only_when_0mq_raised_it():
    import zmq

    assert describe(zmq.ZMQError(zmq.EADDRINUSE))[0] == EXIT_SERVICE
    code, line = describe(OSError(5, "Input/output error"))
    assert code != EXIT_SERVICE and "0MQ" not in line


def test_missing_mpiexec_is_one_line_and_the_demo_skips_the_batch_job(tmp_path, monkeypatch, capsys):
    from rich.console import Console

    from bluesky_tomo_hpc.cli.demo import _executor
    from bluesky_tomo_hpc.jobs.executors.mpiexec import LocalExecutor

    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))  # no mpiexec beside it
    monkeypatch.setenv("PATH", str(tmp_path))  # nor on PATH
    with pytest.raises(MissingPackage) as info:
        LocalExecutor()
    assert describe(info.value) == (EXIT_USAGE, (
        "the local executor (jobs.executor: local) needs mpiexec, which is not installed: "
        "pip install mpich (Linux, macOS), or put your MPI's mpiexec on PATH"))
    assert _executor("auto", Console(file=sys.stdout, soft_wrap=True)) == "none"
    said = capsys.readouterr().out
    assert f"Batch job        skipped: no mpiexec here ({how_to_install('mpiexec')})" in said
    # asked for by name: not replaced; the local executor itself says why it cannot run
    assert _executor("local", Console(file=sys.stdout, soft_wrap=True)) == "local"
