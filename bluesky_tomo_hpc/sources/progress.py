"""Scan progress from documents, for people watching a terminal or a notebook.

:class:`ScanProgress` counts frames of each stream of a tomography run (events, event pages and
stream_datum ranges alike) and calls ``on_update(done, total, stream)``; it is cheap enough to
subscribe directly to a RunEngine.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from event_model import DocumentRouter


class ScanProgress(DocumentRouter):
    """Counts frames per stream of the current run; ``total`` from ``start["tomo"]``."""

    def __init__(self, on_update: Callable[[int, int, str], None]):
        super().__init__()
        self.on_update = on_update
        self.total = 0
        self.done = 0
        self._streams: dict[str, str] = {}
        self._seen_datum_descriptors: set[str] = set()
        self._detector: str | None = None
        self._resource_keys: dict[str, str] = {}

    def start(self, doc: dict[str, Any]) -> None:
        tomo = doc.get("tomo") or {}
        self.total = int(tomo.get("num_projections", 0)) + int(tomo.get("num_darks", 0)) + int(
            tomo.get("num_flats", 0))
        self.done = 0
        self._detector = tomo.get("detector")
        self._resource_keys.clear()
        self._streams.clear()
        self._seen_datum_descriptors.clear()
        self.on_update(0, self.total, "start")

    def descriptor(self, doc: dict[str, Any]) -> None:
        self._streams[doc["uid"]] = doc.get("name", "primary")

    def _advance(self, n: int, descriptor: str) -> None:
        self.done += n
        self.on_update(self.done, max(self.total, self.done), self._streams.get(descriptor, "?"))

    def event_page(self, doc: dict[str, Any]) -> None:
        # frames that travel by stream_datum are counted there, not again by their event
        if doc["descriptor"] not in self._seen_datum_descriptors:
            self._advance(len(doc["seq_num"]), doc["descriptor"])

    def stream_resource(self, doc: dict[str, Any]) -> None:
        self._resource_keys[doc["uid"]] = doc.get("data_key", "")

    def stream_datum(self, doc: dict[str, Any]) -> None:
        key = self._resource_keys.get(doc["stream_resource"])
        if self._detector is not None and key is not None and key != self._detector:
            return  # a second data key of the same detector (e.g. its sum): same frames
        self._seen_datum_descriptors.add(doc["descriptor"])
        self._advance(int(doc["indices"]["stop"]) - int(doc["indices"]["start"]), doc["descriptor"])

    def stop(self, doc: dict[str, Any]) -> None:
        self.on_update(self.done, max(self.total, self.done), "stop")
