"""Steering on the scan's health with a real RunEngine, in-process and through a real 0MQ preview
stream (a remote worker's): the example plan re-takes the projections a simulated beam dump spoiled."""

from __future__ import annotations

import json
import socket
import time

import h5py
import numpy as np
import pytest
from bluesky.run_engine import call_in_bluesky_event_loop

from bluesky_tomo_hpc.batch.staging import write_exchange_file
from bluesky_tomo_hpc.plans.retake_lost_frames import tomo_scan_retaking_lost_frames
from bluesky_tomo_hpc.sim.beamline import make_sim_beamline
from bluesky_tomo_hpc.sim.faults import BeamlineFaults
from bluesky_tomo_hpc.sinks.preview import PreviewSink
from bluesky_tomo_hpc.sinks.preview_stream import PreviewPublisher
from bluesky_tomo_hpc.sinks.scan_health_sink import ScanHealthSink
from bluesky_tomo_hpc.sinks.sink import SinkFanout
from bluesky_tomo_hpc.sources.callback import TomoCallback
from bluesky_tomo_hpc.steering import ResultFutures, ScanHealthSignals, SteeringTimeout, wait_for_metrics
from bluesky_tomo_hpc.steering.wait import wait_for_health

DUMP = BeamlineFaults(beam_dumps=((40, 55, 0.1),))  # the beam at 10 % for 15 projections
N = 120


def _beamline(tmp_path, faults=DUMP):
    return make_sim_beamline(tmp_path / "raw", flavour="ophyd_v1", shape=(32, 64), faults=faults)


def _scan(bl, futures, **kw):
    return tomo_scan_retaking_lost_frames(bl.detector, bl.stage, futures, num_projections=N, num_darks=3,
                                          num_flats=3, health_timeout=30, **kw)


def _plan_result(RE, plan):
    """Run ``plan`` and return what it returned (the RunEngine itself returns run uids)."""
    out = []

    def keep():
        out.append((yield from plan))
    RE(keep())
    return out[0]


def _check_retake(uid, retaken, final):
    assert retaken == [list(range(40, 55))]  # one round: exactly the dumped projections
    alarms = [(f["kind"], f["first"], f["last"]) for f in final["findings"] if f["severity"] != "info"]
    assert alarms == [("beam_loss", 40, 54)]  # the re-takes (120..134) had the beam


class _Keep:
    """A sink that keeps the scan's spec and batches (what the batch job's staging receives)."""

    def open(self, spec):
        self.spec, self.batches = spec, []

    def add(self, batch):
        self.batches.append(batch)

    def close(self, end):
        pass


def test_plan_retakes_frames_lost_to_a_beam_dump_in_process(RE, tmp_path):
    signals = ScanHealthSignals(name="scan_health")
    futures = ResultFutures(None, health=signals)
    sinks: list[ScanHealthSink] = []
    keep = _Keep()

    def factory():
        sinks.append(ScanHealthSink([futures._on_health_update]))
        return SinkFanout([sinks[-1], keep])

    cb = TomoCallback(factory)
    RE.subscribe(cb)
    bl = _beamline(tmp_path)
    uid, retaken = _plan_result(RE, _scan(bl, futures))
    assert cb.flush(30) and cb.errors == []
    _check_retake(uid, retaken, sinks[0].final.summary)
    # the soft signals a plan reads say the same
    assert call_in_bluesky_event_loop(signals.status.get_value()) == "error"
    assert json.loads(call_in_bluesky_event_loop(signals.bad_frames.get_value())) == list(range(40, 55))
    assert call_in_bluesky_event_loop(signals.projections.get_value()) == N + 15
    cb.close()
    # the reconstruction's input leaves the spoiled projections out and keeps their re-takes (the
    # raw data keep everything)
    staged = write_exchange_file(keep.spec, keep.batches, tmp_path / "staged.h5")
    with h5py.File(staged) as f:
        data, theta = f["exchange/data"], f["exchange/theta"][()]
        assert data.shape[0] == N
        assert list(data.attrs["excluded_projections"]) == list(range(40, 55))
        assert np.allclose(np.sort(theta), np.linspace(0, 180, N, endpoint=False))
        assert data[40:].mean() > 0.5 * data[:40].mean()  # no dark frame of the dump among them


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_same_plan_steers_through_a_remote_workers_preview_stream(RE, tmp_path):
    address = f"tcp://127.0.0.1:{_free_port()}"
    publisher = PreviewPublisher(address, hwm=1000)
    futures = ResultFutures.from_preview_stream(address)
    sinks: list[ScanHealthSink] = []

    def factory():  # what the worker's SinkFactory wires: health first, on the same socket
        sinks.append(ScanHealthSink([publisher.publish_health]))
        preview = PreviewSink([publisher], publish_interval_s=0.1, extra_metadata=sinks[-1].metadata)
        return SinkFanout([sinks[-1], preview])

    try:
        time.sleep(0.3)  # the subscriber's connection settles (0MQ drops what comes before)
        cb = TomoCallback(factory)
        RE.subscribe(cb)
        bl = _beamline(tmp_path)
        uid, retaken = _plan_result(RE, _scan(bl, futures))
        assert cb.flush(30) and cb.errors == []
        _check_retake(uid, retaken, sinks[0].final.summary)
        # wait_for_metrics works on the remote preview as in-process; the final preview carries
        # the final health in its metadata (what Tiled, watch and the Live page show)
        metrics = _plan_result(RE, wait_for_metrics(futures, uid, "preview", timeout=30))
        assert metrics.run_uid == uid and metrics.sharpness["xy"] > 0
        report = _plan_result(RE, wait_for_health(futures, uid, final=True, timeout=10))
        assert report.final and report.frames("beam_loss") == list(range(40, 55))
        assert futures.feed.received > 10 and futures.feed.skipped == 0
        with pytest.raises(SteeringTimeout, match="no final health for run nope"):
            _plan_result(RE, wait_for_health(futures, "nope", final=True, timeout=0.2))
        cb.close()
    finally:
        futures.close()
        publisher.close()
