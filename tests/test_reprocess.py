"""Re-processing a catalog: exactly the tomography runs, idempotent, resumable, clear refusals."""

from __future__ import annotations

import pytest
from bluesky.plans import count
from ophyd.sim import det

from bluesky_tomo_hpc import ReconParams
from bluesky_tomo_hpc.cli.main import main as cli_main
from bluesky_tomo_hpc.live.catalog_replay import ReprocessError, RunQuery, already_reconstructed, reprocess
from bluesky_tomo_hpc.live.session import TomoPipeline
from bluesky_tomo_hpc.results.tiled_results import find_reconstructions
from bluesky_tomo_hpc.results.tiled_server import EmbeddedTiledServer
from bluesky_tomo_hpc.settings import Settings
from bluesky_tomo_hpc.sim.beamline import make_sim_beamline
from bluesky_tomo_hpc.sim.plans import tomo_dark_flat, tomo_scan

SHAPE = (8, 48)


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    """A catalog of 5 simulated runs of mixed layouts (4 to reconstruct) and 2 plain counts."""
    from bluesky import RunEngine

    root = tmp_path_factory.mktemp("reprocess")
    server = EmbeddedTiledServer(root / "tiled", readable_storage=[root])
    settings = Settings(data_dir=root, full_volume=False, jobs={"executor": "none"})
    pipe = TomoPipeline(settings, server.client())
    RE = RunEngine({})
    pipe.subscribe(RE)
    bl = make_sim_beamline(root / "raw-async", shape=SHAPE)
    bl1 = make_sim_beamline(root / "raw-v1", shape=SHAPE, flavour="ophyd_v1")
    kw = {"num_projections": 36, "num_darks": 2, "num_flats": 2}
    tomo = list(RE(tomo_scan(bl.detector, bl.stage, md={"sample": "a"}, **kw)))
    tomo += RE(tomo_scan(bl1.detector, bl1.stage, md={"sample": "b"}, **kw))
    plain = list(RE(count([det], num=2)))
    (df,) = RE(tomo_dark_flat(bl.detector, bl.stage, num_darks=2, num_flats=2))
    tomo += RE(tomo_scan(bl.detector, bl.stage, num_projections=36, layout="separate", dark_flat_uid=df,
                         md={"sample": "a"}))
    plain += RE(count([det], num=2))
    tomo += RE(tomo_scan(bl.detector, bl.stage, md={"sample": "c"}, **kw))
    assert pipe.wait(300)
    pipe.unsubscribe()
    yield {"server": server, "raw": pipe.raw, "processed": pipe.processed, "tomo": tomo, "plain": plain,
           "dark_flat": df, "root": root}
    pipe.close()
    server.close()


def _count_results(processed, uids, params):
    return {u: len(find_reconstructions(processed, raw_uid=u, params_hash=params.params_hash)) for u in uids}


def test_reconstructs_exactly_the_tomography_runs_then_nothing(catalog):
    params = ReconParams(filter_name="hann")
    first = reprocess(catalog["raw"], catalog["processed"], params=params)
    assert first.matched == 7
    assert sorted(o.uid for o in first.outcomes if o.status == "reconstructed") == sorted(catalog["tomo"])
    assert {o.uid for o in first.outcomes if o.status == "not-tomography"} == set(catalog["plain"])
    assert [o.uid for o in first.outcomes if o.status == "calibration"] == [catalog["dark_flat"]]
    assert first.count("failed") == 0
    second = reprocess(catalog["raw"], catalog["processed"], params=params)
    assert second.count("reconstructed") == 0 and second.count("skipped") == 4
    assert set(_count_results(catalog["processed"], catalog["tomo"], params).values()) == {1}


def test_interrupted_run_resumes_without_duplicates(catalog):
    params = ReconParams(filter_name="cosine")

    def interrupt_after_two(done, total, uid):
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        reprocess(catalog["raw"], catalog["processed"], params=params, progress=interrupt_after_two)
    counts = _count_results(catalog["processed"], catalog["tomo"], params)
    assert sum(counts.values()) == 2  # scans 1 and 2 are tomography, both done before the interrupt
    resumed = reprocess(catalog["raw"], catalog["processed"], params=params)
    assert resumed.count("skipped") == 2 and resumed.count("reconstructed") == 2
    assert set(_count_results(catalog["processed"], catalog["tomo"], params).values()) == {1}


