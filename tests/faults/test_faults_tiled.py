"""Tiled failing during and after scans: raw runs and volumes are kept in the data folder, the
failure is in the run's error list, and everything reaches Tiled once it is back (by itself and
by ``bluesky-tomo-hpc recover``), idempotently. Real RunEngine, real HDF5, real Tiled processes."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from fault_services import TiledProcess
from fault_world import assert_scan_not_aborted, assert_stored_or_failed_with_reason

from bluesky_tomo_hpc.engine.params import ReconParams
from bluesky_tomo_hpc.live.session import TomoPipeline
from bluesky_tomo_hpc.results.raw_backup import read_backup, replay_backup
from bluesky_tomo_hpc.results.spool import ResultSpool
from bluesky_tomo_hpc.results.tiled_results import find_reconstructions, processed_container
from bluesky_tomo_hpc.results.tiled_server import raw_catalog
from bluesky_tomo_hpc.settings import Settings
from bluesky_tomo_hpc.sim.beamline import make_sim_beamline
from bluesky_tomo_hpc.sim.plans import tomo_scan

SHAPE = (8, 32)
N_PROJ = 30


@pytest.fixture(autouse=True)
def quick_tiled_retries(monkeypatch):
    """Tiled's client retries a dead server for 45 s by default; the cases need seconds."""
    import tiled.client.utils as tiled_utils

    monkeypatch.setattr(tiled_utils, "TILED_RETRY_ATTEMPTS", 2)
    monkeypatch.setattr(tiled_utils, "TILED_RETRY_TIMEOUT", 1.0)


@pytest.fixture
def tiled(world):
    proc = TiledProcess(world.data / "tiled", world.data).start()
    yield proc
    proc.kill()


def _pipeline(tmp_path: Path, tiled: TiledProcess, *, preview: bool = False) -> TomoPipeline:
    """A pipeline on ``tiled``; ``preview`` adds the live preview (one final, at the given centre)."""
    settings = Settings(data_dir=tmp_path / "data", recon=ReconParams(filter_name="shepp", center=15.5),
                        jobs={"executor": "none"}, preview={"enabled": preview, "refine_center": False})
    return TomoPipeline(settings, tiled.client(), recovery_interval_s=0.5)




def _wait_for(predicate, timeout: float = 300.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.3)


def _kill_at_stop(tiled: TiledProcess):
    """A RunEngine callback that crashes Tiled when the scan's stop is emitted."""

    def kill(name, doc):
        if name == "stop":
            tiled.kill()

    return kill


def _scan(RE, pipe: TomoPipeline, on_doc=None) -> str:
    bl = make_sim_beamline(pipe.data_dir / "raw", shape=SHAPE)
    pipe.subscribe(RE)
    if on_doc is not None:
        RE.subscribe(on_doc)
    stops: list[dict] = []
    RE.subscribe(lambda n, d: stops.append(d) if n == "stop" else None)
    (uid,) = RE(tomo_scan(bl.detector, bl.stage, num_projections=N_PROJ, num_darks=2, num_flats=2))
    assert_scan_not_aborted(stops)
    # (the simulated detector keeps its file open in this process: size, not h5py, is checked)
    files = list((pipe.data_dir / "raw").rglob("*.h5"))
    assert files and all(p.stat().st_size > 0 for p in files), "raw detector files are on disk"
    return uid


def test_tiled_killed_mid_scan_nothing_lost_and_registered_when_back(RE, world, tiled):
    """Tiled killed mid-scan: all kept locally and reported, in Tiled once it is back.

    Tiled killed mid-scan: scan completes; raw run in the JSONL backup, the volume and the final preview
    (slices and metadata, preview.npz without pickles) in the spool, the errors in the run's list; after a
    restart the recovery thread completes the raw run and registers the volume and the preview.
    """
    tmp_path = world.data
    pipe = _pipeline(tmp_path, tiled, preview=True)
    state = {"events": 0}

    def kill_mid_scan(name, doc):
        if name == "event":
            state["events"] += 1
            if state["events"] == 8:
                pipe.tiled_writer.flush(30)  # Tiled has the start and some data: a partial run
                tiled.kill()

    try:
        uid = _scan(RE, pipe, kill_mid_scan)
        assert pipe.wait(300)
        assert_stored_or_failed_with_reason(pipe.service.outcomes)
        backup = pipe.data_dir / "tiled_backup" / f"{uid.split('-')[0]}.jsonl"
        assert backup.exists(), "the raw run went to the JSONL backup"
        assert [n for n, _ in read_backup(backup)][-1] == "stop"
        entries = {e.kind: e for e in pipe.spool.pending()}
        assert sorted(entries) == ["full", "preview"] and {e.raw_uid for e in entries.values()} == {uid}
        with np.load(entries["preview"].path / "preview.npz", allow_pickle=False) as npz:
            assert sorted(npz.files) == ["xy", "xz", "yz"]
        final = pipe.sinks.previews[-1].final
        errors = " | ".join(pipe.router.errors_for(uid))
        assert "kept in" in errors and "recover" in errors, errors
        assert "final preview to Tiled failed" in errors, errors
        assert "raw run not fully written to Tiled" in errors
        outcome = pipe.service.outcomes[uid]
        assert outcome.ok and outcome.location.startswith("spooled:")

        tiled.start()
        _wait_for(lambda: not pipe.spool.pending() and not list(backup.parent.glob("*.jsonl")),
                  what="the recovery thread")
        client = tiled.client()
        run = raw_catalog(client)[uid]
        assert run.metadata["stop"]["exit_status"] == "success"
        assert {"dark", "flat", "primary"} <= set(run)
        (node,) = find_reconstructions(processed_container(client), raw_uid=uid, kind="full")
        assert node["volume"].shape == (SHAPE[0], SHAPE[1], SHAPE[1])
        assert "spooled_because" in node.metadata
        (pnode,) = find_reconstructions(processed_container(client), raw_uid=uid, kind="preview")
        assert pnode["preview_xy"].read().shape == final.slices["xy"].shape
        assert pnode.metadata["n_projections_used"] == final.metadata["n_projections_used"]
        assert pnode.metadata["state"] == "complete"
    finally:
        pipe.close()


