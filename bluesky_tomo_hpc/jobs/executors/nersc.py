"""NERSC through the Superfacility API (``sfapi-client``): Slurm on Perlmutter, realtime QOS.

The script is the same template the Slurm executor renders, with the realtime QOS, the account,
a CPU constraint and the batch program run inside a ``podman-hpc`` container; the job file is
written by the script itself (a quoted heredoc), since nothing else on Perlmutter knows it.
Paths in the job must be Perlmutter paths (staged there by a mover first).

This module only translates: HTTP 401 (expired or revoked token) and 403 (no permission) are
permanent, 5xx and network faults transient; "Job not found" is LOST (transient, as NERSC
sometimes forgets jobs for a while: sfapi_client#93). Credentials: ``from_environment`` reads
the key file path from ``$NERSC_SFAPI_KEY`` when called, never at import.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Callable
from typing import Any

from ...batch.job import ReconJob
from ...extras import require
from .executor import PermanentError, RemoteState, RemoteStatus, TransientError
from .slurm import interpret_state, render_script

#: what asks for sfapi-client, in the words of the setting
NERSC_FEATURE = "the NERSC executor (jobs.executor: nersc)"


def _sfapi() -> Any:
    return require("sfapi_client", NERSC_FEATURE)


def _translate(exc: Exception, what: str) -> Exception:
    import httpx

    SfApiError = _sfapi().SfApiError

    if isinstance(exc, httpx.HTTPStatusError):
        code = exc.response.status_code
        body = exc.response.text[:200]
        if code == 401:
            return PermanentError(
                f"NERSC {what}: 401 unauthorised: the SFAPI token is expired or revoked "
                f"(renew the client key): {body}"
            )
        if code == 403:
            return PermanentError(f"NERSC {what}: 403 permission denied: {body}")
        if code >= 500 or code == 429:
            return TransientError(f"NERSC {what}: {code}: {body}")
        return PermanentError(f"NERSC {what}: {code}: {body}")
    if isinstance(exc, httpx.TransportError):
        return TransientError(f"NERSC {what}: network error: {exc}")
    if isinstance(exc, SfApiError):
        msg = str(exc)
        if any(
            k in msg.lower() for k in ("permission denied", "not allowed", "invalid account", "invalid qos")
        ):
            return PermanentError(f"NERSC {what}: {msg}")
        return TransientError(f"NERSC {what}: {msg}")
    return exc


class NerscExecutor:
    """Submits through SFAPI to ``machine`` (default perlmutter)."""

    name = "nersc"
    max_running: int | None = None  # the site's scheduler queues jobs

    def __init__(
        self,
        client_factory: Callable[[], Any],
        *,
        account: str,
        image: str,
        machine: str = "perlmutter",
        qos: str = "realtime",
        constraint: str = "cpu",
        template: str | None = None,
    ):
        _sfapi()  # absent: one line naming the hpc extra, before any job is written
        self._client_factory = client_factory
        self._client: Any = None
        self.account, self.image, self.machine = account, image, machine
        self.qos, self.constraint, self.template = qos, constraint, template

    @classmethod
    def from_environment(cls, **options: Any) -> NerscExecutor:
        """Client credentials from the key file named by ``$NERSC_SFAPI_KEY`` (read now, not at import)."""
        _sfapi()  # the package first: a key is no use without it
        key = os.environ.get("NERSC_SFAPI_KEY")
        if not key:
            raise PermanentError(
                "the NERSC executor needs NERSC_SFAPI_KEY (path of the SFAPI client key file)"
            )

        def factory() -> Any:
            return _sfapi().Client(key=key)

        return cls(factory, **options)

    def _compute(self) -> Any:
        if self._client is None:
            self._client = self._client_factory()
        return self._client.compute(self.machine)

    def _call(self, what: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except (PermanentError, TransientError):
            raise
        except Exception as exc:
            raise _translate(exc, what) from exc

    def script(self, job: ReconJob) -> str:
        job = job.model_copy(
            update={
                "resources": job.resources.model_copy(
                    update={"qos": self.qos, "account": self.account, "container_image": self.image}
                )
            }
        )
        setup = (
            f"mkdir -p {shlex.quote(str(job.outputs.directory))}\n"
            f"cat > {shlex.quote(str(job.job_file))} <<'JOB_JSON_EOF'\n{job.model_dump_json()}\nJOB_JSON_EOF"
        )
        program = (
            f"podman-hpc run --rm --mpi -v /pscratch:/pscratch -v /global:/global {shlex.quote(self.image)} "
            "python -m bluesky_tomo_hpc.batch"
        )
        return render_script(
            job,
            template=self.template,
            launcher="srun",
            program=program,
            setup=setup,
            directives={"constraint": self.constraint},
        )

    def submit(self, job: ReconJob) -> str:
        script = self.script(job)
        submitted = self._call("submit", lambda: self._compute().submit_job(script))
        return f"{submitted.jobid}|{job.outputs.directory}"  # the folder lets logs() find the output

    @staticmethod
    def _jobid(handle: str) -> str:
        return handle.split("|", 1)[0]

    def status(self, handle: str) -> RemoteStatus:
        SfApiError = _sfapi().SfApiError
        try:
            job = self._call("status", lambda: self._compute().job(self._jobid(handle)))
        except TransientError as exc:
            if isinstance(exc.__cause__, SfApiError) and "Job not found" in str(exc.__cause__):
                return RemoteStatus(RemoteState.LOST, reason=str(exc.__cause__), transient=True)
            raise
        data = job.model_dump(exclude={"compute"}) if hasattr(job, "model_dump") else {}
        state = job.state.value if hasattr(job.state, "value") else str(job.state)
        return interpret_state(
            {
                "JobState": state,
                "ExitCode": str(data.get("exitcode") or "0:0"),
                "Reason": str(data.get("reason") or ""),
            }
        )

    def cancel(self, handle: str) -> None:
        self._call("cancel", lambda: self._compute().job(self._jobid(handle)).cancel())

    def logs(self, handle: str) -> str:
        """The job's Slurm output file, read with ``cat`` through SFAPI's command endpoint."""
        jobid, _, workdir = handle.partition("|")
        path = shlex.quote(f"{workdir}/slurm-{jobid}.out")
        return str(self._call("logs", lambda: self._compute().run(f"cat {path}")))
