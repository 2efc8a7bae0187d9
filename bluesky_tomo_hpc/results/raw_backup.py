"""Raw runs that Tiled could not take, put back from TiledWriter's JSONL backup.

``TiledWriter(backup_directory=...)`` (bluesky-tiled-plugins) writes the *whole* document stream
of a run to ``<first part of uid>.jsonl`` as soon as Tiled fails during that run, and sends it no
more documents, so Tiled is left with a partial run and no stop document. Replaying the backup
into the restarted Tiled through a plain ``TiledWriter`` answers HTTP 409 (the run's container
exists). :func:`replay_backup` is idempotent instead:

* the run is in Tiled with its stop document: nothing to do (``already-complete``);
* the run is in Tiled without a stop (partial): its nodes are replaced by the complete stream
  from the backup (only Tiled's records and internal tables; the detector files are external and
  untouched), since the backup starts at the run's start and holds every document Tiled saw;
* the run is not in Tiled: written from the backup.

A backup without a stop document (the acquisition process died too) is left alone unless
``complete_unstopped``: then a stop with ``exit_status="abort"`` and a reason saying so closes it.
A replayed backup moves to ``replayed/`` beside it.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BackupOutcome:
    """What happened to one backup file."""

    path: Path
    run_uid: str | None
    #: "written", "replaced-partial", "already-complete", "no-stop", "unreadable", "failed"
    status: str
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.status in ("written", "replaced-partial", "already-complete")


def read_backup(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """The documents of a JSONL backup; a torn last line (a crash while writing) is ignored."""
    docs = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                docs.append((str(item["name"]), dict(item["doc"])))
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("backup %s: line %d unreadable (%s); the rest is ignored", path, n, exc)
                break
    return docs


def closing_stop(start: dict[str, Any], docs: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """A stop document for a run whose own stop was never written (marked as such)."""
    last = max((d.get("time", 0.0) for _, d in docs), default=start.get("time", time.time()))
    return {
        "uid": str(uuid.uuid4()),
        "run_start": start["uid"],
        "time": last,
        "exit_status": "abort",
        "reason": "stop document never written; run closed from its JSONL backup by bluesky-tomo-hpc",
        "num_events": {},
    }


def pending_backups(directory: Path) -> list[Path]:
    """Backup files not yet replayed, oldest first."""
    if not directory.is_dir():
        return []
    return sorted(directory.glob("*.jsonl"), key=lambda p: p.stat().st_mtime)


def replay_backup(path: Path, raw: Any, *, complete_unstopped: bool = False,
                  batch_size: int = 10000) -> BackupOutcome:
    """Put one backed-up run into the raw catalog ``raw`` (see the module docstring)."""
    from bluesky_tiled_plugins import TiledWriter

    try:
        docs = read_backup(path)
    except OSError as exc:
        return BackupOutcome(path, None, "unreadable", str(exc))
    if not docs or docs[0][0] != "start" or "uid" not in docs[0][1]:
        return BackupOutcome(path, None, "unreadable", "does not begin with a start document")
    start = docs[0][1]
    uid = str(start["uid"])
    if not any(name == "stop" for name, _ in docs):
        if not complete_unstopped:
            return BackupOutcome(path, uid, "no-stop", "the backup has no stop document (the run may "
                                 "still be going); --complete-unstopped closes it as aborted")
        docs.append(("stop", closing_stop(start, docs)))
    status = "written"
    try:
        if uid in raw:
            if (raw[uid].metadata or {}).get("stop"):
                _set_aside(path)
                return BackupOutcome(path, uid, "already-complete", "the run in Tiled has its stop")
            raw.delete_contents(uid, recursive=True, external_only=False)
            status = "replaced-partial"
        writer = TiledWriter(raw, batch_size=batch_size)
        for name, doc in docs:
            writer(name, doc)
    except Exception as exc:  # Tiled still down, or refusing: the backup stays for the next try
        return BackupOutcome(path, uid, "failed", f"{type(exc).__name__}: {exc}")
    _set_aside(path)
    log.info("raw run %s %s from backup %s", uid, status, path)
    return BackupOutcome(path, uid, status, f"{len(docs)} documents")


def _set_aside(path: Path) -> None:
    done = path.parent / "replayed"
    done.mkdir(exist_ok=True)
    path.replace(done / path.name)
