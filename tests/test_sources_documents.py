"""TomoRunRouter on hand-built document streams: every document kind, any order, every layout."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from event_model import compose_run
from test_sources_helpers import (
    SinkFactory,
    filled_event_page_run,
    legacy_ad_hdf5_run,
    replay_order,
    shuffled,
    streams_run,
)

from bluesky_tomo_hpc.model import FrameRole
from bluesky_tomo_hpc.sources.darkflat import DarkFlatSet
from bluesky_tomo_hpc.sources.documents import TomoRunRouter


def feed(router: TomoRunRouter, docs) -> None:
    for name, doc in docs:
        router(name, doc)


def check_run(sink, run, *, angles: bool = True) -> None:
    """The sink saw one open, every frame of every role with the right index, angle and data."""
    assert len(sink.specs) == 1 and len(sink.ends) == 1
    assert sink.specs[0].run_uid == run.uid and sink.specs[0].frame_shape == (4, 5)
    for role, frames in run.expected.items():
        idx, got, got_angles = sink.role(role)
        np.testing.assert_array_equal(idx, np.arange(len(frames)), err_msg=role.value)
        np.testing.assert_array_equal(got, frames, err_msg=role.value)
        if role is FrameRole.PROJECTION and angles:
            np.testing.assert_allclose(got_angles, np.radians(run.angles_deg))
    assert sink.ends[0].num_frames == {r.value: len(f) for r, f in run.expected.items()}


@pytest.mark.parametrize("shared", [True, False])
def test_stream_datum_live_order(tmp_path, shared):
    run = streams_run(tmp_path, shared=shared)
    sinks = SinkFactory()
    router = TomoRunRouter(sinks)
    feed(router, run.docs)
    assert router.errors == []
    (sink,) = sinks.sinks
    check_run(sink, run)
    spec = sink.specs[0]
    assert spec.streams == {"projection": "primary", "dark": "dark", "flat": "flat"}
    assert spec.plan_name == "test_tomo" and spec.scan_id == 7 and spec.detector_key == "det"
    assert sorted(spec.raw_files) == sorted(run.files)
    # origins point at the frames in the file; the shared resource's indices run on
    first_proj = next(b for b in sink.batches if b.role is FrameRole.PROJECTION)
    assert first_proj.origin[1:] == ("/entry/data/data", 5 if shared else 0, 6 if shared else 1)
    # darks and flats reached the sink before any projection, with event timestamps
    roles = [b.role for b in sink.batches]
    last_calibration = max(i for i, r in enumerate(roles) if r is not FrameRole.PROJECTION)
    assert roles.index(FrameRole.PROJECTION) > last_calibration
    assert all(b.timestamps is not None for b in sink.batches)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_shuffled_stream_datum_and_event_order(tmp_path, seed):
    run = streams_run(tmp_path, n_proj=8)
    sinks = SinkFactory()
    router = TomoRunRouter(sinks)
    feed(router, shuffled(run.docs, seed))
    assert router.errors == []
    check_run(sinks.sinks[0], run)


def test_replay_order_events_before_stream_resources(tmp_path):
    run = streams_run(tmp_path, n_proj=5)
    sinks = SinkFactory()
    router = TomoRunRouter(sinks)
    feed(router, replay_order(run.docs))
    assert router.errors == []
    check_run(sinks.sinks[0], run)


def test_fly_scan_without_events_uses_planned_angles(tmp_path):
    run = streams_run(tmp_path, fly=True, chunk=4, n_proj=10, n_dark=3, n_flat=5)
    assert not any(name == "event" for name, _ in run.docs)
    sinks = SinkFactory()
    router = TomoRunRouter(sinks)
    feed(router, run.docs)
    assert router.errors == []
    sink = sinks.sinks[0]
    check_run(sink, run)
    proj = [b for b in sink.batches if b.role is FrameRole.PROJECTION]
    assert [len(b) for b in proj] == [4, 4, 2]  # one batch per StreamDatum range


def test_filled_event_pages(tmp_path):
    run = filled_event_page_run()
    sinks = SinkFactory()
    router = TomoRunRouter(sinks)
    feed(router, run.docs)
    assert router.errors == []
    sink = sinks.sinks[0]
    check_run(sink, run)
    assert sink.specs[0].detector_key == "tomo_det_image"
    assert all(b.origin is None for b in sink.batches)  # frames travelled in the documents


@pytest.mark.parametrize("datum_after_event", [False, True])
def test_legacy_resource_datum_page(tmp_path, datum_after_event):
    run = legacy_ad_hdf5_run(tmp_path, datum_after_event=datum_after_event)
    sinks = SinkFactory()
    router = TomoRunRouter(sinks)
    feed(router, run.docs)
    assert router.errors == []
    sink = sinks.sinks[0]
    check_run(sink, run)
    assert all(b.origin[1] == "/entry/data/data" for b in sink.batches)


def test_non_tomography_runs_are_ignored(tmp_path):
    bundle = compose_run(metadata={"plan_name": "count"})
    key = {"x": {"source": "s", "dtype": "number", "shape": []}}
    desc = bundle.compose_descriptor(name="primary", data_keys=key)
    docs = [("start", bundle.start_doc), ("descriptor", desc.descriptor_doc)]
    docs += [("event", desc.compose_event(data={"x": i}, timestamps={"x": 0.0}, seq_num=i + 1))
             for i in range(50)]
    docs.append(("stop", bundle.compose_stop()))
    sinks = SinkFactory()
    router = TomoRunRouter(sinks)
    feed(router, docs)
    assert sinks.sinks == [] and router.errors == [] and router.runs == {}
    # the next (tomography) run is handled normally
    run = streams_run(tmp_path, n_proj=3)
    feed(router, run.docs)
    check_run(sinks.sinks[0], run)


def test_missing_flats_reported_and_sink_sees_none(tmp_path):
    run = streams_run(tmp_path, streams=("dark", "primary"), n_proj=4)
    sinks = SinkFactory()
    router = TomoRunRouter(sinks)
    feed(router, run.docs)
    sink = sinks.sinks[0]
    assert not [b for b in sink.batches if b.role is FrameRole.FLAT]
    assert sink.ends[0].num_frames["flat"] == 0 and sink.ends[0].num_frames["projection"] == 4
    assert [(uid, msg) for uid, msg in router.errors if "no flat frames" in msg and "'flat'" in msg]
    assert all(uid == run.uid for uid, _ in router.errors)


def test_detector_key_not_in_descriptors_skips_run_with_warning(tmp_path, caplog):
    tomo = {"version": 1, "layout": "streams", "detector": "camera_image", "rotation_axis": "rot"}
    run = streams_run(tmp_path, tomo=tomo)
    sinks = SinkFactory()
    router = TomoRunRouter(sinks)
    with caplog.at_level(logging.WARNING, logger="bluesky_tomo_hpc.sources"):
        feed(router, run.docs)
    assert sinks.sinks == []
    assert any("skipped" in r.message and "'camera_image'" in r.message for r in caplog.records
               if r.levelno == logging.WARNING)
    assert len(router.errors) == 1 and "camera_image" in router.errors[0][1]


def test_projection_stream_missing_and_malformed_tomo_are_skipped(tmp_path):
    sinks = SinkFactory()
    router = TomoRunRouter(sinks)
    feed(router, streams_run(tmp_path / "a", streams=("dark", "flat")).docs)
    bad = streams_run(tmp_path / "b", tomo={"version": 1, "layout": "helical"})
    feed(router, bad.docs)
    assert sinks.sinks == []
    messages = [m for _, m in router.errors]
    assert any("projection stream 'primary' missing" in m for m in messages)
    assert any("'helical'" in m for m in messages)


def test_separate_dark_flat_run_fed_first(tmp_path):
    df_tomo = {"version": 1, "layout": "dark_flat", "detector": "det",
               "streams": {"dark": "dark", "flat": "flat"}}
    df = streams_run(tmp_path / "df", streams=("dark", "flat"), n_dark=3, n_flat=4, tomo=df_tomo)
    proj_tomo = {"version": 1, "layout": "separate", "detector": "det", "rotation_axis": "rot",
                 "dark_flat_uid": df.uid, "num_projections": 6}
    scan = streams_run(tmp_path / "scan", streams=("primary",), n_proj=6, tomo=proj_tomo)
    sinks = SinkFactory()
    router = TomoRunRouter(sinks)
    feed(router, df.docs)
    assert sinks.sinks == []  # a dark/flat run is remembered, not reconstructed
    feed(router, scan.docs)
    assert router.errors == []
    (sink,) = sinks.sinks
    roles = [b.role for b in sink.batches]
    assert roles[:2] == [FrameRole.DARK, FrameRole.FLAT] or set(roles[:7]) == {FrameRole.DARK, FrameRole.FLAT}
    np.testing.assert_array_equal(sink.role(FrameRole.DARK)[1], df.expected[FrameRole.DARK])
    np.testing.assert_array_equal(sink.role(FrameRole.FLAT)[1], df.expected[FrameRole.FLAT])
    np.testing.assert_array_equal(sink.role(FrameRole.PROJECTION)[1], scan.expected[FrameRole.PROJECTION])
    assert all(b.run_uid == scan.uid for b in sink.batches)
    assert sink.specs[0].streams["dark"] == f"run:{df.uid}/dark"
    assert sink.specs[0].dark_flat_uid == df.uid
    assert (sink.specs[0].n_darks, sink.specs[0].n_flats) == (3, 4)


def test_separate_dark_flat_unknown_uid_and_resolver(tmp_path):
    proj_tomo = {"version": 1, "layout": "separate", "detector": "det", "rotation_axis": "rot",
                 "dark_flat_uid": "no-such-run"}
    scan = streams_run(tmp_path / "a", streams=("primary",), n_proj=4, tomo=proj_tomo)
    sinks = SinkFactory()
    router = TomoRunRouter(sinks)
    feed(router, scan.docs)
    sink = sinks.sinks[0]
    assert sink.ends[0].num_frames == {"dark": 0, "flat": 0, "projection": 4}
    assert (sink.specs[0].n_darks, sink.specs[0].n_flats) == (0, 0)
    assert any("'no-such-run'" in m for _, m in router.errors)

    asked = []

    def resolver(uid):
        asked.append(uid)
        return DarkFlatSet.from_arrays(uid, np.full((2, 4, 5), 7, np.uint16),
                                       np.full((3, 4, 5), 9, np.uint16))

    scan2 = streams_run(tmp_path / "b", streams=("primary",), n_proj=4, tomo=proj_tomo)
    router2 = TomoRunRouter(sinks, dark_flat_resolver=resolver)
    feed(router2, scan2.docs)
    assert asked == ["no-such-run"] and router2.errors == []
    sink2 = sinks.sinks[-1]
    assert sink2.ends[0].num_frames == {"dark": 2, "flat": 3, "projection": 4}
    assert (sink2.role(FrameRole.FLAT)[1] == 9).all()


def test_sink_exception_is_contained(tmp_path):
    run = streams_run(tmp_path, n_proj=3)
    sinks = SinkFactory(fail_on="add")
    router = TomoRunRouter(sinks)
    feed(router, run.docs)  # must not raise
    assert len(router.errors) == 1 and "sink add exploded" in router.errors[0][1]
    assert sinks.sinks[0].ends == []  # a broken sink is left alone


def test_malformed_documents_are_reported_not_raised(tmp_path):
    router = TomoRunRouter(SinkFactory())
    router("event", {"descriptor": "nowhere", "seq_num": 1})
    router("stream_datum", {"stream_resource": "unknown"})
    router("bogus", {})
    assert len(router.errors) == 3


def test_external_angle_key_and_hex_preset(tmp_path):
    """HEX-like fly scan: no start['tomo']; plan tomo_flyscan; angles from a PandA HDF5 dataset
    ("panda1-Angle", external) referenced by its own StreamResource; detector found by shape."""
    import h5py

    n = 6
    bundle = compose_run(metadata={"plan_name": "tomo_flyscan", "num_points": n})
    uid = bundle.start_doc["uid"]
    det_path, panda_path = tmp_path / "kinetix.h5", tmp_path / "panda.h5"
    frames = np.arange(n * 20, dtype=np.uint16).reshape(n, 4, 5)
    angles = np.linspace(0.0, 179.0, n)
    with h5py.File(det_path, "w") as f:
        f["/entry/data/data"] = frames
    with h5py.File(panda_path, "w") as f:
        f["/Angle"] = angles
    keys = {"kinetix": {"source": "x", "dtype": "array", "shape": [1, 4, 5], "external": "STREAM:"},
            "panda1-Angle": {"source": "x", "dtype": "number", "shape": [1], "external": "STREAM:"}}
    desc = bundle.compose_descriptor(name="tomo", data_keys=keys)
    sr_det = bundle.compose_stream_resource(mimetype="application/x-hdf5", uri=f"file://localhost{det_path}",
                                            data_key="kinetix", parameters={"dataset": "/entry/data/data"})
    sr_ang = bundle.compose_stream_resource(mimetype="application/x-hdf5", uri=f"file://localhost{panda_path}",
                                            data_key="panda1-Angle", parameters={"dataset": "/Angle"})
    docs = [("start", bundle.start_doc), ("descriptor", desc.descriptor_doc),
            ("stream_resource", sr_det.stream_resource_doc), ("stream_resource", sr_ang.stream_resource_doc)]
    for a, b in ((0, 3), (3, 6)):
        # the angle StreamDatum comes after the detector's: frames wait for their angles
        for sr in (sr_det, sr_ang):
            docs.append(("stream_datum", sr.compose_stream_datum(
                indices={"start": a, "stop": b}, seq_nums={"start": a + 1, "stop": b + 1},
                descriptor=desc.descriptor_doc)))
    docs.append(("stop", bundle.compose_stop()))
    sinks = SinkFactory()
    router = TomoRunRouter(sinks)
    feed(router, docs)
    sink = sinks.sinks[0]
    assert sink.specs[0].detector_key == "kinetix"
    assert sink.specs[0].metadata["preset"] == "nsls2-hex"
    idx, got, got_angles = sink.role(FrameRole.PROJECTION)
    np.testing.assert_array_equal(got, frames)
    np.testing.assert_allclose(got_angles, np.radians(angles))
    # no dark/flat run was named (no current_dark_flat_scan_uid) and none are in the run
    assert any("no flat frames" in m for _, m in router.errors)
    assert uid == sink.specs[0].run_uid


def test_fxi_preset_fly_scan_angles_from_monitor_stream():
    """NSLS-II FXI ``fly_scan`` (no start['tomo']): images in events, the rotation angle only in
    the ``zps_pi_r_monitor`` stream, interpolated at each frame's time."""
    bundle = compose_run(metadata={"plan_name": "fly_scan", "detectors": ["Andor"],
                                   "num_dark_images": 1, "num_bkg_images": 1,
                                   "plan_args": {"start_angle": 0, "relative_rot_angle": 180}})
    image = {"source": "PV:Andor", "dtype": "array", "dtype_numpy": "<u2", "shape": [4, 5]}
    angle = {"source": "PV:pi_r", "dtype": "number", "shape": []}
    mon = bundle.compose_descriptor(name="zps_pi_r_monitor", data_keys={"zps_pi_r": angle})
    docs = [("start", bundle.start_doc), ("descriptor", mon.descriptor_doc)]
    frame = np.ones((4, 5), np.uint16).tolist()
    for stream, times in (("dark", [0.1]), ("flat", [0.2]), ("primary", [1.5, 2.5, 4.0])):
        desc = bundle.compose_descriptor(name=stream, data_keys={"Andor_image": image})
        docs.append(("descriptor", desc.descriptor_doc))
        for i, t in enumerate(times):
            docs.append(("event", desc.compose_event(data={"Andor_image": frame},
                                                     timestamps={"Andor_image": t}, seq_num=i + 1, time=t)))
    # the monitor readings (1 deg per 0.1 s) arrive interleaved, partly after the frames
    for k in range(0, 51, 5):
        docs.insert(len(docs) - 1 if k < 30 else len(docs),
                    ("event", mon.compose_event(data={"zps_pi_r": k * 1.0}, timestamps={"zps_pi_r": k / 10},
                                                seq_num=k // 5 + 1, time=k / 10)))
    docs.append(("stop", bundle.compose_stop()))
    sinks = SinkFactory()
    router = TomoRunRouter(sinks)
    feed(router, docs)
    sink = sinks.sinks[0]
    assert sink.specs[0].metadata["preset"] == "nsls2-fxi" and sink.specs[0].detector_key == "Andor_image"
    _, frames, angles = sink.role(FrameRole.PROJECTION)
    np.testing.assert_allclose(np.degrees(angles), [15.0, 25.0, 40.0])
    assert frames.dtype == np.uint16  # JSON lists cast back to the descriptor's dtype
    assert sink.ends[0].num_frames == {"dark": 1, "flat": 1, "projection": 3}


def test_fly_scan_frames_not_held_back_waiting_for_angle_events(tmp_path):
    """The descriptor names an internal angle key but no Event ever comes (fly scan): frames
    go out with planned angles after at most ``max_held_frames``, not only at stop."""
    run = streams_run(tmp_path, fly=True, chunk=1, n_proj=12)
    sinks = SinkFactory()
    router = TomoRunRouter(sinks, max_held_frames=4)
    feed(router, run.docs[:-1])  # everything but the stop document
    idx, _, angles = sinks.sinks[0].role(FrameRole.PROJECTION)
    np.testing.assert_array_equal(idx, np.arange(8))
    np.testing.assert_allclose(np.degrees(angles), run.angles_deg[:8])
    feed(router, run.docs[-1:])
    check_run(sinks.sinks[0], run)


def test_stream_re_described_mid_run_numbers_on():
    """Flats before and after the projections under two descriptors of the same stream name
    (configuration changed): the second set's seq_nums restart at 1, its indices must not."""
    bundle = compose_run(metadata={"tomo": {"version": 1, "detector": "img", "rotation_axis": "rot"}})
    img = {"source": "s", "dtype": "array", "dtype_numpy": "<u2", "shape": [4, 5]}
    rot = {"source": "s", "dtype": "number", "shape": []}
    docs = [("start", bundle.start_doc)]
    value = 1
    for stream, n, cfg in (("flat", 2, 1), ("primary", 3, 1), ("flat", 2, 2)):
        keys = {"img": img, "rot": rot} if stream == "primary" else {"img": img}
        desc = bundle.compose_descriptor(
            name=stream, data_keys=keys, validate=False,
            configuration={"img": {"data": {"gain": cfg}, "timestamps": {"gain": 0}, "data_keys": {}}})
        docs.append(("descriptor", desc.descriptor_doc))
        for i in range(n):
            data = {"img": np.full((4, 5), value, np.uint16).tolist(), "rot": 10.0 * i}
            data = {k: v for k, v in data.items() if k in keys}
            docs.append(("event", desc.compose_event(data=data, timestamps=dict.fromkeys(data, 1.0),
                                                     seq_num=i + 1, validate=False)))
            value += 1
    docs.append(("stop", bundle.compose_stop()))
    sinks = SinkFactory()
    router = TomoRunRouter(sinks)
    feed(router, docs)
    idx, frames, _ = sinks.sinks[0].role(FrameRole.FLAT)
    np.testing.assert_array_equal(idx, [0, 1, 2, 3])
    np.testing.assert_array_equal(frames[:, 0, 0], [1, 2, 6, 7])
    assert [m for _, m in router.errors if "dark" not in m] == []  # this run took no darks


def _growing_run(path, n):
    """A fly-scan run whose StreamDatum announces ``n`` frames of ``path`` (written later)."""
    tomo = {"version": 1, "detector": "det", "streams": {"projection": "primary"},
            "angles": {"start": 0, "stop": 180, "num": n}}
    bundle = compose_run(metadata={"tomo": tomo})
    desc = bundle.compose_descriptor(name="primary", data_keys={
        "det": {"source": "s", "dtype": "array", "shape": [1, 4, 5], "external": "STREAM:"}})
    sres = bundle.compose_stream_resource(mimetype="application/x-hdf5", uri=f"file://localhost{path}",
                                          data_key="det", parameters={"dataset": "/entry/data/data"})
    return [("start", bundle.start_doc), ("descriptor", desc.descriptor_doc),
            ("stream_resource", sres.stream_resource_doc),
            ("stream_datum", sres.compose_stream_datum(indices={"start": 0, "stop": n},
                                                       seq_nums={"start": 1, "stop": n + 1},
                                                       descriptor=desc.descriptor_doc)),
            ("stop", bundle.compose_stop())]


def test_swmr_read_waits_for_frames_still_being_written(tmp_path):
    import threading

    import h5py

    path = tmp_path / "growing.h5"
    f = h5py.File(path, "w", libver="latest")
    ds = f.create_dataset("/entry/data/data", shape=(0, 4, 5), maxshape=(None, 4, 5), dtype="u2",
                          chunks=(1, 4, 5))
    f.swmr_mode = True

    def write_later():
        for k in range(3):
            threading.Event().wait(0.1)
            ds.resize(k + 1, axis=0)
            ds[k] = k + 1
            ds.flush()

    writer = threading.Thread(target=write_later)
    sinks = SinkFactory()
    router = TomoRunRouter(sinks, read_timeout=5.0)
    writer.start()  # the StreamDatum announces 3 frames before the file holds them
    feed(router, _growing_run(path, 3))
    writer.join()
    f.close()
    assert [m for _, m in router.errors if "announced" in m or "not readable" in m] == []
    _, frames, _ = sinks.sinks[0].role(FrameRole.PROJECTION)
    np.testing.assert_array_equal(frames[:, 0, 0], [1, 2, 3])


def test_frames_that_never_arrive_are_reported_by_file_and_range(tmp_path):
    import h5py

    path = tmp_path / "short.h5"
    with h5py.File(path, "w") as f:
        f["/entry/data/data"] = np.zeros((2, 4, 5), np.uint16)
    router = TomoRunRouter(SinkFactory(), read_timeout=0.2)
    feed(router, _growing_run(path, 3))
    assert any(f"frames [0, 3) of {path}:/entry/data/data not readable" in m
               and "holds 2 frames" in m for _, m in router.errors)
