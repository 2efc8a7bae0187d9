"""The foundation end to end: simulated scan -> real RunEngine -> callbacks -> engine -> Tiled.

One embedded Tiled server serves the whole module (starting one costs seconds); every test runs
its own scans through a fresh RunEngine.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest

from bluesky_tomo_hpc.engine.params import ReconParams
from bluesky_tomo_hpc.live.demo_run import phantom_correlation
from bluesky_tomo_hpc.live.session import TomoPipeline
from bluesky_tomo_hpc.results.tiled_results import find_reconstructions
from bluesky_tomo_hpc.results.tiled_server import EmbeddedTiledServer
from bluesky_tomo_hpc.settings import Settings
from bluesky_tomo_hpc.sim.beamline import make_sim_beamline
from bluesky_tomo_hpc.sim.plans import tomo_dark_flat, tomo_scan

SHAPE = (16, 64)
N_PROJ = 90


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    with EmbeddedTiledServer(root / "tiled", readable_storage=[root]) as srv:
        srv.root = root
        yield srv


@pytest.fixture
def pipeline(server, request):
    data_dir = server.root / request.node.name
    settings = Settings(data_dir=data_dir, recon=ReconParams(filter_name="shepp"), jobs={"executor": "none"})
    pipe = TomoPipeline(settings, server.client())
    yield pipe
    pipe.close()


@pytest.mark.parametrize("flavour", ["ophyd_async", "ophyd_v1"])
def test_scan_reconstructed_into_tiled(RE, pipeline, flavour):
    bl = make_sim_beamline(pipeline.data_dir / "raw", flavour=flavour, shape=SHAPE, rotation_offset_px=2.5)
    pipeline.subscribe(RE)
    (uid,) = RE(tomo_scan(bl.detector, bl.stage, num_projections=N_PROJ, num_darks=4, num_flats=4))
    assert pipeline.wait(180)
    outcome = pipeline.service.outcomes[uid]
    assert outcome.ok, outcome.message
    assert abs(outcome.center - bl.rotation_center_px) <= 1.0
    (node,) = find_reconstructions(pipeline.processed, raw_uid=uid, kind="full")
    assert node.metadata["params_hash"] == ReconParams(filter_name="shepp").params_hash
    assert node.metadata["center_confidence"] > 0.5
    vol = node["volume"][:]
    assert vol.shape == (SHAPE[0], SHAPE[1], SHAPE[1])
    assert phantom_correlation(vol, bl.phantom) > 0.85
    assert {"preview_xy", "preview_xz", "preview_yz"} <= set(node)
    # the raw run is in Tiled too, with every stream
    run = pipeline.raw[uid]
    assert {"dark", "flat", "primary"} <= set(run)
    assert run.start["tomo"]["num_projections"] == N_PROJ
    assert (pipeline.data_dir / "previews" / f"{uid[:8]}_slices.png").exists()
    # the live preview ran during the scan: final right after the stop, in Tiled and as a PNG
    (live,) = find_reconstructions(pipeline.processed, raw_uid=uid, kind="preview")
    assert {"preview_xy", "preview_xz", "preview_yz"} <= set(live)
    assert live.metadata["n_projections_used"] == N_PROJ
    assert pipeline.previews[uid].metadata["stop_to_final_s"] < 1.0
    assert (pipeline.data_dir / "previews" / f"{uid[:8]}_preview.png").exists()


def test_separate_dark_flat_run(RE, pipeline):
    bl = make_sim_beamline(pipeline.data_dir / "raw", shape=SHAPE)
    pipeline.subscribe(RE)
    (df_uid,) = RE(tomo_dark_flat(bl.detector, bl.stage, num_darks=4, num_flats=4))
    (uid,) = RE(tomo_scan(bl.detector, bl.stage, num_projections=N_PROJ, layout="separate",
                          dark_flat_uid=df_uid))
    assert pipeline.wait(180)
    assert pipeline.service.outcomes[uid].ok, pipeline.service.outcomes[uid].message
    assert df_uid not in pipeline.service.outcomes  # a dark/flat run is not reconstructed itself


def test_no_flats_is_a_named_error_and_the_scan_completes(RE, pipeline, caplog):
    bl = make_sim_beamline(pipeline.data_dir / "raw", shape=SHAPE)
    pipeline.subscribe(RE)
    with caplog.at_level(logging.WARNING, logger="bluesky_tomo_hpc"):
        (uid,) = RE(tomo_scan(bl.detector, bl.stage, num_projections=40, num_darks=2, num_flats=0))
        assert pipeline.wait(180)
    outcome = pipeline.service.outcomes[uid]
    assert not outcome.ok
    assert "no flat-field frames" in outcome.message and uid in outcome.message
    assert "no flat-field frames" in caplog.text
    run = pipeline.raw[uid]  # raw data safe in Tiled
    assert run.stop["exit_status"] == "success"
    assert run["primary"]["det"].shape[0] == 40


def test_reconstruction_crash_never_aborts_the_scan(RE, pipeline, monkeypatch):
    import bluesky_tomo_hpc.engine.reconstruct as engine_pipeline

    def explode(*args, **kwargs):
        raise FloatingPointError("injected fault in the engine")

    monkeypatch.setattr(engine_pipeline, "reconstruct_prepared", explode)  # each slab of the volume
    bl = make_sim_beamline(pipeline.data_dir / "raw", shape=SHAPE)
    pipeline.subscribe(RE)
    (uid,) = RE(tomo_scan(bl.detector, bl.stage, num_projections=20, num_darks=2, num_flats=2))
    assert pipeline.wait(180)
    outcome = pipeline.service.outcomes[uid]
    assert not outcome.ok and "injected fault" in outcome.message
    # and the next scan is reconstructed normally
    monkeypatch.undo()
    (uid2,) = RE(tomo_scan(bl.detector, bl.stage, num_projections=40, num_darks=2, num_flats=2))
    assert pipeline.wait(180)
    assert pipeline.service.outcomes[uid2].ok


def test_unknown_layout_skipped_with_a_warning(RE, pipeline, caplog):
    from bluesky.plans import count
    from ophyd.sim import det

    pipeline.subscribe(RE)
    with caplog.at_level(logging.WARNING, logger="bluesky_tomo_hpc"):
        (uid,) = RE(count([det], num=2), tomo={"version": 1, "layout": "helical"})
        (plain,) = RE(count([det], num=2))
        assert pipeline.wait(60)
    assert "helical" in caplog.text and uid in caplog.text
    assert plain not in caplog.text
    assert uid not in pipeline.service.outcomes and plain not in pipeline.service.outcomes
    assert np.isfinite(pipeline.raw[plain]["primary"].read()["det"].values).all()


def test_half_acquisition_scan_reconstructed_to_the_full_field_of_view(RE, pipeline):
    """Offset axis (nx / 8 from the edge), 360 degrees, sample wider than the detector: the
    pipeline finds the axis and the overlap, stitches, and reconstructs the whole sample."""
    bl = make_sim_beamline(pipeline.data_dir / "raw", flavour="ophyd_v1", shape=(8, 96),
                           half_acquisition=True)
    pipeline.subscribe(RE)
    (uid,) = RE(tomo_scan(bl.detector, bl.stage, num_projections=360, num_darks=4, num_flats=4, stop=360.0))
    assert pipeline.wait(180)
    outcome = pipeline.service.outcomes[uid]
    assert outcome.ok, outcome.message
    assert abs(outcome.center - bl.rotation_center_px) <= 0.5
    (node,) = find_reconstructions(pipeline.processed, raw_uid=uid, kind="full")
    assert node.metadata["center_details"]["half_acquisition"] is True
    vol = node["volume"][:]
    assert vol.shape == (8, bl.field_of_view_px, bl.field_of_view_px) and bl.field_of_view_px > 1.7 * 96
    assert phantom_correlation(vol, bl.phantom) >= 0.9
