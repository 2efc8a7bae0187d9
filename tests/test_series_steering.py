"""Time series (4D) and steering, with a real RunEngine, the simulated beamline and a real Tiled."""

from __future__ import annotations

import time

import numpy as np
import pytest
from bluesky import plan_stubs as bps

from bluesky_tomo_hpc.engine.params import ReconParams
from bluesky_tomo_hpc.live.catalog_replay import RunQuery, reprocess
from bluesky_tomo_hpc.live.session import TomoPipeline
from bluesky_tomo_hpc.metadata.sample import SampleMetadataError
from bluesky_tomo_hpc.plans.adaptive import centre_then_scan, roi_change_above
from bluesky_tomo_hpc.plans.tomo_series import tomo_series
from bluesky_tomo_hpc.results.tiled_results import find_reconstructions
from bluesky_tomo_hpc.settings import Settings
from bluesky_tomo_hpc.sim.beamline import make_sim_beamline
from bluesky_tomo_hpc.sim.phantom import shepp_logan_3d
from bluesky_tomo_hpc.sim.plans import tomo_scan
from bluesky_tomo_hpc.steering import ResultFutures, SteeringTimeout, wait_for_metrics

SHAPE = (8, 48)
SCAN = {"num_projections": 36, "num_darks": 2, "num_flats": 2}
SAMPLE = {"name": "ti64-07", "material": {"category": "alloy"}}


@pytest.fixture(scope="module")
def server(module_tiled_server):
    return module_tiled_server


def _pipeline(server, name, **settings):
    return TomoPipeline(Settings(data_dir=server.root / name, jobs={"executor": "none"}, **settings),
                        server.client(), server=None)


@pytest.fixture
def pipeline(server, request):
    pipe = _pipeline(server, request.node.name)
    pipe.series.register_in_place = True  # this server reads its root
    yield pipe
    pipe.close()


def test_series_grouped_with_one_centre_as_tiled_container_and_ome_zarr(RE, pipeline):
    from tiled.queries import Key

    bl = make_sim_beamline(pipeline.data_dir / "raw", shape=SHAPE, rotation_offset_px=2.5)
    pipeline.subscribe(RE)
    conditions = [{"temperature": f"{t} degC"} for t in (25, 200, 400)]
    uids = RE(tomo_series(bl.detector, bl.stage, sample=SAMPLE, conditions=conditions, series_id="heat-1",
                          **SCAN))
    assert len(uids) == 3 and pipeline.wait(180)
    # raw runs say their place and their conditions
    starts = [pipeline.raw[u].start for u in uids]
    assert [s["series"]["index"] for s in starts] == [0, 1, 2]
    assert [s["series"]["coordinate"]["si_value"] for s in starts] == pytest.approx([298.15, 473.15, 673.15])
    assert starts[2]["sample"]["conditions"]["temperature"]["value"] == 400
    assert set(pipeline.raw.search(Key("series.id") == "heat-1")) == set(uids)
    # every member reconstructed with the first one's centre
    centres = [find_reconstructions(pipeline.processed, raw_uid=u, kind="full")[0].metadata["center"]
               for u in uids]
    assert centres[1] == centres[0] == centres[2] and abs(centres[0] - bl.rotation_center_px) < 1.0
    second = find_reconstructions(pipeline.processed, raw_uid=uids[1], kind="full")[0].metadata
    assert second["center_method"] == "given" and second["params"]["center"] == "auto"  # hash as asked
    # the live preview of each scan carries its place in the series
    assert [pipeline.previews[u].metadata["series"]["index"] for u in uids] == [0, 1, 2]
    # the series: one Tiled container with the 4D volume, one OME-Zarr with a t axis
    node = pipeline.series.container()["heat-1"]
    assert "TomoSeries" in [s.name for s in node.specs]
    assert [m["raw_uid"] for m in node.metadata["members"]] == list(uids)
    assert node.metadata["rejected"] == [] and node.metadata["coordinate_name"] == "temperature"
    vol4 = node["volume"].read()
    assert vol4.shape == (3, SHAPE[0], SHAPE[1], SHAPE[1]) and node["volume"].dims == ("t", "z", "y", "x")
    member = find_reconstructions(pipeline.processed, raw_uid=uids[2], kind="full")[0]["volume"].read()
    np.testing.assert_array_equal(vol4[2], member)
    import zarr

    group = zarr.open_group(str(pipeline.data_dir / "series" / "heat-1.ome.zarr"), mode="r")
    attrs = group.attrs.asdict()
    multiscales = (attrs.get("ome") or attrs)["multiscales"][0]
    assert [a["name"] for a in multiscales["axes"]] == ["t", "z", "y", "x"]
    assert multiscales["axes"][0]["type"] == "time"


def test_changing_detector_geometry_is_refused_from_the_series_and_loses_nothing(RE, pipeline, caplog):
    bl = make_sim_beamline(pipeline.data_dir / "raw", shape=SHAPE)
    wide = make_sim_beamline(pipeline.data_dir / "raw-wide", shape=(8, 56), detector_name="det2")
    pipeline.subscribe(RE)
    (first,) = RE(tomo_series(bl.detector, bl.stage, sample=SAMPLE, num_scans=1, series_id="geo", **SCAN))
    point = {"id": "geo", "index": 1, "planned": 2, "elapsed_s": 5.0,
             "coordinate": {"name": "time", "value": 5.0, "units": "second"}}
    (second,) = RE(tomo_scan(wide.detector, wide.stage, md={"series": point, "sample": SAMPLE}, **SCAN))
    assert pipeline.wait(180)
    node = pipeline.series.container()["geo"]
    assert [m["raw_uid"] for m in node.metadata["members"]] == [first]
    (rejected,) = node.metadata["rejected"]
    assert rejected["raw_uid"] == second and "frame_shape [8, 56] differs from the series' [8, 48]" in (
        rejected["reason"])
    assert node["volume"].shape[0] == 1
    assert "not added" in pipeline.series.messages["geo"] and "its own reconstruction is kept" in caplog.text
    assert find_reconstructions(pipeline.processed, raw_uid=second, kind="full")  # nothing lost


