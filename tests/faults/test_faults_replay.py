"""Re-processing a catalog that faults left behind, from a standard Tiled server (no project
exporter): runs without a stop, entries that are not runs, both detector flavours. Real Tiled,
real RunEngine, real HDF5."""

from __future__ import annotations

import pytest
from bluesky_tiled_plugins import TiledWriter
from tiled.client import from_uri

from bluesky_tomo_hpc.engine.params import ReconParams
from bluesky_tomo_hpc.live.catalog_replay import reprocess
from bluesky_tomo_hpc.results.tiled_results import find_reconstructions, processed_container
from bluesky_tomo_hpc.results.tiled_server import raw_catalog
from bluesky_tomo_hpc.sim.beamline import make_sim_beamline
from bluesky_tomo_hpc.sim.plans import tomo_scan

SHAPE = (8, 32)
PARAMS = ReconParams(filter_name="shepp", center=15.5)


def _runs(RE, tmp_path, raw, flavours=("ophyd_async",), drop_stop_of=()):
    """One scan per flavour into ``raw``; runs whose index is in ``drop_stop_of`` lose their stop
    (what a Tiled crash leaves)."""
    uids = []
    for i, flavour in enumerate(flavours):
        docs: list = []
        token = RE.subscribe(lambda n, d, docs=docs: docs.append((n, d)))
        bl = make_sim_beamline(tmp_path / f"raw{i}", flavour=flavour, shape=SHAPE)
        (uid,) = RE(tomo_scan(bl.detector, bl.stage, num_projections=30, num_darks=2, num_flats=2))
        RE.unsubscribe(token)
        writer = TiledWriter(raw, batch_size=1)
        for name, doc in docs:
            if not (name == "stop" and i in drop_stop_of):
                writer(name, doc)
        uids.append(uid)
    return uids


@pytest.fixture
def catalog(tiled_server, world):
    world.input("tiled")  # the standard server's own folder, beside the data folder
    client = from_uri(tiled_server.uri)
    return client, raw_catalog(client), processed_container(client)


def test_run_without_stop_reported_and_the_rest_done(RE, world, catalog):
    """A run without its stop among others: reported 'incomplete', the others reconstructed, twice over.

    The old path died with KeyError: 'stop' at that run on every re-run; a second request now
    skips what is done and reports the same incomplete run again.
    """
    tmp_path = world.data
    client, raw, processed = catalog
    broken, good = _runs(RE, tmp_path, raw, flavours=("ophyd_async", "ophyd_async"), drop_stop_of=(0,))
    summary = reprocess(raw, processed, params=PARAMS)
    status = {o.uid: o for o in summary.outcomes}
    assert all(o.status == "reconstructed" or len(o.message) > 10 for o in summary.outcomes)
    assert status[broken].status == "incomplete" and "no stop document" in status[broken].message
    assert status[good].status == "reconstructed", status[good].message
    again = {o.uid: o.status for o in reprocess(raw, processed, params=PARAMS).outcomes}
    assert again == {broken: "incomplete", good: "skipped"}


def test_allow_incomplete_reconstructs_what_is_there(RE, world, catalog):
    """With allow_incomplete, a run without a stop is reconstructed from the frames it has."""
    tmp_path = world.data
    client, raw, processed = catalog
    (uid,) = _runs(RE, tmp_path, raw, drop_stop_of=(0,))
    (outcome,) = reprocess(raw, processed, params=PARAMS, allow_incomplete=True).outcomes
    assert outcome.status == "reconstructed", outcome.message
    (node,) = find_reconstructions(processed, raw_uid=uid, kind="full")
    assert node["volume"].shape == (SHAPE[0], SHAPE[1], SHAPE[1])


def test_entries_that_are_not_runs_are_skipped(RE, world, catalog):
    """A plain container and an array beside the runs: 'not-a-run', no traceback, the run done."""
    tmp_path = world.data
    import numpy as np

    client, raw, processed = catalog
    (uid,) = _runs(RE, tmp_path, raw)
    raw.create_container("notes", metadata={"what": "a user's folder"})
    raw.write_array(np.zeros(3), key="stray_array")
    summary = reprocess(raw, processed, params=PARAMS)
    status = {o.uid: o.status for o in summary.outcomes}
    assert status == {uid: "reconstructed", "notes": "not-a-run", "stray_array": "not-a-run"}
    assert "2 not runs" in summary.lines()[0]


@pytest.mark.parametrize("flavour", ["ophyd_async", "ophyd_v1"])
def test_standard_tiled_without_exporter(RE, world, catalog, flavour):
    """A run in a standard Tiled (run.documents() answers HTTP 406 there) is reconstructed anyway."""
    tmp_path = world.data
    from tiled.client.utils import ClientError

    client, raw, processed = catalog
    (uid,) = _runs(RE, tmp_path, raw, flavours=(flavour,))
    with pytest.raises(ClientError, match="406"):
        list(raw[uid].documents())
    (outcome,) = reprocess(raw, processed, params=PARAMS).outcomes
    assert outcome.status == "reconstructed", outcome.message


def test_cli_exit_code_names_incomplete_runs(RE, world, catalog, monkeypatch, capsys, tiled_server):
    """'reprocess' on a catalog with an incomplete run: exit 1, the summary line counts it, the rest done."""
    tmp_path = world.data
    from bluesky_tomo_hpc.cli.main import main

    client, raw, processed = catalog
    broken, good = _runs(RE, tmp_path, raw, flavours=("ophyd_async", "ophyd_async"), drop_stop_of=(0,))
    monkeypatch.setenv("BLUESKY_TOMO_HPC__DATA_DIR", str(tmp_path / "data"))
    params = tmp_path / "p.yml"
    params.write_text("filter_name: shepp\ncenter: 15.5\n")
    rc = main(["reprocess", tiled_server.uri, "--params", str(params)])
    out = capsys.readouterr().out
    assert rc == 1, out
    assert "1 reconstructed" in out and "1 incomplete" in out and broken[:8] in out
