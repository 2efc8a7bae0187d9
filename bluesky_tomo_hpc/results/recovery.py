"""Put into Tiled what it missed while it was down: spooled results and backed-up raw runs.

One :class:`TiledRecovery` per data folder. :meth:`run_once` is what ``bluesky-tomo-hpc recover``
runs; :meth:`start` runs it every ``interval_s`` on a daemon thread of the live pipeline, so
results are registered automatically when Tiled returns. Raw runs go first (a result is linked to
its raw run by uid). Nothing here raises: every entry that still fails stays for the next try.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .raw_backup import BackupOutcome, pending_backups, replay_backup
from .spool import ResultSpool, SpooledResult

log = logging.getLogger(__name__)


@dataclass
class RecoveryReport:
    """What one pass did."""

    backups: list[BackupOutcome] = field(default_factory=list)
    registered: list[SpooledResult] = field(default_factory=list)
    still_spooled: list[tuple[SpooledResult, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.still_spooled and all(b.ok or b.status == "no-stop" for b in self.backups)

    def lines(self) -> list[str]:
        out = [f"raw run {b.run_uid or '?'} ({b.path.name}): {b.status} {b.message}".rstrip()
               for b in self.backups]
        out += [f"result {r.key}: registered in Tiled" for r in self.registered]
        out += [f"result {r.key}: still spooled in {r.path} ({why})" for r, why in self.still_spooled]
        return out or ["nothing to recover"]


class TiledRecovery:
    """Spool + backup folder of one data folder, and the Tiled containers they go to.

    ``raw`` and ``processed`` are containers or callables returning them (a client made lazily
    on the recovery thread)."""

    def __init__(self, spool: ResultSpool, backup_dir: str | Path, *, raw: Any | Callable[[], Any],
                 processed: Any | Callable[[], Any], interval_s: float = 30.0):
        self.spool = spool
        self.backup_dir = Path(backup_dir)
        self._raw, self._processed = raw, processed
        self.interval_s = interval_s
        self.reports: list[RecoveryReport] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @staticmethod
    def _get(container: Any) -> Any:
        return container() if callable(container) else container

    def pending(self) -> bool:
        return bool(pending_backups(self.backup_dir) or self.spool.pending())

    def run_once(self, *, complete_unstopped: bool = False, backups: bool = True) -> RecoveryReport:
        """Replay complete backups (and unstopped ones if asked), then register spooled results."""
        report = RecoveryReport()
        if backups and (files := pending_backups(self.backup_dir)):
            try:
                raw = self._get(self._raw)
            except Exception as exc:
                log.info("recovery: Tiled still unreachable (%s)", exc)
                return report
            report.backups = [replay_backup(p, raw, complete_unstopped=complete_unstopped) for p in files]
        if self.spool.pending():
            try:
                processed = self._get(self._processed)
            except Exception as exc:
                log.info("recovery: Tiled still unreachable (%s)", exc)
                return report
            report.registered, report.still_spooled = self.spool.register_all(processed)
        if report.backups or report.registered or report.still_spooled:
            for line in report.lines():
                log.info("recovery: %s", line)
            self.reports.append(report)
            del self.reports[:-50]
        return report

    def start(self) -> TiledRecovery:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="tomo-tiled-recovery", daemon=True)
            self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.run_once()
            except Exception:  # never let the thread die: the next pass tries again
                log.exception("recovery pass failed")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
