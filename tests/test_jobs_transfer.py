"""The remote data path (stage-in -> NERSC run -> stage-out -> register) at the SDK transport layer.

Globus Transfer answers from recorded bodies (tests/fixtures/recorded/globus_stage.json) through
``responses`` under the real ``globus_sdk.TransferClient``; NERSC answers through the real
``sfapi-client`` on an httpx MockTransport (see test_jobs_remote.py). The monitor, journal,
materialised HDF5 input, Zarr result and Tiled server are real.
"""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath

import h5py
import httpx
import numpy as np
import pytest
import responses
import zarr
from test_jobs_remote import _nersc, _ok, _rec
from test_jobs_support import DSET, make_raw_scan

from bluesky_tomo_hpc.batch.job import JobOutputs, ReconJob, Resources
from bluesky_tomo_hpc.batch.staging import is_self_contained, materialize_exchange_file, write_exchange_file
from bluesky_tomo_hpc.engine.params import ReconParams
from bluesky_tomo_hpc.jobs.journal import Journal, stage_statistics
from bluesky_tomo_hpc.jobs.monitor import JobMonitor
from bluesky_tomo_hpc.jobs.movers.globus import GlobusMover
from bluesky_tomo_hpc.jobs.transfer_plan import DataPlan, RemoteSite
from bluesky_tomo_hpc.model import TomoDataError
from bluesky_tomo_hpc.results.tiled_results import find_reconstructions, processed_container

SRC, DST = "b2c3d4e5-0000-4000-8000-000000000832", "c3d4e5f6-0000-4000-8000-0000000e4e5c"
TAPI = "https://transfer.api.globus.org/v0.10"
REMOTE = PurePosixPath("/pscratch/sd/a/alsdev/tomo")
TASK_IN, TASK_IN2, TASK_OUT = (
    "a1000000-b7a1-11ee-9a2c-0242ac110002",
    "a2000000-b7a1-11ee-9a2c-0242ac110002",
    "b1000000-b7a1-11ee-9a2c-0242ac110002",
)


@pytest.fixture
def g():
    return _rec("globus_stage.json")


@pytest.fixture
def rs():
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


def _globus_site(tmp_path: Path) -> RemoteSite:
    import globus_sdk

    plan = DataPlan(
        site="nersc",
        local_root=tmp_path / "beamline",
        remote_root=REMOTE,
        source_endpoint=SRC,
        destination_endpoint=DST,
    )
    client = globus_sdk.TransferClient(authorizer=globus_sdk.AccessTokenAuthorizer("recorded"))
    out = GlobusMover(client, SRC, DST, poll_s=0, sleep=lambda s: None)
    return RemoteSite(plan, out, out.reversed())


def _staged_job(tmp_path: Path) -> ReconJob:
    """A scan staged as usual (virtual datasets into the raw file) under the site's local root."""
    root = tmp_path / "beamline"
    spec, batches, _ = make_raw_scan(root, ny=8, nx=32, n_angles=60)
    run_dir = root / "work" / spec.run_uid
    write_exchange_file(spec, batches, run_dir / "input.h5")
    return ReconJob(
        job_id="abc",
        run_uid=spec.run_uid,
        input_path=run_dir / "input.h5",
        params=ReconParams(),
        outputs=JobOutputs(directory=run_dir / "job", zarr_chunk_z=4),
        resources=Resources(ranks=4, walltime_s=900),
    )


def _nersc_routes(n, *, sacct=("sacct_running", "sacct_completed")):
    return {
        ("GET", "status/perlmutter"): _ok(n["status_perlmutter"]),
        ("POST", "compute/jobs/perlmutter"): _ok(n["submit_accepted"]),
        ("GET", "tasks/148215"): _ok(n["submit_task_completed"]),
        ("GET", "compute/jobs/perlmutter"): [(200, n[s]) for s in sacct],
    }


def _deliver_outputs(job: ReconJob, remote: ReconJob) -> np.ndarray:
    """What the NERSC job wrote and Globus brought back: a Zarr volume and result.json (which
    names the *remote* paths, as the batch program at NERSC saw them)."""
    vol = np.random.default_rng(0).random((8, 32, 32)).astype(np.float32)
    z = zarr.open_array(
        job.outputs.full_resolution, mode="w", shape=vol.shape, chunks=(4, 32, 32), dtype="f4"
    )
    z[:] = vol
    result = {
        "center": 15.5,
        "ranks": 4,
        "timings": {"total_s": 151.2},
        "volume_zarr": str(remote.outputs.full_resolution),
        "ome_zarr": str(remote.outputs.zarr_path),
        "tiff_dir": str(remote.outputs.tiff_dir),
    }
    job.outputs.provenance_path.write_text(json.dumps({"result": result}))
    job.outputs.result_path.write_text(json.dumps(result))
    return vol


