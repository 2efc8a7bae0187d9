"""Scan health with a real RunEngine: every fault kind of the simulated beamline is found at its
frames, and clean scans (simulated and the real datasets of ../shared/data) raise no alarm."""

from __future__ import annotations

import glob
import math

import numpy as np
import pytest
from bluesky import preprocessors as bpp

from bluesky_tomo_hpc.engine.scan_health import ScanHealth
from bluesky_tomo_hpc.model import FrameBatch, FrameRole, ScanEnd, ScanSpec, TomoDataError
from bluesky_tomo_hpc.sim.beamline import make_sim_beamline
from bluesky_tomo_hpc.sim.faults import BeamlineFaults
from bluesky_tomo_hpc.sim.plans import _darks, _flats, _projections, _scan_md, tomo_scan
from bluesky_tomo_hpc.sinks.scan_health_sink import ScanHealthSink
from bluesky_tomo_hpc.sinks.sink import SinkFanout
from bluesky_tomo_hpc.sources.callback import TomoCallback
from bluesky_tomo_hpc.sources.raw_files import iter_file_stream

SHAPE = (64, 128)
ALARMS = ("warning", "error")


def _run(RE, tmp_path, plan_of, *, faults=None, seed=0, flavour="ophyd_v1", shape=SHAPE, **beamline) -> dict:
    """One scan through RE -> TomoCallback -> ScanHealthSink; the final health summary."""
    sinks: list[ScanHealthSink] = []

    def factory():
        sinks.append(ScanHealthSink())
        return SinkFanout([sinks[-1]])

    bl = make_sim_beamline(tmp_path / "raw", flavour=flavour, shape=shape, seed=seed, faults=faults,
                           **beamline)
    cb = TomoCallback(factory)
    token = RE.subscribe(cb)
    try:
        RE(plan_of(bl))
        assert cb.flush(60)
    finally:
        RE.unsubscribe(token)
        cb.close()
    assert cb.errors == [] and len(sinks) == 1 and sinks[0].final is not None
    return sinks[0].final.summary


def _scan(n=180, stop=180.0, **kw):
    return lambda bl: tomo_scan(bl.detector, bl.stage, num_projections=n, stop=stop, num_darks=4, num_flats=4,
                                **kw)


def _alarms(summary: dict, kind: str | None = None) -> list[dict]:
    return [f for f in summary["findings"] if f["severity"] in ALARMS and (kind is None or f["kind"] == kind)]


@pytest.mark.parametrize("faults, kind, first, last, severity", [
    (BeamlineFaults(beam_dumps=((40, 70, 0.1),)), "beam_loss", 40, 69, "error"),
    (BeamlineFaults(beam_dumps=((100, 105, 0.0),)), "shutter_closed", 100, 104, "error"),
    (BeamlineFaults(jumps=((90, 0.0, 5.0),)), "sample_jump", 90, 90, "error"),
    (BeamlineFaults(jumps=((90, 3.0, 0.0),)), "sample_motion_vertical", 90, 179, "warning"),
    (BeamlineFaults(overexposed=((100, 110, 4.0),)), "saturated", 100, 109, "error"),
], ids=["beam-dump", "shutter", "jump-sideways", "jump-vertical", "overexposed"])
def test_each_fault_is_found_at_its_frames(RE, tmp_path, faults, kind, first, last, severity):
    summary = _run(RE, tmp_path, _scan(), faults=faults)
    found = _alarms(summary)
    assert [(f["kind"], f["first"], f["last"], f["severity"]) for f in found] == [
        (kind, first, last, severity)]
    assert summary["status"] == severity and summary["final"]


def test_drift_in_a_360_degree_scan_is_found_by_the_0_180_pairs(RE, tmp_path):
    faults = BeamlineFaults(drift_px_per_projection=(0.0, 0.02))  # 7 px over the scan, sideways
    found = _alarms(_run(RE, tmp_path, _scan(360, 360.0), faults=faults))
    assert [f["kind"] for f in found] == ["sample_motion_horizontal"]
    assert 180 < found[0]["first"] < 260 and found[0]["last"] == 359


def test_flat_field_drift_between_first_and_last_flats(RE, tmp_path):
    found = _alarms(_run(RE, tmp_path, _scan(flat_position="both"), flat_drift_per_frame=5e-4))
    assert [(f["kind"], f["role"]) for f in found] == [("flat_field_drift", "flat")]
    assert found[0]["value"] == pytest.approx(1 + 5e-4 * 190, abs=0.02)  # level of last vs first flats


def _gapped_scan(angles):
    def plan(bl):
        md = _scan_md(bl.detector, plan_name="gapped", rotation_axis="rot", motor="rot", num_projections=180,
                      num_darks=4, num_flats=4, start=0.0, stop=180.0, exposure=0.01, layout="streams",
                      dark_flat_uid=None, flat_position="before", plan_args={})

        def body():
            yield from _darks(bl.detector, bl.stage, 4, 0.01)
            yield from _flats(bl.detector, bl.stage, 4, 0.01)
            yield from _projections(bl.detector, bl.stage, angles, 0.01)
        return (yield from bpp.run_wrapper(body(), md=md))
    return plan


