"""The job journal as the web page shows it: jobs, each one's stages and log tail, statistics.

Only the journal's and the monitor's public functions are used, so the page reads the same
journal as ``bluesky-tomo-hpc jobs`` from any process. Retry and cancel go through
:class:`~bluesky_tomo_hpc.jobs.monitor.JobMonitor` (cancel reaches the executor); a retried job
is resubmitted by whichever monitor follows the journal (the pipeline's, or ``jobs follow``).
"""

from __future__ import annotations

from typing import Any

from ..jobs.journal import JobRecord, Journal, JournalError, stage_statistics

LOG_TAIL_LINES = 40


class JobNotFound(LookupError):
    pass


def job_row(r: JobRecord) -> dict[str, Any]:
    return {"job_id": r.job_id, "run_uid": r.run_uid, "params_hash": r.params_hash, "executor": r.executor,
            "state": r.state, "attempts": r.attempts, "error": r.error, "tiled_node": r.tiled_node,
            "created": r.created, "updated": r.updated, "terminal": r.terminal}


def list_jobs(journal: Journal, *, active_only: bool = False, limit: int = 200) -> list[dict[str, Any]]:
    """Newest first."""
    return [job_row(r) for r in reversed(journal.jobs(active_only=active_only))][:limit]


def _get(journal: Journal, job_id: str) -> JobRecord:
    try:
        return journal.get(job_id)
    except JournalError:
        raise JobNotFound(f"no job {job_id!r} in the journal") from None


def log_tail(monitor: Any, rec: JobRecord, lines: int = LOG_TAIL_LINES) -> str:
    """The last lines of the job's log, as its executor tells them (or why not)."""
    executor = (getattr(monitor, "executors", None) or {}).get(rec.executor)
    if executor is None:
        return f"(the log of a {rec.executor} job is not readable from this server)"
    if not rec.handle:
        return "(not submitted yet: no log)"
    try:
        text = executor.logs(rec.handle)
    except Exception as exc:
        return f"(log not available: {type(exc).__name__}: {exc})"
    return "\n".join(text.splitlines()[-lines:]) or "(log is empty)"


def job_detail(journal: Journal, job_id: str, monitor: Any = None) -> dict[str, Any]:
    rec = _get(journal, job_id)
    events = [{"state": s, "time": t, "detail": d} for s, t, d in journal.events(job_id)]
    return {**job_row(rec), "events": events,
            "stages": journal.stage_durations(job_id),
            "log_tail": log_tail(monitor, rec)}


def statistics(journal: Journal) -> list[dict[str, Any]]:
    """Per stage: N, mean, sd, median, min, max (seconds), as ``jobs stats`` prints them."""
    return [{"stage": s.stage, "n": s.n, "mean": s.mean, "sd": s.sd, "median": s.median,
             "min": s.minimum, "max": s.maximum} for s in stage_statistics(journal)]


def act(journal: Journal, monitor: Any, job_id: str, action: str) -> dict[str, Any]:
    """``retry`` or ``cancel`` a job; a refusal is a ``ValueError`` with the reason."""
    _get(journal, job_id)
    if monitor is None:
        raise ValueError("this server has no job monitor: retry and cancel are not available here")
    try:
        rec = monitor.retry(job_id) if action == "retry" else monitor.cancel(job_id)
    except JournalError as exc:
        raise ValueError(str(exc)) from None
    except Exception as exc:  # the executor could not cancel: say why, the journal is unchanged
        raise ValueError(f"{action} failed: {type(exc).__name__}: {exc}") from None
    return job_row(rec)