def test_nersc_job_stage_in_run_stage_out_register(tmp_path, g, rs, tiled_client, monkeypatch):
    monkeypatch.setattr("sfapi_client._utils._SLEEP", lambda *a: None)
    site = _globus_site(tmp_path)
    ex, nersc = _nersc(_nersc_routes(_rec("nersc_sfapi.json")))
    journal = Journal(tmp_path / "jobs.sqlite")
    mon = JobMonitor(
        journal,
        ex,
        sites={"nersc": site},
        tiled=processed_container(tiled_client),
        readable_roots=[tmp_path],
    )
    job = _staged_job(tmp_path)
    remote = site.plan.remote_job(job)
    rec = mon.add(job, "nersc")
    journal.set_state(rec.job_id, "STAGED", str(job.input_path))

    rs.add("GET", f"{TAPI}/submission_id", json=g["submission_id"])
    rs.add("POST", f"{TAPI}/transfer", json=g["accepted_in"])
    rs.add("POST", f"{TAPI}/transfer", json=g["accepted_out"])
    rs.add("GET", f"{TAPI}/task/{TASK_IN}", json=g["in_active"])
    rs.add("GET", f"{TAPI}/task/{TASK_IN}", json=g["in_succeeded"])
    for ep in (SRC, DST):  # stage-in verifies the input file, stage-out the job folder
        rs.add("GET", f"{TAPI}/operation/endpoint/{ep}/stat", json=g["stat_input"])
        rs.add("GET", f"{TAPI}/operation/endpoint/{ep}/stat", json=g["stat_dir"])
    delivered: dict[str, np.ndarray] = {}

    def out_task(request):
        delivered["vol"] = _deliver_outputs(job, remote)  # Globus wrote the files, then said SUCCEEDED
        return 200, {}, json.dumps(g["out_succeeded"])

    rs.add_callback("GET", f"{TAPI}/task/{TASK_OUT}", callback=out_task)

    # 1. stage-in: a self-contained copy of the input goes out, checksum-synchronised
    mon.step()
    assert journal.get(rec.job_id).state == "STAGED" and not nersc.requests, "not submitted before arrival"
    materialized = job.input_path.with_name("input.materialized.h5")
    assert is_self_contained(materialized) and not is_self_contained(job.input_path)
    with h5py.File(materialized) as f, h5py.File(job.input_path) as v:
        np.testing.assert_array_equal(f["exchange/data"][:], v["exchange/data"][:])
    body = json.loads(next(c.request.body for c in rs.calls if c.request.url.endswith("/transfer")))
    assert body["sync_level"] in (3, "checksum") and body["verify_checksum"] is True
    (item,) = body["DATA"]
    assert item["source_path"] == str(materialized)
    assert item["destination_path"] == f"{REMOTE}/work/{job.run_uid}/input.h5"

    # 2. SUCCEEDED and verified -> submitted to NERSC with the remote paths
    mon.step()
    rec = journal.get(rec.job_id)
    assert rec.state == "SUBMITTED", (rec.state, rec.error)
    assert not materialized.exists(), "the full copy is removed once it arrived"
    posted = next(q for q in nersc.requests if q.method == "POST").content.decode()
    script = dict(httpx.QueryParams(posted))["job"]
    sent = ReconJob.model_validate_json(script.split("<<'JOB_JSON_EOF'\n")[1].split("\nJOB_JSON_EOF")[0])
    assert sent.input_path == remote.input_path == Path(f"{REMOTE}/work/{job.run_uid}/input.h5")
    assert sent.outputs.directory == remote.outputs.directory and str(tmp_path) not in script
    assert [c["location"] for c in journal.copies(item=f"run:{job.run_uid}")] == ["nersc"]

    # 3. queued/running, 4. COMPLETED at NERSC -> stage-out -> COMPLETED here -> registered
    mon.step()
    assert journal.get(rec.job_id).state == "RUNNING"
    mon.step()
    rec = journal.get(rec.job_id)
    assert rec.state == "REGISTERED", (rec.state, rec.error)
    out_body = json.loads([c.request.body for c in rs.calls if c.request.url.endswith("/transfer")][1])
    assert out_body["source_endpoint"] == DST and out_body["destination_endpoint"] == SRC
    assert out_body["DATA"][0]["recursive"] is True
    assert out_body["DATA"][0]["source_path"] == str(remote.outputs.directory)
    assert rec.result["volume_zarr"] == str(job.outputs.full_resolution), "result paths mapped back here"
    node = find_reconstructions(processed_container(tiled_client), raw_uid=job.run_uid)[0]
    np.testing.assert_allclose(node["volume"][:], delivered["vol"])
    assert node.metadata["job_id"] == "abc" and node.metadata["executor"] == "nersc"
    assert {c["location"] for c in journal.copies(item=f"result:{job.key}")} == {"nersc", "local"}

    details = [d or "" for _, _, d in journal.events(rec.job_id)]
    assert any(d.startswith("transfer-in started: globus task " + TASK_IN) for d in details)
    assert any(d.startswith("transfer-out done") for d in details)
    stats = {s.stage: s for s in stage_statistics(journal)}
    assert {"transfer-in", "queue", "run", "transfer-out", "register", "total"} <= set(stats)
    assert all(s.n == 1 for s in stats.values())


