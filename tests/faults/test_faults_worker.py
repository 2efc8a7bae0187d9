"""The streaming worker when documents stop coming: restarted with the journal of a run whose stop
was already sent, interrupted by SIGINT/SIGTERM, bounded by --timeout. Real RunEngine, HDF5,
Tiled and worker processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fault_services import free_port
from fault_world import assert_stored_or_failed_with_reason

from bluesky_tomo_hpc.live.stream_worker import StreamWorker
from bluesky_tomo_hpc.settings import Settings
from bluesky_tomo_hpc.sim.beamline import make_sim_beamline
from bluesky_tomo_hpc.sim.plans import tomo_scan

SHAPE = (8, 32)


def _settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", recon={"filter_name": "shepp", "center": 15.5},
                    preview={"binning": 1})


def _journal_of_a_run_whose_stop_was_missed(RE, tmp_path: Path, raw=None) -> tuple[str, Path]:
    """A worker saw every document but the stop (it died as the stop was sent): its journal."""
    journal = tmp_path / "journal"
    worker = StreamWorker(_settings(tmp_path), client=None, journal_dir=journal, full_volume=False)
    RE.subscribe(lambda n, d: worker(n, d) if n != "stop" else None)
    if raw is not None:
        from bluesky_tiled_plugins import TiledWriter

        RE.subscribe(TiledWriter(raw, batch_size=1))
    bl = make_sim_beamline(tmp_path / "raw", shape=SHAPE)
    (uid,) = RE(tomo_scan(bl.detector, bl.stage, num_projections=30, num_darks=2, num_flats=2))
    worker.close()  # as a kill would: the journal stays
    assert list(journal.iterdir()), "the open run is journaled"
    # the raw files (still open in this process by the simulated detector) are on disk
    files = list((tmp_path / "raw").rglob("*.h5"))
    assert files and all(p.stat().st_size > 0 for p in files)
    return uid, journal


def test_restart_takes_the_missed_stop_from_tiled(RE, world, tiled_server):
    """Restarted with the journal of a run whose stop was sent: stop taken from Tiled, run finished."""
    tmp_path = world.data
    world.input("tiled")  # the standard server's own folder
    from tiled.client import from_uri

    from bluesky_tomo_hpc.results.tiled_server import raw_catalog

    client = from_uri(tiled_server.uri)
    uid, journal = _journal_of_a_run_whose_stop_was_missed(RE, tmp_path, raw_catalog(client))
    worker = StreamWorker(_settings(tmp_path), client=client, journal_dir=journal)
    try:
        assert worker.replay_journal() == [uid]
        assert uid in worker.ended, "the stop from Tiled ended the run"
        assert worker.wait(120)
        # stored, or failed with its reason (here the simulated detector of this same process still
        # holds the raw file, which the volume's HDF5 reader may refuse): never left waiting
        assert_stored_or_failed_with_reason(worker.service.outcomes)
        assert uid in worker.service.outcomes
        assert not worker.gave_up and not list(journal.iterdir())
    finally:
        worker.close()


def test_restart_without_tiled_gives_up_after_the_stop_timeout(RE, world):
    """Same restart with no Tiled: the run is given up after the stop timeout, saying so; nothing hangs."""
    tmp_path = world.data
    uid, journal = _journal_of_a_run_whose_stop_was_missed(RE, tmp_path)
    worker = StreamWorker(_settings(tmp_path), client=None, journal_dir=journal, stop_timeout_s=0.5)
    try:
        assert worker.replay_journal() == [uid]
        assert worker.expire_stale_runs() == []  # not yet
        time.sleep(0.6)
        assert worker.expire_stale_runs() == [uid]
        (why,) = [w for u, w in worker.gave_up if u == uid]
        assert "no stop document" in why and "reprocess" in why
        assert any("gave up" in m for m in worker.router.errors_for(uid))
        assert worker.wait(30), "nothing waits for ever on the given-up run"
    finally:
        worker.close()


class WorkerProcess:
    def __init__(self, tmp_path: Path, *args: str):
        self.env = {**os.environ, "BLUESKY_TOMO_HPC__DATA_DIR": str(tmp_path / "data")}
        self.argv = [sys.executable, "-m", "bluesky_tomo_hpc.cli.main", "worker", "--zmq",
                     f"tcp://127.0.0.1:{free_port()}", "--no-full-volume", *args]
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env=self.env)
        self.t0 = time.monotonic()

    def wait_ready(self, timeout: float = 60) -> None:
        line = self.proc.stdout.readline()
        err = self.proc.stderr.read() if self.proc.poll() is not None else ""
        assert line.strip() == "READY", (line, err)

    def finish(self, timeout: float) -> tuple[int, str, float]:
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError(f"the worker did not exit within {timeout} s") from None
        return rc, self.proc.stderr.read(), time.monotonic() - self.t0


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_while_waiting_for_documents(world, sig, code):
    """SIGTERM/SIGINT while the worker waits for documents: it exits at once with 128+N."""
    tmp_path = world.data
    w = WorkerProcess(tmp_path, "--timeout", "120")
    w.wait_ready()
    t = time.monotonic()
    w.proc.send_signal(sig)
    rc, err, _ = w.finish(30)
    assert rc == code, err[-2000:]
    assert time.monotonic() - t < 20
    assert sig.name in err


def test_signal_while_a_run_is_open(RE, world):
    """SIGTERM with a rebuilt run open (its stop never came): exits promptly and says the run was given up."""
    tmp_path = world.data
    uid, journal = _journal_of_a_run_whose_stop_was_missed(RE, tmp_path)
    w = WorkerProcess(tmp_path, "--timeout", "120", "--journal", str(journal))
    w.wait_ready()
    w.proc.send_signal(signal.SIGTERM)
    rc, err, _ = w.finish(40)
    assert rc == 143, err[-2000:]
    assert "gave up" in err and uid in err


def test_signal_during_start(world, RE):
    """SIGTERM while the worker is still starting (rebuilding its journal): it exits, it does not hang."""
    tmp_path = world.data
    uid, journal = _journal_of_a_run_whose_stop_was_missed(RE, tmp_path)
    w = WorkerProcess(tmp_path, "--timeout", "120", "--journal", str(journal))
    time.sleep(1.0)
    w.proc.send_signal(signal.SIGTERM)
    rc, err, elapsed = w.finish(60)
    assert rc != 0 and elapsed < 60


def test_timeout_honoured_with_a_run_whose_stop_never_comes(RE, world):
    """--timeout with a rebuilt run whose stop never comes (no Tiled): exits on time, says it gave up."""
    tmp_path = world.data
    uid, journal = _journal_of_a_run_whose_stop_was_missed(RE, tmp_path)
    w = WorkerProcess(tmp_path, "--timeout", "8", "--journal", str(journal))
    w.wait_ready()
    rc, err, elapsed = w.finish(60)
    assert elapsed < 8 + 10 + 20, elapsed  # start-up, then the timeout, then a short grace
    assert "gave up" in err and uid in err


def test_stop_timeout_gives_the_run_up_while_serving(RE, world):
    """--stop-timeout 1 with a rebuilt run and no Tiled: given up while serving, long before --timeout."""
    tmp_path = world.data
    uid, journal = _journal_of_a_run_whose_stop_was_missed(RE, tmp_path)
    w = WorkerProcess(tmp_path, "--timeout", "12", "--stop-timeout", "1", "--journal", str(journal))
    w.wait_ready()
    rc, err, _ = w.finish(60)
    assert rc == 0, err[-2000:]
    assert "no stop document after" in err and uid in err


def test_killed_while_the_volume_is_computed_rebuilds_it(RE, world):
    """Killed after the stop, before its volume was made: journal kept; restarted, the volume is made."""
    import threading

    tmp_path = world.data
    journal = tmp_path / "journal"
    first = StreamWorker(_settings(tmp_path), client=None, journal_dir=journal, full_volume=True)
    held = threading.Event()
    first.service.submit("earlier scan", lambda: held.wait(120))  # the volume queues behind it
    RE.subscribe(first)
    bl = make_sim_beamline(tmp_path / "raw", shape=SHAPE)
    (uid,) = RE(tomo_scan(bl.detector, bl.stage, num_projections=30, num_darks=2, num_flats=2))
    assert uid in first.ended and uid not in first.service.outcomes
    # the kill: nothing more of this process runs (its queued volume is dropped)
    first.service._pool.shutdown(wait=False, cancel_futures=True)
    held.set()
    assert [p.name for p in journal.iterdir()] == [f"{uid}.jsonl"], "the journal outlives the stop"
    second = StreamWorker(_settings(tmp_path), client=None, journal_dir=journal)
    try:
        assert second.replay_journal() == [uid]
        assert second.wait(180)
        outcome = second.service.outcomes[uid]
        assert outcome.ok, outcome.message
        assert not list(journal.iterdir()), "the journal goes once the volume is made"
    finally:
        second.close()
