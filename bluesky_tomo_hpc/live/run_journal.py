"""The stream worker's journal of open runs: what a restarted worker replays.

Why a journal: a worker killed mid-scan has lost the run's start, descriptor and resource
documents, which the RunEngine will not send again. The worker appends every document of an
open tomography run (except events carrying big arrays) to ``<journal>/<safe uid>.jsonl``: one
JSON document per line, no code-running decoder, and a uid never names a path outside the journal
folder (see :func:`..model.safe_component`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from event_model import NumpyEncoder

from ..model import UnsafeNameError, path_inside

log = logging.getLogger(__name__)

__all__ = ["RunJournal", "JOURNAL_MAX_DOC_BYTES", "JOURNAL_SUFFIX"]

#: events whose JSON exceeds this are not journaled (their images are in the run, not a file)
JOURNAL_MAX_DOC_BYTES = 1 << 20
#: journal files; earlier versions wrote ``*.pickle``, which are never loaded (see pending())
JOURNAL_SUFFIX = ".jsonl"


class RunJournal:
    """Append-only record of the documents of open tomography runs, one JSON-lines file per run.

    Why JSON: the file is read back by a later process, and a journal folder is only as safe as
    whoever else can write to it; JSON cannot run code. Each line is ``{"name": ..., "doc": ...}``
    (NumPy values become lists, as in event-model's own JSON). The file name is the run uid made
    safe, so a uid such as ``../../x`` stays inside the folder; the uid itself is in the start
    document, the journal's first line.
    """

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._files: dict[str, Any] = {}
        self._owner: dict[str, str] = {}  # descriptor / resource / stream_resource uid -> run uid
        self.skipped_docs = 0

    def path(self, run_uid: str) -> Path:
        """The journal file of ``run_uid`` (refuses a uid that cannot be made a safe name)."""
        path = path_inside(self.directory, run_uid, what="run uid")
        return path.with_name(path.name + JOURNAL_SUFFIX)

    def run_of(self, name: str, doc: Mapping[str, Any]) -> str | None:
        """The run a document belongs to, if that run is journaled (and learn new owners)."""
        if name == "start":
            return doc.get("uid")
        if name in ("descriptor", "resource", "stream_resource", "stop"):
            run = doc.get("run_start")
            if run in self._files and name != "stop":
                self._owner[doc["uid"]] = run
            return run
        key = {"event": "descriptor", "event_page": "descriptor", "datum": "resource",
               "datum_page": "resource", "stream_datum": "stream_resource"}.get(name)
        return self._owner.get(doc.get(key, "")) if key else None

    def open(self, run_uid: str) -> None:
        if run_uid not in self._files:
            try:
                path = self.path(run_uid)
            except UnsafeNameError as exc:  # the run is still processed, only not journaled
                log.error("run %.60r is not journaled: %s", run_uid, exc)
                return
            self._files[run_uid] = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def record(self, name: str, doc: Mapping[str, Any]) -> None:
        run = self.run_of(name, doc)
        f = self._files.get(run) if run else None
        if f is None:
            return
        try:
            line = json.dumps({"name": name, "doc": doc}, cls=NumpyEncoder, ensure_ascii=True)
        except (TypeError, ValueError) as exc:
            log.warning("run %s: %s document not journaled (%s)", run, name, exc)
            self.skipped_docs += 1
            return
        if len(line) > JOURNAL_MAX_DOC_BYTES and name in ("event", "event_page"):
            self.skipped_docs += 1
            return
        f.write(line + "\n")
        f.flush()

    def close(self, run_uid: str, *, delete: bool = True) -> None:
        f = self._files.pop(run_uid, None)
        if f is not None:
            f.close()
        self._owner = {k: v for k, v in self._owner.items() if v != run_uid}
        if delete and f is not None:  # only a file this journal opened, so only a safe name
            self.path(run_uid).unlink(missing_ok=True)

    def discard(self, run_uid: str) -> None:
        """Delete the kept journal of ``run_uid`` (its results are made or their loss recorded)."""
        self.close(run_uid, delete=False)
        try:
            self.path(run_uid).unlink(missing_ok=True)
        except UnsafeNameError:
            pass  # never journaled

    def pending(self) -> list[Path]:
        """Journals left by a previous worker, oldest first (old ``*.pickle`` ones are named in
        the log and left alone: loading them could run code)."""
        for old in self.directory.glob("*.pickle"):
            log.warning("journal %s is in the old pickle format and is not loaded (a pickle can "
                        "run code); delete it once its run is dealt with", old)
        return sorted(self.directory.glob(f"*{JOURNAL_SUFFIX}"), key=lambda p: p.stat().st_mtime)

    @staticmethod
    def read(path: Path) -> list[tuple[str, dict[str, Any]]]:
        """Every complete document in a journal (a torn last line, from a kill, is ignored; a
        damaged line ends the replay there, with a warning)."""
        docs = []
        with open(path, encoding="utf-8", errors="replace") as f:
            for number, line in enumerate(f, 1):
                if not line.endswith("\n"):
                    break  # torn by a kill mid-write
                try:
                    record = json.loads(line)
                    name, doc = record["name"], record["doc"]
                    if not isinstance(name, str) or not isinstance(doc, dict):
                        raise TypeError("not a (name, document) record")
                except (ValueError, KeyError, TypeError) as exc:
                    log.warning("journal %s: stopping at damaged line %d (%s)", path, number, exc)
                    break
                docs.append((name, doc))
        return docs

    def close_all(self) -> None:
        for uid in list(self._files):
            self.close(uid, delete=False)
