"""The full volume as a running sum over blocks of angles, grown while the scan runs.

Why: filtered back-projection is linear in the -log sinogram, and the Fourier method weighs every
angle alike (``pi / n_angles``, :mod:`..engine.fourier`), so the volume of a scan is the sum of
the volumes of its blocks of angles, each weighted by its share of them: ``V = sum_b (M_b / M) V_b``.
For the Fourier method the sum is kept one step earlier, as each slice pair's NUFFT grid
(:mod:`.grid_sum`): a block pays only its filtering and spreading, costs that grow with its
angles, so the blocks cost in total what one reconstruction's spreading costs, and at the stop
only the last block, one FFT per slice pair, the scaling and the writing are left. The tomostream update
``obj += R(new)`` is the same linearity, for three slices.

It holds only when each frame's -log values are final when it arrives, which is when: the centre
is known (given, pinned, or a provisional one the stop confirms), no step looks across frames or
rows of a slab (ring removal, dezinger, phase retrieval), the darks and flats do not change after
the first block (flats taken at the end are interpolated in time: every frame changes) and the
engine is the native one. :meth:`RunningVolume.usable` says why not otherwise; the full volume is
then made from the binned store at the stop, as before.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from ..engine.params import ReconParams
from ..engine.reconstruct import line_integrals
from ..engine.tomopy_engine import resolve_engine
from ..model import FrameRole, ScanData
from .binned_store import BinnedScanStore
from .grid_sum import GridSum, grid_bytes

log = logging.getLogger(__name__)

#: binned centre difference (px) between the provisional centre and the one the stop finds, below
#: which the running sum is kept: a quarter pixel shifts no edge visibly (artefacts start near 1 px)
CENTER_TOLERANCE_PX = 0.25
#: slices reconstructed per call (bounds the block's temporary slices)
SLICES_PER_CALL = 16


def not_accumulable(params: ReconParams) -> str | None:
    """Why ``params`` cannot be summed over blocks of angles (None: they can)."""
    if resolve_engine(params) != "native":
        return "the TomoPy engine is not summed block by block"
    for name, why in (("ring_removal", "ring removal filters across all angles"),
                      ("dezinger_threshold", "dezinger statistics span a slab of rows"),
                      ("phase_retrieval", "phase retrieval filters across a slab of rows")):
        if getattr(params, name) is not None:
            return why
    if params.half_acquisition == "on":
        return "a half acquisition is stitched from both half-turns"
    return None


class RunningVolume:
    """``sum_b M_b V_b`` over the blocks added so far: for the Fourier method as its NUFFT grids
    (:class:`.grid_sum.GridSum`: a block costs no FFT), for ``fbp`` as float32 slices ``(nz, n, n)``.

    ``center`` is the binned column the blocks are reconstructed at; the darks and flats are
    those of the store when the first block is added (:attr:`calibration` records which).

    A projection that arrives again with other values (a resumed scan retakes its last points)
    after it was summed is replaced in the sum: the block of differences ``-log new - -log old``
    is reconstructed and added (:meth:`replace`, queued by the ingest thread, applied by
    :meth:`apply_replacements`), so the sum keeps the last copy, as the store and the files do.
    ``claim_lock`` makes "is it summed?" and "overwrite it in the store" one step for the ingest
    thread, and "claim and read" one step for the summing one.
    """

    def __init__(self, store: BinnedScanStore, params: ReconParams, center: float, *,
                 threads: int | None = 1):
        nz, nx = store.shape
        self.store, self.params, self.center, self.threads = store, params, float(center), threads
        self.shape = (nz, nx, nx)
        self.grid = GridSum(nz, nx, params, center) if params.algorithm != "fbp" else None
        self.sum = np.zeros(self.shape, dtype=np.float32) if self.grid is None else None
        self.done: set[int] = set()
        #: indices whose frames a block has read (summed, or being summed)
        self.claimed: set[int] = set()
        self.claim_lock = threading.Lock()
        #: (indices, angles, old binned frames, new binned frames) waiting to be applied
        self.replacements: list[tuple[list[int], np.ndarray, np.ndarray, np.ndarray]] = []
        self.replaced = 0  # projections whose summed copy was replaced by a later one
        self.calibration: tuple[tuple[int, ...], tuple[int, ...]] | None = None
        self.invalid: str | None = None
        self.warnings: list[str] = []
        self.seconds = 0.0
        self._darks: np.ndarray | None = None
        self._flats: np.ndarray | None = None
        self._lock = threading.Lock()

    @staticmethod
    def nbytes(store: BinnedScanStore, params: ReconParams) -> int:
        """Bytes the sum holds (grids for the Fourier method, slices for ``fbp``)."""
        nz, nx = store.shape
        return 4 * nz * nx * nx if params.algorithm == "fbp" else grid_bytes(nz, nx)

    def _calibration_now(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        return (tuple(sorted(self.store.calibration[FrameRole.DARK])),
                tuple(sorted(self.store.calibration[FrameRole.FLAT])))

    def add_block(self, indices: list[int]) -> None:
        """Reconstruct projections ``indices`` (binned, in the store, with angles) and add them;
        indices already claimed by a block are left out (their later copies are replacements)."""
        if self.invalid:
            return
        with self.claim_lock:
            indices = [i for i in indices if i not in self.claimed]
            if not indices:
                return
            self.claimed.update(indices)
            proj = self.store.frames(indices)
        t0 = time.perf_counter()
        if self.calibration is None:
            self.calibration = self._calibration_now()
            self._darks = self.store.calibration_frames(FrameRole.DARK)
            self._flats = self.store.calibration_frames(FrameRole.FLAT)
        theta = np.array([self.store.angles[i] for i in indices], dtype=np.float64)
        proj_log = self._line_integrals(proj, theta)
        del proj
        if proj_log is not None:
            self._add(proj_log, theta)
            self.done.update(indices)
        self.seconds += time.perf_counter() - t0

    def replace(self, indices: list[int], old: np.ndarray, new: np.ndarray) -> None:
        """Projections ``indices``, summed as ``old``, arrived again as ``new`` (binned frames):
        queued for :meth:`apply_replacements`. Call holding :attr:`claim_lock`."""
        theta = np.array([self.store.angles[i] for i in indices], dtype=np.float64)
        self.replacements.append((list(indices), theta, old, new))

    def apply_replacements(self) -> None:
        """Add ``R(-log new) - R(-log old)`` of every queued replacement: the sum is linear in each
        frame's -log values, so it then holds the last copy of each projection."""
        while self.replacements and not self.invalid:
            indices, theta, old, new = self.replacements.pop(0)
            t0 = time.perf_counter()
            log_old, log_new = self._line_integrals(old, theta), self._line_integrals(new, theta)
            if log_old is not None and log_new is not None:
                log_new -= log_old
                self._add(log_new, theta)
                self.replaced += len(indices)
            self.seconds += time.perf_counter() - t0

    def remove(self, indices: list[int], block: int) -> int:
        """Take projections ``indices`` out of the sum (left out of the volume: no beam), ``block``
        frames at a time: ``-R(-log frame)`` of each summed one is added. Returns how many were."""
        summed = sorted(set(indices) & self.done)
        for k in range(0, len(summed), block):
            if self.invalid:
                break
            chunk = summed[k:k + block]
            theta = np.array([self.store.angles[i] for i in chunk], dtype=np.float64)
            proj_log = self._line_integrals(self.store.frames(chunk), theta)
            if proj_log is None:
                break
            np.negative(proj_log, out=proj_log)
            self._add(proj_log, theta)
            self.done.difference_update(chunk)
        return len(summed)

    def _line_integrals(self, proj: np.ndarray, theta: np.ndarray) -> np.ndarray | None:
        """-log values of binned frames with the first block's darks and flats (None: invalid)."""
        data = ScanData(projections=proj, theta=theta, darks=self._darks, flats=self._flats)
        warnings: list[str] = []
        proj_log = line_integrals(proj, self._flats, self._darks, data, self.params, warnings)
        if any("NaN/inf" in w for w in warnings):  # repaired from neighbouring angles of this block only
            self.invalid = "; ".join(warnings)
            return None
        self.warnings.extend(w for w in warnings if w not in self.warnings)
        return proj_log

    def _add(self, proj_log: np.ndarray, theta: np.ndarray) -> None:
        """``k * V`` of a block of ``k`` angles into the sum (the engine weighs each by pi / k)."""
        if self.grid is not None:
            with self._lock:
                self.grid.add(proj_log, theta, self.threads)
            return
        assert self.sum is not None
        block = np.empty((min(SLICES_PER_CALL, proj_log.shape[1]), *self.sum.shape[1:]), dtype=np.float32)
        for z0 in range(0, proj_log.shape[1], SLICES_PER_CALL):
            z1 = min(z0 + SLICES_PER_CALL, proj_log.shape[1])
            out = block[: z1 - z0]
            reconstruct_block(proj_log[:, z0:z1], theta, self.center, self.params, out, self.threads)
            out *= np.float32(len(theta))
            with self._lock:
                self.sum[z0:z1] += out

    def usable(self, center: float) -> str | None:
        """Why the sum cannot be the result at the stop (None: it can), for the final ``center``
        (binned) and the store as it is now."""
        if self.invalid:
            return self.invalid
        if abs(center - self.center) > CENTER_TOLERANCE_PX:
            return (f"the centre found at the stop ({center:.2f} binned px) differs from the provisional "
                    f"one ({self.center:.2f}) by more than {CENTER_TOLERANCE_PX} px")
        if self.calibration is not None and self.calibration != self._calibration_now():
            return "darks or flats arrived after the first block (taken at the end: applied to every frame)"
        return None

    def partial(self, step: int = 1) -> tuple[np.ndarray, int]:
        """The volume from the angles so far (``sum / M_so_far``), every ``step``-th voxel, and ``M``."""
        with self._lock:
            m = len(self.done)
            scale = np.float32(1.0 / max(1, m))
            if self.grid is not None:
                volume = self.grid.sampled(step)
                volume *= scale
                return volume, m
            assert self.sum is not None
            return self.sum[::step, ::step, ::step] * scale, m

    def slabs(self, slices: int) -> Iterator[tuple[int, np.ndarray]]:
        """The sum as unscaled slices, ``slices`` at a time (the stop: grids are transformed in
        place, so nothing more may be added)."""
        if self.grid is not None:
            yield from self.grid.slabs(slices, self.threads)
            return
        assert self.sum is not None
        for z0 in range(0, self.shape[0], slices):
            yield z0, self.sum[z0:z0 + slices]


def reconstruct_block(proj_log: Any, theta: np.ndarray, center: float, params: ReconParams, out: np.ndarray,
                      threads: int | None) -> None:
    """Slices of a block of angles ``proj_log (k, nz, nx)`` into ``out (nz, nx, nx)``, unmasked, on
    ``threads`` CPU threads (one while the scan runs: the live preview keeps its share)."""
    sino = proj_log.transpose(1, 0, 2)
    filt = {"filter_name": params.filter_name, "cutoff": params.filter_cutoff,
            "order": params.butterworth_order, "pad": params.pad}
    if params.algorithm == "fbp":
        from ..engine.fbp import reconstruct_fbp

        out[...] = reconstruct_fbp(sino, theta, center, **filt)
        return
    from ..engine.fourier import reconstruct_fourier

    reconstruct_fourier(sino, theta, center, out=out, threads=threads,
                        whole_square=params.circular_mask is None, **filt)


def lower_priority(niceness: int) -> None:
    """Let the calling thread yield to the source and the live preview (Linux: per thread)."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), niceness)
    except (AttributeError, OSError, PermissionError):  # pragma: no cover - other systems
        pass
