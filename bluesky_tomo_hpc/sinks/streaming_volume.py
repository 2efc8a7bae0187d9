"""The full volume grown while the scan runs, so that at the stop only the rest is left.

Why: the volume at stop (:class:`.full_volume.FullVolumeSink`) starts when the scan ends and reads
the whole raw scan again (21 GB at ALS size: about a minute). Here every frame is binned once as it
arrives (:mod:`.binned_store`, a scratch file a sixteenth of the raw scan at binning 4) and, while
the centre is known, blocks of angles are reconstructed and summed as they complete
(:mod:`.running_volume`) on one low-priority thread, so the live preview keeps its share of the
CPU. At the stop the service thread confirms the centre (found from the binned store, as the batch
program finds it), reconstructs the last block, scales and writes the Zarr volume and hands it to
Tiled: seconds instead of a minute; the TIFF slices follow on the same thread, from the Zarr
volume (:meth:`.full_volume.ReconService.follow_up`), off the path from the stop to Tiled.
Frames that arrive out of order or late are summed in the block they arrive in (the sum does not
depend on the order); a projection sent again with other values (a resumed scan) replaces its
first copy in the sum. When the sum cannot be used (darks or flats taken at the end, another
centre...) the volume is made from the binned store, still without reading the raw scan.

While the scan runs, ``partial(spec, volume, n_angles)`` (when given) receives the volume from
the angles so far every ``partial_every_s`` seconds: a limited-angle volume, marked partial by
whoever shows it. Outcomes go to the same :class:`.full_volume.ReconService` as the volume at stop.
"""

from __future__ import annotations

import importlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..engine.params import ReconParams
from ..engine.preprocess import to_binned, to_unbinned
from ..engine.scan_health_report import spoiled_projections
from ..model import FrameBatch, FrameRole, ScanEnd, ScanSpec, path_inside
from ..results.provenance import CenterChoice
from ..results.result_claim import ResultClaimedError
from ..results.volume_files import tiffs_after
from .binned_store import BinnedScanStore
from .frame_store import run_file_stem
from .full_volume import ReconOutcome, ReconService, ResultWriter, made_elsewhere
from .running_volume import RunningVolume, lower_priority, not_accumulable
from .streamed_result import (
    half_acquisition,
    slabs_from_store,
    slabs_from_sum,
    stop_center,
    voxel_size_um,
    write_volume,
)

log = logging.getLogger(__name__)

#: projections per block summed while the scan runs; near the planned end, END_BLOCK (the last
#: block is what is left at the stop)
BLOCK = 128
END_BLOCK = 32
#: raw bytes of frames waiting to be binned before ``add`` waits (back-pressure, never a drop); at
#: most an eighth of the memory budget
QUEUE_BYTES = 256 * 2**20
#: the partial volume is sub-sampled to about this many voxels a side (a look, not a result), and
#: published at most every PARTIAL_EVERY_S seconds
PARTIAL_SIZE = 160
PARTIAL_EVERY_S = 20.0
_DONE = object()
#: modules the result writers import on first use
WRITER_MODULES = ("zarr", "ome_zarr.writer", "tifffile", "matplotlib.backends.backend_agg",
                  "matplotlib.figure")


def summing_bytes(store: BinnedScanStore, params: ReconParams) -> int:
    """Bytes summing holds: the sum, and a block of binned frames with its -log copy."""
    nz, nx = store.shape
    return RunningVolume.nbytes(store, params) + 2 * BLOCK * nz * nx * 4


def warm_imports() -> None:
    """Import what the stop writes with (seconds on a busy host: OME-Zarr alone took 7 s at load 8)
    while the scan runs, so the stop does not pay for it."""
    for name in WRITER_MODULES:
        try:
            importlib.import_module(name)
        except ImportError:  # the writer names what is missing, at the stop
            pass


