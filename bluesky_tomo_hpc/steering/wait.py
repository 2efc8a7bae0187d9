"""Wait, inside a plan, for a scan's live preview or full reconstruction, and read its metrics.

Why futures: the preview and the reconstruction finish on the pipeline's own threads. Each
result resolves a ``concurrent.futures.Future``; the plan stub yields bluesky's ``wait_for``
message with an ``asyncio.wrap_future`` of it, so the RunEngine's event loop keeps running
(pause, abort, other devices' callbacks) while the plan waits, and nothing polls.

::

    results = ResultFutures(tomo)                      # once, after configure(RE)
    def plan():
        uid = yield from tomo_scan(det, stage, num_projections=90)
        m = yield from wait_for_metrics(results, uid, "preview", timeout=30)
        if m.roi["mean"] > 0.02: ...
"""

from __future__ import annotations

import asyncio
import threading
from collections import OrderedDict
from collections.abc import Callable, Generator, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import numpy as np
from bluesky import plan_stubs as bps
from bluesky.utils import Msg

from ..engine.scan_health_report import ScanHealthReport
from .metrics import Roi, measure

Plan = Generator[Msg, Any, Any]
KINDS = ("preview", "full")


class SteeringTimeout(TimeoutError):
    """The result a plan waited for did not come in time."""


class SteeringError(RuntimeError):
    """The result a plan waited for failed (its message says why); the scan itself is kept."""


@dataclass(frozen=True)
class ScanResult:
    """The slices and centre of one scan's preview or full reconstruction."""

    run_uid: str
    kind: str
    slices: Mapping[str, np.ndarray]
    center: float | None
    center_confidence: float | None
    series: Mapping[str, Any] | None = None


class ResultFutures:
    """Futures of the previews, reconstructions and scan health of a :class:`TomoPipeline` (or
    anything with ``service.listeners``, ``preview_listeners`` and ``health_listeners``), or of a
    remote worker's preview stream (:meth:`from_preview_stream`); results that arrive before
    anyone asks are kept (the last ``keep`` of each kind). ``health``: soft signals a plan reads
    (:class:`~.scan_health_signals.ScanHealthSignals`), kept up to date with every health update."""

    def __init__(self, pipeline: Any = None, keep: int = 64, *, health: Any = None):
        self._lock = threading.Lock()
        self._futures: dict[tuple[str, str], Future] = {}
        self._done: OrderedDict[tuple[str, str], Future] = OrderedDict()
        self._keep = keep
        self._health: OrderedDict[str, ScanHealthReport] = OrderedDict()
        self._health_waiters: list[tuple[str, int | None, bool, Future]] = []
        self.health_signals = health
        self.feed: Any = None  # the remote preview stream, when there is one
        if pipeline is not None:
            pipeline.service.listeners.append(self._on_outcome)
            pipeline.preview_listeners.append(self._on_preview)
            if hasattr(pipeline, "health_listeners"):
                pipeline.health_listeners.append(self._on_health_update)

    @classmethod
    def from_preview_stream(cls, address: str, keep: int = 64, *, health: Any = None) -> ResultFutures:
        """Futures fed by a worker's 0MQ preview stream (``settings.preview.zmq_address`` of the
        ``bluesky-tomo-hpc worker``): previews and scan health, as in-process. Full volumes do not
        travel on that stream (they are in Tiled: ``results.tiled_results.find_reconstructions``).
        ``close()`` stops listening."""
        from .preview_feed import PreviewStreamFeed

        futures = cls(None, keep, health=health)
        futures.feed = PreviewStreamFeed(futures, address)
        return futures

    def close(self) -> None:
        if self.feed is not None:
            self.feed.close()

    # -- scan health --------------------------------------------------------------------------
    def health(self, run_uid: str) -> ScanHealthReport | None:
        """The latest health of a run, if any came."""
        with self._lock:
            return self._health.get(run_uid)

    def health_future(self, run_uid: str, projections: int | None = None, final: bool = False) -> Future:
        """Resolves with a :class:`ScanHealthReport` once the run's health covers ``projections``
        projections (or is final; ``final=True``: only then)."""
        fut: Future = Future()
        with self._lock:
            report = self._health.get(run_uid)
            if report is not None and _covers(report, projections, final):
                fut.set_result(report)
                return fut
            self._health_waiters.append((run_uid, projections, final, fut))
        return fut

    def _on_health_update(self, update: Any) -> None:
        """From the pipeline's health sink (an object with ``run_uid``, ``summary``, ``final``)."""
        self.on_health(ScanHealthReport.from_summary(update.run_uid, update.summary, update.final))

    def on_health(self, report: ScanHealthReport) -> None:
        with self._lock:
            self._health[report.run_uid] = report
            self._health.move_to_end(report.run_uid)
            while len(self._health) > self._keep:
                self._health.popitem(last=False)
            ready = [w for w in self._health_waiters
                     if w[0] == report.run_uid and _covers(report, w[1], w[2])]
            self._health_waiters = [w for w in self._health_waiters if w not in ready]
        for *_, fut in ready:
            if not fut.done():
                fut.set_result(report)
        if self.health_signals is not None:
            self.health_signals.update(report)

    def future(self, run_uid: str, kind: str = "preview") -> Future:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        key = (run_uid, kind)
        with self._lock:
            if key in self._done:
                return self._done[key]
            return self._futures.setdefault(key, Future())

    def _resolve(self, key: tuple[str, str], set_it: Callable[[Future], None]) -> None:
        with self._lock:
            fut = self._futures.pop(key, None) or Future()
            if not fut.done():
                set_it(fut)
            self._done[key] = fut
            while len(self._done) > self._keep:
                self._done.popitem(last=False)

    def _on_preview(self, update: Any) -> None:
        md = update.metadata
        result = ScanResult(update.run_uid, "preview", dict(update.slices), md.get("center"), None,
                            md.get("series"))
        self._resolve((update.run_uid, "preview"), lambda f: f.set_result(result))

    def _on_outcome(self, outcome: Any) -> None:
        key = (outcome.run_uid, "full")
        if not outcome.ok or outcome.result is None:
            error = SteeringError(f"run {outcome.run_uid[:8]}: no full reconstruction ({outcome.message})")
            self._resolve(key, lambda f: f.set_exception(error))
            return
        from ..results.tiled_results import preview_slices

        spec = outcome.spec
        series = spec.metadata.get("series") if spec is not None else None
        result = ScanResult(outcome.run_uid, "full", preview_slices(outcome.result.volume), outcome.center,
                            outcome.center_confidence, series)
        self._resolve(key, lambda f: f.set_result(result))