def test_query_by_sample_and_scan_ids(catalog):
    params = ReconParams(filter_name="hamming")
    by_sample = reprocess(catalog["raw"], catalog["processed"], params=params, query=RunQuery(sample="a"))
    assert by_sample.matched == 2 and by_sample.count("reconstructed") == 2
    two = RunQuery(uids=(catalog["tomo"][1][:8], catalog["plain"][0][:8]))
    by_uid = reprocess(catalog["raw"], catalog["processed"], params=params, query=two)
    assert {o.uid for o in by_uid.outcomes} == {catalog["tomo"][1], catalog["plain"][0]}
    with pytest.raises(ReprocessError, match="no run in the catalog matches"):
        reprocess(catalog["raw"], catalog["processed"], params=params, query=RunQuery(scan_ids=(900, 910)))


def test_cli_reprocess_and_its_refusals(catalog, tmp_path, monkeypatch, capsys):
    server = catalog["server"]
    monkeypatch.setenv("TILED_API_KEY", server.api_key)
    monkeypatch.delenv("BLUESKY_TOMO_HPC_CONFIG", raising=False)
    good = tmp_path / "p.yml"
    good.write_text("filter_name: parzen\n")
    args = ["reprocess", server.uri, "--params", str(good), "--scan-ids", "1:2"]
    assert cli_main(args) == 0
    out = capsys.readouterr().out
    assert "2 reconstructed" in out
    assert cli_main(args) == 0
    assert "nothing to do" in capsys.readouterr().out

    before = len(list(catalog["processed"]))
    unknown = tmp_path / "unknown.yml"
    unknown.write_text("filter_name: parzen\ncentre: 3\n")
    assert cli_main(["reprocess", server.uri, "--params", str(unknown)]) == 2
    assert "centre" in capsys.readouterr().err
    impossible = tmp_path / "impossible.yml"
    impossible.write_text("binning: -2\n")
    assert cli_main(["reprocess", server.uri, "--params", str(impossible)]) == 2
    assert "binning" in capsys.readouterr().err
    assert cli_main(["reprocess", server.uri, "--plan", "no_such_plan"]) == 2
    assert "no run in the catalog matches plan_name=" in capsys.readouterr().err
    assert cli_main(["reprocess", "http://127.0.0.1:9/api/v1"]) == 5
    assert "cannot open catalog" in capsys.readouterr().err
    assert len(list(catalog["processed"])) == before  # nothing submitted by any refusal


@pytest.mark.mpi
def test_batch_submission_through_local_mpi(catalog):
    from bluesky_tomo_hpc.batch.job import Resources
    from bluesky_tomo_hpc.jobs.executors import make_executor
    from bluesky_tomo_hpc.jobs.journal import Journal
    from bluesky_tomo_hpc.jobs.monitor import JobMonitor
    from bluesky_tomo_hpc.live.catalog_replay import batch_submitter

    params = ReconParams(filter_name="shepp", algorithm="fbp")
    root = catalog["root"]
    monitor = JobMonitor(Journal(root / "reprocess-jobs.sqlite"), make_executor("local", {}),
                         tiled=catalog["processed"], readable_roots=[root])
    submit = batch_submitter(monitor, root / "jobs", params, "local", catalog["raw"],
                             resources=Resources(ranks=2))
    query = RunQuery(uids=(catalog["tomo"][0],))
    summary = reprocess(catalog["raw"], catalog["processed"], params=params, query=query, submit=submit)
    assert summary.count("submitted") == 1
    job_id = summary.outcomes[0].message.removeprefix("job ")
    record = monitor.wait(job_id, timeout=300)
    assert record.state == "REGISTERED", record.error
    (node,) = find_reconstructions(catalog["processed"], raw_uid=catalog["tomo"][0],
                                   params_hash=params.params_hash)
    assert node.metadata["kind"] == "batch" and node["volume"].shape == (SHAPE[0], SHAPE[1], SHAPE[1])
    # once registered, the same request is skipped
    again = reprocess(catalog["raw"], catalog["processed"], params=params, query=query, submit=submit)
    assert again.count("skipped") == 1


def test_a_volume_another_process_is_making_is_skipped_not_failed(catalog, tmp_path):
    """Two re-processings of one catalog: the run whose result the other one claimed is skipped."""
    from bluesky_tomo_hpc.results.result_claim import ResultClaim
    from bluesky_tomo_hpc.sinks.frame_store import run_file_stem

    params, uid = ReconParams(filter_name="shepp"), catalog["tomo"][0]
    settings = Settings(data_dir=tmp_path, jobs={"executor": "none"})
    claim = ResultClaim.take(tmp_path / "volumes" / run_file_stem(uid) / params.params_hash / "result")
    try:
        summary = reprocess(catalog["raw"], catalog["processed"], params=params, settings=settings,
                            query=RunQuery(uids=(uid,)))
    finally:
        claim.release()
    (outcome,) = summary.outcomes
    assert (outcome.status, outcome.message) == ("skipped", "made by another process")
    assert not already_reconstructed(catalog["processed"], uid, params)  # left to the other process
