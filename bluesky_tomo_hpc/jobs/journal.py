"""The job journal: one SQLite file that remembers every job and every state it passed through.

It is the only memory the pipeline has across restarts: an IPython session that dies while a
job runs finds the job again here (state, executor, remote handle) and carries on following it.
Each state change is a timestamped row in ``events``, from which :func:`stage_statistics`
derives per-stage durations; each data transfer of a remote job is a row in ``transfers``.
One store, one schema, one transaction rule: connections are opened per call, so threads and
processes may share one file (WAL mode).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ..batch.job import ReconJob
from ..untrusted.secrets_mask import mask_secrets, mask_text
from .journal_store import SQLiteStore, StoreUnavailable

log = logging.getLogger(__name__)

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
#: the rows of the statistics table, in pipeline order (ALS Table 2 plus local staging and total)
PIPELINE_STAGES = ("stage", "transfer-in", "queue", "run", "transfer-out", "register", "total")

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
CREATE TABLE IF NOT EXISTS transfers (
  id INTEGER PRIMARY KEY AUTOINCREMENT, job_id TEXT NOT NULL, direction TEXT NOT NULL,
  mover TEXT NOT NULL, task_id TEXT NOT NULL, source TEXT NOT NULL, destination TEXT NOT NULL,
  state TEXT NOT NULL, started REAL NOT NULL, finished REAL, bytes INTEGER, error TEXT);
CREATE INDEX IF NOT EXISTS transfers_job ON transfers (job_id);
"""

Direction = Literal["in", "out"]


class JournalError(RuntimeError):
    """A journal operation named a job that does not exist or an impossible state."""


class JournalUnavailable(JournalError, StoreUnavailable):
    """The journal stayed locked or unreadable for longer than the caller was willing to wait."""


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


