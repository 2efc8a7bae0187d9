"""Batch jobs when the services under them fail: a locked, deleted or corrupt journal, an MPI rank
killed by a signal, Slurm absent or down, a full disk while staging. Each job ends stored or
recorded as failed with its reason, the monitor thread stays alive, the raw file is untouched.
Real SQLite, real mpiexec (pip mpich), real local Slurm."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import stat
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from fault_services import journal_locked
from fault_world import assert_raw_intact
from test_jobs_support import make_raw_scan

from bluesky_tomo_hpc.batch.job import Resources
from bluesky_tomo_hpc.engine.params import ReconParams
from bluesky_tomo_hpc.jobs.executors.executor import status_from_exit_code
from bluesky_tomo_hpc.jobs.executors.mpiexec import LocalExecutor
from bluesky_tomo_hpc.jobs.journal import Journal, JournalUnavailable
from bluesky_tomo_hpc.jobs.monitor import JobMonitor
from bluesky_tomo_hpc.jobs.submit_sink import HPCSubmitSink

pytestmark = pytest.mark.mpi


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class Scan:
    """A raw scan (HDF5 on disk) and a sink that submits its batch job, reporting to ``errors``."""

    def __init__(self, tmp_path: Path, monitor: JobMonitor, run_uid: str = "run-fault"):
        self.spec, self.batches, self.end = make_raw_scan(tmp_path, run_uid=run_uid, n_angles=60)
        self.raw = Path(self.spec.raw_files[0])
        self.raw_sha = _sha(self.raw)
        self.errors: list[tuple[str, str]] = []
        self.sink = HPCSubmitSink(monitor, tmp_path / "work", params=ReconParams(center=31.5),
                                  resources=Resources(ranks=2), outputs={"zarr_chunk_z": 4},
                                  report=lambda uid, msg: self.errors.append((uid, msg)))

    def stop(self) -> None:
        self.sink.open(self.spec)
        for b in self.batches:
            self.sink.add(b)
        t = time.perf_counter()
        self.sink.close(self.end)
        assert time.perf_counter() - t < 5.0, "close() does not wait for the journal beyond its busy timeout"

    def raw_intact(self) -> bool:
        assert_raw_intact([self.raw], frames=len(self.batches) and 60)
        return _sha(self.raw) == self.raw_sha


def _submitted(scan: Scan, mon: JobMonitor) -> str:
    """End the scan and wait until its job was handed to the executor; its id."""
    scan.stop()
    scan.sink.wait(120)
    (jid,) = scan.sink.job_ids
    deadline = time.monotonic() + 60
    while mon.journal.get(jid).state not in ("SUBMITTED", "RUNNING", "DONE"):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    return jid


def _monitor(tmp_path: Path, executor=None, **kw) -> JobMonitor:
    kw.setdefault("poll_s", 0.2)
    kw.setdefault("backoff_s", 0.1)
    return JobMonitor(Journal(tmp_path / "jobs.sqlite", busy_timeout_s=kw.pop("busy_timeout_s", 2.0)),
                      executor or LocalExecutor(ranks=2), **kw)


def test_journal_locked_briefly_job_created(world):
    """Journal locked briefly at a scan's end: job created and done, nothing reported.

    Journal locked for a moment at the end of a scan: the submission waits it out and the job is created
    and done.
    """
    tmp_path = world.data
    mon = _monitor(tmp_path, busy_timeout_s=20.0)
    scan = Scan(tmp_path, mon)
    with journal_locked(mon.journal.path, seconds=1.5):
        scan.stop()
    scan.sink.wait(120)
    (jid,) = scan.sink.job_ids
    assert mon.wait(jid, 300).state == "DONE"
    assert not scan.errors and scan.raw_intact()


def test_journal_locked_too_long_job_parked_then_done(world):
    """Journal locked too long at a scan's end: job parked and reported, done later.

    Journal locked for longer than its busy timeout during a scan: the job is parked (not dropped),
    reported, and submitted when the journal is free.
    """
    tmp_path = world.data
    mon = _monitor(tmp_path, busy_timeout_s=1.0)
    scan = Scan(tmp_path, mon)
    with journal_locked(mon.journal.path):
        scan.stop()
        scan.sink.wait(120)
        assert list(mon.journal.parked_dir.glob("*.json")), "the job waits as a file"
    (uid, message), = scan.errors
    assert uid == "run-fault" and "parked" in message and "journal is unavailable" in message
    mon.start()
    try:
        (jid,) = scan.sink.job_ids
        rec = mon.wait(jid, 300)
    finally:
        mon.stop()
    assert rec.state == "DONE", (rec.state, rec.error)
    assert not list(mon.journal.parked_dir.glob("*.json")) and scan.raw_intact()
    assert any("parked" in i for i in mon.journal.incidents)


def test_journal_locked_for_cli_reader_is_one_clear_error(world):
    """Journal kept locked: a reader gets JournalUnavailable naming it, not a hang.

    A journal another process keeps locked: a reader gets JournalUnavailable naming the file and the
    cause, after the busy timeout, not a hang.
    """
    tmp_path = world.data
    journal = Journal(tmp_path / "jobs.sqlite", busy_timeout_s=0.5)
    with journal_locked(journal.path):
        t = time.monotonic()
        with pytest.raises(JournalUnavailable, match="stayed locked"):
            journal.jobs()
        assert time.monotonic() - t < 10


def test_journal_deleted_while_monitor_runs(world):
    """Journal deleted under a running job: recreated, job put back, monitor alive.

    Journal file deleted while a job runs: the monitor thread lives on, the journal is recreated with the
    job put back, and the job finishes.
    """
    tmp_path = world.data
    mon = _monitor(tmp_path)
    scan = Scan(tmp_path, mon)
    mon.start()
    try:
        jid = _submitted(scan, mon)
        for suffix in ("", "-wal", "-shm"):
            Path(str(mon.journal.path) + suffix).unlink(missing_ok=True)
        time.sleep(1.0)
        assert mon.alive, "the monitor thread survived"
        rec = mon.wait(jid, 300)
    finally:
        mon.stop()
    assert rec.state == "DONE", (rec.state, rec.error)
    assert any("deleted" in i for i in mon.journal.incidents)
    assert scan.raw_intact()


def test_journal_corrupt_at_start_kept_aside_and_recreated(world):
    """Corrupt journal at start: kept aside as .corrupt-<time>, recreated, reported.

    A journal file that is not a database: moved aside as <name>.corrupt-<time> (kept), an empty journal
    created, the incident reported; new jobs work.
    """
    tmp_path = world.data
    path = tmp_path / "jobs.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    mon = _monitor(tmp_path)
    kept = list(tmp_path.glob("jobs.sqlite.corrupt-*"))
    assert len(kept) == 1 and kept[0].read_bytes().startswith(b"this is not")
    assert any("corrupt" in i for i in mon.journal.incidents)
    scan = Scan(tmp_path, mon)
    scan.stop()
    scan.sink.wait(120)
    assert mon.wait(scan.sink.job_ids[0], 300).state == "DONE"


def test_journal_corrupted_while_monitor_runs(world):
    """Journal corrupted under a running job: kept aside, job restored and done.

    Journal overwritten with garbage while a job runs: the thread survives, the job is restored into a
    fresh journal and finishes; the damaged file is kept.
    """
    tmp_path = world.data
    mon = _monitor(tmp_path)
    scan = Scan(tmp_path, mon)
    mon.start()
    try:
        jid = _submitted(scan, mon)
        for suffix in ("-wal", "-shm"):
            Path(str(mon.journal.path) + suffix).unlink(missing_ok=True)
        mon.journal.path.write_bytes(os.urandom(8192))
        time.sleep(1.0)
        assert mon.alive
        rec = mon.wait(jid, 300)
    finally:
        mon.stop()
    assert rec.state == "DONE", (rec.state, rec.error)
    assert list(tmp_path.glob("jobs.sqlite.corrupt-*"))
    assert scan.raw_intact()


def test_journal_truncated_to_nothing(world):
    """Journal truncated to zero bytes: recreated with its tables, usable at once.

    A journal truncated to zero bytes (a full disk, a bad copy): recreated with its tables, usable at
    once.
    """
    tmp_path = world.data
    journal = Journal(tmp_path / "jobs.sqlite")
    for suffix in ("-wal", "-shm"):
        Path(str(journal.path) + suffix).unlink(missing_ok=True)
    journal.path.write_bytes(b"")
    assert journal.jobs() == []
    assert journal.jobs(active_only=True) == []


def _killing_python(tmp_path: Path, signal_name: str, kills: int) -> str:
    """A ``python`` for mpiexec whose rank 1 kills itself with ``signal_name`` on the first
    ``kills`` attempts (as the OOM killer or a node watchdog would)."""
    marks = tmp_path / "kills"
    marks.mkdir()
    wrapper = tmp_path / "python-killing-rank1"
    wrapper.write_text(
        "#!/bin/sh\n"
        f'if [ "$PMI_RANK" = 1 ] && [ "$(ls {marks} | wc -l)" -lt {kills} ]; then\n'
        f"  touch {marks}/$$; kill -{signal_name} $$\nfi\n"
        f'exec {sys.executable} "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    return str(wrapper)


@pytest.mark.parametrize("sig", ["TERM"])  # SIGKILL: test_rank_killed_mid_write_is_retried_...
def test_rank_killed_by_signal_is_retried_and_named(world, sig):
    """MPI rank killed by a signal: transient failure naming it, retried, job done.

    An MPI rank killed by a signal: a transient failure naming the signal, retried, and the job completes.
    """
    tmp_path = world.data
    mon = _monitor(tmp_path, LocalExecutor(ranks=2, python=_killing_python(tmp_path, sig, kills=1)))
    scan = Scan(tmp_path, mon)
    scan.stop()
    scan.sink.wait(120)
    (jid,) = scan.sink.job_ids
    rec = mon.wait(jid, 300)
    assert rec.state == "DONE", (rec.state, rec.error)
    details = [d or "" for s, _, d in mon.journal.events(jid) if s == "RETRY_WAIT"]
    assert details and f"SIG{sig}" in details[0], details
    assert rec.attempts == 2 and scan.raw_intact()


def test_rank_killed_every_time_fails_with_the_signal(world):
    """Rank killed on every try: FAILED naming SIGKILL after the retries; recoverable.

    A rank killed by SIGKILL on every attempt: FAILED after the retries, the reason names SIGKILL; the raw
    file is untouched and the job can be resubmitted.
    """
    tmp_path = world.data
    mon = _monitor(tmp_path, LocalExecutor(ranks=2, python=_killing_python(tmp_path, "KILL", kills=99)),
                   max_retries=1)
    scan = Scan(tmp_path, mon)
    scan.stop()
    scan.sink.wait(120)
    rec = mon.wait(scan.sink.job_ids[0], 300)
    assert rec.state == "FAILED" and "SIGKILL" in rec.error and "gave up after" in rec.error
    assert scan.raw_intact() and rec.job.input_path.exists(), "recoverable: input and raw data kept"


def _python_killing_rank1_mid_write(tmp_path: Path, work: Path) -> str:
    """A ``python`` for mpiexec whose rank 1, on the first attempt only, is SIGKILLed once the job's
    ``.partial`` result holds a chunk: mid-volume, with chunks of the killed attempt left on disk.
    Rank 1 runs half the time (SIGSTOP/SIGCONT, 50 ms each) until then, so rank 0 writes first."""
    marks = tmp_path / "mid-kills"
    marks.mkdir()
    wrapper = tmp_path / "python-killing-rank1-mid-write"
    wrapper.write_text(
        "#!/bin/bash\n"
        f'if [ "$PMI_RANK" != 1 ] || [ -n "$(ls {marks})" ]; then exec {sys.executable} "$@"; fi\n'
        f'{sys.executable} "$@" & child=$!\n'
        "for _ in $(seq 3000); do\n"
        "  kill -STOP $child 2>/dev/null || break\n"
        f"  chunk=$(find '{work}' -path '*.partial/volume.ome.zarr/0/c/*' -type f -print -quit)\n"
        '  if [ -n "$chunk" ]; then\n'
        f"    touch {marks}/killed; kill -KILL $child; kill -CONT $child; wait $child; exit $?\n"
        "  fi\n"
        "  kill -CONT $child; sleep 0.05; kill -STOP $child 2>/dev/null; sleep 0.05\n"
        "done\n"
        "kill -CONT $child 2>/dev/null; wait $child\n")
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    return str(wrapper)


def test_rank_killed_mid_write_is_retried_into_a_whole_volume(world):
    """Rank SIGKILLed mid-volume (chunks on disk): retried, the whole volume made, the attempt recorded.

    An MPI rank killed while the volume is half written (the killed attempt's chunks in ``.partial``):
    a transient failure naming SIGKILL, retried; the retry replaces the partial result, every slice is
    written (no NaN fill left), the provenance records the earlier attempt, the raw file is untouched.
    """
    import json

    import zarr

    tmp_path = world.data
    killer = _python_killing_rank1_mid_write(tmp_path, tmp_path / "work")
    mon = _monitor(tmp_path, LocalExecutor(ranks=2, python=killer))
    scan = Scan(tmp_path, mon)
    scan.stop()
    scan.sink.wait(120)
    (jid,) = scan.sink.job_ids
    rec = mon.wait(jid, 300)
    assert (tmp_path / "mid-kills" / "killed").exists(), "rank 1 was not killed while the volume was written"
    assert rec.state == "DONE", (rec.state, rec.error)
    details = [d or "" for s, _, d in mon.journal.events(jid) if s == "RETRY_WAIT"]
    assert details and "SIGKILL" in details[0], details
    volume = zarr.open_array(rec.result["volume_zarr"], mode="r")[:]
    assert volume.shape == (16, 64, 64) and np.isfinite(volume).all()
    result_dir = Path(rec.result["volume_zarr"]).parents[1]
    assert not result_dir.with_name(result_dir.name + ".partial").exists()
    provenance = json.loads((result_dir / "provenance.json").read_text())
    assert "earlier_attempt" in provenance, sorted(provenance)
    assert rec.attempts == 2 and scan.raw_intact()


def test_exit_code_of_a_signal_from_the_shell():
    """Exit 128+N or hydra's signal line: a transient failure named by its signal.

    A shell's 128+N exit code (and hydra's 'KILLED BY SIGNAL' line) both mean a transient failure named by
    its signal.
    """
    st = status_from_exit_code(137)
    assert st.transient and "SIGKILL" in st.reason
    hydra = "YOUR APPLICATION TERMINATED WITH THE EXIT STRING: Killed (signal 9)"
    st = status_from_exit_code(9, log_text=hydra)
    assert st.transient and "SIGKILL" in st.reason
    assert not status_from_exit_code(66).transient


def test_staging_on_a_full_disk_is_a_recorded_failure(world, monkeypatch):
    """ENOSPC while staging: job FAILED 'No space left', in the run's error list.

    ENOSPC while writing the job's input: the job is FAILED with 'No space left', the run's error list
    says so, the raw file is untouched.
    """
    tmp_path = world.data
    import bluesky_tomo_hpc.jobs.submit_sink as submit_sink

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(submit_sink, "write_exchange_file", full)
    mon = _monitor(tmp_path)
    scan = Scan(tmp_path, mon)
    scan.stop()
    scan.sink.wait(120)
    rec = mon.journal.get(scan.sink.job_ids[0])
    assert rec.state == "FAILED" and "No space left" in rec.error
    assert any("No space left" in m for _, m in scan.errors) and scan.raw_intact()


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_job_outputs_on_a_full_tmpfs(world):
    """Job outputs on a full 256 KiB tmpfs: job FAILED with the reason, raw intact.

    Job outputs on a 256 KiB tmpfs: the batch program fails for lack of space, the job is recorded FAILED
    (or retried) with the reason, the raw file is untouched.
    """
    tmp_path = world.data
    import subprocess

    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)]).returncode != 0:
        pytest.skip("cannot mount tmpfs here")
    try:
        mon = _monitor(tmp_path, max_retries=1)
        scan = Scan(tmp_path, mon)
        scan.sink.work_dir = mnt / "work"
        scan.stop()
        scan.sink.wait(120)
        (jid,) = scan.sink.job_ids
        rec = mon.journal.get(jid)
        if not rec.terminal:
            rec = mon.wait(jid, 300)
        assert rec.state == "FAILED", (rec.state, rec.error)
        assert rec.error and ("space" in rec.error.lower() or "exited with" in rec.error)
        assert scan.raw_intact()
    finally:
        subprocess.run(["umount", "-l", str(mnt)])


def test_submission_without_slurm_is_a_failure(world, monkeypatch):
    """Slurm absent: job FAILED naming sbatch, in the run's error list, not 'submitted'.

    Slurm absent (no sbatch on PATH): the job is FAILED with a reason naming sbatch, the run's error list
    has it, nothing is reported as submitted.
    """
    tmp_path = world.data
    from bluesky_tomo_hpc.jobs.executors.slurm import SlurmExecutor

    monkeypatch.setenv("PATH", str(Path(sys.executable).parent))
    mon = _monitor(tmp_path, SlurmExecutor())
    scan = Scan(tmp_path, mon)
    scan.stop()
    scan.sink.wait(120)
    rec = mon.journal.get(scan.sink.job_ids[0])
    assert rec.state == "FAILED" and "sbatch not found" in rec.error
    assert any("FAILED" in m and "sbatch" in m for _, m in scan.errors)
    assert scan.raw_intact() and rec.job.input_path.exists()


def test_reprocess_without_slurm_counts_a_failure_and_exits_1(world, monkeypatch, RE, tiled_server,
                                                              capsys):
    """reprocess with Slurm absent: summary '1 failed, 0 submitted', exit code 1.

    'reprocess --executor slurm' with Slurm absent: the summary says 1 failed, 0 submitted, and the exit
    code is 1.
    """
    tmp_path = world.data
    world.input("tiled")  # the standard server's own folder
    from bluesky_tiled_plugins import TiledWriter
    from tiled.client import from_uri

    from bluesky_tomo_hpc.cli.main import main
    from bluesky_tomo_hpc.results.tiled_server import raw_catalog
    from bluesky_tomo_hpc.sim.beamline import make_sim_beamline
    from bluesky_tomo_hpc.sim.plans import tomo_scan

    raw = raw_catalog(from_uri(tiled_server.uri))
    RE.subscribe(TiledWriter(raw, batch_size=1))
    bl = make_sim_beamline(tmp_path / "raw", shape=(8, 32))
    RE(tomo_scan(bl.detector, bl.stage, num_projections=20, num_darks=2, num_flats=2))
    monkeypatch.setenv("PATH", str(Path(sys.executable).parent))
    monkeypatch.setenv("BLUESKY_TOMO_HPC__DATA_DIR", str(tmp_path / "data"))
    rc = main(["reprocess", tiled_server.uri, "--executor", "slurm"])
    out = capsys.readouterr().out
    assert rc == 1, out
    assert "0 submitted" in out and "1 failed" in out and "sbatch" in out


@pytest.mark.slurm
def test_slurm_controller_down_then_back(world):
    """slurmctld down at submission: RETRY_WAIT with sbatch's reason, DONE once back.

    slurmctld down at submission: a transient failure (RETRY_WAIT, reason from sbatch); once Slurm is back
    the retry runs the job to DONE.
    """
    tmp_path = world.data
    import subprocess

    from bluesky_tomo_hpc.jobs.executors.slurm import SlurmExecutor

    if os.geteuid() != 0 or shutil.which("sbatch") is None:
        pytest.skip("needs the local Slurm (tests/services/slurm_up.sh, as root)")
    services = Path(__file__).resolve().parents[1] / "services"
    up = subprocess.run(["bash", str(services / "slurm_up.sh")], capture_output=True, text=True, timeout=300)
    assert up.returncode == 0, up.stderr
    pid = Path("/tmp/slurm-local/slurmctld.pid")
    ctld = int(pid.read_text())
    os.kill(ctld, 15)
    deadline = time.monotonic() + 30
    while Path(f"/proc/{ctld}").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    try:
        mon = _monitor(tmp_path, SlurmExecutor(), backoff_s=2.0, max_retries=5)
        scan = Scan(tmp_path, mon)
        scan.stop()
        scan.sink.wait(120)
        rec = mon.journal.get(scan.sink.job_ids[0])
        assert rec.state == "RETRY_WAIT" and "sbatch failed" in rec.error, (rec.state, rec.error)
    finally:
        up = subprocess.run(["bash", str(services / "slurm_up.sh")], capture_output=True, text=True,
                            timeout=300)
        assert up.returncode == 0, up.stderr
    rec = mon.wait(rec.job_id, 300)
    assert rec.state == "DONE", (rec.state, rec.error)
    assert scan.raw_intact()