def test_missing_and_out_of_order_angles(RE, tmp_path):
    angles = np.delete(np.arange(180.0), np.arange(60, 70))  # 10 projections never taken
    summary = _run(RE, tmp_path, _gapped_scan(angles))
    kinds = [(f["kind"], f["first"], f["last"]) for f in _alarms(summary)]
    assert kinds == [("angles_missing", 60, 60), ("angles_missing", 170, 179)]  # the gap, the count
    shuffled = np.concatenate([np.arange(90.0, 180.0), np.arange(0.0, 90.0)])  # second half first
    summary = _run(RE, tmp_path / "b", _gapped_scan(shuffled))
    assert _alarms(summary) == []  # nothing lost: the reconstruction sorts angles
    assert [f["kind"] for f in summary["findings"]] == ["angles_out_of_order"]


def test_no_false_alarm_over_20_clean_simulated_scans(RE, tmp_path):
    for seed in range(20):
        flats = ("before", "after", "both")[seed % 3]
        plan = _scan(200, 360.0) if seed % 4 == 0 else _scan(60 + 2 * seed, flat_position=flats)
        flavour = "ophyd_v1"
        if seed % 4 == 1:  # the ophyd-async detector writing HDF5: frames come by StreamDatum
            flavour = "ophyd_async"
        summary = _run(RE, tmp_path / str(seed), plan, seed=seed, flavour=flavour, shape=(48, 96),
                       rotation_offset_px=(seed % 5) - 2.0, photons=[2e4, 5e3, 4e4][seed % 3])
        assert _alarms(summary) == [], (seed, summary["findings"])
        assert summary["status"] in ("ok", "info")


def _feed(path) -> dict:
    sink = ScanHealthSink()
    for item in iter_file_stream(path):
        if isinstance(item, ScanSpec):
            sink.open(item)
        elif isinstance(item, FrameBatch):
            sink.add(item)
        else:
            sink.close(item)
    return sink.final.summary


def test_no_false_alarm_on_the_real_datasets(shared_data):
    paths = sorted(glob.glob(str(shared_data / "*" / "*.h5")))
    paths.append(str(shared_data / "httomo_k11_diad/k11-18014.nxs"))
    assert len(paths) >= 9
    for path in paths:
        summary = _feed(path)
        assert _alarms(summary) == [], (path, summary["findings"])
    # the Diamond STXM scan really was taken out of order (the first two angles): said, not alarmed
    savu = _feed(shared_data / "savu_i18_stxm360/savu_i18_stxm360.h5")
    assert [(f["kind"], f["first"]) for f in savu["findings"]] == [("angles_out_of_order", 2)]


def test_bad_input_is_refused_with_one_line_and_memory_is_bounded():
    sink = ScanHealthSink()
    sink.open(ScanSpec("r1", (32, 64)))
    with pytest.raises(TomoDataError, match="frames of shape"):
        sink.add(FrameBatch(FrameRole.PROJECTION, np.arange(1), np.zeros((1, 16, 64), np.uint16),
                            np.zeros(1)))
    with pytest.raises(TomoDataError, match="without angles"):
        sink.add(FrameBatch(FrameRole.PROJECTION, np.arange(1), np.zeros((1, 32, 64), np.uint16)))
    sink.close(ScanEnd("r1"))
    h = ScanHealth((32, 64), max_frames=50, max_pairs=10, max_findings=5)
    rng = np.random.default_rng(0)
    for i in range(400):  # every other frame dark: one finding each, capped
        frame = rng.integers(900, 1100, (1, 32, 64)).astype(np.uint16) // (1 + 99 * (i % 2 and i > 10))
        h.add_projections(frame, np.array([i]), np.array([math.radians(i * 0.9)]))
    h.finish()
    assert len(h.record.index) == 50 and len(h._pairs) <= 10
    assert len(h.findings) == 5 and h.n_dropped_findings > 100
    assert len(h.summary(max_points=64)["timeline"]["index"]) <= 64


def test_dead_pixels_in_the_flats_and_zero_pixels_in_projections():
    rng = np.random.default_rng(1)
    flat = rng.poisson(5000, (1, 48, 96)).astype(np.uint16)
    flat[0, :, 10] = 0  # one dead column: 1 % of the pixels
    sink = ScanHealthSink()
    sink.open(ScanSpec("dead", (48, 96), n_projections=20))
    sink.add(FrameBatch(FrameRole.DARK, np.arange(1), np.zeros((1, 48, 96), np.uint16)))
    sink.add(FrameBatch(FrameRole.FLAT, np.arange(1), flat))
    for i in range(20):
        frame = rng.poisson(4000, (1, 48, 96)).astype(np.uint16)
        if i >= 15:
            frame[0, :, 30:40] = 0  # a detector tile that stopped reading
        sink.add(FrameBatch(FrameRole.PROJECTION, np.array([i]), frame, np.array([math.radians(9 * i)])))
    sink.close(ScanEnd("dead"))
    found = [(f["kind"], f["role"], f["first"], f["last"]) for f in _alarms(sink.final.summary)]
    assert found == [("dead_pixels", "flat", 0, 0), ("zero_pixels", "projection", 15, 19)]
