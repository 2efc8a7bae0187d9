"""The job monitor: submits jobs, follows them, retries or fails them, and has results registered.

All its state is in the :class:`~bluesky_tomo_hpc.jobs.journal.Journal`, so a monitor created in a
new process (after an IPython restart) picks up every job the old one left unfinished. One
:meth:`step` looks at each active job once; :meth:`start` runs steps on a daemon thread that
never dies: a journal that is locked, deleted or corrupt is retried or recreated by the journal
(the monitor puts back the jobs it was following), and any other error is logged and the next
step tries again.

Fault policy: a :class:`TransientError` or a transient remote failure (a node lost, an MPI rank
killed by a signal) is retried with exponential backoff up to ``max_retries``; a permanent one
(permission denied, missing input, bad data, expired credentials, no scheduler) fails the job at
once, with the reason in the journal. A job the executor reports COMPLETED counts only if its
``result.json`` exists ("nothing is lost"). Data movement for remote sites is in
:mod:`~bluesky_tomo_hpc.jobs.data_movement`; Tiled registration in
:mod:`~bluesky_tomo_hpc.results.batch_registration`.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..batch.job import ReconJob
from ..results.batch_registration import BatchRegistrar
from .data_movement import Arrival, TransferLegs, read_result
from .executors.executor import Executor, ExecutorError, RemoteState
from .journal import JobRecord, Journal, JournalError
from .transfer_plan import RemoteSite

log = logging.getLogger(__name__)

#: finished jobs the monitor remembers, to put back into a journal recreated under it
REMEMBERED_JOBS = 256

_REMOTE_TO_JOURNAL = {RemoteState.PENDING: "PENDING", RemoteState.RUNNING: "RUNNING"}


class JobMonitor:
    """Follows the jobs of ``journal`` on ``executors`` (name -> executor).

    ``tiled``: the processed container (or a callable returning it) where results are
    registered; ``register_in_place``/``readable_roots``: see :class:`BatchRegistrar`.
    ``sites``: executor name -> the :class:`RemoteSite` its jobs' data travel to and from.
    """

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
        self.registrar = (BatchRegistrar(tiled, register_in_place=register_in_place,
                                         readable_roots=readable_roots)
                          if tiled is not None else None)
        self.max_retries, self.backoff_s, self.backoff_max_s, self.poll_s = (
            max_retries, backoff_s, backoff_max_s, poll_s)
        self.stale_new_s = stale_new_s
        self.sites = dict(sites or {})
        self.legs = TransferLegs(journal, self._failed)
        #: the jobs as last seen (active ones, and the last few finished): put back if the
        #: journal file is lost under us
        self._following: OrderedDict[str, JobRecord] = OrderedDict()
        journal.recreated.append(self._restore_following)
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

    def existing(self, job: ReconJob, *, wait_s: float | None = None) -> JobRecord | None:
        """The journal's job for the same run and parameters hash, if one finished or is running."""
        return self.journal.find_reusable(job.run_uid, job.params.params_hash, wait_s=wait_s)

    def add(self, job: ReconJob, executor: str | None = None, *, reuse: bool = True,
            wait_s: float | None = None) -> JobRecord:
        """Record ``job`` as NEW, or return the existing one of the same key (idempotent);
        ``wait_s`` bounds the wait for a busy journal (:class:`JournalUnavailable` after it)."""
        if reuse and (old := self.existing(job, wait_s=wait_s)) is not None:
            log.info("job %s reuses %s (%s) for run %s, params %s", job.job_id, old.job_id,
                     old.state, job.run_uid, job.params.params_hash)
            return old
        rec = self.journal.add(job, executor or next(iter(self.executors)), wait_s=wait_s)
        self._remember(rec)
        return rec

    def submit(self, job_id: str) -> JobRecord:
        """Hand a NEW/STAGED/RETRY_WAIT job to its executor (errors go to the journal, not up)."""
        with self._lock:
            rec = self.journal.get(job_id)
            if rec.state not in ("NEW", "STAGED", "RETRY_WAIT"):
                return rec  # submitted meanwhile (the sink's thread and the monitor's may both try)
            site = self.sites.get(rec.executor)
            if site is not None and not self.journal.transfer_succeeded(job_id, "in"):
                if self.journal.active_transfer(job_id) is None:
                    self._arrived(rec, self.legs.stage_in(rec, site))  # submits once the input is there
                return self.journal.get(job_id)
            if (queued := self._no_free_slot(rec)) is not None:
                return queued
            tried = dataclasses.replace(rec, attempts=rec.attempts + 1)  # a failed submission counts
            try:
                job = site.plan.remote_job(rec.job) if site is not None else rec.job
                handle = self._executor(rec).submit(job)
            except ExecutorError as exc:
                return self._failed(tried, f"submission failed: {exc}", exc.transient)
            except OSError as exc:  # a full disk, a vanished folder: may pass
                return self._failed(tried, f"submission failed: {exc}", True)
            except ValueError as exc:  # a path outside the site's local root
                return self._failed(tried, f"submission failed: {exc}", False)
            rec = self.journal.set_state(job_id, "SUBMITTED", f"handle {handle}", handle=handle,
                                         attempts=rec.attempts + 1, error=None, next_try=None)
            self._remember(rec)
            return rec

    def _no_free_slot(self, rec: JobRecord) -> JobRecord | None:
        """Keep ``rec`` STAGED (the record returned) while its executor runs ``max_running`` jobs."""
        try:
            limit = getattr(self._executor(rec), "max_running", None)
        except ExecutorError:
            return None  # submit() reports the missing executor
        if limit is None:
            return None
        running = sum(1 for other in self.journal.jobs(active_only=True)
                      if other.executor == rec.executor
                      and other.state in ("SUBMITTED", "PENDING", "RUNNING"))
        if running < limit:
            return None
        if rec.state == "STAGED":
            return rec
        return self.journal.set_state(rec.job_id, "STAGED",
                                      f"queued: {running} of {limit} {rec.executor} job(s) running")

    def _failed(self, rec: JobRecord, reason: str, transient: bool) -> JobRecord:
        attempts = max(rec.attempts, 1)
        if transient and attempts <= self.max_retries:
            delay = min(self.backoff_max_s, self.backoff_s * 2 ** (attempts - 1))
            log.warning("job %s: %s; retry %d/%d in %.0f s", rec.job_id, reason, attempts,
                        self.max_retries, delay)
            return self.journal.set_state(rec.job_id, "RETRY_WAIT", reason, error=reason,
                                          next_try=time.time() + delay, attempts=attempts)
        why = reason if not transient else f"{reason} (gave up after {attempts} attempts)"
        log.error("job %s failed: %s", rec.job_id, why)
        return self.journal.set_state(rec.job_id, "FAILED", why, error=why)

    def _arrived(self, rec: JobRecord, arrival: Arrival | None) -> None:
        """What a finished transfer leg leads to: submit at the site, or register the result."""
        if arrival == "input-at-site":
            self.submit(rec.job_id)
        elif arrival == "outputs-back":
            self._register(self.journal.get(rec.job_id))

    # -- following --------------------------------------------------------------------------
    def step(self) -> None:
        """Look at every active job once (and record jobs parked while the journal was locked)."""
        self.journal.adopt_parked()
        active = self.journal.jobs(active_only=True)
        for rec in active:
            self._remember(rec)
            try:
                self._step_one(rec)
                self._remember(self.journal.get(rec.job_id))
            except JournalError:
                raise  # the journal itself is in trouble: the loop reports it and tries again
            except Exception as exc:  # one bad job must not stop the others being followed
                log.exception("following job %s failed", rec.job_id)
                self.journal.set_state(rec.job_id, rec.state, f"monitor error: {exc}", error=str(exc))

    def _remember(self, rec: JobRecord) -> None:
        """Keep the latest record of each job; finished ones only up to ``REMEMBERED_JOBS``."""
        self._following[rec.job_id] = rec
        self._following.move_to_end(rec.job_id)
        excess = len(self._following) - REMEMBERED_JOBS
        if excess > 0:
            for jid in [j for j, r in self._following.items() if r.terminal][:excess]:
                del self._following[jid]

    def _restore_following(self, why: str) -> None:
        for rec in list(self._following.values()):
            self.journal.restore(rec, f"restored by the monitor: {why}")

    def _step_one(self, rec: JobRecord) -> None:
        with self._lock:
            rec = self.journal.get(rec.job_id)
            if rec.terminal:
                return
            site = self.sites.get(rec.executor)
            if site is not None and (row := self.journal.active_transfer(rec.job_id)) is not None:
                self._arrived(rec, self.legs.follow(rec, site, row))
                return
            if rec.state == "STAGED" or (rec.state == "RETRY_WAIT" and (rec.next_try or 0) <= time.time()):
                last = self.journal.last_transfer(rec.job_id) if site is not None else None
                if site is not None and last and last["direction"] == "out" and last["state"] != "SUCCEEDED":
                    self._arrived(rec, self.legs.stage_out(rec, site))  # only bringing it back failed
                else:
                    self.submit(rec.job_id)  # stages in first where the job's site needs it
                return
            if rec.state == "COMPLETED":
                self._register(rec)
                return
            if rec.state == "NEW" and time.time() - rec.created > self.stale_new_s:
                self.journal.set_state(
                    rec.job_id, "FAILED", "staging never finished",
                    error=f"staging never finished within {self.stale_new_s:.0f} s "
                    "(the submitting session ended while staging?)")
                return
            if rec.state not in ("SUBMITTED", "PENDING", "RUNNING") or rec.handle is None:
                return
            self._follow_remote(rec, site)

    def _follow_remote(self, rec: JobRecord, site: RemoteSite | None) -> None:
        """Ask the executor about a submitted job and act on its answer."""
        assert rec.handle is not None
        st = self._executor(rec).status(rec.handle)
        if st.state in _REMOTE_TO_JOURNAL:
            new = _REMOTE_TO_JOURNAL[st.state]
            if new != rec.state:
                self.journal.set_state(rec.job_id, new, st.reason or None)
            return
        if site is not None and st.state in (RemoteState.COMPLETED, RemoteState.LOST):
            if st.state == RemoteState.LOST and not self.legs.finished_at_site(rec, site):
                self._failed(rec, f"LOST: {st.reason}", st.transient)
                return
            if rec.state != "RUNNING":
                self.journal.set_state(rec.job_id, "RUNNING", f"seen {st.state.value}")
            self._arrived(rec, self.legs.stage_out(self.journal.get(rec.job_id), site))
            return
        result = read_result(rec.job)
        if st.state == RemoteState.COMPLETED or (st.state == RemoteState.LOST and result is not None):
            if result is None:
                self._failed(rec, f"{rec.executor} says COMPLETED but {rec.job.outputs.result_path} "
                             "is missing", True)
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
            self._failed(rec, f"{st.state.value}: {st.reason}{extra}", st.transient)

    def _register(self, rec: JobRecord) -> None:
        """Have the job's volume registered in Tiled; REGISTERED when done, else retried later.

        A job whose result another process claimed (``made_elsewhere`` in its ``result.json``)
        is DONE: that process makes and registers the result; nothing is registered twice."""
        result = rec.result or {}
        if result.get("made_elsewhere"):
            line = result.get("message") or f"made by another process: {result.get('result_dir')}"
            self.journal.set_state(rec.job_id, "DONE", str(line))
            return
        if self.registrar is None:
            self.journal.set_state(rec.job_id, "DONE", "no Tiled configured: results are files only")
            return
        try:
            path = self.registrar.register(rec.job, rec.result or {}, rec.executor)
        except Exception as exc:  # Tiled down or refusing: the job stays COMPLETED, tried again
            log.warning("job %s: registering in Tiled failed (%s); will retry", rec.job_id, exc)
            self.journal.set_state(rec.job_id, "COMPLETED", f"register failed: {exc}", error=str(exc))
            return
        self.journal.set_state(rec.job_id, "REGISTERED", path, tiled_node=path, error=None)

    def cancel(self, job_id: str) -> JobRecord:
        """Cancel locally and remotely (the remote job first, so nothing keeps running)."""
        with self._lock:
            rec = self.journal.get(job_id)
            if rec.terminal:
                return rec
            row = self.journal.active_transfer(job_id) if rec.executor in self.sites else None
            if row is not None:  # the data is moving: stop the transfer (the remote job is not running)
                detail = self.legs.cancel(rec, self.sites[rec.executor], row)
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

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.step()
            except Exception:  # never let the thread die: the next step tries again
                log.exception("job monitor step failed; trying again in %.0f s", self.poll_s)
            self._stop.wait(self.poll_s)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
