"""TomoCallback behind a real RunEngine with the simulated beamline (ophyd-async and ophyd v1),
the bounded queue, sink faults, and dark/flat runs resolved from a real Tiled catalog."""

from __future__ import annotations

import threading

import h5py
import numpy as np
import pytest
from test_sources_helpers import RecordingSink, SinkFactory, streams_run

from bluesky_tomo_hpc.model import FrameRole
from bluesky_tomo_hpc.sim import make_sim_beamline, tomo_dark_flat_and_scan, tomo_fly_scan, tomo_scan
from bluesky_tomo_hpc.sources.callback import TomoCallback
from bluesky_tomo_hpc.sources.documents import TomoRunRouter
from bluesky_tomo_hpc.sources.resolvers import tiled_dark_flat_resolver

SHAPE = (16, 32)


def _frames_at_origin(batch) -> np.ndarray:
    path, dataset, a, b = batch.origin
    with h5py.File(path, "r", locking=False) as f:
        return f[dataset][a:b].reshape(-1, *SHAPE)


@pytest.mark.parametrize("flavour,external", [("ophyd_async", False), ("ophyd_v1", False),
                                              ("ophyd_v1", True)])
def test_sim_step_scan_end_to_end(RE, tmp_path, flavour, external):
    bl = make_sim_beamline(tmp_path, flavour=flavour, shape=SHAPE, external_files=external)
    sinks = SinkFactory()
    cb = TomoCallback(sinks)
    RE.subscribe(cb)
    (uid,) = RE(tomo_scan(bl.detector, bl.stage, num_projections=12, num_darks=3, num_flats=4,
                          flat_position="both"))
    assert cb.flush(10)
    assert cb.errors == []
    (sink,) = sinks.sinks
    assert sink.specs[0].run_uid == uid and sink.specs[0].frame_shape == SHAPE
    assert sink.ends[0].num_frames == {"dark": 3, "flat": 8, "projection": 12}
    idx, frames, angles = sink.role(FrameRole.PROJECTION)
    np.testing.assert_array_equal(idx, np.arange(12))
    np.testing.assert_allclose(np.degrees(angles), np.linspace(0, 180, 12, endpoint=False), atol=1e-9)
    # darks are dark, flats are bright: the roles were not mixed up
    assert sink.role(FrameRole.DARK)[1].mean() < 0.5 * sink.role(FrameRole.FLAT)[1].mean()
    if flavour == "ophyd_async" or external:
        for batch in sink.batches:  # the frames are exactly those at their origin in the file
            np.testing.assert_array_equal(batch.frames, _frames_at_origin(batch))
    cb.close()


def test_sim_fly_scan_measured_angles(RE, tmp_path):
    bl = make_sim_beamline(tmp_path, flavour="ophyd_async", shape=SHAPE)
    sinks = SinkFactory()
    cb = TomoCallback(sinks)
    RE.subscribe(cb)
    RE(tomo_fly_scan(bl.detector, bl.stage, num_projections=20, num_darks=2, num_flats=3,
                     flat_position="both", exposure=0.002))
    assert cb.flush(10) and cb.errors == []
    sink = sinks.sinks[0]
    assert sink.ends[0].num_frames == {"dark": 2, "flat": 6, "projection": 20}
    idx, _, angles = sink.role(FrameRole.PROJECTION)
    np.testing.assert_array_equal(idx, np.arange(20))
    # the measured angle of every frame (external data key, its own dataset in the file)
    proj = [b for b in sink.batches if b.role is FrameRole.PROJECTION]
    with h5py.File(proj[0].origin[0], "r", locking=False) as f:
        measured = f["/entry/instrument/NDAttributes/rotation_angle"][()].ravel()
    np.testing.assert_allclose(np.degrees(angles), measured[:20])
    # (not the nominal angles: the planned trajectory is only the fallback)
    assert not np.allclose(np.degrees(angles), np.arange(20) * 9.0)
    cb.close()


def test_sim_separate_dark_flat_run(RE, tmp_path):
    bl = make_sim_beamline(tmp_path, flavour="ophyd_async", shape=SHAPE)
    sinks = SinkFactory()
    cb = TomoCallback(sinks)
    RE.subscribe(cb)
    df_uid, uid = RE(tomo_dark_flat_and_scan(bl.detector, bl.stage, num_darks=2, num_flats=3,
                                             num_projections=6))
    assert cb.flush(10) and cb.errors == []
    (sink,) = sinks.sinks
    assert sink.specs[0].run_uid == uid and sink.specs[0].dark_flat_uid == df_uid
    assert sink.ends[0].num_frames == {"dark": 2, "flat": 3, "projection": 6}
    assert [b.role for b in sink.batches[:5]].count(FrameRole.PROJECTION) == 0
    cb.close()


