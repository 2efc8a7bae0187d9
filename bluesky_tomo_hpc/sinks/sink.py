"""The sink protocol and a fan-out that keeps one failing sink from stopping the others."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Protocol, runtime_checkable

from ..model import FrameBatch, ScanEnd, ScanSpec

log = logging.getLogger(__name__)


@runtime_checkable
class Sink(Protocol):
    """Consumes the normalised stream of one scan at a time: ``open``, ``add``..., ``close``."""

    def open(self, spec: ScanSpec) -> None: ...

    def add(self, batch: FrameBatch) -> None: ...

    def close(self, end: ScanEnd) -> None: ...


class SinkFanout:
    """Feed every sink; an exception in one is logged, recorded, and that sink is dropped for
    the rest of the scan, while the others carry on (raw data is never at stake here)."""

    def __init__(self, sinks: Iterable[Sink]):
        self.sinks = list(sinks)
        self.errors: list[tuple[str, BaseException]] = []
        self._broken: set[int] = set()

    def _each(self, method: str, arg: object) -> None:
        for i, sink in enumerate(self.sinks):
            if i in self._broken:
                continue
            try:
                getattr(sink, method)(arg)
            except Exception as exc:  # a sink fault never propagates to the source
                self._broken.add(i)
                self.errors.append((type(sink).__name__, exc))
                log.exception("%s.%s failed; it is skipped for the rest of this scan",
                              type(sink).__name__, method)

    def open(self, spec: ScanSpec) -> None:
        self._broken.clear()
        self._each("open", spec)

    def add(self, batch: FrameBatch) -> None:
        self._each("add", batch)

    def close(self, end: ScanEnd) -> None:
        self._each("close", end)