def test_failed_transfer_is_retried_and_permission_denied_is_permanent(tmp_path, g, rs):
    site = _globus_site(tmp_path)
    ex, nersc = _nersc({})
    journal = Journal(tmp_path / "jobs.sqlite")
    mon = JobMonitor(journal, ex, sites={"nersc": site}, backoff_s=0, max_retries=3)
    rec = mon.add(_staged_job(tmp_path), "nersc")
    journal.set_state(rec.job_id, "STAGED")
    rs.add("GET", f"{TAPI}/submission_id", json=g["submission_id"])
    rs.add("POST", f"{TAPI}/transfer", json=g["accepted_in"])
    rs.add("POST", f"{TAPI}/transfer", json=g["accepted_in_retry"])
    rs.add("GET", f"{TAPI}/task/{TASK_IN}", json=g["in_failed_endpoint"])
    rs.add("GET", f"{TAPI}/task/{TASK_IN2}", json=g["in_retry_failed_permission"])

    mon.step()
    rec = journal.get(rec.job_id)
    assert rec.state == "RETRY_WAIT" and "ENDPOINT_ERROR" in rec.error and rec.attempts == 1
    mon.step()  # backoff 0: the transfer is tried again, and now the site refuses the path
    rec = journal.get(rec.job_id)
    assert rec.state == "FAILED" and "PERMISSION_DENIED" in rec.error and "gave up" not in rec.error
    assert [r["state"] for r in journal.transfers(rec.job_id)] == ["FAILED", "FAILED"]
    assert not nersc.requests, "nothing is submitted without its input at the site"
    assert not journal.copies(item=f"run:{rec.run_uid}", location="nersc")


def test_cancel_during_transfer_cancels_the_globus_task(tmp_path, g, rs):
    site = _globus_site(tmp_path)
    ex, nersc = _nersc({})
    journal = Journal(tmp_path / "jobs.sqlite")
    rec = JobMonitor(journal, ex, sites={"nersc": site}).add(_staged_job(tmp_path), "nersc")
    journal.set_state(rec.job_id, "STAGED")
    rs.add("GET", f"{TAPI}/submission_id", json=g["submission_id"])
    rs.add("POST", f"{TAPI}/transfer", json=g["accepted_in"])
    rs.add("GET", f"{TAPI}/task/{TASK_IN}", json=g["in_active"])
    rs.add("POST", f"{TAPI}/task/{TASK_IN}/cancel", json=g["cancel_ok"])
    JobMonitor(journal, ex, sites={"nersc": site}).step()

    # a new session's monitor finds the transfer in the journal and cancels it
    rec = JobMonitor(journal, ex, sites={"nersc": site}).cancel(rec.job_id)
    assert rec.state == "CANCELLED" and TASK_IN in journal.events(rec.job_id)[-1][2]
    assert any(c.request.url.endswith(f"/task/{TASK_IN}/cancel") for c in rs.calls)
    assert [r["state"] for r in journal.transfers(rec.job_id)] == ["CANCELLED"]
    assert not nersc.requests


def test_expired_globus_token_fails_at_once_with_a_clear_message(tmp_path, g, rs):
    site = _globus_site(tmp_path)
    journal = Journal(tmp_path / "jobs.sqlite")
    mon = JobMonitor(journal, _nersc({})[0], sites={"nersc": site}, max_retries=3)
    rec = mon.add(_staged_job(tmp_path), "nersc")
    journal.set_state(rec.job_id, "STAGED")
    rs.add("GET", f"{TAPI}/submission_id", json=g["submission_id"])
    rs.add("POST", f"{TAPI}/transfer", json=g["token_expired"], status=401)
    mon.step()
    rec = journal.get(rec.job_id)
    assert rec.state == "FAILED" and "401" in rec.error and "expired or revoked" in rec.error


