"""NERSC (sfapi-client), Globus Transfer (globus-sdk) and ALCF (globus-compute-sdk) at their
transport layer, with recorded responses (tests/fixtures/recorded), failures included."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
import responses

from bluesky_tomo_hpc.batch.job import JobOutputs, ReconJob, Resources
from bluesky_tomo_hpc.engine.params import ReconParams
from bluesky_tomo_hpc.jobs.executors.alcf import AlcfExecutor
from bluesky_tomo_hpc.jobs.executors.executor import PermanentError, RemoteState
from bluesky_tomo_hpc.jobs.executors.nersc import NerscExecutor
from bluesky_tomo_hpc.jobs.journal import Journal
from bluesky_tomo_hpc.jobs.monitor import JobMonitor
from bluesky_tomo_hpc.jobs.movers.globus import GlobusMover
from bluesky_tomo_hpc.jobs.movers.mover import TransferError

REC = Path(__file__).parent / "fixtures" / "recorded"
API = "https://api.nersc.gov/api/v1.2"


def _rec(name: str) -> dict:
    return json.loads((REC / name).read_text())


def _job() -> ReconJob:
    return ReconJob(
        job_id="abc",
        run_uid="run-1",
        input_path=Path("/pscratch/sd/a/alsdev/run-1/input.h5"),
        params=ReconParams(),
        outputs=JobOutputs(directory=Path("/pscratch/sd/a/alsdev/run-1/job")),
        resources=Resources(ranks=4, walltime_s=900),
    )


# -- NERSC -----------------------------------------------------------------------------------
class Recorded:
    """An httpx transport answering (method, path) from queues of recorded bodies; logs requests."""

    def __init__(self, routes: dict[tuple[str, str], list[tuple[int, dict]]]):
        self.routes = {k: list(v) for k, v in routes.items()}
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        key = (request.method, request.url.path.removeprefix("/api/v1.2/"))
        queue = self.routes.get(key)
        if not queue:
            return httpx.Response(404, json={"detail": f"no recorded response for {key}"})
        status, body = queue.pop(0) if len(queue) > 1 else queue[0]
        return httpx.Response(status, json=body)


def _nersc(routes) -> tuple[NerscExecutor, Recorded]:
    from sfapi_client import Client

    transport = Recorded(routes)

    class RecordedClient(Client):
        """The real sfapi-client, with its httpx client on the recorded transport."""

        def _http_client(self):  # noqa: D401 - same contract as the parent
            if self._Client__http_client is None:
                self._Client__http_client = httpx.Client(
                    transport=httpx.MockTransport(transport),
                    headers={"accept": "application/json", "Authorization": "Bearer recorded"},
                )
            return self._Client__http_client

    ex = NerscExecutor(
        lambda: RecordedClient(access_token="recorded", wait_interval=0),
        account="als",
        image="registry.nersc.gov/als/bluesky-tomo-hpc:1",
    )
    return ex, transport


@pytest.fixture
def nersc_rec():
    return _rec("nersc_sfapi.json")


def _ok(body):
    return [(200, body)]


def test_nersc_submit_follow_cancel_logs(nersc_rec, monkeypatch):
    monkeypatch.setattr("sfapi_client._utils._SLEEP", lambda *a: None)
    r = nersc_rec
    ex, tr = _nersc(
        {
            ("GET", "status/perlmutter"): _ok(r["status_perlmutter"]),
            ("POST", "compute/jobs/perlmutter"): _ok(r["submit_accepted"]),
            ("GET", "tasks/148215"): _ok(r["submit_task_completed"]),
            ("GET", "compute/jobs/perlmutter"): [(200, r["sacct_running"]), (200, r["sacct_completed"])],
            ("DELETE", "compute/jobs/perlmutter/31415926"): _ok(r["cancel_ok"]),
            ("POST", "utilities/command/perlmutter"): _ok(r["command_accepted"]),
            ("GET", "tasks/148300"): _ok(r["command_task_completed"]),
        }
    )
    handle = ex.submit(_job())
    assert handle == "31415926|/pscratch/sd/a/alsdev/run-1/job"
    posted = next(
        q for q in tr.requests if q.method == "POST" and q.url.path.endswith("compute/jobs/perlmutter")
    )
    form = dict(httpx.QueryParams(posted.content.decode()))
    script = form["job"]
    assert form["isPath"] in ("false", "False")
    assert "#SBATCH --qos=realtime" in script and "#SBATCH --account=als" in script
    assert "#SBATCH --constraint=cpu" in script and "#SBATCH --ntasks=4" in script
    assert (
        "srun podman-hpc run --rm --mpi" in script and "registry.nersc.gov/als/bluesky-tomo-hpc:1" in script
    )
    assert '"run_uid":"run-1"' in script, "the job file travels inside the script"
    assert ex.status(handle).state == RemoteState.RUNNING
    assert ex.status(handle).state == RemoteState.COMPLETED
    ex.cancel(handle)
    assert any(q.method == "DELETE" for q in tr.requests)
    assert "done in 151.2 s" in ex.logs(handle)
    sacct = [q for q in tr.requests if q.method == "GET" and q.url.path.endswith("compute/jobs/perlmutter")]
    assert sacct[0].url.params["sacct"] == "true" and "jobid=31415926" in sacct[0].url.params["kwargs"]


@pytest.mark.parametrize(
    "record,state,transient",
    [
        ("sacct_failed_input", RemoteState.FAILED, False),
        ("sacct_node_fail", RemoteState.FAILED, True),
        ("sacct_cancelled", RemoteState.CANCELLED, False),
        ("sacct_empty", RemoteState.LOST, True),
    ],
)
def test_nersc_end_states(nersc_rec, record, state, transient):
    ex, _ = _nersc(
        {
            ("GET", "status/perlmutter"): _ok(nersc_rec["status_perlmutter"]),
            ("GET", "compute/jobs/perlmutter"): _ok(nersc_rec[record]),
        }
    )
    st = ex.status("31415926|/pscratch/x")
    assert (st.state, st.transient) == (state, transient)
    if record == "sacct_failed_input":
        assert st.exit_code == 66 and "permanent" in st.reason


def test_nersc_expired_token_fails_the_job_at_once(nersc_rec, tmp_path):
    ex, _ = _nersc({("GET", "status/perlmutter"): [(401, nersc_rec["token_expired"])]})
    mon = JobMonitor(Journal(tmp_path / "j.sqlite"), ex, max_retries=3)
    rec = mon.add(_job().model_copy(update={"job_id": "tok"}), "nersc")
    rec = mon.submit(rec.job_id)
    assert rec.state == "FAILED" and "401" in rec.error and "expired" in rec.error


def test_nersc_permission_denied_and_invalid_account_are_permanent(nersc_rec, monkeypatch):
    monkeypatch.setattr("sfapi_client._utils._SLEEP", lambda *a: None)
    ex, _ = _nersc(
        {
            ("GET", "status/perlmutter"): _ok(nersc_rec["status_perlmutter"]),
            ("POST", "compute/jobs/perlmutter"): [(403, nersc_rec["permission_denied"])],
        }
    )
    with pytest.raises(PermanentError, match="403 permission denied"):
        ex.submit(_job())
    ex, _ = _nersc(
        {
            ("GET", "status/perlmutter"): _ok(nersc_rec["status_perlmutter"]),
            ("POST", "compute/jobs/perlmutter"): _ok(nersc_rec["submit_accepted"]),
            ("GET", "tasks/148215"): _ok(nersc_rec["submit_task_invalid_account"]),
        }
    )
    with pytest.raises(PermanentError, match="Invalid account"):
        ex.submit(_job())


# -- Globus Transfer -------------------------------------------------------------------------
SRC, DST = "b2c3d4e5-0000-4000-8000-000000000832", "c3d4e5f6-0000-4000-8000-0000000e4e5c"
TAPI = "https://transfer.api.globus.org/v0.10"


@pytest.fixture
def globus():
    """globus-sdk's own response registry for submit_transfer; our recorded task documents."""
    import globus_sdk
    from globus_sdk.testing import load_response

    responses.start()
    try:
        sub = load_response("transfer.submit_transfer")  # the SDK's recorded "Accepted" body
        load_response("transfer.get_submission_id")
        assert sub.metadata["task_id"]
        client = globus_sdk.TransferClient(authorizer=globus_sdk.AccessTokenAuthorizer("recorded"))
        rec = _rec("globus_transfer.json")
        for doc in rec.values():  # the recorded task documents carry the registry's task id
            if doc.get("DATA_TYPE") == "task":
                doc["task_id"] = sub.metadata["task_id"]
        yield (
            responses.mock,
            GlobusMover(client, SRC, DST, poll_s=0, sleep=lambda s: None),
            rec,
            sub.metadata["task_id"],
        )
    finally:
        responses.stop()
        responses.reset()


