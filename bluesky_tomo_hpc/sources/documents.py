"""Bluesky documents -> ScanSpec + FrameBatch stream, one sink per tomography run.

``TomoRunRouter`` is an ``event_model.RunRouter`` whose factory makes one :class:`TomoRun` (a
DocumentRouter) per recognised run, so any document order works: StreamDatum before or after
its Event, fly scans with no Events at all, a StreamResource shared by the dark, flat and
primary streams, legacy Resource/Datum (AD_HDF5), filled images in Events or EventPages, and
the replay order of a Tiled export. Everything is synchronous; ``TomoCallback`` puts it behind
a thread for a RunEngine, and the 0MQ worker calls it directly. Nothing here raises into the
caller: problems are logged and kept in ``errors``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from event_model import RunRouter

from ..sinks.sink import Sink
from .darkflat import DarkFlatCache, DarkFlatResolver
from .recognise import DEFAULT_PRESETS, Preset, TomoLayout, TomoMetadataError, recognise
from .resolvers import tiled_dark_flat_resolver
from .run import TomoRun

log = logging.getLogger(__name__)

__all__ = ["TomoRunRouter", "tiled_dark_flat_resolver"]


class _NoFill:
    """Stands in for RunRouter's per-run ``Filler``: frames are read here, from the files, in
    whatever order Datum and Event arrive (a Filler raises when an Event precedes its Datum)."""

    def __init__(self, *args: Any, **kwargs: Any):
        pass

    def __getattr__(self, name: str) -> Callable[[Any], Any]:
        return lambda doc: doc


class TomoRunRouter:
    """Recognise tomography runs and feed each to a fresh sink (``sink_factory()``).

    Synchronous: ``router(name, doc)`` does the work before returning. Documents of runs that
    are not tomography are dropped after one dict lookup. Never raises; see ``errors``.
    """

    def __init__(self, sink_factory: Callable[[], Sink], *,
                 dark_flat_resolver: DarkFlatResolver | None = None,
                 presets: Mapping[str, Preset] | Sequence[Preset] | None = None,
                 dark_flat_cache_size: int = 8, read_timeout: float = 5.0,
                 max_held_frames: int = 64, root_map: Mapping[str, str] | None = None):
        self.sink_factory = sink_factory
        self.dark_flat_resolver = dark_flat_resolver
        self.presets = DEFAULT_PRESETS if presets is None else presets
        self.dark_flat_cache = DarkFlatCache(dark_flat_cache_size)
        self.read_timeout = read_timeout
        #: projections held at most this many frames for a measured angle before the planned one
        self.max_held_frames = max_held_frames
        self.root_map = dict(root_map or {})
        #: (run uid, message) of everything that went wrong, oldest first
        self.errors: list[tuple[str, str]] = []
        self.runs: dict[str, TomoRun] = {}
        self._router = RunRouter([self._factory], filler_class=_NoFill)
        self._layouts: dict[str, TomoLayout] = {}  # recognised at start, used by the factory
        # runs that are not tomography -> uids of their descriptors and resources, and back
        self._ignored_runs: dict[str, set[str]] = {}
        self._ignored_docs: dict[str, str] = {}

    def report(self, run_uid: str, message: str, *, level: int = logging.ERROR,
                record: bool | None = None) -> None:
        """Log; and keep errors (and skipped runs) in ``errors`` for the caller to show."""
        log.log(level, "run %s: %s", run_uid, message)
        if record or (record is None and level >= logging.ERROR):
            self.errors.append((run_uid, message))

    def errors_for(self, run_uid: str) -> list[str]:
        """The messages reported for one run (what a scan summary shows the user)."""
        return [message for uid, message in self.errors if uid == run_uid]

    def _recognise(self, start: Mapping[str, Any]) -> TomoLayout | None:
        uid = start.get("uid", "")
        try:
            return recognise(start, self.presets)
        except TomoMetadataError as exc:
            self.report(uid, f"run skipped: start['tomo'] not understood: {exc}",
                         level=logging.WARNING, record=True)
        except Exception as exc:  # a faulty preset must not take the router down
            self.report(uid, f"run skipped: recognising it failed: {exc!r}")
        return None

    def _factory(self, name: str, start: dict[str, Any]) -> tuple[list[Any], list[Any]]:
        uid = start.get("uid", "")
        layout = self._layouts.pop(uid, None)
        if layout is None:
            return [], []
        run = TomoRun(self, layout)
        self.runs[uid] = run
        return [run], []

    def _is_ignored(self, name: str, doc: Mapping[str, Any]) -> bool:
        """Cheap filter so that non-tomography runs never reach the RunRouter."""
        if name == "start":
            layout = self._recognise(doc)
            if layout is None:
                self._ignored_runs[doc["uid"]] = set()
                return True
            self._layouts[doc["uid"]] = layout
            return False
        if name in ("descriptor", "resource", "stream_resource"):
            owned = self._ignored_runs.get(doc.get("run_start", ""))
            if owned is not None:
                owned.add(doc["uid"])
                self._ignored_docs[doc["uid"]] = doc["run_start"]
                return True
            return False
        if name in ("event", "event_page"):
            return doc.get("descriptor") in self._ignored_docs
        if name in ("datum", "datum_page"):
            return doc.get("resource") in self._ignored_docs
        if name == "stream_datum":
            return doc.get("stream_resource") in self._ignored_docs
        if name == "stop":
            owned = self._ignored_runs.pop(doc.get("run_start", ""), None)
            if owned is not None:
                for uid in owned:
                    self._ignored_docs.pop(uid, None)
                return True
        return False

    def __call__(self, name: str, doc: dict[str, Any]) -> None:
        try:
            if self._is_ignored(name, doc):
                return
            self._router(name, doc)
            if name == "stop":
                self.runs.pop(doc.get("run_start", ""), None)
        except Exception as exc:  # malformed or out-of-order documents are reported, not raised
            run_uid = doc.get("run_start") or doc.get("uid", "?") if isinstance(doc, dict) else "?"
            log.exception("TomoRunRouter could not process %r document", name)
            self.report(str(run_uid), f"{name} document not processed: {exc!r}")
