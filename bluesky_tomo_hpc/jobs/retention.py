"""Age-based pruning of staged copies, per location, that never deletes the last copy.

Each rule says: copies at ``location`` older than ``max_age_s`` may go, provided one of the
``verify_at`` locations holds the same item *now* with the same size (asked of that location's
mover at pruning time, not taken from the journal's memory). :class:`RetentionScheduler` runs
the rules periodically on a daemon thread.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from .journal import Journal

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetentionRule:
    location: str
    max_age_s: float
    verify_at: tuple[str, ...]


@dataclass
class PruneReport:
    deleted: list[str] = field(default_factory=list)
    kept: list[tuple[str, str]] = field(default_factory=list)  # (path, why)


def prune(
    journal: Journal, rules: list[RetentionRule], stores: dict[str, Any], *, now: float | None = None
) -> PruneReport:
    """Apply ``rules``; ``stores`` maps a location name to an object with exists/size/delete(path)."""
    now = time.time() if now is None else now
    report = PruneReport()
    for rule in rules:
        if rule.location not in stores:
            raise KeyError(f"retention rule for unknown location {rule.location!r}")
        for copy in journal.copies(location=rule.location):
            if now - copy["created"] < rule.max_age_s:
                continue
            here = stores[rule.location]
            size = here.size(copy["path"])
            witness = None
            for other in journal.copies(item=copy["item"]):
                if other["location"] == rule.location or other["location"] not in rule.verify_at:
                    continue
                store = stores.get(other["location"])
                if store is None:
                    continue
                other_size = store.size(other["path"])
                if other_size is not None and (size is None or other_size == size):
                    witness = other
                    break
            if witness is None:
                report.kept.append((copy["path"], f"no verified copy of {copy['item']} at {rule.verify_at}"))
                continue
            if size is not None:
                here.delete(copy["path"])
            journal.mark_deleted(copy["id"])
            report.deleted.append(copy["path"])
            log.info(
                "pruned %s at %s (verified copy at %s:%s)",
                copy["path"],
                rule.location,
                witness["location"],
                witness["path"],
            )
    return report


class RetentionScheduler:
    """Runs :func:`prune` every ``interval_s`` on a daemon thread until :meth:`stop`."""

    def __init__(
        self, journal: Journal, rules: list[RetentionRule], stores: dict[str, Any], interval_s: float = 3600.0
    ):
        self.journal, self.rules, self.stores, self.interval_s = journal, rules, stores, interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_report: PruneReport | None = None

    def start(self) -> RetentionScheduler:
        self._thread = threading.Thread(target=self._loop, name="tomo-retention", daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.last_report = prune(self.journal, self.rules, self.stores)
            except Exception:
                log.exception("retention pass failed; next pass in %.0f s", self.interval_s)
            self._stop.wait(self.interval_s)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
