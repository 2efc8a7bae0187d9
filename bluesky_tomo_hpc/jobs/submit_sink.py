"""The on-stop sink: when a scan ends, stage it and submit a batch reconstruction.

``close()`` only starts a (non-daemon) thread that records the job in the journal, writes the
data-exchange input (zero-copy virtual datasets when frames are in files) and hands the job to
the :class:`~bluesky_tomo_hpc.jobs.monitor.JobMonitor`; it returns at once, so the RunEngine is
never held up, not even by a locked journal. A journal that stays unavailable gets the job
*parked* as a file next to it, adopted by the monitor when the journal is back: a job is never
dropped. Every failure is reported through ``report(run_uid, message)`` (the run's error list).
The job runs in its own process/session/scheduler and the journal remembers it, so it survives
the IPython session that started it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..batch.job import JobOutputs, ReconJob, Resources
from ..batch.staging import write_exchange_file
from ..engine.params import ReconParams
from ..model import FrameBatch, ScanEnd, ScanSpec, UnsafeNameError, path_inside
from .journal import JobRecord, JournalError
from .monitor import JobMonitor

log = logging.getLogger(__name__)

#: how long ``close()`` (on the RunEngine's callback path) waits for a busy journal
CLOSE_WAIT_S = 0.2


class HPCSubmitSink:
    """A :class:`~bluesky_tomo_hpc.sinks.sink.Sink` that submits one batch job per successful scan.

    ``resources`` is fixed :class:`Resources` or a function of the scan's (projections, rows,
    columns) shape (e.g. wrapping :func:`~bluesky_tomo_hpc.batch.sizing.size_job`).
    """

    def __init__(
        self,
        monitor: JobMonitor,
        work_dir: str | Path,
        *,
        params: ReconParams | None = None,
        executor: str | None = None,
        resources: Resources | Callable[[tuple[int, int, int]], Resources] | None = None,
        outputs: dict | None = None,
        report: Callable[[str, str], None] | None = None,
    ):
        self.monitor = monitor
        self.work_dir = Path(work_dir)
        self.params = params or ReconParams()
        self.executor = executor
        self.resources = resources or Resources()
        self.outputs = dict(outputs or {})
        self._spec: ScanSpec | None = None
        self._batches: list[FrameBatch] = []
        self.threads: list[threading.Thread] = []
        self.job_ids: list[str] = []
        self.errors: list[tuple[str, BaseException]] = []
        #: ``report(run_uid, message)``: where failures go besides the log (the run's error list)
        self.report = report

    def open(self, spec: ScanSpec) -> None:
        self._spec, self._batches = spec, []

    def add(self, batch: FrameBatch) -> None:
        if batch.origin is not None:  # the frames are in a file: keep only where they are
            n = len(batch)
            batch = FrameBatch(
                role=batch.role,
                indices=batch.indices,
                frames=np.empty((n, 0, 0), np.uint8),
                angles=batch.angles,
                timestamps=batch.timestamps,
                run_uid=batch.run_uid,
                origin=batch.origin,
            )
        self._batches.append(batch)

    def close(self, end: ScanEnd) -> None:
        spec, batches = self._spec, self._batches
        self._spec, self._batches = None, []
        if spec is None:
            log.warning("HPCSubmitSink.close without open (run %s): nothing to submit", end.run_uid)
            return
        if end.exit_status != "success":
            log.info("run %s ended %s (%s): no batch job", spec.run_uid, end.exit_status, end.reason)
            return
        try:  # the uid comes from the run's documents: never a path outside work_dir
            run_dir = path_inside(self.work_dir, spec.run_uid, self.params.params_hash, what="run uid")
        except UnsafeNameError as exc:
            log.error("run %.60r: no batch job: %s", spec.run_uid, exc)
            self.errors.append(("", exc))
            return
        n_proj = sum(len(b) for b in batches if b.role == "projection")
        shape = (n_proj, *spec.frame_shape)
        res = self.resources(shape) if callable(self.resources) else self.resources
        job = ReconJob(
            run_uid=spec.run_uid,
            input_path=run_dir / "input.h5",
            params=self.params,
            outputs=JobOutputs(directory=run_dir / "job", **self.outputs),
            resources=res,
            metadata={
                "scan_id": spec.scan_id,
                "plan_name": spec.plan_name,
                "shape": list(shape),
                "raw_files": list(spec.raw_files),
                "tomo": spec.metadata.get("tomo", {}),
                "sample": spec.metadata.get("sample"),
                "series": spec.metadata.get("series"),
                "scan_health": spec.metadata.get("scan_health"),
            },
        )
        try:  # the usual case, at once; a busy journal is waited for on the staging thread instead
            rec: JobRecord | None = self.monitor.add(job, self.executor, wait_s=CLOSE_WAIT_S)
        except JournalError:
            rec = None
        if rec is not None:
            self.job_ids.append(rec.job_id)
            if rec.job_id != job.job_id:
                return  # the same run + parameters already has a job: reuse it
        t = threading.Thread(
            target=self._stage_and_submit,
            args=(spec, batches, job, rec is not None),
            name=f"tomo-submit-{job.job_id}",
            daemon=False,
        )
        self.threads.append(t)
        t.start()

    def _fail(self, job: ReconJob, message: str, exc: BaseException) -> None:
        self.errors.append((job.job_id, exc))
        log.error("run %s: %s", job.run_uid, message)
        if self.report is not None:
            self.report(job.run_uid, message)

    def _stage_and_submit(self, spec: ScanSpec, batches: list[FrameBatch], job: ReconJob,
                          recorded: bool) -> None:
        journal = self.monitor.journal
        executor = self.executor or next(iter(self.monitor.executors))
        unavailable: JournalError | None = None
        if not recorded:
            try:
                rec = self.monitor.add(job, executor)
                self.job_ids.append(rec.job_id)
                if rec.job_id != job.job_id:
                    return  # the same run + parameters already has a job: reuse it
            except JournalError as exc:  # locked for too long: staged anyway, then parked below
                unavailable = exc
                self.job_ids.append(job.job_id)
        try:
            write_exchange_file(spec, batches, job.input_path)
        except Exception as exc:  # never raise into a thread nobody joins: record it
            log.exception("staging job %s failed", job.job_id)
            self._fail(job, f"batch job {job.job_id}: staging failed: {exc}", exc)
            if unavailable is None:
                self._record_failure(job, f"staging failed: {exc}")
            return
        if unavailable is not None:
            path = journal.park(job, executor, str(unavailable), state="STAGED")
            self._fail(job, f"batch job {job.job_id} parked in {path} (the journal is unavailable: "
                       f"{unavailable}); it is submitted when the journal is back", unavailable)
            return
        try:
            journal.add_copy(
                f"run:{spec.run_uid}", "staging", str(job.input_path), job.input_path.stat().st_size
            )
            journal.set_state(job.job_id, "STAGED", str(job.input_path))
            rec = self.monitor.submit(job.job_id)
        except Exception as exc:
            log.exception("submitting job %s failed", job.job_id)
            self._fail(job, f"batch job {job.job_id}: submission failed: {exc}", exc)
            self._record_failure(job, f"submission failed: {exc}")
            return
        if rec.state in ("FAILED", "RETRY_WAIT"):
            self._fail(job, f"batch job {job.job_id} {rec.state}: {rec.error}",
                       RuntimeError(rec.error or rec.state))

    def _record_failure(self, job: ReconJob, why: str) -> None:
        try:
            self.monitor.journal.set_state(job.job_id, "FAILED", why, error=why)
        except JournalError:
            log.exception("job %s: could not record its failure in the journal", job.job_id)

    def wait(self, timeout: float | None = None) -> None:
        """Join the staging threads (tests, scripts that exit right after a scan)."""
        for t in self.threads:
            t.join(timeout)