def test_backup_replayed_twice_gives_no_conflict(RE, world, tiled):
    """Backup replayed into a Tiled that has the run: 'already-complete', no HTTP 409.

    Replaying a raw-run backup into a Tiled that already has the complete run: 'already-complete', no HTTP
    409, nothing changed.
    """
    tmp_path = world.data
    pipe = _pipeline(tmp_path, tiled)
    try:
        uid = _scan(RE, pipe)
        assert pipe.wait(300)
    finally:
        pipe.close()
    backup = tmp_path / "backup" / "run.jsonl"
    backup.parent.mkdir()
    from bluesky_tomo_hpc.sources.tiled_documents import run_documents

    raw = raw_catalog(tiled.client())
    with open(backup, "w") as f:
        for name, doc in run_documents(raw[uid]):
            f.write(json.dumps({"name": name, "doc": doc}) + "\n")
    first = replay_backup(backup, raw)
    assert first.status == "already-complete" and first.ok
    shutil.copy(backup.parent / "replayed" / backup.name, backup)
    assert replay_backup(backup, raw).status == "already-complete"


def test_partial_run_completed_from_backup(RE, world, tiled):
    """Raw run left without its stop: completed from the backup, files untouched.

    A raw run left in Tiled without its stop (a Tiled crash) is completed from the JSONL backup: stop
    present, every stream readable, detector files untouched.
    """
    tmp_path = world.data
    from bluesky.callbacks.json_writer import JSONLinesWriter
    from bluesky_tiled_plugins import TiledWriter

    raw = raw_catalog(tiled.client())
    backup_dir = tmp_path / "backup"
    backup_dir.mkdir()
    docs: list[tuple[str, dict]] = []
    RE.subscribe(lambda n, d: docs.append((n, d)))
    RE.subscribe(JSONLinesWriter(str(backup_dir)))
    bl = make_sim_beamline(tmp_path / "raw", shape=SHAPE)
    (uid,) = RE(tomo_scan(bl.detector, bl.stage, num_projections=N_PROJ, num_darks=2, num_flats=2))
    h5 = sorted((tmp_path / "raw").rglob("*.h5"))
    sizes = {p: p.stat().st_size for p in h5}
    writer = TiledWriter(raw, batch_size=1)
    for name, doc in docs[: len(docs) // 2]:  # what Tiled had when it crashed
        writer(name, doc)
    assert uid in raw and not raw[uid].metadata.get("stop")
    (path,) = backup_dir.glob("*.jsonl")
    outcome = replay_backup(path, raw)
    assert outcome.status == "replaced-partial", outcome
    run = raw[uid]
    assert run.metadata["stop"]["exit_status"] == "success"
    assert run["primary"]["rot"].read().shape[0] == N_PROJ
    assert {p: p.stat().st_size for p in h5} == sizes, "the detector files are untouched"
    assert replay_backup(backup_dir / "replayed" / path.name, raw).status == "already-complete"


def test_backup_without_stop_is_closed_only_when_asked(RE, world, tiled):
    """Backup without a stop: left alone, closed as 'abort' only when asked.

    A backup with no stop (the acquisition died too) is left alone by default and closed as 'abort' with a
    reason by --complete-unstopped.
    """
    tmp_path = world.data
    from bluesky.callbacks.json_writer import JSONLinesWriter

    raw = raw_catalog(tiled.client())
    backup_dir = tmp_path / "backup"
    backup_dir.mkdir()
    writer = JSONLinesWriter(str(backup_dir))
    RE.subscribe(lambda n, d: writer(n, d) if n != "stop" else None)
    bl = make_sim_beamline(tmp_path / "raw", shape=SHAPE)
    (uid,) = RE(tomo_scan(bl.detector, bl.stage, num_projections=N_PROJ, num_darks=2, num_flats=2))
    (path,) = backup_dir.glob("*.jsonl")
    assert replay_backup(path, raw).status == "no-stop"
    assert uid not in raw and path.exists()
    outcome = replay_backup(path, raw, complete_unstopped=True)
    assert outcome.status == "written", outcome
    stop = raw[uid].metadata["stop"]
    assert stop["exit_status"] == "abort" and "never written" in stop["reason"]


def test_torn_backup_line_is_ignored(RE, world, tiled):
    """Backup with a torn last line: complete documents replayed, torn one ignored.

    A backup whose last line was torn by a crash: the complete documents are replayed, the torn one
    ignored.
    """
    tmp_path = world.data
    from bluesky.callbacks.json_writer import JSONLinesWriter

    raw = raw_catalog(tiled.client())
    backup_dir = tmp_path / "backup"
    backup_dir.mkdir()
    RE.subscribe(JSONLinesWriter(str(backup_dir)))
    bl = make_sim_beamline(tmp_path / "raw", shape=SHAPE)
    (uid,) = RE(tomo_scan(bl.detector, bl.stage, num_projections=N_PROJ, num_darks=2, num_flats=2))
    (path,) = backup_dir.glob("*.jsonl")
    with open(path, "a") as f:
        f.write('{"name": "event", "doc": {"uid": "tor')
    docs = read_backup(path)
    assert docs[-1][0] == "stop"
    assert replay_backup(path, raw).status == "written"
    assert raw[uid].metadata["stop"]["exit_status"] == "success"


def test_tiled_down_at_stop_recover_command(RE, world, tiled, monkeypatch, capsys):
    """Tiled down at stop: 'recover' keeps everything until Tiled is back, then exits 0.

    Tiled down at the scan's stop: volume and final preview spooled, raw run backed up; 'recover' fails
    while Tiled is down (nothing removed) and exits 0 once it is back, reporting each, with run, volume and
    preview in Tiled.
    """
    tmp_path = world.data
    from bluesky_tomo_hpc.cli.main import main

    pipe = _pipeline(tmp_path, tiled, preview=True)
    pipe.recovery.stop()  # only the command recovers in this case

    try:
        uid = _scan(RE, pipe, _kill_at_stop(tiled))
        assert pipe.wait(300)
    finally:
        pipe.close()
    spool = ResultSpool(tmp_path / "data" / "spool")
    assert sorted((e.raw_uid, e.kind) for e in spool.pending()) == [(uid, "full"), (uid, "preview")]
    monkeypatch.setenv("TILED_API_KEY", tiled.api_key)
    argv = ["recover", "--data-dir", str(tmp_path / "data"), "--tiled-uri", tiled.uri]
    try:  # Tiled unreachable: an error (one line or an exit code), and nothing is removed
        assert main(argv) != 0
    except Exception as exc:
        assert "connect" in str(exc).lower() or "refused" in str(exc).lower(), exc
    assert len(spool.pending()) == 2
    tiled.start()
    capsys.readouterr()
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "-full: registered in Tiled" in out and "-preview: registered in Tiled" in out, out
    assert not spool.pending()
    assert raw_catalog(tiled.client())[uid].metadata["stop"]["exit_status"] == "success"
    (node,) = find_reconstructions(processed_container(tiled.client()), raw_uid=uid, kind="full")
    assert node.metadata["raw_uid"] == uid
    (pnode,) = find_reconstructions(processed_container(tiled.client()), raw_uid=uid, kind="preview")
    assert {"preview_xy", "preview_xz", "preview_yz"} <= set(pnode)
    assert main(argv) == 0, "a second recover has nothing to do"


def test_spool_on_full_disk_is_reported_not_silent(RE, world, tiled, monkeypatch):
    """Tiled down and disk full: scan completes, the run's error list says why.

    Tiled down and the disk full (ENOSPC while spooling): the scan completes, the raw data stays, and the
    run's error list says the volume could not be kept and why.
    """
    tmp_path = world.data
    import errno

    import bluesky_tomo_hpc.results.spool as spool_mod

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(spool_mod.VolumeWriter, "write", no_space)
    pipe = _pipeline(tmp_path, tiled)
    pipe.recovery.stop()

    try:
        uid = _scan(RE, pipe, _kill_at_stop(tiled))
        assert pipe.wait(300)
        assert_stored_or_failed_with_reason(pipe.service.outcomes)
        outcome = pipe.service.outcomes[uid]
        assert not outcome.ok and "No space left" in outcome.message
        errors = " | ".join(pipe.router.errors_for(uid))
        assert "full reconstruction failed" in errors and "No space left" in errors
        assert not list((tmp_path / "data" / "spool").glob("*")), "no half entry left behind"
    finally:
        pipe.close()

