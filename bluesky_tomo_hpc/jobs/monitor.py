"""The job monitor: submits jobs, follows them, retries or fails them, registers results in Tiled.

All its state is in the :class:`~bluesky_tomo_hpc.jobs.journal.Journal`, so a monitor created in a
new process (after an IPython restart) picks up every job the old one left unfinished. One
:meth:`step` looks at each active job once; :meth:`start` runs steps on a daemon thread.

Fault policy: a :class:`TransientError` or a transient remote failure is retried with exponential
backoff up to ``max_retries``; a permanent one (permission denied, missing input, bad data,
expired credentials) fails the job at once, with the reason in the journal. A job the executor
reports COMPLETED counts only if its ``result.json`` exists ("nothing is lost").

Remote sites (``sites``: executor name -> :class:`~bluesky_tomo_hpc.jobs.transfer_plan.RemoteSite`):
a STAGED job's input is made self-contained and copied out (transfer-in), the executor gets the
job with the site's paths, and when it finishes the outputs are copied back (transfer-out) before
the result counts. Transfers are followed step by step (never blocking the monitor) in the
journal's ``transfers`` table; a failed transfer is retried like a failed run, and only the
failed leg is repeated.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .executors.executor import Executor, ExecutorError, RemoteState
from .job import ReconJob
from .journal import JobRecord, Journal, JournalError
from .movers.mover import TransferError
from .transfer_plan import RemoteSite, TransferLog

log = logging.getLogger(__name__)

_REMOTE_TO_JOURNAL = {RemoteState.PENDING: "PENDING", RemoteState.RUNNING: "RUNNING"}


class JobMonitor:
    """Follows the jobs of ``journal`` on ``executors`` (name -> executor)."""

    def __init__(
        self,
        journal: Journal,
        executors: dict[str, Executor] | Executor,
        *,
        tiled: Any | Callable[[], Any] | None = None,
        max_retries: int = 3,
        backoff_s: float = 5.0,
        backoff_max_s: float = 600.0,
        poll_s: float = 2.0,
        stale_new_s: float = 3600.0,
        register_in_place: bool | None = None,
        readable_roots: list[str | Path] | None = None,
        sites: dict[str, RemoteSite] | None = None,
    ):
        self.journal = journal
        if not isinstance(executors, dict):
            executors = {executors.name: executors}
        self.executors = executors
        self._tiled = tiled
        self.max_retries, self.backoff_s, self.backoff_max_s, self.poll_s = (
            max_retries,
            backoff_s,
            backoff_max_s,
            poll_s,
        )
        self.stale_new_s = stale_new_s
        #: None: register the Zarr in place when Tiled can read it, else upload. Where the server's
        #: ``readable_storage`` is known, pass it as ``readable_roots``: otherwise readability is
        #: probed by reading one slice, and a refusal costs the Tiled client's retries (~25 s).
        self.register_in_place = register_in_place
        self.readable_roots = (
            [Path(r).resolve() for r in readable_roots] if readable_roots is not None else None
        )
        #: executor name -> the remote site its jobs' data must travel to and from
        self.sites = dict(sites or {})
        self.transfers = TransferLog(journal)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.RLock()

    # -- submission -------------------------------------------------------------------------
    def _executor(self, rec: JobRecord) -> Executor:
        try:
            return self.executors[rec.executor]
        except KeyError:
            raise ExecutorError(
                f"job {rec.job_id} ran on executor {rec.executor!r}, which this monitor "
                f"does not have (it has {sorted(self.executors)})"
            ) from None

    def existing(self, job: ReconJob) -> JobRecord | None:
        """The journal's job for the same run and parameters hash, if one finished or is running."""
        return self.journal.find_reusable(job.run_uid, job.params.params_hash)

    def add(self, job: ReconJob, executor: str | None = None, *, reuse: bool = True) -> JobRecord:
        """Record ``job`` as NEW, or return the existing one of the same key (idempotent)."""
        if reuse and (old := self.existing(job)) is not None:
            log.info(
                "job %s reuses %s (%s) for run %s, params %s",
                job.job_id,
                old.job_id,
                old.state,
                job.run_uid,
                job.params.params_hash,
            )
            return old
        name = executor or next(iter(self.executors))
        return self.journal.add(job, name)

    def submit(self, job_id: str) -> JobRecord:
        """Hand a NEW/STAGED/RETRY_WAIT job to its executor (errors go to the journal, not up)."""
        with self._lock:
            rec = self.journal.get(job_id)
            if rec.state not in ("NEW", "STAGED", "RETRY_WAIT"):
                return rec  # submitted meanwhile (the sink's thread and the monitor's may both try)
            site = self.sites.get(rec.executor)
            if site is not None and not self.transfers.succeeded(job_id, "in"):
                if self.transfers.active(job_id) is None:
                    self._stage_in(rec, site)  # submits once the input has arrived
                return self.journal.get(job_id)
            try:
                job = site.plan.remote_job(rec.job) if site is not None else rec.job
                handle = self._executor(rec).submit(job)
            except ExecutorError as exc:
                return self._failed(rec, str(exc), transient=exc.transient)
            except OSError as exc:
                return self._failed(rec, f"submission failed: {exc}", transient=True)
            except ValueError as exc:  # a path outside the site's local root
                return self._failed(rec, f"submission failed: {exc}", transient=False)
            return self.journal.set_state(
                job_id,
                "SUBMITTED",
                f"handle {handle}",
                handle=handle,
                attempts=rec.attempts + 1,
                error=None,
                next_try=None,
            )

    def _failed(self, rec: JobRecord, reason: str, *, transient: bool) -> JobRecord:
        attempts = max(rec.attempts, 1)
        if transient and attempts <= self.max_retries:
            delay = min(self.backoff_max_s, self.backoff_s * 2 ** (attempts - 1))
            log.warning(
                "job %s: %s; retry %d/%d in %.0f s", rec.job_id, reason, attempts, self.max_retries, delay
            )
            return self.journal.set_state(
                rec.job_id,
                "RETRY_WAIT",
                reason,
                error=reason,
                next_try=time.time() + delay,
                attempts=attempts,
            )
        why = reason if not transient else f"{reason} (gave up after {attempts} attempts)"
        log.error("job %s failed: %s", rec.job_id, why)
        return self.journal.set_state(rec.job_id, "FAILED", why, error=why)

    # -- following --------------------------------------------------------------------------
    def step(self) -> None:
        """Look at every active job once."""
        for rec in self.journal.jobs(active_only=True):
            try:
                self._step_one(rec)
            except Exception as exc:  # one bad job must not stop the others being followed
                log.exception("following job %s failed", rec.job_id)
                self.journal.set_state(rec.job_id, rec.state, f"monitor error: {exc}", error=str(exc))

    def _step_one(self, rec: JobRecord) -> None:
        with self._lock:
            rec = self.journal.get(rec.job_id)
            if rec.terminal:
                return
            site = self.sites.get(rec.executor)
            if site is not None and (row := self.transfers.active(rec.job_id)) is not None:
                self._follow_transfer(rec, site, row)
                return
            if rec.state == "STAGED" or (rec.state == "RETRY_WAIT" and (rec.next_try or 0) <= time.time()):
                last = self.transfers.last(rec.job_id) if site is not None else None
                if site is not None and last and last["direction"] == "out" and last["state"] != "SUCCEEDED":
                    self._stage_out(rec, site)  # the run finished; only bringing it back failed
                else:
                    self.submit(rec.job_id)  # stages in first where the job's site needs it
                return
            if rec.state == "COMPLETED":
                self._register(rec)
                return
            if rec.state == "NEW" and time.time() - rec.created > self.stale_new_s:
                self.journal.set_state(
                    rec.job_id,
                    "FAILED",
                    "staging never finished",
                    error=f"staging never finished within {self.stale_new_s:.0f} s "
                    "(the submitting session ended while staging?)",
                )
                return
            if rec.state not in ("SUBMITTED", "PENDING", "RUNNING") or rec.handle is None:
                return
            st = self._executor(rec).status(rec.handle)
            if st.state in _REMOTE_TO_JOURNAL:
                new = _REMOTE_TO_JOURNAL[st.state]
                if new != rec.state:
                    self.journal.set_state(rec.job_id, new, st.reason or None)
                return
            if site is not None and st.state in (RemoteState.COMPLETED, RemoteState.LOST):
                if st.state == RemoteState.LOST and not self._finished_at_site(rec, site):
                    self._failed(rec, f"LOST: {st.reason}", transient=st.transient)
                    return
                if rec.state != "RUNNING":
                    self.journal.set_state(rec.job_id, "RUNNING", f"seen {st.state.value}")
                self._stage_out(self.journal.get(rec.job_id), site)  # result.json is checked once back
                return
            result = self._result(rec.job)
            if st.state == RemoteState.COMPLETED or (st.state == RemoteState.LOST and result is not None):
                if result is None:
                    self._failed(
                        rec,
                        f"{rec.executor} says COMPLETED but {rec.job.outputs.result_path} is missing",
                        transient=True,
                    )
                    return
                if rec.state != "RUNNING":  # a fast job may finish between two looks
                    self.journal.set_state(rec.job_id, "RUNNING", "seen finished")
                self.journal.set_state(rec.job_id, "COMPLETED", st.reason or None, result=result)
                self._register(self.journal.get(rec.job_id))
            elif st.state == RemoteState.CANCELLED:
                self.journal.set_state(rec.job_id, "CANCELLED", st.reason or "cancelled by the executor")
            else:  # FAILED or LOST
                logs = self._executor(rec).logs(rec.handle)
                failure = next((ln for ln in logs.splitlines() if ln.startswith("JOB FAILED")), "")
                extra = f" | {failure}" if failure and failure not in st.reason else ""
                self._failed(rec, f"{st.state.value}: {st.reason}{extra}", transient=st.transient)

    # -- the remote data path ---------------------------------------------------------------
    def _stage_in(self, rec: JobRecord, site: RemoteSite) -> None:
        """Copy the job's input to the site, self-contained (virtual datasets materialised)."""
        from .staging import is_self_contained, materialize_exchange_file

        job, plan = rec.job, site.plan
        try:
            remote = plan.to_remote(job.input_path)
            source = job.input_path
            if not is_self_contained(source):
                source = materialize_exchange_file(source, _materialized_path(job))
        except (ValueError, OSError) as exc:  # outside the local root, raw file gone, disk full
            self._failed(rec, f"transfer-in of {job.input_path}: {exc}", transient=isinstance(exc, OSError))
            return
        self.journal.set_state(rec.job_id, "STAGED", f"transfer-in to {plan.site}: {remote}")
        self._start_transfer(
            rec,
            site,
            "in",
            plan.endpoint_path(str(source), at="local"),
            plan.endpoint_path(remote, at="remote"),
            recursive=False,
        )

    def _finished_at_site(self, rec: JobRecord, site: RemoteSite) -> bool:
        """Whether a job the executor lost left its ``result.json`` at the site (then it finished)."""
        remote = site.plan.to_remote(rec.job.outputs.result_path)
        try:
            return bool(site.mover_out.exists(site.plan.endpoint_path(remote, at="remote"), at="source"))
        except TransferError as exc:
            log.warning("job %s: cannot look for %s at %s: %s", rec.job_id, remote, site.plan.site, exc)
            return False

    def _stage_out(self, rec: JobRecord, site: RemoteSite) -> None:
        """Copy the job's output folder (OME-Zarr, TIFFs, provenance, result.json) back here."""
        plan, local = site.plan, rec.job.outputs.directory
        remote = plan.to_remote(local)
        if rec.state != "RUNNING":
            self.journal.set_state(rec.job_id, "RUNNING", f"transfer-out from {plan.site}: {remote}")
        self._start_transfer(
            rec,
            site,
            "out",
            plan.endpoint_path(remote, at="remote"),
            plan.endpoint_path(str(local), at="local"),
            recursive=True,
        )

    def _start_transfer(
        self,
        rec: JobRecord,
        site: RemoteSite,
        direction: str,
        source: str,
        destination: str,
        *,
        recursive: bool,
    ) -> None:
        mover = site.mover_in if direction == "in" else site.mover_out
        label = f"tomo {rec.job_id} transfer-{direction}"
        try:
            task = mover.start(source, destination, recursive=recursive, label=label)
        except TransferError as exc:  # recorded too: a retry must know which leg failed
            failed = self.transfers.start(rec.job_id, direction, mover.name, "-", source, destination)  # type: ignore[arg-type]
            self.transfers.finish(failed["id"], "FAILED", error=str(exc))
            self._transfer_failed(rec, direction, source, destination, exc)
            return
        row = self.transfers.start(rec.job_id, direction, mover.name, task, source, destination)  # type: ignore[arg-type]
        self.journal.set_state(
            rec.job_id,
            self.journal.get(rec.job_id).state,
            f"transfer-{direction} started: {mover.name} task {task}",
        )
        self._follow_transfer(self.journal.get(rec.job_id), site, row)

    def _transfer_failed(
        self, rec: JobRecord, direction: str, src: str, dst: str, exc: TransferError
    ) -> None:
        # a transfer is an attempt too: count it, or a flaky link would be retried for ever
        rec = dataclasses.replace(rec, attempts=rec.attempts + 1)
        self._failed(rec, f"transfer-{direction} {src} -> {dst}: {exc}", transient=exc.transient)

    def _follow_transfer(self, rec: JobRecord, site: RemoteSite, row: dict[str, Any]) -> None:
        direction = row["direction"]
        mover = site.mover_in if direction == "in" else site.mover_out
        try:
            done = mover.check(row["task_id"], row["source"], row["destination"])
        except TransferError as exc:
            self.transfers.finish(row["id"], "FAILED", error=str(exc))
            self._transfer_failed(rec, direction, row["source"], row["destination"], exc)
            return
        if done is None:
            return
        self.transfers.finish(row["id"], "SUCCEEDED", nbytes=done.bytes)
        job, plan = rec.job, site.plan
        detail = f"transfer-{direction} done: {done.files} files, {done.bytes} bytes, task {done.task_id}"
        if direction == "in":
            self.journal.add_copy(
                f"run:{job.run_uid}", plan.site, str(plan.to_remote(job.input_path)), done.bytes
            )
            _materialized_path(job).unlink(missing_ok=True)  # a full copy of the frames: not kept
            self.journal.set_state(rec.job_id, "STAGED", detail)
            self.submit(rec.job_id)
            return
        result = self._result(job)
        if result is None:
            self._failed(
                dataclasses.replace(rec, attempts=rec.attempts + 1),
                f"{rec.executor} finished but {job.outputs.result_path} is missing after transfer-out",
                transient=True,
            )
            return
        result = plan.localize(result)
        item = f"result:{job.key}"
        self.journal.add_copy(item, plan.site, str(plan.to_remote(job.outputs.directory)), done.bytes)
        self.journal.add_copy(item, "local", str(job.outputs.directory), done.bytes)
        self.journal.set_state(rec.job_id, "COMPLETED", detail, result=result)
        self._register(self.journal.get(rec.job_id))

    @staticmethod
    def _result(job: ReconJob) -> dict[str, Any] | None:
        p = job.outputs.result_path
        return json.loads(p.read_text()) if p.exists() else None

    def _container(self) -> Any:
        return self._tiled() if callable(self._tiled) else self._tiled

    def _register(self, rec: JobRecord) -> None:
        """Register the job's volume in Tiled, linked to its raw run; REGISTERED when done."""
        if self._tiled is None:
            self.journal.set_state(rec.job_id, "DONE", "no Tiled configured: results are files only")
            return
        from ..results.tiled_results import write_reconstruction

        result = rec.result or {}
        job = rec.job
        metadata = {
            "job_id": job.job_id,
            "executor": rec.executor,
            "center": result.get("center"),
            "timings": result.get("timings", {}),
            "ranks": result.get("ranks"),
            "ome_zarr": result.get("ome_zarr"),
            "tiff_dir": result.get("tiff_dir"),
            "provenance": str(job.outputs.provenance_path),
            "warnings": result.get("warnings", []),
            "sample": job.metadata.get("sample"),
            "series": job.metadata.get("series"),
        }

        def write(in_place: bool) -> Any:
            return write_reconstruction(
                self._container(),
                raw_uid=job.run_uid,
                params=job.params,
                volume_zarr=result["volume_zarr"],
                metadata=metadata,
                kind="batch",
                register_in_place=in_place,
            )

        in_place = self.register_in_place
        if in_place is None and self.readable_roots is not None:
            zpath = Path(result.get("volume_zarr", "")).resolve()
            in_place = any(zpath.is_relative_to(r) for r in self.readable_roots)
        try:
            node = None
            if in_place is not False:
                try:
                    node = write(True)
                    node["volume"][:1]  # Tiled checks readability only on read: read one slice now
                except Exception as exc:
                    if in_place:
                        raise
                    log.info(
                        "job %s: Tiled cannot read %s in place (%s); uploading",
                        rec.job_id,
                        result["volume_zarr"],
                        exc,
                    )
                    node = None
            if node is None:
                node = write(False)
        except Exception as exc:
            log.warning("job %s: registering in Tiled failed (%s); will retry", rec.job_id, exc)
            self.journal.set_state(rec.job_id, "COMPLETED", f"register failed: {exc}", error=str(exc))
            return
        path = "/".join(getattr(node, "path_parts", []) or [getattr(node, "item", {}).get("id", "")])
        self.journal.set_state(rec.job_id, "REGISTERED", path, tiled_node=path, error=None)

    def cancel(self, job_id: str) -> JobRecord:
        """Cancel locally and remotely (the remote job first, so nothing keeps running)."""
        with self._lock:
            rec = self.journal.get(job_id)
            if rec.terminal:
                return rec
            row = self.transfers.active(job_id) if rec.executor in self.sites else None
            if row is not None:  # the data is moving: stop the transfer (the remote job is not running)
                site = self.sites[rec.executor]
                (site.mover_in if row["direction"] == "in" else site.mover_out).cancel(row["task_id"])
                self.transfers.finish(row["id"], "CANCELLED", error="cancelled by the user")
                detail = f"cancelled by the user during transfer-{row['direction']} (task {row['task_id']})"
                return self.journal.set_state(job_id, "CANCELLED", detail)
            if rec.handle:
                self._executor(rec).cancel(rec.handle)
            return self.journal.set_state(job_id, "CANCELLED", "cancelled by the user")

    def retry(self, job_id: str) -> JobRecord:
        """Send a FAILED or CANCELLED job round again, on a person's decision (attempts count
        afresh); the monitor's next step submits it."""
        with self._lock:
            rec = self.journal.get(job_id)
            if rec.state not in ("FAILED", "CANCELLED"):
                raise JournalError(
                    f"job {job_id} is {rec.state}: only FAILED or CANCELLED jobs can be retried")
            return self.journal.set_state(job_id, "RETRY_WAIT", "retried by the user", attempts=0,
                                          error=None, next_try=time.time())

    def wait(self, job_id: str, timeout: float = 600.0) -> JobRecord:
        """Step until ``job_id`` is terminal (or raise ``TimeoutError`` naming its state)."""
        deadline = time.monotonic() + timeout
        while True:
            if self._thread is None:
                self.step()
            rec = self.journal.get(job_id)
            if rec.terminal:
                return rec
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {rec.state} after {timeout} s")
            time.sleep(min(self.poll_s, 0.2) if self._thread is None else self.poll_s / 4)

    # -- background -------------------------------------------------------------------------
    def start(self) -> JobMonitor:
        """Follow jobs on a daemon thread (resumes whatever the journal has unfinished)."""
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="tomo-job-monitor", daemon=True)
            self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.step()
            self._stop.wait(self.poll_s)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None


def _materialized_path(job: ReconJob) -> Path:
    """Where a job's self-contained input is written before it travels (removed once it arrived)."""
    return job.input_path.with_name(job.input_path.stem + ".materialized.h5")


def tiled_container(uri: str, api_key: str | None = None, name: str = "processed") -> Callable[[], Any]:
    """A lazy factory for the processed container (the client is built on the monitor's thread)."""
    cache: dict[str, Any] = {}

    def get() -> Any:
        if "c" not in cache:
            from tiled.client import from_uri

            from ..results.tiled_results import processed_container

            cache["c"] = processed_container(from_uri(uri, api_key=api_key), name)
        return cache["c"]

    return get
