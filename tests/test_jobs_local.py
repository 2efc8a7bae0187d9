"""Batch jobs end to end on this machine: 2 MPI ranks through the local executor into Tiled."""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from test_jobs_support import make_raw_scan

from bluesky_tomo_hpc.batch.batch_program import EX_NOINPUT
from bluesky_tomo_hpc.batch.job import JobOutputs, ReconJob, Resources
from bluesky_tomo_hpc.engine.params import ReconParams
from bluesky_tomo_hpc.engine.reconstruct import reconstruct_scan
from bluesky_tomo_hpc.jobs.executors.mpiexec import LocalExecutor, _start_time
from bluesky_tomo_hpc.jobs.journal import Journal
from bluesky_tomo_hpc.jobs.monitor import JobMonitor
from bluesky_tomo_hpc.jobs.submit_sink import HPCSubmitSink
from bluesky_tomo_hpc.results.tiled_results import find_reconstructions, processed_container
from bluesky_tomo_hpc.sources.raw_files import load_scan

_HAVE_MPIEXEC = shutil.which("mpiexec") is not None or Path(sys.executable).with_name("mpiexec").exists()
pytestmark = [
    pytest.mark.mpi,
    pytest.mark.skipif(not _HAVE_MPIEXEC, reason="mpiexec not installed (pip mpich)"),
]


@pytest.fixture
def monitor(tmp_path, tiled_client):
    journal = Journal(tmp_path / "jobs.sqlite")
    return JobMonitor(
        journal,
        LocalExecutor(ranks=2),
        tiled=processed_container(tiled_client),
        poll_s=0.2,
        backoff_s=0.1,
        readable_roots=[tmp_path],  # what conftest's Tiled server may read
    )


@pytest.fixture
def files_monitor(tmp_path):
    """No Tiled (each Tiled server costs seconds): results stay files and jobs end DONE."""
    return JobMonitor(Journal(tmp_path / "jobs.sqlite"), LocalExecutor(ranks=2), poll_s=0.2)


def test_two_ranks_end_to_end_into_tiled(tmp_path, monitor, tiled_client):
    import dataclasses

    spec, batches, end = make_raw_scan(tmp_path)
    sample = {"name": "ti64-07", "schema_version": 1}
    spec = dataclasses.replace(spec, metadata={**spec.metadata, "sample": sample})
    sink = HPCSubmitSink(
        monitor,
        tmp_path / "work",
        params=ReconParams(),
        resources=Resources(ranks=2),
        outputs={"zarr_chunk_z": 4},
    )
    sink.open(spec)
    for b in batches:
        sink.add(b)
    t = time.perf_counter()
    sink.close(end)
    assert time.perf_counter() - t < 3.0, "close() must not wait for the job (it is on the RunEngine's path)"
    sink.wait(60)
    assert not sink.errors
    rec = monitor.wait(sink.job_ids[0], timeout=120)
    assert rec.state == "REGISTERED", (rec.state, rec.error)
    states = [s for s, _, _ in monitor.journal.events(rec.job_id)]
    assert states[:3] == ["NEW", "STAGED", "SUBMITTED"] and states[-2:] == ["COMPLETED", "REGISTERED"]

    # the input is zero-copy: virtual datasets into the raw detector file
    import h5py

    with h5py.File(rec.job.input_path) as f:
        assert f["exchange/data"].is_virtual and f["exchange/data_white"].is_virtual
        np.testing.assert_allclose(f["exchange/theta"][:2], [0.0, 2.0])

    # both ranks wrote their slab; the result equals one in-process reconstruction
    result = rec.result
    assert result["ranks"] == 2 and [s["rows"] for s in result["slabs"]] == [[0, 8], [8, 16]]
    assert abs(result["center"] - 31.5) <= 1.0
    vol = zarr.open_array(result["volume_zarr"], mode="r")[:]
    ref = reconstruct_scan(load_scan(rec.job.input_path), ReconParams(), center=result["center"]).volume
    assert vol.shape == (16, 64, 64) and np.isfinite(vol).all()
    np.testing.assert_allclose(vol, ref, rtol=1e-4, atol=1e-5)

    # OME-Zarr multiscale metadata, TIFF stack and provenance
    attrs = zarr.open_group(result["ome_zarr"], mode="r").attrs.asdict()
    ms = (attrs.get("ome") or attrs)["multiscales"][0]
    assert [d["path"] for d in ms["datasets"]] == ["0", "1", "2"]
    assert zarr.open_array(result["ome_zarr"] + "/1", mode="r").shape == (8, 32, 32)
    assert len(list((rec.job.outputs.tiff_dir).glob("*.tiff"))) == 16
    prov = json.loads(rec.job.outputs.provenance_path.read_text())
    assert prov["params_hash"] == ReconParams().params_hash and prov["extra"]["ranks"] == 2
    assert prov["source"]["run_uid"] == spec.run_uid and prov["center"]["value"] == result["center"]
    assert prov["extra"]["sample"] == sample  # the sample travels into provenance

    # in Tiled, linked to the raw run, lazily sliceable
    nodes = find_reconstructions(processed_container(tiled_client), raw_uid=spec.run_uid)
    assert len(nodes) == 1 and nodes[0].metadata["job_id"] == rec.job_id
    assert nodes[0].metadata["sample"] == sample
    np.testing.assert_allclose(nodes[0]["volume"][3:5], vol[3:5])
    source = nodes[0]["volume"].data_sources()[0]  # the server reads tmp_path: registered in place
    assert source.management == "external" and source.assets[0].data_uri.endswith("volume.ome.zarr/0")

    # idempotent: the same run and parameters reuse the finished result, nothing is resubmitted
    sink.open(spec)
    for b in batches:
        sink.add(b)
    sink.close(end)
    assert sink.job_ids[1] == rec.job_id and len(monitor.journal.jobs()) == 1

    # (sharing this test's Tiled server, which costs seconds to start)
    _check_upload_when_tiled_cannot_read(monitor, tiled_client)


