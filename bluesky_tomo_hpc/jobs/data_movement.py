"""The data legs of a remote job: stage-in (input out to the site) and stage-out (outputs back).

A STAGED job's input is made self-contained and copied out; when the executor says the job
finished, its output folder is copied back before the result counts. Each leg is a row in the
journal's ``transfers`` table and is followed step by step (never blocking the monitor); a
failed leg is reported through ``failed`` (the monitor's retry policy) and only that leg is
repeated. The monitor decides what happens next from what :meth:`TransferLegs.follow` returns.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from ..batch.job import ReconJob
from .journal import Direction, JobRecord, Journal
from .movers.mover import TransferError
from .transfer_plan import RemoteSite

log = logging.getLogger(__name__)

#: what a finished leg means for the job: its input is at the site, or its outputs are back here
Arrival = Literal["input-at-site", "outputs-back"]


def read_result(job: ReconJob) -> dict[str, Any] | None:
    """The job's ``result.json`` (written by the batch program as its last act), or None."""
    p = job.outputs.result_path
    return json.loads(p.read_text()) if p.exists() else None


def materialized_path(job: ReconJob) -> Path:
    """Where a job's self-contained input is written before it travels (removed once it arrived)."""
    return job.input_path.with_name(job.input_path.stem + ".materialized.h5")


class TransferLegs:
    """Starts and follows the transfers of jobs whose executor has a :class:`RemoteSite`.

    ``failed(rec, reason, transient)`` is the monitor's retry policy.
    """

    def __init__(self, journal: Journal, failed: Callable[[JobRecord, str, bool], Any]):
        self.journal = journal
        self._failed = failed

    def stage_in(self, rec: JobRecord, site: RemoteSite) -> Arrival | None:
        """Copy the job's input to the site, self-contained (virtual datasets materialised)."""
        from ..batch.staging import is_self_contained, materialize_exchange_file

        job, plan = rec.job, site.plan
        try:
            remote = plan.to_remote(job.input_path)
            source = job.input_path
            if not is_self_contained(source):
                source = materialize_exchange_file(source, materialized_path(job))
        except (ValueError, OSError) as exc:  # outside the local root, raw file gone, disk full
            self._failed(rec, f"transfer-in of {job.input_path}: {exc}", isinstance(exc, OSError))
            return None
        self.journal.set_state(rec.job_id, "STAGED", f"transfer-in to {plan.site}: {remote}")
        return self._start(rec, site, "in", plan.endpoint_path(str(source), at="local"),
                           plan.endpoint_path(remote, at="remote"), recursive=False)

    def stage_out(self, rec: JobRecord, site: RemoteSite) -> Arrival | None:
        """Copy the job's output folder (OME-Zarr, TIFFs, provenance, result.json) back here."""
        plan, local = site.plan, rec.job.outputs.directory
        remote = plan.to_remote(local)
        if rec.state != "RUNNING":
            self.journal.set_state(rec.job_id, "RUNNING", f"transfer-out from {plan.site}: {remote}")
        return self._start(rec, site, "out", plan.endpoint_path(remote, at="remote"),
                           plan.endpoint_path(str(local), at="local"), recursive=True)

    def finished_at_site(self, rec: JobRecord, site: RemoteSite) -> bool:
        """Whether a job the executor lost left its ``result.json`` at the site (then it finished)."""
        remote = site.plan.to_remote(rec.job.outputs.result_path)
        try:
            return bool(site.mover_out.exists(site.plan.endpoint_path(remote, at="remote"), at="source"))
        except TransferError as exc:
            log.warning("job %s: cannot look for %s at %s: %s", rec.job_id, remote, site.plan.site, exc)
            return False

    def cancel(self, rec: JobRecord, site: RemoteSite, row: dict[str, Any]) -> str:
        """Stop a transfer under way; returns the journal detail."""
        (site.mover_in if row["direction"] == "in" else site.mover_out).cancel(row["task_id"])
        self.journal.finish_transfer(row["id"], "CANCELLED", error="cancelled by the user")
        return f"cancelled by the user during transfer-{row['direction']} (task {row['task_id']})"

    def _start(self, rec: JobRecord, site: RemoteSite, direction: Direction, source: str,
               destination: str, *, recursive: bool) -> Arrival | None:
        mover = site.mover_in if direction == "in" else site.mover_out
        label = f"tomo {rec.job_id} transfer-{direction}"
        try:
            task = mover.start(source, destination, recursive=recursive, label=label)
        except TransferError as exc:  # recorded too: a retry must know which leg failed
            failed = self.journal.start_transfer(rec.job_id, direction, mover.name, "-", source, destination)
            self.journal.finish_transfer(failed["id"], "FAILED", error=str(exc))
            self._leg_failed(rec, direction, source, destination, exc)
            return None
        row = self.journal.start_transfer(rec.job_id, direction, mover.name, task, source, destination)
        self.journal.set_state(rec.job_id, self.journal.get(rec.job_id).state,
                               f"transfer-{direction} started: {mover.name} task {task}")
        return self.follow(self.journal.get(rec.job_id), site, row)

    def _leg_failed(self, rec: JobRecord, direction: str, src: str, dst: str, exc: TransferError) -> None:
        # a transfer is an attempt too: count it, or a flaky link would be retried for ever
        rec = dataclasses.replace(rec, attempts=rec.attempts + 1)
        self._failed(rec, f"transfer-{direction} {src} -> {dst}: {exc}", exc.transient)

    def follow(self, rec: JobRecord, site: RemoteSite, row: dict[str, Any]) -> Arrival | None:
        """Look at one transfer; when it is done, record what arrived and say so."""
        direction = row["direction"]
        mover = site.mover_in if direction == "in" else site.mover_out
        try:
            done = mover.check(row["task_id"], row["source"], row["destination"])
        except TransferError as exc:
            self.journal.finish_transfer(row["id"], "FAILED", error=str(exc))
            self._leg_failed(rec, direction, row["source"], row["destination"], exc)
            return None
        if done is None:
            return None
        self.journal.finish_transfer(row["id"], "SUCCEEDED", nbytes=done.bytes)
        job, plan = rec.job, site.plan
        detail = f"transfer-{direction} done: {done.files} files, {done.bytes} bytes, task {done.task_id}"
        if direction == "in":
            self.journal.add_copy(f"run:{job.run_uid}", plan.site, str(plan.to_remote(job.input_path)),
                                  done.bytes)
            materialized_path(job).unlink(missing_ok=True)  # a full copy of the frames: not kept
            self.journal.set_state(rec.job_id, "STAGED", detail)
            return "input-at-site"
        result = read_result(job)
        if result is None:
            missing = f"{rec.executor} finished but {job.outputs.result_path} is missing after transfer-out"
            self._failed(dataclasses.replace(rec, attempts=rec.attempts + 1), missing, True)
            return None
        item = f"result:{job.key}"
        self.journal.add_copy(item, plan.site, str(plan.to_remote(job.outputs.directory)), done.bytes)
        self.journal.add_copy(item, "local", str(job.outputs.directory), done.bytes)
        self.journal.set_state(rec.job_id, "COMPLETED", detail, result=plan.localize(result))
        return "outputs-back"
