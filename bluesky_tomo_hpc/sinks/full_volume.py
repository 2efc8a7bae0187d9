"""Reconstruct the whole volume when a scan stops, and hand the result to a writer (Tiled).

The sink only notes where frames live while the scan runs (:mod:`.frame_store`); the
reconstruction is queued on a :class:`ReconService` thread at ``close`` so the source (and the
RunEngine behind it) is never held up. Every outcome, success or failure, is recorded in
:attr:`ReconService.outcomes`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..engine.params import ReconParams
from ..model import FrameBatch, ScanEnd, ScanSpec, path_inside
from ..results.result_claim import ResultClaimedError
from .frame_store import FrameStore, run_file_stem

log = logging.getLogger(__name__)


class VolumeMaker(Protocol):
    """Turns a finished scan's :class:`FrameStore` into a volume in ``out_dir``; returns the
    result (centre, timings, the volume as a lazily read array) and the Zarr array's path.
    ``center`` (unbinned column), when given, is used instead of the parameters' centre;
    ``fallback`` replaces an uncertain automatic one.
    The one used everywhere is :class:`bluesky_tomo_hpc.batch.volume_at_stop.VolumeAtStop`."""

    def __call__(self, store: FrameStore, params: ReconParams, out_dir: Path,
                 progress: Callable[[int, int], None] | None = None, *,
                 center: float | None = None, fallback: float | None = None) -> tuple[Any, Path]: ...


class ResultWriter(Protocol):
    """Where a finished reconstruction goes (Tiled, files...). Returns a location string."""

    def write(self, spec: ScanSpec, result: Any, *, zarr_path: Path | None = None) -> str: ...


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
    #: another process was making this result (its claim, see results.result_claim): skipped, no failure
    made_elsewhere: bool = False


def made_elsewhere(spec: ScanSpec, exc: ResultClaimedError) -> ReconOutcome:
    """The outcome of a result another process is making: an info line, not a failure."""
    log.info("full volume of run %s: %s (made by another process)", spec.run_uid, exc)
    return ReconOutcome(spec.run_uid, ok=False, message=f"made by another process: {exc}", spec=spec,
                        made_elsewhere=True)


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

    def follow_up(self, what: str, job: Callable[[], Any]) -> Future:
        """Work after an outcome (the TIFFs of a volume already in Tiled): run on the service
        thread after the jobs before it and waited for by :meth:`wait`, so a process does not end
        in the middle of it; a failure is logged (naming ``what``) and changes no outcome."""
        def wrapped() -> None:
            try:
                job()
            except Exception:  # the volume is made and registered; only this file set is missing
                log.exception("%s failed", what)

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
    """Notes where a scan's frames live while it runs; at stop, reconstructs the volume slab by
    slab into a Zarr store (never holding the scan or the volume) and hands it to the writer.

    Frames in files stay there; frames that came inside events are spilled to a scratch HDF5 in
    ``scratch_dir`` as they arrive. The scratch files are removed after a success and kept after
    a failure: the staged ``<run>.input.h5`` is a data-exchange file that ``bluesky-tomo-hpc
    recon`` reads, so a retry needs nothing else.
    """

    def __init__(
        self,
        params: ReconParams,
        service: ReconService,
        make_volume: VolumeMaker,
        writer: ResultWriter | None = None,
        progress: Callable[[int, int], None] | None = None,
        *,
        data_dir: str | Path,
        center_for: Callable[[ScanSpec, ReconParams], float | None] | None = None,
        fallback_center: Callable[[ScanSpec], float | None] | None = None,
    ):
        self.params = params
        #: a centre pinned by the scan's metadata (None: the parameters decide), asked when the job
        #: starts; the parameters (and their hash) stay those requested
        self.center_for = center_for
        self.service = service
        self.make_volume = make_volume
        self.writer = writer
        self.progress = progress
        self.data_dir = Path(data_dir)
        #: the last confident centre of the scan's detector: used when the automatic centre is
        #: uncertain (see ``engine.center.resolve_uncertain_center``)
        self.fallback_center = fallback_center
        self._store: FrameStore | None = None

    def open(self, spec: ScanSpec) -> None:
        self._store = FrameStore(spec, self.data_dir / "scratch")

    def add(self, batch: FrameBatch) -> None:
        if self._store is None:
            raise RuntimeError("FullVolumeSink.add before open")
        self._store.add(batch)

    def volume_dir(self, spec: ScanSpec) -> Path:
        """Where the volume goes: ``volumes/<run>/<params hash>/`` in the data folder."""
        return path_inside(self.data_dir / "volumes", run_file_stem(spec.run_uid), self.params.params_hash,
                           what="run uid")

    def close(self, end: ScanEnd) -> None:
        store, self._store = self._store, None
        if store is None:
            return
        if end.exit_status != "success":
            store.close_spill()
            log.warning("run %s ended %r (%s); no full reconstruction of a partial scan "
                        "(raw data is kept)", end.run_uid, end.exit_status, end.reason)
            self.service.outcomes[end.run_uid] = ReconOutcome(
                end.run_uid, ok=False, message=f"scan ended {end.exit_status!r}: not reconstructed")
            return
        params, writer, progress, make_volume = self.params, self.writer, self.progress, self.make_volume
        center_for, fallback_center, volume_dir = self.center_for, self.fallback_center, self.volume_dir

        def job() -> ReconOutcome:
            spec = store.spec
            try:
                out_dir = volume_dir(spec)
                center = center_for(spec, params) if center_for is not None else None
                fallback = fallback_center(spec) if fallback_center is not None else None
                result, zarr_path = make_volume(store, params, out_dir, progress, center=center,
                                                fallback=fallback)
                for warning in result.warnings:  # to the terminal too, not only the stored metadata
                    log.warning("run %s: %s", spec.run_uid, warning)
                location = (writer.write(spec, result, zarr_path=zarr_path) if writer is not None
                            else str(zarr_path))
            except ResultClaimedError as exc:
                store.discard()
                return made_elsewhere(spec, exc)
            except Exception as exc:  # reported in the outcome, never raised into a scan
                store.close_spill()
                kept = [str(p) for p in (store.staged_path, store.spill_path) if p.exists()]
                message = f"{type(exc).__name__}: {exc}"
                if kept:
                    message += f" (kept for a retry: {', '.join(kept)})"
                log.error("full volume of run %s failed: %s", spec.run_uid, message, exc_info=True)
                return ReconOutcome(spec.run_uid, ok=False, message=message, spec=spec)
            store.discard()
            return ReconOutcome(
                run_uid=spec.run_uid,
                ok=True,
                message="reconstructed",
                location=location,
                center=float(result.center),
                center_confidence=float(result.center_confidence),
                shape=tuple(result.volume.shape),
                timings=dict(result.timings),
                result=result,
                spec=spec,
            )

        self.service.submit(store.spec.run_uid, job)