def test_a_bad_condition_refuses_the_series_before_its_first_scan(RE, pipeline):
    bl = make_sim_beamline(pipeline.data_dir / "raw", shape=SHAPE)
    pipeline.subscribe(RE)
    conditions = [{"temperature": "25 degC"}, {"temperature": "400 bar"}]
    before = len(pipeline.raw)  # the module's server holds other tests' runs
    with pytest.raises(SampleMetadataError, match="series step 1: .*not a temperature"):
        RE(tomo_series(bl.detector, bl.stage, sample=SAMPLE, conditions=conditions, **SCAN))
    assert pipeline.wait(30) and len(pipeline.raw) == before


def test_in_situ_series_stops_when_the_condition_appears(RE, pipeline):
    """The sample densifies at the third temperature: the ROI's attenuation jumps, the series
    stops there instead of running all five steps."""
    from tiled.queries import Key

    bl = make_sim_beamline(pipeline.data_dir / "raw", shape=SHAPE)
    pipeline.subscribe(RE)
    steering = ResultFutures(pipeline)
    temperatures = [25, 100, 200, 300, 400]

    def heat(condition):
        celsius = float(condition["temperature"].split()[0])
        peak = 1.5 if celsius < 200 else 3.0
        bl.simulator.phantom = shepp_logan_3d(SHAPE, peak_line_integral=peak)
        yield from bps.null()

    conditions = [{"temperature": f"{t} degC"} for t in temperatures]
    RE(tomo_series(bl.detector, bl.stage, sample=SAMPLE, conditions=conditions, set_condition=heat,
                   steering=steering, stop_when=roi_change_above(0.5), series_id="densify", **SCAN))
    assert pipeline.wait(180)
    run_uids = list(pipeline.raw.search(Key("series.id") == "densify"))
    assert len(run_uids) == 3  # 25, 100 (no change), 200 degC (doubled attenuation): stopped


def test_centre_then_scan_pins_the_centre_found_on_a_quick_scan(RE, pipeline):
    bl = make_sim_beamline(pipeline.data_dir / "raw", shape=SHAPE, rotation_offset_px=-3.0)
    pipeline.subscribe(RE)
    steering = ResultFutures(pipeline)
    result = {}

    def plan():
        result["done"] = yield from centre_then_scan(bl.detector, bl.stage, steering, quick_projections=60,
                                                     min_confidence=0.3, **SCAN)

    RE(plan())
    done = result["done"]
    assert pipeline.wait(180) and done.pinned
    assert abs(done.center - bl.rotation_center_px) < 1.0
    assert pipeline.raw[done.alignment_uid].start["purpose"] == "alignment"
    assert pipeline.raw[done.uid].start["tomo"]["rotation_center"] == done.center
    (node,) = find_reconstructions(pipeline.processed, raw_uid=done.uid, kind="full")
    assert node.metadata["center"] == done.center and node.metadata["center_method"] == "given"
    assert node.metadata["params_hash"] == ReconParams().params_hash  # the parameters as asked
    # re-processed with other parameters: the pinned centre holds, and a second request is skipped
    hann = ReconParams(filter_name="hann")
    first = reprocess(pipeline.raw, pipeline.processed, params=hann, query=RunQuery(uids=(done.uid,)))
    assert first.count("reconstructed") == 1
    (again,) = find_reconstructions(pipeline.processed, raw_uid=done.uid, params_hash=hann.params_hash)
    assert again.metadata["center"] == done.center and again.metadata["center_method"] == "given"
    second = reprocess(pipeline.raw, pipeline.processed, params=hann, query=RunQuery(uids=(done.uid,)))
    assert second.count("skipped") == 1


def test_waiting_never_blocks_the_event_loop_and_times_out_clearly(RE, server):
    pipe = _pipeline(server, "no-full", full_volume=False)
    try:
        bl = make_sim_beamline(pipe.data_dir / "raw", shape=SHAPE)
        pipe.subscribe(RE)
        steering = ResultFutures(pipe)
        ticks: list[float] = []

        def tick():
            ticks.append(time.monotonic())
            RE.loop.call_later(0.05, tick)

        got = {}

        def plan():
            uid = yield from tomo_scan(bl.detector, bl.stage, **SCAN)
            got["preview"] = yield from wait_for_metrics(
                steering, uid, "preview", timeout=60, roi=(0.3, 0.7, 0.3, 0.7), user=lambda s: s["xy"].max())
            RE.loop.call_soon_threadsafe(tick)
            t0 = time.monotonic()
            try:
                yield from wait_for_metrics(steering, uid, "full", timeout=3.0)  # never comes
            except SteeringTimeout as exc:
                got["timeout"] = (str(exc), time.monotonic() - t0)

        RE(plan())
        m = got["preview"]
        assert m.kind == "preview" and m.center is not None and m.roi["pixels"] > 0
        assert set(m.sharpness) == {"xy", "xz", "yz"} and m.user == pytest.approx(float(m.slices["xy"].max()))
        message, waited = got["timeout"]
        assert "no full result for run" in message and "within 3.0 s" in message and waited >= 3.0
        assert len(ticks) >= 10  # the loop ran other work while the plan waited (60 ticks if never stalled;
        # a blocking wait gives 1-2; a CI run once saw a 0.9 s stall of the whole process within 1 s)
    finally:
        pipe.close()
