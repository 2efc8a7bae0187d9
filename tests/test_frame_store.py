"""Full volume without holding the scan: where frames live, staging, slabs, budget, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from test_preview import phantom_scan, spec_for  # tests/ is on sys.path

from bluesky_tomo_hpc.batch.slab_pipeline import slab_bytes_per_row, slab_rows
from bluesky_tomo_hpc.batch.staging import spoiled_projections, write_exchange_file
from bluesky_tomo_hpc.batch.volume_at_stop import VolumeAtStop
from bluesky_tomo_hpc.engine.memory import MemoryBudgetError
from bluesky_tomo_hpc.engine.params import ReconParams
from bluesky_tomo_hpc.engine.reconstruct import reconstruct_scan
from bluesky_tomo_hpc.model import (
    FrameBatch,
    FrameRole,
    MissingCalibrationError,
    ScanData,
    ScanEnd,
    TomoDataError,
)
from bluesky_tomo_hpc.sinks.frame_store import FrameStore
from bluesky_tomo_hpc.sinks.full_volume import FullVolumeSink, ReconService
from bluesky_tomo_hpc.sources.raw_files import load_scan


def batch(role, idx, frames, angles=None, times=None, origin=None):
    return FrameBatch(role, np.asarray(idx), frames, angles=angles, timestamps=times, origin=origin)


def write_raw(path, scan) -> dict[str, tuple[str, str]]:
    """The scan as a detector would leave it: one HDF5 file, one dataset per stream."""
    with h5py.File(path, "w") as f:
        for name in ("darks", "flats", "proj"):
            f.create_dataset(name, data=scan[name])
    return {r: (str(path), n) for r, n in (("dark", "darks"), ("flat", "flats"), ("projection", "proj"))}


def feed_from_file(sink, scan, where, chunk=10):
    for role, key in (("dark", "darks"), ("flat", "flats")):
        n = len(scan[key])
        sink.add(batch(FrameRole(role), range(n), scan[key], origin=(*where[role], 0, n)))
    for i in range(0, len(scan["theta"]), chunk):
        j = min(i + chunk, len(scan["theta"]))
        sink.add(batch(FrameRole.PROJECTION, range(i, j), scan["proj"][i:j], scan["theta"][i:j],
                       origin=(*where["projection"], i, j)))


def stage(store):
    """What the full volume does at stop before reconstructing: check, then stage virtual views."""
    store.close_spill()
    store.check()
    return write_exchange_file(store.spec, store.batches(), store.staged_path)


def whole(scan) -> ScanData:
    return ScanData(projections=scan["proj"], theta=scan["theta"], darks=scan["darks"], flats=scan["flats"])


@pytest.fixture(scope="module")
def scan():
    return phantom_scan(n=64, nz=16, n_angles=90, center=33.0)


def test_event_frames_spill_to_scratch_out_of_order_and_replayed(tmp_path, scan):
    store = FrameStore(spec_for(scan), tmp_path)
    theta = scan["theta"]
    # projections arrive out of order and one batch twice (a replay after a worker restart)
    for i in [*range(45, 90, 15), *range(0, 45, 15), 15]:
        store.add(batch(FrameRole.PROJECTION, range(i, i + 15), scan["proj"][i:i + 15], theta[i:i + 15],
                        times=np.arange(i, i + 15) * 1.0))
    store.add(batch(FrameRole.FLAT, range(4), scan["flats"], times=np.zeros(4)))
    store.add(batch(FrameRole.DARK, range(4), scan["darks"]))
    assert store.spill_path.exists() and store.spilled_frames == 90 + 15 + 8
    staged = stage(store)
    data = load_scan(staged)
    np.testing.assert_array_equal(data.projections, scan["proj"])
    np.testing.assert_allclose(data.theta, theta)
    np.testing.assert_array_equal(data.flats, scan["flats"])
    np.testing.assert_array_equal(data.darks, scan["darks"])
    store.discard()
    assert not store.spill_path.exists() and not staged.exists()


def test_frames_in_files_are_not_copied(tmp_path, scan):
    where = write_raw(tmp_path / "raw.h5", scan)
    store = FrameStore(spec_for(scan), tmp_path / "scratch")
    feed_from_file(store, scan, where)
    staged = stage(store)
    assert not store.spill_path.exists()
    assert staged.stat().st_size < 64 * 1024  # views onto the raw file, not a copy
    with h5py.File(staged) as f:
        assert f["exchange/data"].is_virtual
    np.testing.assert_array_equal(load_scan(staged).projections, scan["proj"])


def test_projections_without_beam_are_left_out_of_the_staged_scan(tmp_path, scan):
    """The scan's health named 12..21 (a beam dump) and 3 (a closed shutter): staging maps every
    other projection into the raw file, a batch split around the gap; the raw file is untouched."""
    where = write_raw(tmp_path / "raw.h5", scan)
    spec = spec_for(scan)
    spec.metadata["scan_health"] = {"status": "warning", "n_projections": 90, "findings": [
        {"kind": "beam_loss", "severity": "warning", "first": 12, "last": 21},
        {"kind": "shutter_closed", "severity": "error", "first": 3, "last": 3},
        {"kind": "jump", "severity": "warning", "first": 50, "last": 50}]}  # the sample moved: kept
    store = FrameStore(spec, tmp_path / "scratch")
    feed_from_file(store, scan, where)
    staged = stage(store)
    kept = [i for i in range(90) if i != 3 and not 12 <= i <= 21]
    with h5py.File(staged) as f:
        assert f["exchange/data"].is_virtual
        assert list(f["exchange/data"].attrs["excluded_projections"]) == [3, *range(12, 22)]
    data = load_scan(staged)
    np.testing.assert_array_equal(data.projections, scan["proj"][kept])
    np.testing.assert_allclose(data.theta, scan["theta"][kept])
    with h5py.File(tmp_path / "raw.h5") as f:
        assert f["proj"].shape[0] == 90
    # a scan mostly without beam is reconstructed whole (its health says what is wrong)
    spec.metadata["scan_health"]["findings"][0]["last"] = 80
    assert spoiled_projections(spec, 90) == []


def test_missing_calibration_and_angles_are_named(tmp_path, scan):
    store = FrameStore(spec_for(scan), tmp_path)
    with pytest.raises(TomoDataError, match="no projection frames"):
        store.check()
    store.add(batch(FrameRole.PROJECTION, range(2), scan["proj"][:2]))
    store.add(batch(FrameRole.DARK, range(4), scan["darks"]))
    with pytest.raises(MissingCalibrationError, match=r"run run-1: no flat-field frames \(stream 'flat'\)"):
        store.check()
    store.add(batch(FrameRole.FLAT, range(4), scan["flats"]))
    with pytest.raises(TomoDataError, match="2 of 2 projections have no rotation angle"):
        store.check()


def test_uids_never_leave_the_scratch_folder(tmp_path, scan):
    for bad in ("../../etc/passwd", "/abs", "a/b", ".."):
        store = FrameStore(spec_for(scan, uid=bad), tmp_path)
        assert store.spill_path.parent == tmp_path and store.staged_path.parent == tmp_path


def run_sink(tmp_path, scan, budget, params, feed=None):
    """A FullVolumeSink fed ``scan`` (from a raw file by default), run to its outcome."""
    service = ReconService()
    sink = FullVolumeSink(params, service, VolumeAtStop(budget), data_dir=tmp_path / "data")
    sink.open(spec_for(scan))
    (feed or (lambda s: feed_from_file(s, scan, write_raw(tmp_path / "raw.h5", scan))))(sink)
    sink.close(ScanEnd("run-1"))
    assert service.wait(120)
    service.shutdown()
    return service.outcomes["run-1"]


@pytest.mark.parametrize("binning", [1, 2])
def test_slab_volume_equals_the_whole_scan_reconstruction(tmp_path, scan, binning):
    params = ReconParams(center=33.0, binning=binning)
    per_row, fixed = slab_bytes_per_row(len(scan["theta"]), scan["proj"].shape[2], binning)
    budget = fixed + 2 * binning * per_row  # two slices a slab, whatever the engine plan's share
    outcome = run_sink(tmp_path, scan, budget, params)
    assert outcome.ok, outcome.message
    provenance = json.loads((Path(outcome.location).parent.parent / "provenance.json").read_text())
    assert provenance["extra"]["slab_rows"] <= 4 * binning  # several slabs
    expected = reconstruct_scan(whole(scan), params).volume
    assert outcome.result.volume.shape == expected.shape
    np.testing.assert_allclose(outcome.result.volume[:], expected, rtol=0, atol=1e-5)


def test_budget_below_one_slab_names_the_minimum(tmp_path, scan):
    with pytest.raises(MemoryBudgetError, match=r"memory budget 1 MiB is too small .* at least \d+ MiB"):
        slab_rows(2**20, 1969, 2560, 1)
    outcome = run_sink(tmp_path, scan, 2**16, ReconParams(center=33.0))
    assert not outcome.ok and "MemoryBudgetError" in outcome.message and "at least" in outcome.message
    assert not list((tmp_path / "data" / "volumes").rglob("*.zarr"))  # nothing that looks complete
    staged = tmp_path / "data" / "scratch" / "run-1.input.h5"  # kept: a retry (recon FILE) needs only it
    assert f"kept for a retry: {staged}" in outcome.message
    np.testing.assert_array_equal(load_scan(staged).projections, scan["proj"])


def test_missing_raw_file_at_stop_is_named_and_nothing_looks_complete(tmp_path, scan):
    raw = tmp_path / "raw.h5"
    where = write_raw(raw, scan)
    flats = tmp_path / "flats.h5"
    with h5py.File(flats, "w") as f:
        f.create_dataset("flats", data=scan["flats"])
    where["flat"] = (str(flats), "flats")
    before = raw.read_bytes()

    def feed_then_lose_the_flats(sink):
        feed_from_file(sink, scan, where)
        flats.unlink()  # the flat-field file vanished before the stop

    outcome = run_sink(tmp_path, scan, 2**28, ReconParams(center=33.0), feed_then_lose_the_flats)
    assert not outcome.ok
    assert f"raw file(s) {flats} missing at stop" in outcome.message
    assert raw.read_bytes() == before  # raw data untouched
    assert not (tmp_path / "data" / "volumes").exists()


def test_full_volume_sink_removes_scratch_after_success(tmp_path, scan):
    def events(sink):  # frames inside events: spilled
        for i in range(0, 90, 30):
            frames, angles = scan["proj"][i:i + 30], scan["theta"][i:i + 30]
            sink.add(batch(FrameRole.PROJECTION, range(i, i + 30), frames, angles))
        sink.add(batch(FrameRole.FLAT, range(4), scan["flats"]))
        sink.add(batch(FrameRole.DARK, range(4), scan["darks"]))

    outcome = run_sink(tmp_path, scan, 2**28, ReconParams(center=33.0), events)
    assert outcome.ok, outcome.message
    assert outcome.location.endswith("0") and outcome.shape == (16, 64, 64)  # OME-Zarr level 0
    assert not list((tmp_path / "data" / "scratch").iterdir())
    result = tmp_path / "data" / "volumes" / "run-1" / ReconParams(center=33.0).params_hash / "result"
    assert (result / "provenance.json").exists() and len(list((result / "tiff").iterdir())) == 16
    expected = reconstruct_scan(whole(scan), ReconParams(center=33.0)).volume
    np.testing.assert_allclose(outcome.result.volume[:], expected, atol=1e-5)


def test_a_cropped_file_stream_is_spilled_not_read_from_its_full_frames(tmp_path, scan):
    """``iter_file_stream(rows=...)`` crops frames whose origins are the full frames."""
    from bluesky_tomo_hpc.sources.raw_files import iter_file_stream

    raw = tmp_path / "scan.h5"
    with h5py.File(raw, "w") as f:
        f.create_dataset("exchange/data", data=scan["proj"])
        f.create_dataset("exchange/data_white", data=scan["flats"])
        f.create_dataset("exchange/data_dark", data=scan["darks"])
        f.create_dataset("exchange/theta", data=np.degrees(scan["theta"]))
    items = list(iter_file_stream(raw, rows=(4, 12)))
    store = FrameStore(items[0], tmp_path / "scratch")
    for item in items[1:-1]:
        store.add(item)
    assert store.spilled_frames == 98
    np.testing.assert_array_equal(load_scan(stage(store)).projections, scan["proj"][:, 4:12])
