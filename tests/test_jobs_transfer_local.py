"""The remote data path for real: two local folders stand for the beamline and the HPC site,
LocalMover (SHA-256 verified) moves the data, the local executor runs 2 MPI ranks on the "site"
paths, and the results come back and are registered in a real Tiled server."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr
from test_jobs_support import make_raw_scan

from bluesky_tomo_hpc.batch.job import ReconJob, Resources
from bluesky_tomo_hpc.batch.staging import is_self_contained
from bluesky_tomo_hpc.engine.params import ReconParams
from bluesky_tomo_hpc.jobs.executors.mpiexec import LocalExecutor
from bluesky_tomo_hpc.jobs.factory import make_monitor
from bluesky_tomo_hpc.jobs.journal import Journal, stage_statistics
from bluesky_tomo_hpc.jobs.monitor import JobMonitor
from bluesky_tomo_hpc.jobs.movers.copy import LocalMover
from bluesky_tomo_hpc.jobs.retention import RetentionRule, prune
from bluesky_tomo_hpc.jobs.submit_sink import HPCSubmitSink
from bluesky_tomo_hpc.jobs.transfer_plan import DataPlan, RemoteSite
from bluesky_tomo_hpc.results.tiled_results import find_reconstructions, processed_container
from bluesky_tomo_hpc.settings import Settings

_HAVE_MPIEXEC = shutil.which("mpiexec") is not None or Path(sys.executable).with_name("mpiexec").exists()
pytestmark = [
    pytest.mark.mpi,
    pytest.mark.skipif(not _HAVE_MPIEXEC, reason="mpiexec not installed (pip mpich)"),
]


def test_two_sites_stage_in_run_stage_out_register(tmp_path, tiled_client):
    beamline, hpc = tmp_path / "beamline", tmp_path / "hpc"
    plan = DataPlan(site="hpc", local_root=beamline, remote_root=hpc, mover="local")
    journal = Journal(tmp_path / "jobs.sqlite")
    monitor = JobMonitor(
        journal,
        LocalExecutor(ranks=2),
        tiled=processed_container(tiled_client),
        poll_s=0.2,
        backoff_s=0.1,
        readable_roots=[beamline],  # Tiled may read the beamline's copy, never the site's
        sites={"local": RemoteSite.from_plan(plan)},
    )
    spec, batches, end = make_raw_scan(beamline)
    sink = HPCSubmitSink(
        monitor,
        beamline / "work",
        params=ReconParams(),
        resources=Resources(ranks=2),
        outputs={"zarr_chunk_z": 4},
    )
    sink.open(spec)
    for b in batches:
        sink.add(b)
    sink.close(end)
    sink.wait(60)
    assert not sink.errors
    rec = monitor.wait(sink.job_ids[0], timeout=120)
    assert rec.state == "REGISTERED", (rec.state, rec.error)
    job = rec.job
    remote = plan.remote_job(job)

    # stage-in: the site got a self-contained input; the VDS here still maps into the raw file
    assert is_self_contained(remote.input_path) and not is_self_contained(job.input_path)
    assert not job.input_path.with_name("input.materialized.h5").exists()
    # run: the executor ran the job JSON with the site's paths
    (job_file,) = remote.outputs.directory.glob("local-*/job.json")
    ran = ReconJob.read(job_file)
    assert ran.input_path == remote.input_path and ran.outputs.directory == remote.outputs.directory
    # stage-out: outputs are here, result paths point here, and Tiled reads them in place here
    assert rec.result["volume_zarr"] == str(job.outputs.full_resolution)
    assert json.loads(job.outputs.result_path.read_text())["volume_zarr"] == str(
        remote.outputs.full_resolution
    )
    assert len(list(job.outputs.tiff_dir.glob("*.tiff"))) == 16 and job.outputs.provenance_path.exists()
    vol = zarr.open_array(job.outputs.full_resolution, mode="r")[:]
    np.testing.assert_array_equal(vol, zarr.open_array(remote.outputs.full_resolution, mode="r")[:])
    (node,) = find_reconstructions(processed_container(tiled_client), raw_uid=spec.run_uid)
    np.testing.assert_allclose(node["volume"][2:4], vol[2:4])
    source = node["volume"].data_sources()[0]
    assert source.management == "external" and str(beamline) in source.assets[0].data_uri

    # journal: stages with statistics, copies for retention
    rows = journal.transfers(rec.job_id)
    assert [(r["direction"], r["state"]) for r in rows] == [("in", "SUCCEEDED"), ("out", "SUCCEEDED")]
    stats = {s.stage for s in stage_statistics(journal)}
    assert {"stage", "transfer-in", "run", "transfer-out", "register", "total"} <= stats
    # retention may drop the site's result folder (a verified copy is here) but not the site's input
    report = prune(
        journal, [RetentionRule("hpc", 0, ("local",))], {"hpc": LocalMover(), "local": LocalMover()}
    )
    assert report.deleted == [str(remote.outputs.directory)] and not remote.outputs.directory.exists()
    assert remote.input_path.exists() and [p for p, _ in report.kept] == [str(remote.input_path)]


def test_transient_stage_out_failure_repeats_only_the_transfer(tmp_path, monkeypatch):
    """The site's results are unreadable once: the run is not repeated, only the copy back."""
    beamline, hpc = tmp_path / "beamline", tmp_path / "hpc"
    settings = Settings.model_validate(
        {
            "data_dir": str(tmp_path / "data"),
            "jobs": {
                "executor": "local",
                "options": {
                    "ranks": 2,
                    "site": "hpc",
                    "transfer": {
                        "mover": "local",
                        "source_root": str(beamline),
                        "destination_root": str(hpc),
                    },
                },
            },
        }
    )
    monitor = make_monitor(settings, start=False)
    monitor.backoff_s, monitor.poll_s = 0.1, 0.2
    assert monitor.sites["local"].plan.mover == "local", "the site comes from jobs.options"
    spec, batches, end = make_raw_scan(beamline, ny=8, nx=32, n_angles=60)
    sink = HPCSubmitSink(
        monitor, beamline / "work", resources=Resources(ranks=2), outputs={"zarr_chunk_z": 4}
    )
    sink.open(spec)
    for b in batches:
        sink.add(b)
    sink.close(end)
    sink.wait(60)
    job_id = sink.job_ids[0]
    real_copytree, failures = shutil.copytree, []

    def flaky_copytree(src, dst, *args, **kw):  # the site's file system hiccups once, mid stage-out
        if not failures:
            failures.append(src)
            raise OSError(5, "Input/output error", str(src))
        return real_copytree(src, dst, *args, **kw)

    monkeypatch.setattr(shutil, "copytree", flaky_copytree)
    rec = monitor.wait(job_id, timeout=120)
    assert rec.state == "DONE", (rec.state, rec.error)
    states = [s for s, _, _ in monitor.journal.events(job_id)]
    assert states.count("SUBMITTED") == 1 and "RETRY_WAIT" in states
    rows = monitor.journal.transfers(job_id)
    assert [(r["direction"], r["state"]) for r in rows] == [
        ("in", "SUCCEEDED"),
        ("out", "FAILED"),
        ("out", "SUCCEEDED"),
    ]
    assert "Input/output error" in rows[1]["error"] and failures
    assert rec.result["volume_zarr"].startswith(str(beamline))