class StreamingVolumeSink:
    """A :class:`~.sink.Sink`: bins frames into a scratch store and sums blocks while the scan runs;
    at ``close`` the service thread finishes the volume and hands it to ``writer`` (Tiled)."""

    def __init__(
        self, params: ReconParams, service: ReconService, writer: ResultWriter | None = None,
        progress: Callable[[int, int], None] | None = None, *, data_dir: str | Path, budget: int,
        center_for: Callable[[ScanSpec, ReconParams], float | None] | None = None,
        fallback_center: Callable[[ScanSpec], float | None] | None = None,
        partial: Callable[[ScanSpec, Any, int], None] | None = None, partial_every_s: float | None = None,
        tiff: bool = True,
    ):
        self.params, self.service, self.writer, self.progress = params, service, writer, progress
        self.data_dir, self.budget, self.tiff = Path(data_dir), int(budget), tiff
        self.center_for, self.fallback_center = center_for, fallback_center
        self.partial = partial
        self.partial_every_s = PARTIAL_EVERY_S if partial_every_s is None else partial_every_s
        self._run: _StreamedRun | None = None

    def open(self, spec: ScanSpec) -> None:
        self._run = _StreamedRun(self, spec)

    def add(self, batch: FrameBatch) -> None:
        if self._run is None:
            raise RuntimeError("StreamingVolumeSink.add before open")
        self._run.put(batch)

    def volume_dir(self, spec: ScanSpec) -> Path:
        """``volumes/<run>/<params hash>/`` in the data folder, as the volume at stop."""
        return path_inside(self.data_dir / "volumes", run_file_stem(spec.run_uid), self.params.params_hash,
                           what="run uid")

    def provisional_center(self, spec: ScanSpec) -> float | None:
        """The unbinned centre to sum blocks at before the stop can find one: the parameters', the
        scan's pinned one, its detector's last, or the scan's ``rotation_center_hint``."""
        if self.params.center != "auto":
            return float(self.params.center)
        for ask in (self.center_for and (lambda: self.center_for(spec, self.params)),
                    self.fallback_center and (lambda: self.fallback_center(spec))):
            value = ask() if ask else None
            if value is not None:
                return float(value)
        tomo = spec.metadata.get("tomo") if isinstance(spec.metadata, dict) else None
        hint = tomo.get("rotation_center_hint") if isinstance(tomo, dict) else None
        return float(hint) if isinstance(hint, int | float) and not isinstance(hint, bool) else None

    def close(self, end: ScanEnd) -> None:
        run, self._run = self._run, None
        if run is None:
            return
        if end.exit_status != "success":
            run.stop()
            run.store.discard()
            log.warning("run %s ended %r (%s); no full reconstruction of a partial scan (raw data is kept)",
                        end.run_uid, end.exit_status, end.reason)
            self.service.outcomes[end.run_uid] = ReconOutcome(
                end.run_uid, ok=False, message=f"scan ended {end.exit_status!r}: not reconstructed")
            return
        self.service.submit(run.spec.run_uid, run.finish)


