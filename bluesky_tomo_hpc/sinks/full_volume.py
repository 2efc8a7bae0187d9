"""Reconstruct the whole volume when a scan stops, and hand the result to a writer (Tiled).

The sink only collects frames while the scan runs; the reconstruction is queued on a
:class:`ReconService` thread at ``close`` so the source (and the RunEngine behind it) is never
held up. Every outcome, success or failure, is recorded in :attr:`ReconService.outcomes`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..engine.params import ReconParams
from ..model import FrameBatch, ScanEnd, ScanSpec
from .accumulate import FrameAccumulator

log = logging.getLogger(__name__)


class ResultWriter(Protocol):
    """Where a finished reconstruction goes (Tiled, files...). Returns a location string."""

    def write(self, spec: ScanSpec, result: Any) -> str: ...


@dataclass
class ReconOutcome:
    """What happened to one scan's reconstruction: for logs, the demo and tests."""

    run_uid: str
    ok: bool
    message: str = ""
    location: str = ""
    center: float | None = None
    center_confidence: float | None = None
    shape: tuple[int, ...] = ()
    seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)
    result: Any = None
    spec: ScanSpec | None = None


class ReconService:
    """One background thread that runs reconstructions one after another."""

    def __init__(self, max_workers: int = 1):
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="tomo-recon")
        self._futures: list[Future] = []
        self._lock = threading.Lock()
        self.outcomes: dict[str, ReconOutcome] = {}
        self.listeners: list[Callable[[ReconOutcome], None]] = []

    def submit(self, run_uid: str, job: Callable[[], ReconOutcome]) -> Future:
        def wrapped() -> ReconOutcome:
            t0 = time.perf_counter()
            try:
                outcome = job()
            except Exception as exc:  # reported, never raised into a scan
                log.exception("reconstruction of run %s failed", run_uid)
                outcome = ReconOutcome(run_uid, ok=False, message=f"{type(exc).__name__}: {exc}")
            outcome.seconds = time.perf_counter() - t0
            with self._lock:
                self.outcomes[run_uid] = outcome
            for listener in list(self.listeners):
                try:
                    listener(outcome)
                except Exception:
                    log.exception("reconstruction listener failed")
            return outcome

        fut = self._pool.submit(wrapped)
        with self._lock:
            self._futures.append(fut)
        return fut

    def wait(self, timeout: float | None = None) -> bool:
        """Block until every submitted reconstruction finished; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._lock:
                pending = [f for f in self._futures if not f.done()]
            if not pending:
                return True
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return False
            try:
                pending[0].result(timeout=remaining)
            except Exception:
                pass

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True)


class FullVolumeSink:
    """Collects a scan's frames; at stop, reconstructs the volume and writes it."""

    def __init__(
        self,
        params: ReconParams,
        service: ReconService,
        writer: ResultWriter | None = None,
        progress: Callable[[int, int], None] | None = None,
        center_for: Callable[[ScanSpec, ReconParams], float | None] | None = None,
        fallback_center: Callable[[ScanSpec], float | None] | None = None,
    ):
        self.params = params
        #: a centre pinned by the scan's metadata (None: the parameters decide), asked when the job
        #: starts; the parameters (and their hash) stay those requested
        self.center_for = center_for
        self.service = service
        self.writer = writer
        self.progress = progress
        #: the last confident centre of the scan's detector: used when the automatic centre is
        #: uncertain (see ``engine.center.resolve_uncertain_center``)
        self.fallback_center = fallback_center
        self._acc: FrameAccumulator | None = None

    def open(self, spec: ScanSpec) -> None:
        self._acc = FrameAccumulator(spec)

    def add(self, batch: FrameBatch) -> None:
        if self._acc is None:
            raise RuntimeError("FullVolumeSink.add before open")
        self._acc.add(batch)

    def close(self, end: ScanEnd) -> None:
        acc, self._acc = self._acc, None
        if acc is None:
            return
        if end.exit_status != "success":
            log.warning("run %s ended %r (%s); no full reconstruction of a partial scan "
                        "(raw data is kept)", end.run_uid, end.exit_status, end.reason)
            self.service.outcomes[end.run_uid] = ReconOutcome(
                end.run_uid, ok=False, message=f"scan ended {end.exit_status!r}: not reconstructed")
            return
        params, writer, progress, center_for = self.params, self.writer, self.progress, self.center_for

        def job() -> ReconOutcome:
            from ..engine.reconstruct import reconstruct_scan

            data = acc.assemble()
            center = center_for(acc.spec, params) if center_for is not None else None
            fallback = self.fallback_center(acc.spec) if self.fallback_center is not None else None
            result = reconstruct_scan(data, params, center=center, fallback=fallback, progress=progress)
            for warning in result.warnings:  # to the terminal too, not only the stored metadata
                log.warning("run %s: %s", acc.spec.run_uid, warning)
            location = writer.write(acc.spec, result) if writer is not None else ""
            return ReconOutcome(
                run_uid=acc.spec.run_uid,
                ok=True,
                message="reconstructed",
                location=location,
                center=float(result.center),
                center_confidence=float(result.center_confidence),
                shape=tuple(result.volume.shape),
                timings=dict(result.timings),
                result=result,
                spec=acc.spec,
            )

        self.service.submit(acc.spec.run_uid, job)
