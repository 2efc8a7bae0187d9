"""The SciCat outbox: every dataset to publish, until SciCat has it.

Why a store: SciCat may be down for maintenance while the beamline scans all night. A dataset
is written here *before* the first try, so a failure, a crash or a restart loses nothing; due
items are retried with a doubling delay, like batch jobs. It is one table (``scicat_datasets``,
one row per dataset pid) in the job journal's SQLite file, through the journal's own
transaction rule (busy retries, WAL, a connection per call)::

    PENDING -> DONE                 published (or found already there: idempotent)
            -> RETRY_WAIT -> ...    transient failure (network, 5xx); next_try says when
            -> FAILED               refused (4xx: SciCat says why, in ``error``) or out of tries;
                                    the payload stays, ``retry(pid)`` queues it again
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..jobs.journal import Journal

STATES = ("PENDING", "RETRY_WAIT", "DONE", "FAILED")

#: created on every transaction: cheap, and a journal recreated empty gets it back
_TABLE = """CREATE TABLE IF NOT EXISTS scicat_datasets (
  pid TEXT PRIMARY KEY, kind TEXT NOT NULL, run_uid TEXT NOT NULL, parent_pid TEXT,
  payload TEXT NOT NULL, state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
  next_try REAL, error TEXT, created REAL NOT NULL, updated REAL NOT NULL)"""


@dataclass(frozen=True)
class OutboxItem:
    pid: str
    kind: str  # "raw", "derived" or "datablock" (the raw files of the parent dataset)
    run_uid: str
    parent_pid: str | None
    payload: dict[str, Any]
    state: str
    attempts: int
    next_try: float | None
    error: str | None


class ScicatOutbox:
    """The outbox in ``journal`` (a :class:`~bluesky_tomo_hpc.jobs.journal.Journal`, or the path
    of its file)."""

    def __init__(self, journal: Journal | str | Path):
        self.journal = journal if isinstance(journal, Journal) else Journal(journal)
        with self._db():
            pass

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        with self.journal._db() as db:  # the journal's one transaction rule
            db.execute(_TABLE)
            yield db

    @staticmethod
    def _item(row: sqlite3.Row) -> OutboxItem:
        d = dict(row)
        d["payload"] = json.loads(d["payload"])
        for k in ("created", "updated"):
            d.pop(k)
        return OutboxItem(**d)

    def put(self, pid: str, kind: str, run_uid: str, payload: dict[str, Any], *,
            parent_pid: str | None = None) -> OutboxItem:
        """Queue a dataset; a pid already queued keeps its state (a replayed scan adds nothing)."""
        now = time.time()
        with self._db() as db:
            db.execute(
                "INSERT OR IGNORE INTO scicat_datasets (pid, kind, run_uid, parent_pid, payload, state,"
                " next_try, created, updated) VALUES (?, ?, ?, ?, ?, 'PENDING', ?, ?, ?)",
                (pid, kind, run_uid, parent_pid, json.dumps(payload, sort_keys=True), now, now, now))
        return self.get(pid)

    def get(self, pid: str) -> OutboxItem:
        with self._db() as db:
            row = db.execute("SELECT * FROM scicat_datasets WHERE pid = ?", (pid,)).fetchone()
        if row is None:
            raise KeyError(f"no SciCat dataset {pid!r} in the outbox")
        return self._item(row)

    def items(self, state: str | None = None) -> list[OutboxItem]:
        with self._db() as db:
            rows = (db.execute("SELECT * FROM scicat_datasets WHERE state = ? ORDER BY created", (state,))
                    if state else db.execute("SELECT * FROM scicat_datasets ORDER BY created")).fetchall()
        return [self._item(r) for r in rows]

    def due(self, now: float | None = None) -> list[OutboxItem]:
        """PENDING and RETRY_WAIT items whose time has come, raw datasets first."""
        now = time.time() if now is None else now
        with self._db() as db:
            rows = db.execute(
                "SELECT * FROM scicat_datasets WHERE state IN ('PENDING', 'RETRY_WAIT') AND next_try <= ?"
                " ORDER BY kind = 'raw' DESC, created", (now,)).fetchall()
        return [self._item(r) for r in rows]

    def _set(self, pid: str, **fields: Any) -> None:
        fields["updated"] = time.time()
        names = ", ".join(f"{k} = ?" for k in fields)
        with self._db() as db:
            db.execute(f"UPDATE scicat_datasets SET {names} WHERE pid = ?", (*fields.values(), pid))

    def done(self, pid: str) -> None:
        self._set(pid, state="DONE", error=None, next_try=None)

    def failed(self, pid: str, error: str, *, retry_in: float | None) -> None:
        """Record a failure: RETRY_WAIT ``retry_in`` seconds from now, or FAILED when None."""
        item = self.get(pid)
        if retry_in is None:
            self._set(pid, state="FAILED", error=error, attempts=item.attempts + 1, next_try=None)
        else:
            self._set(pid, state="RETRY_WAIT", error=error, attempts=item.attempts + 1,
                      next_try=time.time() + retry_in)

    def retry(self, pid: str) -> None:
        """Queue a FAILED dataset again (after the cause was fixed), with a fresh count of tries."""
        self._set(pid, state="PENDING", attempts=0, next_try=time.time())