class _StreamedRun:
    """One scan: the ingest thread (bin, store) and the summing thread (blocks of angles)."""

    def __init__(self, sink: StreamingVolumeSink, spec: ScanSpec):
        self.sink, self.spec, self.params = sink, spec, sink.params
        self.store = BinnedScanStore(spec, self.params.binning, sink.data_dir / "scratch")
        self.running: RunningVolume | None = None
        self.not_summed = not_accumulable(self.params)
        center = sink.provisional_center(spec)
        if self.not_summed is None and center is None:
            self.not_summed = "no centre is known before the stop (none given, pinned, remembered or hinted)"
        elif (self.not_summed is None
              and (need := summing_bytes(self.store, self.params)) > sink.budget // 2):
            self.not_summed = (f"the running sum ({need / 2**30:.1f} GiB) does not "
                               f"fit half the memory budget ({sink.budget / 2**30:.1f} GiB)")
        if self.not_summed is None:
            center_b = to_binned(float(center), self.params.binning)
            self.running = RunningVolume(self.store, self.params, center_b)
        self.pending: list[int] = []
        self.error: BaseException | None = None
        self._queue: queue.Queue = queue.Queue()
        self._queued_bytes = 0
        self._queue_limit = min(QUEUE_BYTES, sink.budget // 8)
        self._room = threading.Condition()
        self._work = threading.Condition()
        self._ingest_done = False
        self._stopping = False
        self._last_partial = time.monotonic()
        self._ingest = threading.Thread(target=self._ingest_loop, name="volume-ingest", daemon=True)
        self._summer = threading.Thread(target=self._sum_loop, name="volume-sum", daemon=True)
        threading.Thread(target=warm_imports, name="volume-imports", daemon=True).start()
        self._ingest.start()
        if self.running is not None:
            self._summer.start()

    # -- source thread ----------------------------------------------------------------------
    def put(self, batch: FrameBatch) -> None:
        """Queue ``batch`` for binning; waits while QUEUE_BYTES of frames are queued (never drops)."""
        size = int(getattr(batch.frames, "nbytes", 0))
        with self._room:
            self._room.wait_for(lambda: self._queued_bytes < self._queue_limit or self.error is not None)
            self._queued_bytes += size
        self._queue.put((batch, size))

    # -- ingest thread ----------------------------------------------------------------------
    def _ingest_loop(self) -> None:
        while (item := self._queue.get()) is not _DONE:
            batch, size = item
            try:
                if self.error is None:
                    self._ingest_one(batch)
            except Exception as exc:  # reported at the stop, never raised into the source
                log.exception("binning frames of run %s failed", self.spec.run_uid)
                self.error = exc
            with self._room:
                self._queued_bytes -= size
                self._room.notify_all()
        with self._work:
            self._ingest_done = True
            self._work.notify_all()

    def _ingest_one(self, batch: FrameBatch) -> None:
        running = self.running
        if running is None or FrameRole(batch.role) is not FrameRole.PROJECTION:
            written = self.store.add(batch)
        else:  # a resumed scan sends frames again: the sum takes the last copy, as the files do
            with running.claim_lock:
                repeats = sorted({int(i) for i in batch.indices} & running.claimed)
                before = self.store.frames(repeats) if repeats else None
                written = self.store.add(batch)
                if repeats:
                    after = self.store.frames(repeats)
                    changed = [k for k in range(len(repeats)) if not np.array_equal(before[k], after[k])]
                    if changed:
                        running.replace([repeats[k] for k in changed], before[changed], after[changed])
            written = [i for i in written if i not in repeats]
        with self._work:  # calibration frames or replacements may be what the summing thread waits for
            self.pending.extend(i for i in written if i in self.store.angles)
            self._work.notify_all()

    # -- summing thread ---------------------------------------------------------------------
    def _block_size(self) -> int:
        n = self.spec.n_projections
        return END_BLOCK if n and len(self.store.slots) + 2 * BLOCK >= n else BLOCK

    def _sum_loop(self) -> None:
        lower_priority(10)
        running = self.running
        assert running is not None
        while True:
            with self._work:
                self._work.wait_for(lambda: self._stopping or self._ingest_done or running.invalid
                                    or running.replacements
                                    or (len(self.pending) >= self._block_size() and self._calibrated()))
                if self._stopping or self._ingest_done or running.invalid:
                    return  # the rest is the stop's (with every core)
                block = []
                if len(self.pending) >= self._block_size() and self._calibrated():
                    block, self.pending = self.pending, []
            try:
                running.apply_replacements()
                running.add_block(sorted(set(block)))
                self._maybe_partial(running)
            except Exception as exc:
                log.exception("summing a block of run %s failed; the volume is made at the stop",
                              self.spec.run_uid)
                running.invalid = f"{type(exc).__name__}: {exc}"
                return

    def _calibrated(self) -> bool:
        cal = self.store.calibration
        return bool(cal[FrameRole.DARK]) and bool(cal[FrameRole.FLAT])

    def _maybe_partial(self, running: RunningVolume) -> None:
        if self.sink.partial is None or time.monotonic() - self._last_partial < self.sink.partial_every_s:
            return
        self._last_partial = time.monotonic()
        volume, m = running.partial(step=max(1, running.shape[-1] // PARTIAL_SIZE))
        try:
            self.sink.partial(self.spec, volume, m)
        except Exception:  # a viewer's trouble never stops the volume
            log.exception("publishing the partial volume of run %s failed", self.spec.run_uid)

    # -- stop -------------------------------------------------------------------------------
    def stop(self) -> None:
        """End both threads (the scan stopped): the queue is drained first."""
        self._queue.put(_DONE)
        self._ingest.join()
        with self._work:
            self._stopping = True
            self._work.notify_all()
        if self._summer.is_alive():
            self._summer.join()

    def _finish_sum(self, running: RunningVolume, timings: dict[str, float]) -> str | None:
        """The stop's share of the sum, with every core: replacements, the projections left out
        (no beam) taken out again, the angles left added BLOCK at a time (bounded memory, whatever
        the summing thread could not do). Returns why the sum cannot be used (None: it can)."""
        running.threads = None
        running.apply_replacements()
        running.remove(sorted(self.store.excluded), BLOCK)
        left = [i for i in self.store.order() if i not in running.claimed]
        timings["angles_left_at_stop"] = len(left)
        for k in range(0, len(left), BLOCK):
            running.add_block(left[k:k + BLOCK])
        return running.invalid

    def finish(self) -> ReconOutcome:
        """The service thread: drain, confirm the centre, finish the sum (or use the store), write."""
        t0, cpu0 = time.perf_counter(), time.process_time()
        spec, params, sink, store = self.spec, self.params, self.sink, self.store
        timings: dict[str, float] = {}
        try:
            self.stop()
            timings["drain"] = time.perf_counter() - t0
            if self.error is not None:
                raise self.error
            store.check()
            store.excluded = frozenset(spoiled_projections(spec, len(store.slots)))
            given = sink.center_for(spec, params) if sink.center_for is not None else None
            fallback = sink.fallback_center(spec) if sink.fallback_center is not None else None
            t = time.perf_counter()
            center = stop_center(store, params, given, fallback)
            timings["center"] = time.perf_counter() - t
            center_b = to_binned(center.value, store.binning)
            running, warnings = self.running, []
            why = self.not_summed if running is None else running.usable(center_b)
            if why is None and half_acquisition(store, params, center_b):
                why = "a half acquisition is stitched from both half-turns"
            t = time.perf_counter()
            if running is not None and why is None:
                why = self._finish_sum(running, timings)
            timings["last_block"] = time.perf_counter() - t
            if running is not None and why is None:
                warnings = list(running.warnings)
                how = {"summed": True, "blocks_seconds": round(running.seconds, 3),
                       "replaced_projections": running.replaced,
                       "provisional_center": running.center, "center_used_binned": running.center}
                if center_b != running.center:  # summed at the provisional centre: the result says so
                    center = CenterChoice(to_unbinned(running.center, store.binning), center.confidence,
                                          center.method, {**center.details, "found": center.value})
                slabs = slabs_from_sum(running, len(store.order()), params)
            else:
                running = self.running = None  # frees the sum before the slabs are made
                how = {"summed": False, "why": why}
                slabs = slabs_from_store(store, params, center_b, warnings, sink.budget)
            if store.excluded:
                how["excluded_projections"] = sorted(store.excluded)
            if sink.tiff:
                how["tiff"] = "written after the volume was registered"
            result_dir = sink.volume_dir(spec) / "result"
            result, zarr_path = write_volume(
                spec, store, params, result_dir, center, slabs, how=how,
                warnings=warnings, timings=timings, progress=sink.progress, tiff=False)
            t = time.perf_counter()
            location = (sink.writer.write(spec, result, zarr_path=zarr_path) if sink.writer is not None
                        else str(zarr_path))
            result.timings["result_writer"] = time.perf_counter() - t
            if sink.tiff:  # off the stop's path: the volume is looked at in Tiled first
                voxel, b = voxel_size_um(spec, store.binning), store.binning
                sink.service.follow_up(
                    f"the TIFF slices of run {spec.run_uid}'s streamed volume",
                    lambda: tiffs_after(result_dir, first_row=0, row_step=b, voxel_size_um=voxel))
        except ResultClaimedError as exc:
            store.discard()
            return made_elsewhere(spec, exc)
        except Exception as exc:  # reported in the outcome, never raised into a scan
            message = f"{type(exc).__name__}: {exc}"
            log.error("streamed full volume of run %s failed: %s", spec.run_uid, message, exc_info=True)
            store.discard()
            return ReconOutcome(spec.run_uid, ok=False, message=message, spec=spec)
        store.discard()
        self.running = None
        result.timings["total"] = time.perf_counter() - t0
        # the process's CPU seconds since the stop (every thread): on a shared host, what the stop costs
        result.timings["cpu_total"] = time.process_time() - cpu0
        note = "" if how["summed"] else f"; not summed: {how['why']}"
        return ReconOutcome(
            run_uid=spec.run_uid, ok=True, message="reconstructed (streamed)" + note,
            location=location, center=float(result.center), center_confidence=float(result.center_confidence),
            shape=tuple(result.volume.shape), timings=dict(result.timings), result=result, spec=spec)
