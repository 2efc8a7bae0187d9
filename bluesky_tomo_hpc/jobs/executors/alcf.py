"""ALCF (Polaris) through Globus Compute: the batch program runs on the endpoint's nodes.

The endpoint (configured by the facility user: PBS provider, ``MpiExecLauncher``) runs
:func:`run_batch_remote`, which writes the job file and starts ``mpiexec`` there; its return
value carries the exit code and the tail of the log. The handle is the Globus Compute task id.
Globus Compute cannot stop a task that is already running, so ``cancel`` refuses with that
reason instead of pretending. Credentials: ``GLOBUS_COMPUTE_CLIENT_ID``/``_SECRET`` are read by
the SDK itself when a client is built (never at import here).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from ...batch.job import ReconJob
from ...extras import require
from .executor import PermanentError, RemoteState, RemoteStatus, TransientError, status_from_exit_code

_PENDING = {"waiting-for-ep", "waiting-for-nodes", "waiting-for-launch", "received", "unknown"}


def run_batch_remote(
    job_json: str, job_file: str, ranks: int, mpiexec: str = "mpiexec", python: str = "python"
) -> dict[str, Any]:
    """Runs ON THE ENDPOINT: write the job file, run the MPI batch program, report how it ended."""
    import pathlib
    import subprocess

    path = pathlib.Path(job_file)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(job_json)
    p = subprocess.run(
        [mpiexec, "-n", str(ranks), python, "-m", "bluesky_tomo_hpc.batch", str(path)],
        capture_output=True,
        text=True,
    )
    return {"exit_code": p.returncode, "log_tail": (p.stdout + p.stderr)[-20000:]}


#: what asks for the Globus SDKs, in the words of the setting
ALCF_FEATURE = "the ALCF executor (jobs.executor: alcf)"


def _translate(exc: Exception, what: str) -> Exception:
    globus_sdk = require("globus_sdk", ALCF_FEATURE)

    if isinstance(exc, globus_sdk.GlobusAPIError):
        if exc.http_status == 401:
            return PermanentError(f"Globus Compute {what}: 401: token expired or invalid ({exc.message})")
        if exc.http_status == 403:
            return PermanentError(f"Globus Compute {what}: 403 permission denied ({exc.message})")
        if exc.http_status >= 500 or exc.http_status == 429:
            return TransientError(f"Globus Compute {what}: {exc.http_status} {exc.message}")
        return PermanentError(f"Globus Compute {what}: {exc.http_status} {exc.message}")
    if isinstance(exc, globus_sdk.NetworkError):
        return TransientError(f"Globus Compute {what}: network error {exc}")
    return exc


class AlcfExecutor:
    """Submits :func:`run_batch_remote` to a Globus Compute endpoint."""

    name = "alcf"
    max_running: int | None = None  # the site's scheduler queues jobs

    def __init__(
        self,
        client_factory: Callable[[], Any],
        endpoint_id: str,
        *,
        function_id: str | None = None,
        mpiexec: str = "mpiexec",
        python: str = "python",
    ):
        require("globus_compute_sdk", ALCF_FEATURE)  # absent: the line naming the hpc extra, up front
        self._client_factory = client_factory
        self._client: Any = None
        self.endpoint_id, self.function_id = endpoint_id, function_id
        self.mpiexec, self.python = mpiexec, python
        self._results: dict[str, dict[str, Any]] = {}

    @classmethod
    def from_environment(cls, *, endpoint_id: str | None = None, **options: Any) -> AlcfExecutor:
        require("globus_compute_sdk", ALCF_FEATURE)  # the package first: an endpoint is no use without it
        endpoint_id = endpoint_id or os.environ.get("GLOBUS_COMPUTE_ENDPOINT")
        if not endpoint_id:
            raise PermanentError(
                "the ALCF executor needs an endpoint id (option endpoint_id or $GLOBUS_COMPUTE_ENDPOINT)"
            )

        def factory() -> Any:
            return require("globus_compute_sdk", ALCF_FEATURE).Client()

        return cls(factory, endpoint_id, **options)

    def _c(self) -> Any:
        if self._client is None:
            self._client = self._client_factory()
        return self._client

    def _call(self, what: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except (PermanentError, TransientError):
            raise
        except Exception as exc:
            raise _translate(exc, what) from exc

    def submit(self, job: ReconJob) -> str:
        if self.function_id is None:
            self.function_id = self._call(
                "register_function", lambda: self._c().register_function(run_batch_remote)
            )
        args = (job.model_dump_json(), str(job.job_file), job.resources.ranks, self.mpiexec, self.python)
        return str(
            self._call(
                "submit",
                lambda: self._c().run(*args, endpoint_id=self.endpoint_id, function_id=self.function_id),
            )
        )

    def status(self, handle: str) -> RemoteStatus:
        TaskExecutionFailed = require("globus_compute_sdk.errors", ALCF_FEATURE).TaskExecutionFailed
        try:
            task = self._call("get_task", lambda: self._c().get_task(handle))
        except TaskExecutionFailed as exc:  # the function itself raised on the endpoint
            return RemoteStatus(RemoteState.FAILED, reason=f"remote exception: {exc}", transient=True)
        if task.get("pending", True):
            st = task.get("status", "unknown")
            return RemoteStatus(RemoteState.PENDING if st in _PENDING else RemoteState.RUNNING, reason=st)
        if "result" not in task:
            return RemoteStatus(
                RemoteState.LOST, reason=f"task {handle}: {task.get('reason', 'no result')}", transient=True
            )
        result = task["result"]
        self._results[handle] = result
        return status_from_exit_code(int(result["exit_code"]))

    def cancel(self, handle: str) -> None:
        raise PermanentError(
            f"Globus Compute cannot cancel task {handle} once sent to the endpoint; "
            "cancel the PBS job on Polaris (qdel) if it must stop now"
        )

    def logs(self, handle: str) -> str:
        result = self._results.get(handle)
        return str(result.get("log_tail", "")) if result else ""