@pytest.mark.parametrize("fail_on", ["open", "add"])
def test_sink_exception_never_reaches_the_run_engine(RE, tmp_path, fail_on):
    bl = make_sim_beamline(tmp_path, flavour="ophyd_v1", shape=SHAPE)
    cb = TomoCallback(SinkFactory(fail_on=fail_on))
    RE.subscribe(cb)
    (uid,) = RE(tomo_scan(bl.detector, bl.stage, num_projections=4, num_darks=1, num_flats=1))
    assert RE.state == "idle"
    assert cb.flush(10) and cb.alive
    assert len(cb.errors) == 1
    assert cb.errors[0][0] == uid and f"sink RecordingSink.{fail_on} failed" in cb.errors[0][1]
    assert cb.errors_for(uid) == [cb.errors[0][1]] and cb.errors_for("other") == []
    cb.close()


def test_sink_factory_exception_and_garbage_documents(RE, tmp_path):
    def factory():
        raise RuntimeError("no GPU today")

    cb = TomoCallback(factory)
    cb("event", {"descriptor": "nobody"})  # garbage: reported, not raised
    cb("start", None)  # type: ignore[arg-type]
    bl = make_sim_beamline(tmp_path, flavour="ophyd_v1", shape=SHAPE)
    RE.subscribe(cb)
    RE(tomo_scan(bl.detector, bl.stage, num_projections=3, num_darks=1, num_flats=1))
    assert cb.flush(10)
    messages = [m for _, m in cb.errors]
    assert any("no GPU today" in m for m in messages)
    assert len(messages) == 3
    cb.close()


def test_bounded_queue_drops_frames_but_keeps_structure(tmp_path):
    gate = threading.Event()

    class SlowSink(RecordingSink):
        def open(self, spec):
            gate.wait(10)
            super().open(spec)

    sinks: list[SlowSink] = []
    cb = TomoCallback(lambda: sinks.append(SlowSink()) or sinks[-1], queue_size=3, put_timeout=0.01)
    run = streams_run(tmp_path, n_proj=20, n_dark=1, n_flat=1)
    for name, doc in run.docs:
        cb(name, doc)  # returns promptly even though the worker is stuck in open()
    gate.set()
    assert cb.flush(10)
    assert cb.dropped > 0
    assert any("queue full" in m for _, m in cb.errors)
    (sink,) = sinks
    assert len(sink.ends) == 1  # the stop document was never dropped
    assert sink.ends[0].num_frames["projection"] < 20
    assert cb.close(5) and not cb.alive


@pytest.mark.slow
def test_tiled_resolver_reads_dark_flat_run_from_catalog(RE, tmp_path, tiled_client):
    from bluesky_tiled_plugins import TiledWriter

    bl = make_sim_beamline(tmp_path / "data", flavour="ophyd_async", shape=SHAPE)
    docs: list[tuple[str, dict]] = []
    RE.subscribe(TiledWriter(tiled_client, batch_size=1))
    RE.subscribe(lambda name, doc: docs.append((name, doc)))
    df_uid, uid = RE(tomo_dark_flat_and_scan(bl.detector, bl.stage, num_darks=2, num_flats=3,
                                             num_projections=4))
    scan_docs = [(n, d) for n, d in docs if (d.get("run_start") or d.get("uid")) == uid
                 or n in ("stream_datum",) and d["descriptor"] in
                 {x["uid"] for m, x in docs if m == "descriptor" and x["run_start"] == uid}]
    assert scan_docs[0][0] == "start" and scan_docs[-1][0] == "stop"
    sinks = SinkFactory()
    router = TomoRunRouter(sinks, dark_flat_resolver=tiled_dark_flat_resolver(tiled_client))
    for name, doc in scan_docs:  # only the projection run: the dark/flat run must come from Tiled
        router(name, doc)
    assert router.errors == []
    sink = sinks.sinks[0]
    assert sink.ends[0].num_frames == {"dark": 2, "flat": 3, "projection": 4}
    with h5py.File(next(b for b in sink.batches if b.role is FrameRole.PROJECTION).origin[0], "r",
                   locking=False):
        pass
    flats = sink.role(FrameRole.FLAT)[1]
    expected = np.asarray(tiled_client[df_uid]["flat"]["det"].read()).reshape(-1, *SHAPE)
    np.testing.assert_array_equal(flats, expected)