# -- the plan and the self-contained input ---------------------------------------------------
def test_plan_from_settings_options_and_path_mapping(tmp_path):
    plan, rest = DataPlan.split_options(
        {
            "site": "nersc",
            "account": "als",
            "globus": {
                "source_endpoint": SRC,
                "destination_endpoint": DST,
                "source_root": str(tmp_path),
                "destination_root": "/pscratch/x",
            },
        }
    )
    assert rest == {"account": "als"} and plan.mover == "globus" and plan.site == "nersc"
    assert plan.to_remote(tmp_path / "a" / "b.h5") == PurePosixPath("/pscratch/x/a/b.h5")
    assert plan.to_local("/pscratch/x/a") == tmp_path / "a"
    assert plan.localize({"v": ["/pscratch/x/z", "/pscratchy"]}) == {"v": [str(tmp_path / "z"), "/pscratchy"]}
    with pytest.raises(ValueError, match="outside .* local root of site 'nersc'"):
        plan.to_remote("/elsewhere/x.h5")
    assert DataPlan.split_options({"ranks": 2}) == (None, {"ranks": 2})
    with pytest.raises(ValueError, match="no 'globus'"):
        DataPlan.split_options({"site": "nersc"})
    with pytest.raises(ValueError, match="source_endpoint and destination_endpoint"):
        DataPlan(site="x", local_root=tmp_path, remote_root="/r")


def test_materialize_copies_in_bounded_chunks_and_refuses_missing_raw_files(tmp_path):
    spec, batches, _ = make_raw_scan(tmp_path, ny=8, nx=32, n_angles=60)
    vds = write_exchange_file(spec, batches, tmp_path / "input.h5")
    out = materialize_exchange_file(vds, tmp_path / "real.h5", chunk_frames=7)
    assert is_self_contained(out)
    with h5py.File(out) as f, h5py.File(spec.raw_files[0]) as raw:
        np.testing.assert_array_equal(f["exchange/data"][:], raw[DSET][8:])
        np.testing.assert_array_equal(f["exchange/data_dark"][:], raw[DSET][:4])
        np.testing.assert_allclose(f["exchange/theta"][:2], [0.0, 3.0])
        assert f.attrs["run_uid"] == spec.run_uid and f["exchange/data"].chunks == (1, 8, 32)
    Path(spec.raw_files[0]).rename(tmp_path / "moved.h5")  # HDF5 would read zeros: refuse instead
    with pytest.raises(TomoDataError, match="does not exist"):
        materialize_exchange_file(vds, tmp_path / "real2.h5")
    assert not (tmp_path / "real2.h5").exists()


def test_job_lost_at_nersc_without_its_result_is_retried_not_copied_back(tmp_path, g, rs, monkeypatch):
    """sacct forgets the job and the site has no result.json: a transient failure, no transfer-out."""
    monkeypatch.setattr("sfapi_client._utils._SLEEP", lambda *a: None)
    site = _globus_site(tmp_path)
    ex, _ = _nersc(_nersc_routes(_rec("nersc_sfapi.json"), sacct=("sacct_empty",)))
    journal = Journal(tmp_path / "jobs.sqlite")
    mon = JobMonitor(journal, ex, sites={"nersc": site}, backoff_s=60)
    rec = mon.add(_staged_job(tmp_path), "nersc")
    journal.set_state(rec.job_id, "STAGED")
    rs.add("GET", f"{TAPI}/submission_id", json=g["submission_id"])
    rs.add("POST", f"{TAPI}/transfer", json=g["accepted_in"])
    rs.add("GET", f"{TAPI}/task/{TASK_IN}", json=g["in_succeeded"])
    rs.add("GET", f"{TAPI}/operation/endpoint/{SRC}/stat", json=g["stat_input"])
    rs.add("GET", f"{TAPI}/operation/endpoint/{DST}/stat", json=g["stat_input"])
    rs.add("GET", f"{TAPI}/operation/endpoint/{DST}/stat", json=g["stat_not_found"], status=404)
    mon.step()
    assert journal.get(rec.job_id).state == "SUBMITTED"
    mon.step()
    rec = journal.get(rec.job_id)
    assert rec.state == "RETRY_WAIT" and rec.error.startswith("LOST"), (rec.state, rec.error)
    stat = [c.request.url for c in rs.calls if "/stat" in c.request.url][-1]
    assert "result.json" in stat
    assert [r["direction"] for r in journal.transfers(rec.job_id)] == ["in"]