def _job(tmp_path, input_path, ranks=2, **params):
    return ReconJob(
        run_uid="r1",
        input_path=input_path,
        params=ReconParams(**params),
        outputs=JobOutputs(directory=tmp_path / "out", zarr_chunk_z=4),
        resources=Resources(ranks=ranks),
    )


def test_missing_input_fails_at_once_with_its_reason(tmp_path):
    journal = Journal(tmp_path / "j.sqlite")
    mon = JobMonitor(journal, LocalExecutor(ranks=2), max_retries=3, backoff_s=0.05)
    rec = mon.add(_job(tmp_path, tmp_path / "nope.h5"))
    journal.set_state(rec.job_id, "STAGED")
    rec = mon.wait(rec.job_id, timeout=60)
    assert rec.state == "FAILED" and rec.attempts == 1, "a missing input is permanent: no retry"
    assert f"exited with {EX_NOINPUT}" in rec.error and "nope.h5 does not exist" in rec.error
    assert "rank 0/2" in rec.error


def test_a_failing_rank_aborts_the_job_and_names_itself(tmp_path):
    """Rank 1's slab points past the end of the data: that rank fails, MPI_Abort ends all."""
    spec, batches, _ = make_raw_scan(tmp_path)
    from bluesky_tomo_hpc.batch.staging import write_exchange_file

    inp = write_exchange_file(spec, batches, tmp_path / "in.h5")
    job = _job(tmp_path, inp, center=31.5)
    job.write()
    ex = LocalExecutor(ranks=2)
    # corrupt rank 1's part of the input: the raw file loses its frames after staging
    import h5py

    with h5py.File(spec.raw_files[0], "a") as f:
        del f["/entry/data/data"]
    handle = ex.submit(job)
    deadline = time.time() + 60
    while (st := ex.status(handle)).state.value in ("PENDING", "RUNNING") and time.time() < deadline:
        time.sleep(0.2)
    assert st.state.value == "FAILED" and st.exit_code not in (0, None)
    assert "JOB FAILED: rank" in ex.logs(handle)


def test_cancel_stops_the_process_group_and_survives_a_new_monitor(tmp_path):
    """A monitor in a 'new session' (fresh objects, same journal) finds the job and cancels it."""
    journal_path = tmp_path / "j.sqlite"
    ex = LocalExecutor(ranks=1, python="/bin/sleep")  # a stand-in program that runs until killed
    ex.command = lambda job, job_file: ["/bin/sleep", "60"]  # type: ignore[method-assign]
    mon = JobMonitor(Journal(journal_path), ex)
    rec = mon.add(_job(tmp_path, tmp_path / "x.h5"))
    rec = mon.submit(rec.job_id)
    mon.step()
    assert mon.journal.get(rec.job_id).state == "RUNNING"
    pid = int((tmp_path / "out").glob("local-*/start").__next__().read_text().split()[0])
    del mon  # the IPython session goes away; the job does not
    mon2 = JobMonitor(Journal(journal_path), LocalExecutor(ranks=1))
    assert [r.job_id for r in mon2.journal.jobs(active_only=True)] == [rec.job_id]
    mon2.cancel(rec.job_id)
    assert mon2.journal.get(rec.job_id).state == "CANCELLED"
    for _ in range(50):  # gone, or a zombie waiting for its (test) parent to reap it
        if _start_time(pid) is None:
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"process group {pid} still alive after cancel")


