"""Batch jobs through a REAL local Slurm (started here by tests/services/slurm_up.sh)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from test_jobs_support import make_raw_scan

from bluesky_tomo_hpc.batch.job import JobOutputs, ReconJob, Resources
from bluesky_tomo_hpc.batch.staging import write_exchange_file
from bluesky_tomo_hpc.engine.params import ReconParams
from bluesky_tomo_hpc.jobs.executors.slurm import SlurmExecutor, render_script
from bluesky_tomo_hpc.jobs.journal import Journal
from bluesky_tomo_hpc.jobs.monitor import JobMonitor

pytestmark = [pytest.mark.slurm, pytest.mark.mpi]
UP = Path(__file__).parent / "services" / "slurm_up.sh"


@pytest.fixture(scope="session")
def slurm() -> None:
    """Start (or find running) the single-node Slurm; skip only where that is impossible."""
    if os.geteuid() != 0:
        pytest.skip("a local Slurm needs root (daemons, munge)")
    if shutil.which("sbatch") is None and shutil.which("apt-get") is None:
        pytest.skip("Slurm is not installed and apt-get is unavailable to install it")
    p = subprocess.run(["bash", str(UP)], capture_output=True, text=True, timeout=300)
    if p.returncode != 0:
        pytest.fail(f"tests/services/slurm_up.sh failed:\n{p.stdout}\n{p.stderr}")


def _scontrol_state(job_id: str) -> str:
    out = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True).stdout
    return next(t.split("=", 1)[1] for t in out.split() if t.startswith("JobState="))


def _job(tmp_path: Path, input_path: Path, ranks: int = 2, run_uid: str = "run-slurm") -> ReconJob:
    return ReconJob(
        run_uid=run_uid,
        input_path=input_path,
        params=ReconParams(center=31.5),
        outputs=JobOutputs(directory=tmp_path / "out" / run_uid, zarr_chunk_z=4),
        resources=Resources(ranks=ranks, walltime_s=300),
    )


def test_script_comes_from_the_template(tmp_path):
    job = _job(tmp_path, tmp_path / "in.h5").model_copy(
        update={"resources": Resources(ranks=4, nodes=2, walltime_s=3700, qos="realtime", account="als")}
    )
    text = render_script(job)
    assert "#SBATCH --ntasks=4" in text and "#SBATCH --nodes=2" in text and "#SBATCH --time=01:02:00" in text
    assert "#SBATCH --qos=realtime" in text and "#SBATCH --account=als" in text
    assert f'mpiexec -n $SLURM_NTASKS {sys.executable} -m bluesky_tomo_hpc.batch {job.job_file}' in text
    assert "$job" not in text and "${" not in text, "every template field is filled"


def test_sbatch_runs_the_batch_program_end_to_end(slurm, tmp_path):
    """Tiled registration is the same code as for the local executor (test_jobs_local): files here."""
    spec, batches, _ = make_raw_scan(tmp_path, run_uid="run-slurm")
    job = _job(tmp_path, write_exchange_file(spec, batches, tmp_path / "in.h5"))
    mon = JobMonitor(Journal(tmp_path / "j.sqlite"), SlurmExecutor(), poll_s=0.3)
    rec = mon.submit(mon.add(job).job_id)
    assert rec.state == "SUBMITTED" and rec.handle.isdigit()
    rec = mon.wait(rec.job_id, timeout=180)
    assert rec.state == "DONE", (rec.error, SlurmExecutor().logs(rec.handle))
    assert _scontrol_state(rec.handle) == "COMPLETED"
    vol = zarr.open_array(rec.result["volume_zarr"], mode="r")[:]
    assert rec.result["ranks"] == 2 and vol.shape == (16, 64, 64) and np.isfinite(vol).all()
    assert [s["rows"] for s in rec.result["slabs"]] == [[0, 8], [8, 16]]
    assert "done in" in SlurmExecutor().logs(rec.handle)
    assert {"queue", "run"} <= set(mon.journal.stage_durations(rec.job_id))


def test_cancel_ends_cancelled_everywhere(slurm, tmp_path):
    ex = SlurmExecutor(launcher="", program="sleep 120 #")  # a job that runs until cancelled
    mon = JobMonitor(Journal(tmp_path / "j.sqlite"), ex, poll_s=0.2)
    rec = mon.submit(mon.add(_job(tmp_path, tmp_path / "x.h5", ranks=1)).job_id)
    for _ in range(100):
        mon.step()
        if mon.journal.get(rec.job_id).state == "RUNNING":
            break
        time.sleep(0.1)
    mon.cancel(rec.job_id)
    assert mon.journal.get(rec.job_id).state == "CANCELLED"
    for _ in range(100):
        if _scontrol_state(rec.handle) == "CANCELLED":
            break
        time.sleep(0.1)
    assert _scontrol_state(rec.handle) == "CANCELLED"
    assert ex.status(rec.handle).state.value == "CANCELLED"


def test_permanent_failure_is_not_retried(slurm, tmp_path):
    mon = JobMonitor(Journal(tmp_path / "j.sqlite"), SlurmExecutor(), poll_s=0.3, backoff_s=0.1)
    rec = mon.submit(mon.add(_job(tmp_path, tmp_path / "missing.h5", ranks=1)).job_id)
    rec = mon.wait(rec.job_id, timeout=120)
    assert rec.state == "FAILED" and rec.attempts == 1
    assert "exited with 66" in rec.error and "missing.h5 does not exist" in rec.error
    assert _scontrol_state(rec.handle) == "FAILED"


def test_transient_failure_is_retried_and_nothing_is_lost(slurm, tmp_path):
    """The first attempt hits a transient fault (exit 75, EX_TEMPFAIL); the retry succeeds."""
    spec, batches, _ = make_raw_scan(tmp_path, run_uid="run-retry")
    job = _job(tmp_path, write_exchange_file(spec, batches, tmp_path / "in.h5"), ranks=1, run_uid="run-retry")
    marker = tmp_path / "first-attempt-done"
    program = (
        f"sh -c 'if [ ! -e {marker} ]; then touch {marker}; echo transient fault >&2; exit 75; fi; "
        f'exec {sys.executable} -m bluesky_tomo_hpc.batch "$0"\''
    )
    mon = JobMonitor(
        Journal(tmp_path / "j.sqlite"),
        SlurmExecutor(program=program),
        poll_s=0.3,
        backoff_s=0.2,
        max_retries=2,
    )
    rec = mon.submit(mon.add(job).job_id)
    first = rec.handle
    rec = mon.wait(rec.job_id, timeout=180)
    assert rec.state == "DONE", rec.error
    assert rec.attempts == 2 and rec.handle != first
    states = [s for s, _, _ in mon.journal.events(rec.job_id)]
    assert states.count("SUBMITTED") == 2 and "RETRY_WAIT" in states
    assert _scontrol_state(first) == "FAILED" and _scontrol_state(rec.handle) == "COMPLETED"
    assert Path(rec.result["volume_zarr"]).exists()
