"""Several processes on one data folder: whoever claims a result makes it (``<result>.lock``, see
``results/result_claim.py``); another process skips it with an info line and exits 0, never
touching the maker's ``.partial`` folder. A maker killed by SIGKILL drops its claim with its
life: the next run replaces the stale ``.partial`` and records the loss in the provenance.

Two real processes: a maker holding the claim (killed by a real SIGKILL) and ``recon`` run here;
each step waits on what the maker printed or on its exit, never on a timer."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from test_engine_recon_cli import _parse  # tests/ is on sys.path (prepend import mode)

from bluesky_tomo_hpc.cli import recon as recon_cli
from bluesky_tomo_hpc.results.result_claim import ResultClaim, ResultClaimedError, lock_path
from bluesky_tomo_hpc.results.volume_files import ResultLayout, is_complete

#: another maker: claims the result, starts its .partial folder, says so, then works "forever"
MAKER = """
import sys
from pathlib import Path
from bluesky_tomo_hpc.results.result_claim import ResultClaim
result = Path(sys.argv[1])
claim = ResultClaim.take(result)
(result.parent / (result.name + ".partial")).mkdir()
(result.parent / (result.name + ".partial") / "slices-in-progress").write_text("mine")
print("claimed", flush=True)
sys.stdin.read()
"""


def recon(scan: Path, out: Path) -> int:
    """``bluesky-tomo-hpc recon`` in this process (a process other than the maker's)."""
    return recon_cli.run(_parse(["recon", str(scan), "--out", str(out), "--center", "320", "--no-tiff"]))


@pytest.fixture
def scan(world, reference_file) -> Path:
    return reference_file("tomopy_tooth/tooth.h5")


def test_second_maker_skips_and_a_killed_makers_partial_is_replaced_and_recorded(world, scan, capsys):
    """Claimed by a live process: skipped, exit 0, its .partial kept; after SIGKILL: remade, loss recorded."""
    out = world.data / "tooth_rec"
    layout = ResultLayout(out)
    maker = subprocess.Popen([sys.executable, "-c", MAKER, str(out)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert maker.stdout.readline().strip() == "claimed"
        assert recon(scan, out) == 0
        assert "made by another process" in capsys.readouterr().out
        assert (layout.partial / "slices-in-progress").read_text() == "mine"  # the maker's work kept
        assert not out.exists()
        with pytest.raises(ResultClaimedError, match="being made by another process"):
            ResultClaim.take(out)
    finally:
        maker.send_signal(signal.SIGKILL)
        maker.wait(60)
    assert maker.returncode == -signal.SIGKILL
    assert recon(scan, out) == 0  # the claim died with its process: the stale .partial is replaced
    assert is_complete(out) and not layout.partial.exists() and not lock_path(out).exists()
    earlier = json.loads(layout.provenance.read_text())["earlier_attempt"]
    assert earlier["path"] == str(layout.partial) and "interrupted" in earlier["how"]
    assert earlier["failure_note"] is None


@pytest.mark.mpi
def test_batch_job_whose_result_is_claimed_is_done_not_failed(world):
    """Batch job's result claimed by another process: result.json says so and where; the monitor: DONE.

    A batch job (2 MPI ranks) whose result another live process has claimed skips it, exits 0 and leaves
    a result.json saying "made by another process" with the result's folder; the job monitor reports the
    job DONE with that line (not FAILED, not retried) and the other process's .partial is untouched.
    """
    from test_jobs_support import make_raw_scan

    from bluesky_tomo_hpc.batch.job import JobOutputs, ReconJob, Resources
    from bluesky_tomo_hpc.batch.staging import write_exchange_file
    from bluesky_tomo_hpc.engine.params import ReconParams
    from bluesky_tomo_hpc.jobs.executors.mpiexec import LocalExecutor
    from bluesky_tomo_hpc.jobs.journal import Journal
    from bluesky_tomo_hpc.jobs.monitor import JobMonitor

    spec, batches, _ = make_raw_scan(world.data / "scan")
    job = ReconJob(run_uid="r1", input_path=write_exchange_file(spec, batches, world.data / "in.h5"),
                   params=ReconParams(center=31.5), outputs=JobOutputs(directory=world.data / "out"),
                   resources=Resources(ranks=2))
    claim = ResultClaim.take(job.outputs.result_dir)  # the other process (here: this one) holds it
    layout = ResultLayout(job.outputs.result_dir)
    layout.partial.mkdir(parents=True)
    (layout.partial / "slices-in-progress").write_text("mine")
    try:
        mon = JobMonitor(Journal(world.data / "jobs.sqlite"), LocalExecutor(ranks=2), max_retries=0,
                         poll_s=0.2)
        rec = mon.add(job)
        mon.journal.set_state(rec.job_id, "STAGED")
        rec = mon.wait(rec.job_id, timeout=300)
        assert rec.state == "DONE", (rec.state, rec.error)
        assert rec.result["made_elsewhere"] and rec.result["result_dir"] == str(job.outputs.result_dir)
        (detail,) = [d for s, _, d in mon.journal.events(rec.job_id) if s == "DONE"]
        assert "made by another process" in detail and str(job.outputs.result_dir) in detail, detail
        assert (layout.partial / "slices-in-progress").read_text() == "mine"
    finally:
        claim.release()
