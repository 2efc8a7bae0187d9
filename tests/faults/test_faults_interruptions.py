"""Pauses, resumes and suspenders (a beam dump) in the middle of a scan: the RunEngine rewinds to
the last checkpoint and takes the interrupted point again. Whatever moment the interruption hits,
with both detector flavours, the scan completes and is reconstructed from the frames that count
(the last copy of each point). Real RunEngine, real HDF5, real Tiled, the in-process pipeline."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import h5py
import pytest
from bluesky import Msg
from bluesky import preprocessors as bpp
from bluesky.suspenders import SuspendFloor
from bluesky.utils import RunEngineInterrupted
from fault_world import assert_scan_not_aborted
from ophyd import Signal

from bluesky_tomo_hpc.engine.params import ReconParams
from bluesky_tomo_hpc.live.demo_run import phantom_correlation
from bluesky_tomo_hpc.live.session import TomoPipeline
from bluesky_tomo_hpc.results.tiled_server import EmbeddedTiledServer
from bluesky_tomo_hpc.settings import Settings
from bluesky_tomo_hpc.sim.beamline import make_sim_beamline
from bluesky_tomo_hpc.sim.plans import tomo_scan

SHAPE = (16, 64)
N_DARK = N_FLAT = 4
N_PROJ = 40
#: (message, its ordinal) -> the interruption right after it: a pause after a dark's trigger (its
#: frame is being taken: the point is retaken, the orphan frame dropped), a pause after the first
#: projection's read (its Event, the first of the stream, never saved: the detector goes on in a
#: new file), the beam lost after a projection's save (its Event saved before the next checkpoint:
#: the point is taken twice, with the same seq_num)
MOMENTS = {("trigger", 3): "pause", ("read", N_DARK + N_FLAT + 1): "pause",
           ("save", N_DARK + N_FLAT + 20): "beam dump"}


def pause() -> Iterator[Msg]:
    yield Msg("pause", None, defer=False)


def beam_dump(beam: Signal) -> Iterator[Msg]:
    threading.Timer(0.3, beam.put, (400.0,)).start()  # the beam comes back
    yield Msg("set", beam, 10.0)  # the beam is lost: the suspender trips
    yield Msg("sleep", None, 0.05)


def interrupted(plan: Iterator[Msg], beam: Signal) -> Iterator[Msg]:
    """``plan`` with the interruptions of ``MOMENTS``."""
    seen: dict[str, int] = {}

    def mutate(msg: Msg):
        seen[msg.command] = seen.get(msg.command, 0) + 1
        what = MOMENTS.get((msg.command, seen[msg.command]))
        if what is None:
            return None, None
        return None, (pause() if what == "pause" else beam_dump(beam))

    return bpp.plan_mutator(plan, mutate)


def run_to_the_end(RE, plan) -> None:
    """Run ``plan``, resuming after each pause, as a user at the console would."""
    try:
        RE(plan)
    except RunEngineInterrupted:
        while True:
            try:
                RE.resume()
                return
            except RunEngineInterrupted:
                continue


@pytest.mark.parametrize("flavour", ["ophyd_async", "ophyd_v1"])
def test_paused_and_suspended_scan_completes_and_is_reconstructed(world, RE, flavour):
    """Two pauses and a beam dump (suspender) mid-point: scan completes; volume, preview from last copies."""
    beam = Signal(name="ring_current", value=400.0)
    RE.install_suspender(SuspendFloor(beam, 100.0, resume_thresh=300.0, sleep=0.1))

    docs: list[tuple[str, dict]] = []
    RE.subscribe(lambda name, doc: docs.append((name, doc)))
    with EmbeddedTiledServer(world.data / "tiled", readable_storage=[world.data]) as server:
        settings = Settings(data_dir=world.data, recon=ReconParams(filter_name="shepp"),
                            jobs={"executor": "none"})
        pipeline = TomoPipeline(settings, server.client())
        try:
            bl = make_sim_beamline(world.data / "raw", flavour=flavour, shape=SHAPE, rotation_offset_px=2.5)
            pipeline.subscribe(RE)
            plan = tomo_scan(bl.detector, bl.stage, num_projections=N_PROJ, num_darks=N_DARK,
                             num_flats=N_FLAT, exposure=0.005)
            run_to_the_end(RE, interrupted(plan, beam))
            assert pipeline.wait(240)
            stops = [d for n, d in docs if n == "stop"]
            assert_scan_not_aborted(stops)
            assert stops[0]["exit_status"] == "success"
            uid = stops[0]["run_start"]
            # the point interrupted after its save was taken twice: one more Event than points
            assert sum(n == "event" for n, _ in docs) == N_DARK + N_FLAT + N_PROJ + 1
            outcome = pipeline.service.outcomes[uid]
            assert outcome.ok, outcome.message
            assert phantom_correlation(outcome.result.volume[:], bl.phantom) > 0.85
            assert pipeline.router.errors == []  # no '41 of 40 planned projections'
            preview = pipeline.previews[uid].metadata
            assert preview["n_projections_used"] == N_PROJ and preview["n_frames_retaken"] == 1
            assert preview["n_darks"] == N_DARK and preview["n_flats"] == N_FLAT
            if flavour == "ophyd_async":
                # every StreamDatum names frames that exist, in files holding no frame twice
                resources = {d["uid"]: d for n, d in docs if n == "stream_resource"}
                for n, d in docs:
                    if n == "stream_datum":
                        path = resources[d["stream_resource"]]["uri"].removeprefix("file://localhost")
                        with h5py.File(path, "r", swmr=True) as f:
                            ds = f[resources[d["stream_resource"]]["parameters"]["dataset"]]
                            assert d["indices"]["stop"] <= ds.shape[0]
        finally:
            pipeline.close()