def test_globus_transfer_done_only_when_succeeded_and_verified(globus):
    rs, mover, r, TASK = globus
    rs.add("GET", f"{TAPI}/task/{TASK}", json=r["task_active"])
    rs.add("GET", f"{TAPI}/task/{TASK}", json=r["task_succeeded"])
    rs.add("GET", f"{TAPI}/operation/endpoint/{SRC}/stat", json=r["stat_file"])
    rs.add("GET", f"{TAPI}/operation/endpoint/{DST}/stat", json=r["stat_file"])
    res = mover.copy("/data832/run-1/input.h5", "/pscratch/run-1/input.h5")
    assert res.task_id == TASK and res.bytes == 52428800
    body = json.loads(next(c.request.body for c in rs.calls if c.request.url.endswith("/transfer")))
    assert body["sync_level"] == 3 or body["sync_level"] == "checksum"
    assert body["verify_checksum"] is True


def test_globus_failed_transfer_is_never_success(globus):
    rs, mover, r, TASK = globus
    rs.add("GET", f"{TAPI}/task/{TASK}", json=r["task_failed"])
    with pytest.raises(TransferError, match="FAILED: ENDPOINT_ERROR"):
        mover.copy("/a", "/b")


def test_globus_succeeded_but_short_file_is_not_done(globus):
    rs, mover, r, TASK = globus
    rs.add("GET", f"{TAPI}/task/{TASK}", json=r["task_succeeded"])
    rs.add("GET", f"{TAPI}/operation/endpoint/{SRC}/stat", json=r["stat_file"])
    rs.add("GET", f"{TAPI}/operation/endpoint/{DST}/stat", json=r["stat_file_short"])
    with pytest.raises(TransferError, match="1048576 bytes"):
        mover.copy("/a", "/b")