def test_run_engine_scan_submits_on_stop_without_waiting(RE, tmp_path, files_monitor):
    """A simulated ophyd-async scan: the RunEngine returns at once; the job follows on its own."""
    from bluesky_tomo_hpc.sim import make_sim_beamline, tomo_scan
    from bluesky_tomo_hpc.sources.callback import TomoCallback

    monitor = files_monitor
    bl = make_sim_beamline(tmp_path / "raw", flavour="ophyd_async", shape=(16, 64))
    sink = HPCSubmitSink(
        monitor,
        tmp_path / "work",
        params=ReconParams(),
        resources=Resources(ranks=2),
        outputs={"zarr_chunk_z": 4},
    )
    cb = TomoCallback(lambda: sink)
    RE.subscribe(cb)
    (uid,) = RE(tomo_scan(bl.detector, bl.stage, num_projections=60, num_darks=3, num_flats=3))
    assert cb.flush(30) and cb.errors == []
    sink.wait(60)
    assert not sink.errors and len(sink.job_ids) == 1
    assert monitor.journal.get(sink.job_ids[0]).state != "DONE", "the scan did not wait for the job"
    rec = monitor.wait(sink.job_ids[0], timeout=120)
    assert rec.state == "DONE", rec.error
    assert rec.run_uid == uid and abs(rec.result["center"] - bl.rotation_center_px) <= 1.5
    import h5py

    with h5py.File(rec.job.input_path) as f:  # frames in the detector's HDF5: staged zero-copy
        assert f["exchange/data"].is_virtual and f["exchange/data"].shape == (60, 16, 64)
    assert zarr.open_array(rec.result["volume_zarr"], mode="r").shape == (16, 64, 64)


SUBMIT_AND_EXIT = """
import sys
sys.path.insert(0, {tests!r})
from pathlib import Path
from test_jobs_support import make_raw_scan
from bluesky_tomo_hpc.jobs.executors.mpiexec import LocalExecutor
from bluesky_tomo_hpc.jobs.journal import Journal
from bluesky_tomo_hpc.jobs.monitor import JobMonitor
from bluesky_tomo_hpc.batch.job import Resources
from bluesky_tomo_hpc.jobs.submit_sink import HPCSubmitSink
from bluesky_tomo_hpc.engine.params import ReconParams
tmp = Path({tmp!r})
spec, batches, end = make_raw_scan(tmp, run_uid="run-restart")
sink = HPCSubmitSink(JobMonitor(Journal(tmp / "j.sqlite"), LocalExecutor(ranks=2)), tmp / "work",
                     params=ReconParams(center=31.5), resources=Resources(ranks=2),
                     outputs={{"zarr_chunk_z": 4}})
sink.open(spec)
for b in batches:
    sink.add(b)
sink.close(end)
print(sink.job_ids[0])
"""  # the interpreter waits for the (non-daemon) staging thread, then exits while the job runs


def test_job_survives_the_session_that_submitted_it(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    code = SUBMIT_AND_EXIT.format(tests=str(Path(__file__).parent), tmp=str(tmp_path))
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    job_id = p.stdout.strip().splitlines()[-1]
    # a new session: only the journal connects it to the job
    mon = JobMonitor(Journal(tmp_path / "j.sqlite"), LocalExecutor(), poll_s=0.2)
    assert mon.journal.get(job_id).state in ("SUBMITTED", "RUNNING")
    rec = mon.wait(job_id, timeout=120)
    assert rec.state == "DONE", rec.error
    assert rec.result["run_uid"] == "run-restart" and Path(rec.result["volume_zarr"]).is_dir()


def _check_upload_when_tiled_cannot_read(monitor, tiled_client):
    """A result outside the server's readable storage: registered by upload, same values."""
    import tempfile

    outside = Path(tempfile.mkdtemp(prefix="tomo-not-readable-"))  # not under tmp_path
    try:
        z = zarr.open_group(str(outside / "volume.ome.zarr"), mode="w")
        vol = np.random.default_rng(1).random((8, 32, 32), dtype=np.float32)
        z.create_array("0", shape=vol.shape, dtype="float32", chunks=(4, 32, 32))[:] = vol
        job = ReconJob(
            run_uid="run-elsewhere", input_path=outside / "in.h5", outputs=JobOutputs(directory=outside)
        )
        rec = monitor.journal.add(job, "local")
        monitor.journal.set_state(
            rec.job_id, "COMPLETED", result={"volume_zarr": str(outside / "volume.ome.zarr/0")}
        )
        monitor.step()
        assert monitor.journal.get(rec.job_id).state == "REGISTERED"
        node = find_reconstructions(processed_container(tiled_client), raw_uid="run-elsewhere")[0]
        assert node["volume"].data_sources()[0].management == "writable"
        np.testing.assert_allclose(node["volume"][:], vol)
    finally:
        shutil.rmtree(outside)
