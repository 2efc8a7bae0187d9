"""Pauses, resumes and suspenders (a beam dump) in the middle of a scan: the RunEngine rewinds to
the last checkpoint and takes the interrupted point again. With both detector flavours the scan
completes and is reconstructed from the frames that count (one copy of each point). Real
RunEngine, real HDF5, real Tiled, the in-process pipeline.

Every interruption is set off by the plan itself at a given message (no timers): what it hits
does not depend on the machine's load. The beam comes back when the suspender has tripped."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from urllib.parse import urlparse

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
from bluesky_tomo_hpc.settings import Settings
from bluesky_tomo_hpc.sim.beamline import make_sim_beamline
from bluesky_tomo_hpc.sim.plans import tomo_scan

SHAPE = (8, 32)
N_DARK = N_FLAT = 2
N_PROJ = 24
#: (message, its ordinal) -> the interruption right after it: a pause after a dark's trigger (its
#: frame is being taken: the point is retaken, the orphan frame dropped), a pause after the first
#: projection's read (its Event, the first of the stream, never saved: the detector goes on in a
#: new file), the beam lost after a projection's save (its Event saved before the next checkpoint:
#: the point is taken twice, with the same seq_num)
MOMENTS = {("trigger", 2): "pause", ("read", N_DARK + N_FLAT + 1): "pause",
           ("save", N_DARK + N_FLAT + 12): "beam dump"}


def pause() -> Iterator[Msg]:
    yield Msg("pause", None, defer=False)


def beam_dump(beam: Signal) -> Iterator[Msg]:
    """The beam is lost (put, not a ``set`` message: a rewind replays messages, this happens once);
    the suspender trips while the plan sleeps, before the point's next checkpoint."""
    beam.put(10.0)
    yield Msg("sleep", None, 0.01)


def beam_returns(beam: Signal) -> None:
    """Bring the beam back each time it is lost, once the suspender (subscribed first) has seen it."""
    def watch(value: float, **_: object) -> None:
        if value < 100.0:
            threading.Thread(target=beam.put, args=(400.0,), daemon=True).start()

    beam.subscribe(watch, run=False)


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
def test_paused_and_suspended_scan_completes_and_is_reconstructed(world, module_RE, module_tiled_server,
                                                                  flavour):
    """Two pauses, a beam dump (suspender) mid-point: scan completes; volume, preview take one copy each."""
    RE, server = module_RE, module_tiled_server
    beam = Signal(name="ring_current", value=400.0)
    suspender = SuspendFloor(beam, 100.0, resume_thresh=300.0, sleep=0.05)
    RE.install_suspender(suspender)
    beam_returns(beam)
    docs: list[tuple[str, dict]] = []
    token = RE.subscribe(lambda name, doc: docs.append((name, doc)))
    data = server.root / flavour
    settings = Settings(data_dir=data, recon=ReconParams(filter_name="shepp", center=15.5),
                        jobs={"executor": "none"})
    pipeline = TomoPipeline(settings, server.client())
    try:
        bl = make_sim_beamline(data / "raw", flavour=flavour, shape=SHAPE, rotation_offset_px=0.0)
        pipeline.subscribe(RE)
        plan = tomo_scan(bl.detector, bl.stage, num_projections=N_PROJ, num_darks=N_DARK,
                         num_flats=N_FLAT, exposure=0.002)
        run_to_the_end(RE, interrupted(plan, beam))
        assert pipeline.wait(240)
        stops = [d for n, d in docs if n == "stop"]
        assert_scan_not_aborted(stops)
        uid = stops[0]["run_start"]
        # the point interrupted after its save was taken twice: one more Event than points
        assert sum(n == "event" for n, _ in docs) == N_DARK + N_FLAT + N_PROJ + 1
        outcome = pipeline.service.outcomes[uid]
        assert outcome.ok, outcome.message
        assert phantom_correlation(outcome.result.volume[:], bl.phantom) > 0.8
        assert pipeline.router.errors == []  # no '25 of 24 planned projections'
        preview = pipeline.previews[uid].metadata
        assert preview["n_projections_used"] == N_PROJ and preview["n_frames_retaken"] == 1
        assert preview["n_darks"] == N_DARK and preview["n_flats"] == N_FLAT
        if flavour == "ophyd_async":
            # every StreamDatum names frames that exist, in files holding no frame twice
            resources = {d["uid"]: d for n, d in docs if n == "stream_resource"}
            for n, d in docs:
                if n == "stream_datum":
                    resource = resources[d["stream_resource"]]
                    with h5py.File(urlparse(resource["uri"]).path, "r", locking=False) as f:
                        assert d["indices"]["stop"] <= f[resource["parameters"]["dataset"]].shape[0]
    finally:
        pipeline.close()
        RE.unsubscribe(token)
        RE.remove_suspender(suspender)
