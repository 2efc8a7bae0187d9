"""Live three-slice preview: orthogonal slices updated per projection by linearity of
filtered back-projection, final at stop without any recomputation.

Why this shape: a filtered back-projection is a sum over projections, so each projection is
normalised, -log'ed, ramp-filtered along detector rows and back-projected, once, onto
  * the xy slice at row z0 (one filtered row onto an n x n grid), and
  * the xz line (y = y0) and the yz line (x = x0) of *every* row (one gather per row),
and added to three accumulators. At stop the slices only need scaling, so "final" costs a copy.

Work happens in one background thread behind a bounded queue (in bytes): ``add`` never blocks on
projections. When frames come faster than the preview absorbs them, projections that do not fit
are skipped (dark/flat frames never are), and the metadata says how many and that the preview is
degraded. Raw data is not the preview's concern: it is on disk or in the run.

The rotation centre starts as the constructor's, else ``start["tomo"]["rotation_center_hint"]``,
else what the caller remembers (the worker: the last scan's), else the detector middle. As soon
as the first projection's 0/180-degree partner is in (mid-scan on a 360-degree scan) and again at
stop, it is checked on that pair; when it was wrong, all three slices are rebuilt at the pair's
centre (:mod:`.preview_recentre`) and the metadata (``center``, ``center_source``,
``center_check``) say so; at stop that is a second final, within a second of the first.

Array backend: NumPy on a CPU; with ``device`` ``"gpu"`` (or ``"auto"`` where CuPy sees a GPU) the
frames are uploaded as they come (raw uint16), binned, normalised, filtered and back-projected on
the GPU, a whole batch of projections per gather (:meth:`PreviewSink._backproject_batch`); only
the three slices come back, at each publish. The batched gather is tested on NumPy against the
per-frame one; the CuPy run has not happened on a GPU yet (see docs).

The arithmetic (normalise, filter, back-project onto the three slices) is
:mod:`.preview_backprojection`; where updates go (TIFF/PNG files, Tiled) is :mod:`.preview_outputs`.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from ..engine.backend import choose_device, to_numpy
from ..engine.filters import padded_width
from ..engine.preprocess import bin_frames, to_binned, to_unbinned
from ..model import FrameBatch, FrameRole, ScanEnd, ScanSpec, TomoDataError
from .preview_backprojection import OrthoSliceBackprojection, SliceGeometry
from .preview_recentre import MASS_MIN_SPAN, PreviewRecentring, ProjectionStore, centre_of_mass_axis
from .preview_stream import PreviewUpdate

log = logging.getLogger(__name__)

PreviewOutput = Callable[[PreviewUpdate], None]

#: correlation peak of the mirrored 0/180 pair above which the pair's centre is trusted
PAIR_PEAK_CONFIDENT = 0.3


class PreviewSink(OrthoSliceBackprojection, PreviewRecentring):
    """A :class:`~bluesky_tomo_hpc.sinks.sink.Sink` that keeps three orthogonal slices live.

    ``outputs`` are called (from the preview thread) with each :class:`PreviewUpdate`: at most
    every ``publish_interval_s`` during the scan, and once with ``final=True`` after stop.
    ``final_budget_s`` bounds how long after ``close`` the final may wait on queued frames.
    Centre: ``center`` (fixed), else the scan's ``rotation_center_hint``, else
    ``fallback_center(spec)`` (e.g. the last scan's checked centre), else the detector middle;
    unless fixed, it is checked at stop on the 0/180-degree pair (see :meth:`_refine_center`).
    """

    def __init__(
        self,
        outputs: Iterable[PreviewOutput] = (),
        *,
        binning: int = 1,
        positions: tuple[float, float, float] = (0.5, 0.5, 0.5),
        center: float | None = None,
        fallback_center: Callable[[ScanSpec], float | None] | None = None,
        filter_name: str = "shepp",
        max_queue_bytes: int = 256 * 2**20,
        publish_interval_s: float = 0.5,
        final_budget_s: float = 0.5,
        min_transmission: float = 1e-3,
        refine_center: bool = True,
        center_tolerance_px: float = 0.5,
        max_cached_rows: int = 8192,
        max_recentre_bytes: int = 32 * 2**20,
        device: str = "auto",
        gpu_batch: int = 32,
        extra_metadata: Callable[[], dict[str, Any]] | None = None,
    ):
        if binning < 1:
            raise ValueError(f"preview binning must be >= 1, got {binning}")
        if not all(0.0 <= p <= 1.0 for p in positions):
            raise ValueError(f"preview positions are fractions in [0, 1] (z, y, x), got {positions}")
        self.outputs = list(outputs)
        #: more to say in every update's metadata (the scan's health: sinks.scan_health_sink)
        self.extra_metadata = extra_metadata
        self.binning = binning
        self.positions = tuple(positions)
        self.center_override = center
        self.fallback_center = fallback_center
        self.filter_name = filter_name
        self.max_queue_bytes = max_queue_bytes
        self.publish_interval_s = publish_interval_s
        self.final_budget_s = final_budget_s
        self.min_transmission = min_transmission
        self.refine_center = refine_center
        self.center_tolerance_px = center_tolerance_px
        self.max_cached_rows = max_cached_rows
        self.max_recentre_bytes = max_recentre_bytes
        self.xp = choose_device(device)  # numpy, or cupy on a GPU
        self.gpu_batch = gpu_batch  # projections per batched gather on the GPU
        self._cond = threading.Condition()
        self._queue: deque[FrameBatch | ScanEnd] = deque()
        self._queued_bytes = 0
        self._thread: threading.Thread | None = None
        self._final_event = threading.Event()
        self.final: PreviewUpdate | None = None
        self.latest: PreviewUpdate | None = None
        self.error: BaseException | None = None
        #: slice indices asked for from outside (the web page), applied by the preview thread
        self._wanted: dict[str, int] | None = None

    # -- Sink protocol (caller's thread: must return fast) -------------------------------
    def open(self, spec: ScanSpec) -> None:
        if self._thread is not None and self._thread.is_alive():
            raise RuntimeError(f"PreviewSink is still busy with run {self._spec.run_uid}; "
                               "use one sink per run or wait for the final")
        self._spec = spec
        self._setup(spec)
        self._final_event.clear()
        self.final = self.latest = None
        self.error = None
        self._thread = threading.Thread(target=self._loop, name=f"preview-{spec.run_uid[:8]}", daemon=True)
        self._thread.start()

    def add(self, batch: FrameBatch) -> None:
        nbytes = batch.frames.nbytes
        with self._cond:
            if batch.role is FrameRole.PROJECTION and self._queued_bytes + nbytes > self.max_queue_bytes:
                # Back-pressure: the preview skips what it cannot absorb; raw data is elsewhere.
                room = max(0, self.max_queue_bytes - self._queued_bytes) // max(1, batch.frames[0].nbytes)
                self.n_skipped += len(batch) - room
                if room == 0:
                    return
                batch = FrameBatch(batch.role, batch.indices[:room], batch.frames[:room],
                                   None if batch.angles is None else batch.angles[:room],
                                   None if batch.timestamps is None else batch.timestamps[:room],
                                   batch.run_uid, batch.origin)
                nbytes = batch.frames.nbytes
            self._queue.append(batch)
            self._queued_bytes += nbytes
            self.peak_queued_bytes = max(self.peak_queued_bytes, self._queued_bytes)
            self._cond.notify()

    def close(self, end: ScanEnd) -> None:
        with self._cond:
            self._stop_time = time.monotonic()
            self._queue.append(end)
            self._cond.notify()

    @property
    def run_uid(self) -> str | None:
        """The run this sink previews (None before its start)."""
        spec = getattr(self, "_spec", None)
        return spec.run_uid if spec is not None else None

    def move_slices(self, wanted: dict[str, int]) -> dict[str, int]:
        """Move the slices to ``wanted`` ({"xy": z, "xz": y, "yz": x} in preview voxels, any of
        them) while the scan runs: the preview thread rebuilds the moved slices from the kept
        projections (:meth:`_move_to`) and publishes at once. Returns all three indices to come;
        ``ValueError`` (one line) for an index outside the volume or a scan that has stopped."""
        with self._cond:
            if self.run_uid is None or self.stopped or self._thread is None or not self._thread.is_alive():
                raise ValueError(f"run {self.run_uid or '?'} has stopped: its slices can no longer move")
            g = self.geo
            limits = {"xy": g.nz, "xz": g.nw, "yz": g.nw}
            now = {"xy": g.z0, "xz": g.y0, "yz": g.x0, **(self._wanted or {})}
            for plane, value in wanted.items():
                if plane not in limits:
                    raise ValueError(f"unknown plane {plane!r}: xy, xz or yz")
                if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < limits[plane]:
                    raise ValueError(f"the {plane} index must be from 0 to {limits[plane] - 1} "
                                     f"for run {self.run_uid}, got {value!r}")
                now[plane] = value
            self._wanted = now
            self._cond.notify()
        return dict(now)

    @property
    def stopped(self) -> bool:
        """The scan's stop has reached this sink (its final is out or on its way)."""
        return getattr(self, "_stop_time", None) is not None

    def wait_final(self, timeout: float | None = None) -> PreviewUpdate:
        """Block until the final preview is out (for scripts and tests), or raise."""
        if not self._final_event.wait(timeout):
            raise TimeoutError(f"no final preview within {timeout} s")
        if self.error is not None:
            raise self.error
        assert self.final is not None
        return self.final

    # -- set-up ---------------------------------------------------------------------------
    def _setup(self, spec: ScanSpec) -> None:
        ny, nx = spec.frame_shape
        b = self.binning
        nz, nw = ny // b, nx // b
        if nz < 1 or nw < 4:
            raise TomoDataError(f"run {spec.run_uid}: frame {spec.frame_shape} too small for binning {b}")
        center = self.center_override
        hint_source = "argument"
        if center is None:
            tomo = spec.metadata.get("tomo", {}) if isinstance(spec.metadata, dict) else {}
            center = tomo.get("rotation_center_hint") if isinstance(tomo, dict) else None
            hint_source = "rotation_center_hint"
        if center is None and self.fallback_center is not None:
            center, hint_source = self.fallback_center(spec), "previous scan"
        if center is None:
            center, hint_source = (nx - 1) / 2.0, "detector middle"
        pz, py, px = self.positions
        self.geo = SliceGeometry(nz=nz, nw=nw, b=b, center=to_binned(float(center), b),
                             z0=min(nz - 1, int(round(pz * (nz - 1)))),
                             y0=min(nw - 1, int(round(py * (nw - 1)))),
                             x0=min(nw - 1, int(round(px * (nw - 1)))))
        self.center_source = hint_source
        self.center_full = float(center)
        n_pad = padded_width(nw)
        self._n_pad, self._left = n_pad, (n_pad - nw) // 2
        self._set_kernel()
        xp = self.xp
        m = (nw - 1) / 2.0
        g = xp.arange(nw, dtype=xp.float32) - np.float32(m)
        self._gx = g[None, :]  # columns: x
        self._gy = -g[:, None]  # rows: y, growing up the rows (engine.fbp.grid_coords, TomoPy)
        self._line_y0 = np.float32(m - self.geo.y0)
        self._line_x0 = np.float32(self.geo.x0 - m)
        self.acc_xy = xp.zeros((nw, nw), xp.float32)
        self.acc_xz = xp.zeros((nz, nw), xp.float32)
        self.acc_yz = xp.zeros((nz, nw), xp.float32)
        self._dark_sum = xp.zeros((nz, nw), xp.float64)
        self._flat_sum = xp.zeros((nz, nw), xp.float64)
        self.n_dark = self.n_flat = 0
        self.n_used = 0
        self._seen: dict[FrameRole, set[int]] = {}
        self.n_retaken = 0
        self.n_skipped = 0
        self.n_before_flat = 0
        self._provisional_flat: np.ndarray | None = None
        self._first: tuple[float, np.ndarray] | None = None
        self._opposite: tuple[float, float, np.ndarray] | None = None
        self._rows: list[np.ndarray] = []
        self._row_angles: list[float] = []
        self._store = ProjectionStore(self.max_recentre_bytes)  # a centre check or a slice move
        self._rows_z = self.geo.z0  # the row of every projection kept in _rows
        self._checked_mid_scan = False
        self._pair_in = False
        self._mass_checked = False
        self._pending_refinement = False
        self.center_check: dict[str, Any] = {}
        self.peak_queued_bytes = 0
        self._seq = 0
        self._last_publish = 0.0
        self._stop_time: float | None = None
        self._ingest_s = 0.0

    # -- the preview thread ---------------------------------------------------------------
    def _loop(self) -> None:
        try:
            while True:
                with self._cond:
                    while not self._queue and self._wanted is None:
                        self._cond.wait()
                    wanted, self._wanted = self._wanted, None
                    item = None if wanted is not None else self._queue.popleft()
                    if isinstance(item, FrameBatch):
                        self._queued_bytes -= item.frames.nbytes
                if wanted is not None:  # before the next frames, and before the stop
                    self._move_to(wanted)
                    if self.n_used:
                        self._publish(final=False)
                    continue
                if isinstance(item, ScanEnd):
                    self._finish(item)
                    return
                if (self._stop_time is not None and item.role is FrameRole.PROJECTION
                        and time.monotonic() - self._stop_time > self.final_budget_s):
                    with self._cond:  # past the latency budget: the final comes first
                        self.n_skipped += len(item)
                    continue
                t0 = time.perf_counter()
                self._ingest(item)
                self._ingest_s += time.perf_counter() - t0
                if time.monotonic() - self._last_publish >= self.publish_interval_s and self.n_used:
                    self._publish(final=False)
        except BaseException as exc:  # reported through wait_final and the log; never raised at the source
            log.exception("preview of run %s failed", getattr(self._spec, "run_uid", "?"))
            self.error = exc
            self._final_event.set()

    def _first_copies(self, batch: FrameBatch) -> FrameBatch | None:
        """The batch without indices already ingested: a point retaken after a pause would count
        twice in the sums (the full volume keeps the last copy; the preview keeps the first)."""
        seen = self._seen.setdefault(batch.role, set())
        idx = [int(i) for i in np.asarray(batch.indices).tolist()]
        keep = [k for k, i in enumerate(idx) if i not in seen]
        seen.update(idx)
        self.n_retaken += len(idx) - len(keep)
        if len(keep) == len(idx):
            return batch
        if not keep:
            return None
        pick = np.asarray(keep)
        return FrameBatch(batch.role, np.asarray(batch.indices)[pick], batch.frames[pick],
                          None if batch.angles is None else np.asarray(batch.angles)[pick],
                          None if batch.timestamps is None else np.asarray(batch.timestamps)[pick],
                          batch.run_uid, None)

    def _ingest(self, batch: FrameBatch) -> None:
        first = self._first_copies(batch)
        if first is None:
            return
        batch = first
        xp = self.xp
        # on a GPU the raw frames travel as they are (uint16: half the bytes) and bin there
        frames = bin_frames(xp.asarray(batch.frames), self.geo.b).astype(xp.float32, copy=False)
        if batch.role is FrameRole.DARK:
            self._dark_sum += frames.sum(axis=0)
            self.n_dark += len(frames)
        elif batch.role is FrameRole.FLAT:
            self._flat_sum += frames.sum(axis=0)
            self.n_flat += len(frames)
        else:
            if batch.angles is None:
                raise TomoDataError(f"run {self._spec.run_uid}: projection batch without angles "
                                    f"(indices {batch.indices[:1]}...)")
            sino = self._normalise(frames)
            if self.refine_center:
                self._keep_for_centre(sino, batch.angles)
            else:
                for p, theta in zip(sino, batch.angles, strict=True):
                    self._store.add(float(theta), p)
            filtered = self._filter_rows(sino)
            if xp is np:
                self._backproject_cpu(filtered, batch.angles)
            else:
                angles = np.asarray(batch.angles, dtype=np.float64)
                for k in range(0, len(angles), self.gpu_batch):
                    self._backproject_batch(filtered[k : k + self.gpu_batch], angles[k : k + self.gpu_batch])
            self.n_used += len(frames)
            if not self._checked_mid_scan and self.refine_center and self.center_source != "argument":
                self._centre_during_scan()

    def _keep_for_centre(self, sino: np.ndarray, angles: np.ndarray) -> None:
        """Bounded memory for the centre check at stop: the first projection, the one nearest
        180 degrees from it, and row z0 of every projection (one row each, capped)."""
        for p, theta in zip(sino, angles, strict=True):
            theta = float(theta)
            if self._first is None:
                self._first = (theta, p.copy())
            miss = abs(abs(theta - self._first[0]) - math.pi)
            if self._opposite is None or miss < self._opposite[0]:
                self._opposite = (miss, theta, p.copy())  # on the device with CuPy: no transfer
            if len(self._row_angles) < self.max_cached_rows:
                self._rows.append(p[self._rows_z].copy())
                self._row_angles.append(theta)
            self._store.add(theta, p)
            if abs(theta - self._first[0]) >= math.pi - 1e-9:
                self._pair_in = True  # the first projection's partner is in

    # -- output -----------------------------------------------------------------------------
    def snapshot(self, final: bool = False) -> PreviewUpdate:
        """The slices now, scaled to attenuation per (binned) pixel."""
        scale = np.float32(math.pi / max(1, self.n_used))  # Kak & Slaney: f = pi/K sum_k Q_k
        g = self.geo
        meta = {
            "center": self.center_full, "center_source": self.center_source,
            "detector": self._spec.detector_key, "frame_shape": list(self._spec.frame_shape),
            "center_binned": g.center, "binning": g.b, "positions": list(self.positions),
            "n_projections_used": self.n_used, "n_projections_skipped": self.n_skipped,
            "n_projections_expected": self._spec.n_projections, "n_darks": self.n_dark,
            "n_flats": self.n_flat, "n_projections_before_flat": self.n_before_flat,
            "n_frames_retaken": self.n_retaken,
            "degraded": self.n_skipped > 0, "filter": self.filter_name,
            "units": "attenuation per binned pixel", "peak_queued_bytes": self.peak_queued_bytes,
            "ingest_s": round(self._ingest_s, 3),
        }
        if self._spec.metadata.get("series"):  # a viewer steps through a series' time points
            meta["series"] = self._spec.metadata["series"]
        if self.extra_metadata is not None:
            try:
                meta.update(self.extra_metadata())
            except Exception:  # what another sink says must not stop the preview
                log.exception("extra preview metadata failed for run %s", self._spec.run_uid)
        if final:
            meta["refinement_pending"] = self._pending_refinement
            if self.center_check:
                meta["center_check"] = dict(self.center_check)
            meta["center_uncertain"] = self._center_uncertain()
        if final and self._stop_time is not None:
            meta["stop_to_final_s"] = round(time.monotonic() - self._stop_time, 4)
        return PreviewUpdate(
            run_uid=self._spec.run_uid, seq=self._seq, final=final, metadata=meta,
            slices={"xy": to_numpy(self.acc_xy * scale), "xz": to_numpy(self.acc_xz * scale),
                    "yz": to_numpy(self.acc_yz * scale)},
            indices={"xy": g.z0, "xz": g.y0, "yz": g.x0})

    def _publish(self, final: bool) -> None:
        update = self.snapshot(final=final)
        self._seq += 1
        self._last_publish = time.monotonic()
        self.latest = update
        for out in self.outputs:
            try:
                out(update)
            except Exception:  # a viewer or writer fault must not stop the preview
                log.exception("preview output %r failed for run %s", out, update.run_uid)

    def _finish(self, end: ScanEnd) -> None:
        refine = self.refine_center and self.center_source != "argument"
        self._pending_refinement = refine
        self._publish(final=True)
        self.final = self.latest
        if refine:
            # a second final always follows, so that consumers waiting for the settled result
            # (Tiled, PNG, watch --until-final) see the check's outcome in its metadata
            self._pending_refinement = False
            try:
                self._refine_center()
            except Exception as exc:  # the scan's centre stands; say why
                log.exception("centre check of run %s failed", self._spec.run_uid)
                self.center_check = {"done": False, "why": f"{type(exc).__name__}: {exc}"}
            self._publish(final=True)
            self.final = self.latest
        self._final_event.set()

    def _center_uncertain(self) -> bool:
        """Whether the slices' centre is a guess nobody confirmed: the detector middle or the
        previous scan's centre with no 0/180 pair to check it, or a pair too unlike to tell."""
        check = self.center_check
        if check.get("done"):
            return float(check["peak"]) < PAIR_PEAK_CONFIDENT
        return self.center_source in ("detector middle", "previous scan")

    def _centre_during_scan(self) -> None:
        """Move to the centre as soon as the data can give one: the 0/180 pair once the first
        projection's partner is in; before that, once, the centre of mass after two thirds of a
        half-turn (:data:`.preview_recentre.MASS_MIN_SPAN`)."""
        if self._pair_in:
            self._checked_mid_scan = True
            self._refine_center(during_scan=True)
        elif not self._mass_checked and np.ptp(self._row_angles) >= MASS_MIN_SPAN:
            self._mass_checked = True
            c = centre_of_mass_axis(to_numpy(self.xp.stack(self._rows)), np.asarray(self._row_angles))
            if c is not None and abs(c - self.geo.center) > self.center_tolerance_px:
                done = self._recentre(c, "centre of mass (during the scan)")
                self.center_check = {"done": False, "during_scan": True, "centre_of_mass": round(c, 3),
                                     **done}

    def _refine_center(self, during_scan: bool = False) -> bool:
        """The centre from the 0/180-degree pair (once the first projection's partner is in, and at
        stop); when it differs from the one used by more than ``center_tolerance_px``, all three
        slices are rebuilt at it (:meth:`_recentre`) and True is returned. ``center_check`` in the
        metadata records it (``during_scan``: the move happened while the scan ran)."""
        from ..engine.center import center_from_pair

        step = float(np.median(np.abs(np.diff(self._row_angles)))) if len(self._row_angles) > 1 else 0.0
        if (self._first is None or self._opposite is None
                or self._opposite[0] > max(math.radians(1.0), 1.01 * step)):
            if not during_scan:
                self.center_check = {"done": False, "why": "no projection pair 180 degrees apart"}
            return False
        p0, p180 = to_numpy(self._first[1]), to_numpy(self._opposite[2])
        if self._opposite[1] < self._first[0]:
            p0, p180 = p180, p0
        c_binned, peak = center_from_pair(p0, p180)
        shift = c_binned - self.geo.center
        earlier = self.center_check if self.center_check.get("during_scan") else None
        check: dict[str, Any] = {
            "done": True, "center_binned": round(float(c_binned), 3),
            "center": round(to_unbinned(float(c_binned), self.geo.b), 3), "peak": round(float(peak), 3),
            "shift_binned_px": round(float(shift), 3),
            "pair_mismatch_deg": round(math.degrees(self._opposite[0]), 4), "recomputed": []}
        if during_scan:
            check["during_scan"] = True
        elif earlier is not None and earlier.get("recomputed"):
            check["moved_during_scan"] = {k: earlier[k] for k in ("shift_binned_px", "seconds")
                                          if k in earlier}
        moved = abs(shift) > self.center_tolerance_px and peak >= 0.1
        if moved:
            source = "0/180 pair" + (" (during the scan)" if during_scan else "")
            check.update(self._recentre(c_binned, source))
        self.center_check = check
        return moved