def test_globus_permission_denied_is_cancelled_and_permanent(globus):
    rs, mover, r, TASK = globus
    rs.add("GET", f"{TAPI}/task/{TASK}", json=r["task_permission_denied"])
    rs.add("POST", f"{TAPI}/task/{TASK}/cancel", json=r["cancel_ok"])
    with pytest.raises(TransferError, match="PERMISSION_DENIED") as err:
        mover.copy("/a", "/b")
    assert not err.value.transient
    assert any(c.request.url.endswith("/cancel") for c in rs.calls)


def test_globus_expired_token(globus):
    rs, mover, r, TASK = globus
    rs.replace("POST", f"{TAPI}/transfer", json=r["token_expired"], status=401)
    with pytest.raises(TransferError, match="401 AuthenticationFailed") as err:
        mover.copy("/a", "/b")
    assert not err.value.transient


# -- ALCF / Globus Compute -------------------------------------------------------------------
CAPI = "https://compute.api.globus.org"


@pytest.fixture
def compute():
    import globus_sdk
    from globus_compute_sdk import Client

    r = _rec("globus_compute.json")
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rs:
        rs.add("POST", f"{CAPI}/v3/functions", json=r["register_function"])
        client = Client(authorizer=globus_sdk.AccessTokenAuthorizer("recorded"), do_version_check=False)
        yield rs, AlcfExecutor(lambda: client, r["endpoint_id"]), r


def test_alcf_submit_and_follow(compute):
    from globus_compute_sdk.serialize import ComputeSerializer

    rs, ex, r = compute
    rs.add("POST", f"{CAPI}/v3/endpoints/{r['endpoint_id']}/submit", json=r["submit"])
    rs.add("GET", f"{CAPI}/v2/tasks/{r['task_id']}", json=r["task_waiting"])
    rs.add("GET", f"{CAPI}/v2/tasks/{r['task_id']}", json=r["task_running"])
    done = dict(
        r["task_success_template"],
        result=ComputeSerializer().serialize({"exit_code": 0, "log_tail": "rank 0: job abc done"}),
    )
    rs.add("GET", f"{CAPI}/v2/tasks/{r['task_id']}", json=done)
    handle = ex.submit(_job())
    assert handle == r["task_id"]
    sub = json.loads(next(c.request.body for c in rs.calls if c.request.url.endswith("/submit")))
    assert list(sub["tasks"]) == [r["function_id"]]
    assert ex.status(handle).state == RemoteState.PENDING
    assert ex.status(handle).state == RemoteState.RUNNING
    assert ex.status(handle).state == RemoteState.COMPLETED
    assert "job abc done" in ex.logs(handle)
    with pytest.raises(PermanentError, match="cannot cancel"):
        ex.cancel(handle)


def test_alcf_failed_exit_and_expired_token(compute):
    from globus_compute_sdk.serialize import ComputeSerializer

    rs, ex, r = compute
    rs.add(
        "GET",
        f"{CAPI}/v2/tasks/{r['task_id']}",
        json=dict(
            r["task_success_template"],
            result=ComputeSerializer().serialize({"exit_code": 77, "log_tail": "JOB FAILED: rank 0/4 ..."}),
        ),
    )
    st = ex.status(r["task_id"])
    assert st.state == RemoteState.FAILED and not st.transient and st.exit_code == 77
    rs.add("POST", f"{CAPI}/v3/endpoints/{r['endpoint_id']}/submit", json=r["token_expired"], status=401)
    with pytest.raises(PermanentError, match="401"):
        ex.submit(_job())
