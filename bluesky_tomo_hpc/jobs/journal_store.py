"""The SQLite file under the job journal, kept usable whatever happens to it.

Why a module of its own: the monitor thread and every scan's submission depend on the journal,
so the file is robust by design. A locked or busy file is retried with backoff for up to
``busy_timeout_s``; a file deleted under a running session is recreated (and ``recreated``
listeners, e.g. the monitor, put back the jobs they were following); a corrupt file is moved
aside next to it (``<name>.corrupt-<time>``) and recreated. Every such event is logged and kept
in :attr:`SQLiteStore.incidents`, so it is reported, never silent. One transaction rule for
every caller: :meth:`SQLiteStore._db` is one ``BEGIN IMMEDIATE`` transaction.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)

#: SQLite messages that mean "someone else holds the file now; try again"
_BUSY = ("database is locked", "database is busy", "database table is locked")
#: SQLite messages that mean the file is not (or no longer) a store
_CORRUPT = ("file is not a database", "database disk image is malformed", "malformed database schema")


class StoreUnavailable(RuntimeError):
    """The file stayed locked for longer than the caller was willing to wait."""


class SQLiteStore:
    """An SQLite file with ``schema`` (``CREATE ... IF NOT EXISTS`` statements), created with its
    folder when missing; see the module docstring for what happens when the file is in trouble.
    ``unavailable`` is the exception raised when it stays locked (a subclass of the caller's)."""

    unavailable: type[Exception] = StoreUnavailable
    #: a query that fails with "no such table" when the file lost its schema
    probe = "SELECT 1 FROM sqlite_master LIMIT 1"

    def __init__(self, path: str | Path, schema: str, *, busy_timeout_s: float = 120.0):
        self.path = Path(path)
        self.schema = schema
        self.busy_timeout_s = busy_timeout_s
        #: what went wrong with the file itself (locked too long, deleted, corrupt), newest last
        self.incidents: list[str] = []
        #: called with a reason after the file was recreated empty (deleted or corrupt)
        self.recreated: list[Callable[[str], None]] = []
        self._schema_lock = threading.Lock()
        try:
            self._ensure_schema()
        except sqlite3.DatabaseError as exc:
            if any(m in str(exc) for m in _CORRUPT):
                self._recreate(f"the journal file is corrupt ({exc})", corrupt=True)
            elif not any(m in str(exc) for m in _BUSY):
                raise  # locked: the first transaction waits for it

    # -- the file -----------------------------------------------------------------------------
    def _incident(self, message: str) -> None:
        log.error("job journal %s: %s", self.path, message)
        self.incidents.append(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}")

    def _ensure_schema(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, timeout=5)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(self.schema)
            db.commit()
        finally:
            db.close()

    def _recreate(self, why: str, *, corrupt: bool) -> None:
        """Start an empty journal (after keeping a corrupt one aside) and tell the listeners."""
        with self._schema_lock:
            if corrupt and self.path.exists():
                kept = self.path.with_name(f"{self.path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}")
                self.path.replace(kept)
                why += f"; the damaged file is kept as {kept}"
            for suffix in ("-wal", "-shm"):  # stale WAL files of the old database would be replayed
                self.path.with_name(self.path.name + suffix).unlink(missing_ok=True)
            self._ensure_schema()
            self._incident(f"{why}; started an empty journal")
        for listener in list(self.recreated):
            try:
                listener(why)
            except Exception:
                log.exception("journal listener failed after the journal was recreated")

    def _connect(self) -> sqlite3.Connection:
        if not self.path.exists():
            self._recreate("the journal file was deleted", corrupt=False)
        db = sqlite3.connect(self.path, timeout=0.05, isolation_level=None)
        db.row_factory = sqlite3.Row
        return db

    @contextmanager
    def _db(self, wait_s: float | None = None) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE), retried while the file is busy or locked (for
        ``wait_s``, default ``busy_timeout_s``), recreated when the file is gone or not a database."""
        patience = self.busy_timeout_s if wait_s is None else wait_s
        deadline = time.monotonic() + patience
        delay = 0.05
        while True:
            db = None
            try:
                db = self._connect()
                db.execute("BEGIN IMMEDIATE")
                db.execute(self.probe)  # a file emptied under us has no tables
                break
            except sqlite3.DatabaseError as exc:
                if db is not None:
                    db.close()
                msg = str(exc)
                if any(m in msg for m in _BUSY):
                    if time.monotonic() > deadline:
                        if wait_s is None:
                            self._incident(f"still locked after {patience:.0f} s ({msg})")
                        raise self.unavailable(
                            f"job journal {self.path} stayed locked for {patience:.1f} s: "
                            "another process holds it (a stuck sqlite3 shell?)"
                        ) from exc
                    time.sleep(delay)
                    delay = min(1.0, delay * 2)
                elif "no such table" in msg:
                    self._recreate("the journal file lost its tables (deleted and recreated empty?)",
                                   corrupt=False)
                elif any(m in msg for m in _CORRUPT):
                    self._recreate(f"the journal file is corrupt ({msg})", corrupt=True)
                else:
                    raise
        try:
            yield db
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        finally:
            db.close()

