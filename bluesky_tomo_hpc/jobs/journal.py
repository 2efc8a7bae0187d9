"""The job journal: one SQLite file that remembers every job and every state it passed through.

It is the only memory the pipeline has across restarts: an IPython session that dies while a
job runs finds the job again here (state, executor, remote handle) and carries on following it.
Each state change is a timestamped row in ``events``, from which :func:`stage_statistics`
derives per-stage durations. Connections are opened per call, so threads and processes may
share one file (WAL mode).
"""

from __future__ import annotations

import json
import sqlite3
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .job import ReconJob

#: states in lifecycle order; the last four are terminal (DONE: finished, no Tiled to register in)
STATES = (
    "NEW",
    "STAGED",
    "SUBMITTED",
    "PENDING",
    "RUNNING",
    "COMPLETED",
    "RETRY_WAIT",
    "REGISTERED",
    "DONE",
    "FAILED",
    "CANCELLED",
)
TERMINAL = frozenset({"REGISTERED", "DONE", "FAILED", "CANCELLED"})
#: (stage name, from state, to state): durations as in the ALS paper's Table 2
STAGES = (
    ("stage", "NEW", "STAGED"),
    ("queue", "SUBMITTED", "RUNNING"),
    ("run", "RUNNING", "COMPLETED"),
    ("register", "COMPLETED", "REGISTERED"),
    ("total", "NEW", "REGISTERED"),
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
  job_id TEXT PRIMARY KEY, run_uid TEXT NOT NULL, params_hash TEXT NOT NULL,
  executor TEXT NOT NULL, handle TEXT, state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
  next_try REAL, error TEXT, result TEXT, tiled_node TEXT, job_json TEXT NOT NULL,
  created REAL NOT NULL, updated REAL NOT NULL);
CREATE INDEX IF NOT EXISTS jobs_key ON jobs (run_uid, params_hash);
CREATE TABLE IF NOT EXISTS events (
  id INTEGER PRIMARY KEY AUTOINCREMENT, job_id TEXT NOT NULL, state TEXT NOT NULL,
  time REAL NOT NULL, detail TEXT);
CREATE INDEX IF NOT EXISTS events_job ON events (job_id);
CREATE TABLE IF NOT EXISTS copies (
  id INTEGER PRIMARY KEY AUTOINCREMENT, item TEXT NOT NULL, location TEXT NOT NULL, path TEXT NOT NULL,
  size INTEGER, created REAL NOT NULL, deleted REAL, UNIQUE (item, location, path));
