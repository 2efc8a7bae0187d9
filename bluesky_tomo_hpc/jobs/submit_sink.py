"""The on-stop sink: when a scan ends, stage it and submit a batch reconstruction.

``close()`` only records the job in the journal and starts a (non-daemon) thread that writes the
data-exchange input (zero-copy virtual datasets when frames are in files) and hands the job to
the :class:`~bluesky_tomo_hpc.jobs.monitor.JobMonitor`; it returns at once, so the RunEngine is
never held up. The job runs in its own process/session/scheduler and the journal remembers it,
so it survives the IPython session that started it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..engine.params import ReconParams
from ..model import FrameBatch, ScanEnd, ScanSpec, UnsafeNameError, path_inside
from .job import JobOutputs, ReconJob, Resources
from .monitor import JobMonitor
from .staging import write_exchange_file

log = logging.getLogger(__name__)


class HPCSubmitSink:
    """A :class:`~bluesky_tomo_hpc.sinks.sink.Sink` that submits one batch job per successful scan.

    ``resources`` is fixed :class:`Resources` or a function of the scan's (projections, rows,
    columns) shape (e.g. wrapping :func:`~bluesky_tomo_hpc.jobs.sizing.size_job`).
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
            },
        )
        rec = self.monitor.add(job, self.executor)
        self.job_ids.append(rec.job_id)
        if rec.job_id != job.job_id:
            return  # the same run + parameters already has a job: reuse it
        t = threading.Thread(
            target=self._stage_and_submit,
            args=(spec, batches, job),
            name=f"tomo-submit-{job.job_id}",
            daemon=False,
        )
        self.threads.append(t)
        t.start()

    def _stage_and_submit(self, spec: ScanSpec, batches: list[FrameBatch], job: ReconJob) -> None:
        journal = self.monitor.journal
        try:
            write_exchange_file(spec, batches, job.input_path)
            journal.add_copy(
                f"run:{spec.run_uid}", "staging", str(job.input_path), job.input_path.stat().st_size
            )
            journal.set_state(job.job_id, "STAGED", str(job.input_path))
            self.monitor.submit(job.job_id)
        except Exception as exc:  # never raise into a thread nobody joins: record it
            self.errors.append((job.job_id, exc))
            log.exception("staging/submitting job %s failed", job.job_id)
            journal.set_state(job.job_id, "FAILED", f"staging failed: {exc}", error=f"staging failed: {exc}")

    def wait(self, timeout: float | None = None) -> None:
        """Join the staging threads (tests, scripts that exit right after a scan)."""
        for t in self.threads:
            t.join(timeout)