class Journal(SQLiteStore):
    """The job journal at ``path`` (created with its folder when missing); the file's own
    troubles (locked, deleted, corrupt) are handled by :class:`~.journal_store.SQLiteStore`."""

    unavailable = JournalUnavailable
    probe = "SELECT 1 FROM jobs LIMIT 1"

    def __init__(self, path: str | Path, *, busy_timeout_s: float = 120.0):
        super().__init__(path, _SCHEMA, busy_timeout_s=busy_timeout_s)

    @staticmethod
    def _record(row: sqlite3.Row) -> JobRecord:
        d = dict(row)
        d["result"] = json.loads(d["result"]) if d["result"] else None
        return JobRecord(**d)

    # -- writing ----------------------------------------------------------------------------
    def add(self, job: ReconJob, executor: str, state: str = "NEW", *,
            wait_s: float | None = None) -> JobRecord:
        """Record a new job (its first event is ``state``); ``wait_s``: see :meth:`_db`."""
        now = time.time()
        with self._db(wait_s) as db:
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
        return self.get(job.job_id, wait_s=wait_s)

    def restore(self, rec: JobRecord, detail: str) -> None:
        """Put back a job a recreated journal lost (as the monitor last saw it); no-op if present."""
        with self._db() as db:
            cur = db.execute(
                "INSERT OR IGNORE INTO jobs (job_id, run_uid, params_hash, executor, handle, state,"
                " attempts, next_try, error, result, tiled_node, job_json, created, updated)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (rec.job_id, rec.run_uid, rec.params_hash, rec.executor, rec.handle, rec.state,
                 rec.attempts, rec.next_try, rec.error,
                 json.dumps(rec.result, default=str) if rec.result is not None else None,
                 rec.tiled_node, rec.job_json, rec.created, time.time()),
            )
            if cur.rowcount:
                db.execute("INSERT INTO events (job_id, state, time, detail) VALUES (?, ?, ?, ?)",
                           (rec.job_id, rec.state, time.time(), detail))

    # -- jobs that could not be recorded (journal unavailable): parked as files ----------------
    @property
    def parked_dir(self) -> Path:
        """Jobs whose ``add`` failed wait here as JSON files until the journal takes them."""
        return self.path.with_name(self.path.stem + "-parked")

    def park(self, job: ReconJob, executor: str, reason: str, *, state: str = "NEW") -> Path:
        """Keep a job the journal could not record, so it is adopted later (in ``state``)."""
        self.parked_dir.mkdir(parents=True, exist_ok=True)
        path = self.parked_dir / f"{job.job_id}.json"
        tmp = path.with_suffix(".tmp")
        reason = mask_text(reason)
        record = {"executor": executor, "state": state, "reason": reason, "job": job.model_dump(mode="json")}
        tmp.write_text(json.dumps(record))
        tmp.replace(path)
        self._incident(f"job {job.job_id} of run {job.run_uid} parked in {path}: {reason}")
        return path

    def adopt_parked(self) -> list[JobRecord]:
        """Record every parked job (in its parked state: STAGED ones are submitted); returns them."""
        adopted = []
        for path in sorted(self.parked_dir.glob("*.json")) if self.parked_dir.is_dir() else []:
            try:
                data = json.loads(path.read_text())
                job = ReconJob.model_validate(data["job"])
            except (OSError, ValueError, KeyError) as exc:
                self._incident(f"parked job {path} is unreadable ({exc}); left in place")
                continue
            with self._db() as db:
                known = db.execute("SELECT 1 FROM jobs WHERE job_id = ?", (job.job_id,)).fetchone()
            if known:  # adopted by another process meanwhile
                path.unlink(missing_ok=True)
                continue
            try:
                rec = self.add(job, data["executor"], state=data.get("state", "NEW"))
            except sqlite3.IntegrityError:  # another thread adopted it between the two looks
                path.unlink(missing_ok=True)
                continue
            path.unlink(missing_ok=True)
            adopted.append(rec)
        return adopted

    def set_state(self, job_id: str, state: str, detail: str | None = None, **fields: Any) -> JobRecord:
        """Move a job to ``state`` (an event row is added) and update other columns."""
        if state not in STATES:
            raise JournalError(f"unknown job state {state!r}; known: {', '.join(STATES)}")
        allowed = {"handle", "attempts", "next_try", "error", "result", "tiled_node"}
        bad = set(fields) - allowed
        if bad:
            raise JournalError(f"cannot set {sorted(bad)} on a job")
        if "result" in fields and fields["result"] is not None:
            fields["result"] = json.dumps(mask_secrets(fields["result"]), default=str)
        if fields.get("error"):  # an exception's text may quote a URL with its password
            fields["error"] = mask_text(str(fields["error"]))
        detail = mask_text(detail) if detail else detail
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
    def get(self, job_id: str, *, wait_s: float | None = None) -> JobRecord:
        with self._db(wait_s) as db:
            row = db.execute("SELECT * FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        if row is None:  # parked while the journal was locked: adopt it here, or see it adopted
            # by the monitor's thread meanwhile (it may have inserted the row after our look)
            if (self.parked_dir / f"{job_id}.json").exists():
                self.adopt_parked()
            with self._db(wait_s) as db:
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

    def find_reusable(self, run_uid: str, params_hash: str, *,
                      wait_s: float | None = None) -> JobRecord | None:
        """A job for the same run and parameters that finished or is still under way."""
        with self._db(wait_s) as db:
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
        """Seconds per pipeline stage of one job (first entry of ``from`` to last entry of
        ``to``); transfers from their rows; 'run' ends where transfer-out starts, if it did."""
        first: dict[str, float] = {}
        last: dict[str, float] = {}
        for state, t, _ in self.events(job_id):
            first.setdefault(state, t)
            last[state] = t
        out = {}
        for name, a, b in STAGES:
            if a in first and b in last and last[b] >= first[a]:
                out[name] = last[b] - first[a]
        rows = self.transfers(job_id)
        for direction in ("in", "out"):
            legs = [r for r in rows if r["direction"] == direction]
            done = [r["finished"] for r in legs if r["state"] == "SUCCEEDED"]
            if done:  # first start to last successful finish (retries included)
                out[f"transfer-{direction}"] = max(done) - legs[0]["started"]
        outs = [r for r in rows if r["direction"] == "out"]
        if outs and "RUNNING" in first:
            out["run"] = max(0.0, outs[0]["started"] - first["RUNNING"])
        return {k: out[k] for k in PIPELINE_STAGES if k in out}

    # -- transfers of remote jobs (states ACTIVE, SUCCEEDED, FAILED, CANCELLED) -------------------
    def start_transfer(
        self, job_id: str, direction: Direction, mover: str, task_id: str, source: str, destination: str
    ) -> dict[str, Any]:
        with self._db() as db:
            cur = db.execute(
                "INSERT INTO transfers (job_id, direction, mover, task_id, source, destination, state,"
                " started) VALUES (?, ?, ?, ?, ?, ?, 'ACTIVE', ?)",
                (job_id, direction, mover, task_id, source, destination, time.time()),
            )
            row = db.execute("SELECT * FROM transfers WHERE id = ?", (cur.lastrowid,)).fetchone()
        return dict(row)

    def finish_transfer(self, row_id: int, state: str, *, nbytes: int | None = None,
                        error: str | None = None) -> None:
        if state not in ("SUCCEEDED", "FAILED", "CANCELLED"):
            raise ValueError(f"a transfer ends SUCCEEDED, FAILED or CANCELLED, not {state!r}")
        with self._db() as db:
            db.execute(
                "UPDATE transfers SET state = ?, finished = ?, bytes = ?, error = ? WHERE id = ?",
                (state, time.time(), nbytes, mask_text(error) if error else error, row_id),
            )

    def transfers(self, job_id: str, direction: Direction | None = None) -> list[dict[str, Any]]:
        """The job's transfers, oldest first."""
        sql, args = "SELECT * FROM transfers WHERE job_id = ?", [job_id]
        if direction is not None:
            sql, args = sql + " AND direction = ?", [*args, direction]
        with self._db() as db:
            return [dict(r) for r in db.execute(sql + " ORDER BY id", args).fetchall()]

    def active_transfer(self, job_id: str) -> dict[str, Any] | None:
        return next((r for r in reversed(self.transfers(job_id)) if r["state"] == "ACTIVE"), None)

    def transfer_succeeded(self, job_id: str, direction: Direction) -> bool:
        return any(r["state"] == "SUCCEEDED" for r in self.transfers(job_id, direction))

    def last_transfer(self, job_id: str) -> dict[str, Any] | None:
        rows = self.transfers(job_id)
        return rows[-1] if rows else None

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
    """Per-stage statistics over all jobs (optionally of one executor) that passed that stage,
    transfers included, in pipeline order."""
    per: dict[str, list[float]] = {name: [] for name in PIPELINE_STAGES}
    for rec in journal.jobs():
        if executor is not None and rec.executor != executor:
            continue
        for name, secs in journal.stage_durations(rec.job_id).items():
            per[name].append(secs)
    return [
        StageStats(name, len(v), statistics.fmean(v), statistics.stdev(v) if len(v) > 1 else 0.0,
                   statistics.median(v), min(v), max(v))
        for name, v in per.items()
        if v
    ]