"""


class JournalError(RuntimeError):
    """A journal operation named a job that does not exist or an impossible state."""


@dataclass(frozen=True)
class JobRecord:
    """One row of the journal."""

    job_id: str
    run_uid: str
    params_hash: str
    executor: str
    handle: str | None
    state: str
    attempts: int
    next_try: float | None
    error: str | None
    result: dict[str, Any] | None
    tiled_node: str | None
    created: float
    updated: float
    job_json: str

    @property
    def job(self) -> ReconJob:
        return ReconJob.model_validate_json(self.job_json)

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL


class Journal:
    """The SQLite journal at ``path`` (created with its folder when missing)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, timeout=30)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)
            db.commit()
        finally:
            db.close()

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        db.row_factory = sqlite3.Row
        try:
            db.execute("BEGIN IMMEDIATE")
            yield db
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        finally:
            db.close()

    @staticmethod
    def _record(row: sqlite3.Row) -> JobRecord:
        d = dict(row)
        d["result"] = json.loads(d["result"]) if d["result"] else None
        return JobRecord(**d)

    # -- writing ----------------------------------------------------------------------------
    def add(self, job: ReconJob, executor: str, state: str = "NEW") -> JobRecord:
        """Record a new job (its first event is ``state``)."""
        now = time.time()
        with self._db() as db:
            db.execute(
                "INSERT INTO jobs (job_id, run_uid, params_hash, executor, state, job_json, created, updated)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    job.job_id,
                    job.run_uid,
                    job.params.params_hash,
                    executor,
                    state,
                    job.model_dump_json(),
                    now,
                    now,
                ),
            )
            db.execute(
                "INSERT INTO events (job_id, state, time, detail) VALUES (?, ?, ?, ?)",
                (job.job_id, state, now, None),
            )
        return self.get(job.job_id)

    def set_state(self, job_id: str, state: str, detail: str | None = None, **fields: Any) -> JobRecord:
        """Move a job to ``state`` (an event row is added) and update other columns."""
        if state not in STATES:
            raise JournalError(f"unknown job state {state!r}; known: {', '.join(STATES)}")
        allowed = {"handle", "attempts", "next_try", "error", "result", "tiled_node"}
        bad = set(fields) - allowed
        if bad:
            raise JournalError(f"cannot set {sorted(bad)} on a job")
        if "result" in fields and fields["result"] is not None:
            fields["result"] = json.dumps(fields["result"], default=str)
        now = time.time()
        cols = ", ".join(f"{k} = ?" for k in fields)
        with self._db() as db:
            cur = db.execute(
                f"UPDATE jobs SET state = ?, updated = ?{', ' + cols if cols else ''} WHERE job_id = ?",
                (state, now, *fields.values(), job_id),
            )
            if cur.rowcount == 0:
                raise JournalError(f"no job {job_id!r} in {self.path}")
            db.execute(
                "INSERT INTO events (job_id, state, time, detail) VALUES (?, ?, ?, ?)",
                (job_id, state, now, detail),
            )
        return self.get(job_id)

    # -- reading ----------------------------------------------------------------------------
    def get(self, job_id: str) -> JobRecord:
        with self._db() as db:
            row = db.execute("SELECT * FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        if row is None:
            raise JournalError(f"no job {job_id!r} in {self.path}")
        return self._record(row)

    def jobs(self, *, active_only: bool = False, run_uid: str | None = None) -> list[JobRecord]:
        """Jobs, oldest first; ``active_only`` leaves out terminal ones."""
        sql, args = "SELECT * FROM jobs", []
        where = []
        if active_only:
            where.append(f"state NOT IN ({', '.join('?' * len(TERMINAL))})")
            args.extend(sorted(TERMINAL))
        if run_uid is not None:
            where.append("run_uid = ?")
            args.append(run_uid)
        if where:
            sql += " WHERE " + " AND ".join(where)
        with self._db() as db:
            rows = db.execute(sql + " ORDER BY created", args).fetchall()
        return [self._record(r) for r in rows]

    def find_reusable(self, run_uid: str, params_hash: str) -> JobRecord | None:
        """A job for the same run and parameters that finished or is still under way."""
        with self._db() as db:
            rows = db.execute(
                "SELECT * FROM jobs WHERE run_uid = ? AND params_hash = ? AND state NOT IN"
                " ('FAILED', 'CANCELLED') ORDER BY created DESC",
                (run_uid, params_hash),
            ).fetchall()
        recs = [self._record(r) for r in rows]
        done = [r for r in recs if r.state in ("REGISTERED", "DONE")]
        return (done or recs or [None])[0]

    def events(self, job_id: str) -> list[tuple[str, float, str | None]]:
        with self._db() as db:
            rows = db.execute(
                "SELECT state, time, detail FROM events WHERE job_id = ? ORDER BY id", (job_id,)
            ).fetchall()
        return [(r["state"], r["time"], r["detail"]) for r in rows]

    def stage_durations(self, job_id: str) -> dict[str, float]:
        """Seconds per stage (first entry of ``from`` to last entry of ``to``) of one job."""
        first: dict[str, float] = {}
        last: dict[str, float] = {}
        for state, t, _ in self.events(job_id):
            first.setdefault(state, t)
            last[state] = t
        out = {}
        for name, a, b in STAGES:
            if a in first and b in last and last[b] >= first[a]:
                out[name] = last[b] - first[a]
        return out

    # -- staged copies (for retention) ------------------------------------------------------
    def add_copy(
        self, item: str, location: str, path: str, size: int | None = None, created: float | None = None
    ) -> int:
        """Record that ``item`` (a logical name: run file, result folder) has a copy at ``location``."""
        with self._db() as db:
            cur = db.execute(
                "INSERT INTO copies (item, location, path, size, created) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (item, location, path) DO UPDATE SET deleted = NULL, size = excluded.size,"
                " created = excluded.created RETURNING id",
                (item, location, path, size, created if created is not None else time.time()),
            )
            return int(cur.fetchone()[0])

    def copies(self, *, item: str | None = None, location: str | None = None) -> list[dict[str, Any]]:
        """Copies not yet deleted, oldest first."""
        sql, args = "SELECT * FROM copies WHERE deleted IS NULL", []
        if item is not None:
            sql, args = sql + " AND item = ?", [*args, item]
        if location is not None:
            sql, args = sql + " AND location = ?", [*args, location]
        with self._db() as db:
            return [dict(r) for r in db.execute(sql + " ORDER BY created", args).fetchall()]

    def mark_deleted(self, copy_id: int) -> None:
        with self._db() as db:
            db.execute("UPDATE copies SET deleted = ? WHERE id = ?", (time.time(), copy_id))


@dataclass(frozen=True)
class StageStats:
    """One row of the statistics table: N, mean +/- sd, median, range (seconds)."""

    stage: str
    n: int
    mean: float
    sd: float
    median: float
    minimum: float
    maximum: float

    def format(self) -> str:
        return (
            f"{self.stage:<9} N={self.n:<4} {self.mean:9.2f} +/- {self.sd:<8.2f} median {self.median:9.2f}"
            f"  range {self.minimum:.2f}-{self.maximum:.2f} s"
        )


def stage_statistics(journal: Journal, *, executor: str | None = None) -> list[StageStats]:
    """Per-stage statistics over all jobs (optionally of one executor) that passed that stage."""
    per: dict[str, list[float]] = {name: [] for name, _, _ in STAGES}
    for rec in journal.jobs():
        if executor is not None and rec.executor != executor:
            continue
        for name, secs in journal.stage_durations(rec.job_id).items():
            per[name].append(secs)
    out = []
    for name, vals in per.items():
        if not vals:
            continue
        out.append(
            StageStats(
                name,
                len(vals),
                statistics.fmean(vals),
                statistics.stdev(vals) if len(vals) > 1 else 0.0,
                statistics.median(vals),
                min(vals),
                max(vals),
            )
        )
    return out