def wait_for_result(futures: ResultFutures, run_uid: str, kind: str = "preview", *,
                    timeout: float = 120.0) -> Plan:
    """Plan stub: wait (without blocking the event loop) for a scan's result; returns a
    :class:`ScanResult`. Raises :class:`SteeringTimeout` or :class:`SteeringError`."""
    fut = futures.future(run_uid, kind)
    if not fut.done():
        from bluesky.run_engine import WaitForTimeoutError

        try:
            yield from bps.wait_for([lambda: asyncio.wrap_future(fut)], timeout=timeout)
        except WaitForTimeoutError:
            raise SteeringTimeout(f"no {kind} result for run {run_uid[:8]} within {timeout} s") from None
    return fut.result()


def _covers(report: ScanHealthReport, projections: int | None, final: bool) -> bool:
    if report.final:
        return True
    return not final and (projections is None or report.n_projections >= projections)


def wait_for_health(futures: ResultFutures, run_uid: str, *, projections: int | None = None,
                    final: bool = False, timeout: float = 30.0) -> Plan:
    """Plan stub: the run's :class:`ScanHealthReport` once it covers ``projections`` projections
    (None: whatever came first; ``final=True``: the scan's last word), without blocking the
    RunEngine's loop. Raises :class:`SteeringTimeout` after ``timeout`` seconds."""
    fut = futures.health_future(run_uid, projections, final)
    if not fut.done():
        from bluesky.run_engine import WaitForTimeoutError

        try:
            yield from bps.wait_for([lambda: asyncio.wrap_future(fut)], timeout=timeout)
        except WaitForTimeoutError:
            what = "final health" if final else f"health of {projections} projections"
            raise SteeringTimeout(f"no {what} for run {run_uid[:8]} within {timeout} s") from None
    return fut.result()


def wait_for_metrics(futures: ResultFutures, run_uid: str, kind: str = "preview", *,
                     timeout: float = 120.0, roi: Roi = (0.25, 0.75, 0.25, 0.75),
                     user: Callable[[Mapping[str, np.ndarray]], Any] | None = None) -> Plan:
    """Plan stub: wait for a scan's result and return its :class:`SliceMetrics` (sharpness per
    slice, centre and confidence, statistics of ``roi`` on the xy slice, ``user(slices)``)."""
    result = yield from wait_for_result(futures, run_uid, kind, timeout=timeout)
    return measure(result.run_uid, result.kind, result.slices, center=result.center,
                   center_confidence=result.center_confidence, series=result.series, roi=roi, user=user)

