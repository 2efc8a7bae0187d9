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
    """Futures of the previews and reconstructions of a :class:`TomoPipeline` (or anything with
    ``service.listeners`` and ``preview_listeners``); results that arrive before anyone asks are
    kept (the last ``keep`` of each kind)."""

    def __init__(self, pipeline: Any, keep: int = 64):
        self._lock = threading.Lock()
        self._futures: dict[tuple[str, str], Future] = {}
        self._done: OrderedDict[tuple[str, str], Future] = OrderedDict()
        self._keep = keep
        pipeline.service.listeners.append(self._on_outcome)
        pipeline.preview_listeners.append(self._on_preview)

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


def wait_for_metrics(futures: ResultFutures, run_uid: str, kind: str = "preview", *,
                     timeout: float = 120.0, roi: Roi = (0.25, 0.75, 0.25, 0.75),
                     user: Callable[[Mapping[str, np.ndarray]], Any] | None = None) -> Plan:
    """Plan stub: wait for a scan's result and return its :class:`SliceMetrics` (sharpness per
    slice, centre and confidence, statistics of ``roi`` on the xy slice, ``user(slices)``)."""
    result = yield from wait_for_result(futures, run_uid, kind, timeout=timeout)
    return measure(result.run_uid, result.kind, result.slices, center=result.center,
                   center_confidence=result.center_confidence, series=result.series, roi=roi, user=user)

