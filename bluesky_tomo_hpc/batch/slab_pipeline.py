"""One rank's work: read -> preprocess -> reconstruct -> write, in slabs, overlapped in threads.

Why threads: on a small node the reconstruction keeps the cores busy while reading HDF5 and
writing Zarr/TIFF mostly wait on the disk (and NumPy, h5py and the writers release the GIL). A
reader thread reads and normalises slab ``i + 1`` while slab ``i`` is reconstructed and a writer
thread writes slab ``i - 1``; the queues between them hold one slab each, so memory stays within
:func:`slab_bytes_per_row` x rows x the slabs in flight (what :func:`slab_rows` sizes from the
budget). The NUFFT plan is built once per rank and reused by every slab.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..engine.backend import cpu_threads
from ..engine.fourier import plan_bytes
from ..engine.memory import rows_per_slab
from ..engine.params import ReconParams

log = logging.getLogger(__name__)

#: default slab size in slices when the budget allows more: small enough that reading and writing
#: overlap with compute from the second slab on, large enough that per-slab costs stay small
DEFAULT_SLAB_SLICES = 16
#: slabs alive at once per unit of the model below: reader's working copy, one queued, one computing
_INPUT_SLABS, _OUTPUT_SLABS = 3, 3


#: memory a rank holds besides its slabs and its plan: Zarr/asyncio and h5py buffers, FFT caches,
#: per-thread malloc arenas. Measured as VmHWM above an idle interpreter with the same imports
#: (recon FILE, 180 x 96 x 768, slabs of 1-8 rows: 213-230 MiB in all, ~160 MiB of it fixed at
#: one row). 96 MiB here fell 22 MiB short: that figure was read from ru_maxrss, which in a child
#: process also counts its parent's peak.
FIXED_OVERHEAD_BYTES = 160 * 2**20


def slab_bytes_per_row(n_projections: int, n_columns: int, binning: int) -> tuple[int, int]:
    """``(bytes per unbinned detector row, fixed bytes)`` of one rank's pipeline.

    Per row in flight: the raw uint16 frames (2 B/pixel) and float32 working copies while one slab
    is normalised, one prepared slab queued and one being reconstructed (4 B per binned pixel
    each, 2 copies while preparing), three slabs of output slices (computing, queued, writing),
    and the engine's input and output per slice (the line integrals and the float32 slice:
    ``4 B x angles x columns + 4 B x columns^2``; counted for every row, though the engine works
    on at most ``chunk_slices`` of them at once; its padded rows, spectra and complex grids are
    per worker, in the plan). Fixed:
    :data:`FIXED_OVERHEAD_BYTES` and the NUFFT plan with one worker per CPU this rank may use
    (:func:`~bluesky_tomo_hpc.engine.fourier.plan_bytes`: its grids, sort indices and spectra
    grow with the threads, ~0.25 GB each at 1969 x 2560).
    """
    p, n, b = int(n_projections), int(n_columns), max(1, int(binning))
    nb = n // b
    per_slice_scratch = 4 * p * nb + 4 * nb * nb
    per_row = (2 * p * n + (4 * p * nb * (_INPUT_SLABS + 1)) // b + (4 * nb * nb * _OUTPUT_SLABS) // b
               + per_slice_scratch // b)
    return per_row, FIXED_OVERHEAD_BYTES + plan_bytes(nb, p, cpu_threads())


def slab_rows(
    budget: int, n_projections: int, n_columns: int, binning: int, *, chunk_slices: int = 1,
    cap_slices: int | None = DEFAULT_SLAB_SLICES,
) -> int:
    """Unbinned detector rows per slab for ``budget`` bytes: a multiple of ``binning``, and of
    ``chunk_slices`` slices when the budget allows one chunk (so slabs write whole Zarr chunks).

    Raises :class:`~bluesky_tomo_hpc.engine.memory.MemoryBudgetError` naming the minimum when not
    even one slice fits.
    """
    per_row, fixed = slab_bytes_per_row(n_projections, n_columns, binning)
    rows = rows_per_slab(budget, per_row, fixed_bytes=fixed, minimum_rows=binning,
                         what="slab (one reconstructed slice)")
    slices = rows // binning
    if cap_slices:
        slices = min(slices, max(cap_slices, chunk_slices))
    if slices >= chunk_slices:
        slices -= slices % chunk_slices
    return max(1, slices) * binning


@dataclass
class RankReport:
    """What one rank did: per-stage seconds (summed over slabs), warnings, the engine used."""

    timings: dict[str, float] = field(default_factory=lambda: {"read": 0.0, "preprocess": 0.0,
                                                                "reconstruct": 0.0, "write": 0.0})
    warnings: list[str] = field(default_factory=list)
    engine: str = "native"
    slabs: int = 0


_DONE = object()


class _Stage(threading.Thread):
    """A daemon thread running ``body``; its exception is kept for the main thread to raise."""

    def __init__(self, name: str, body: Callable[[], None], stop: threading.Event):
        super().__init__(name=name, daemon=True)
        self._body, self._stop_event, self.error = body, stop, None

    def run(self) -> None:
        try:
            self._body()
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            self.error = exc
            self._stop_event.set()


def _put(q: queue.Queue, item: Any, stop: threading.Event) -> bool:
    """Put unless the pipeline is stopping; False when it stopped."""
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def _get(q: queue.Queue, stop: threading.Event) -> Any:
    while True:
        try:
            return q.get(timeout=0.1)
        except queue.Empty:
            if stop.is_set():
                return _DONE


def slab_ranges(r0: int, r1: int, rows: int) -> Iterator[tuple[int, int]]:
    """``[a, b)`` unbinned row ranges of ``rows`` (the last may be shorter) covering ``[r0, r1)``."""
    for a in range(r0, r1, rows):
        yield a, min(a + rows, r1)


def reconstruct_rows(
    input_path: str | Path,
    params: ReconParams,
    rows: tuple[int, int],
    center: float,
    write: Callable[[int, np.ndarray], None],
    *,
    slab: int,
    z_offset: int = 0,
    progress: Callable[[int], None] | None = None,
) -> RankReport:
    """Reconstruct unbinned detector rows ``rows`` of ``input_path`` at ``center`` (unbinned
    column) in slabs of ``slab`` rows, calling ``write(z, slices)`` on a writer thread with
    ``z`` = the slab's first slice + ``z_offset``. ``progress(slices)`` after each slab written."""
    from ..engine.halfturn import is_half_acquisition, stitch_half_acquisition
    from ..engine.reconstruct import (
        make_chunk_reconstructor,
        preprocess_projections,
        reconstruct_prepared,
        to_binned,
    )
    from ..engine.tomopy_engine import resolve_engine
    from ..sources.raw_files import load_scan

    b = params.binning
    report = RankReport(engine=resolve_engine(params))
    params = params.with_updates(rows=None)
    stop = threading.Event()
    prepared: queue.Queue = queue.Queue(maxsize=1)
    finished: queue.Queue = queue.Queue(maxsize=1)

    def read_and_prepare() -> None:
        for a, z in ((a, (a - rows[0]) // b) for a, _ in slab_ranges(*rows, slab)):
            t = time.perf_counter()
            data = load_scan(input_path, rows=(a, min(a + slab, rows[1])), binning=1)
            t1 = time.perf_counter()
            proj_log, theta, warnings = preprocess_projections(data, params)
            report.timings["read"] += t1 - t
            report.timings["preprocess"] += time.perf_counter() - t1
            del data
            if not _put(prepared, (z, proj_log, theta, warnings), stop):
                return
        _put(prepared, _DONE, stop)

    def write_slabs() -> None:
        while (item := _get(finished, stop)) is not _DONE:
            z, vol = item
            t = time.perf_counter()
            write(z + z_offset, vol)
            report.timings["write"] += time.perf_counter() - t
            if progress is not None:
                progress(vol.shape[0])

    reader = _Stage("slab-reader", read_and_prepare, stop)
    writer = _Stage("slab-writer", write_slabs, stop)
    reader.start()
    writer.start()
    recon = None
    try:
        while (item := _get(prepared, stop)) is not _DONE:
            z, proj_log, theta, warnings = item
            t = time.perf_counter()
            c_b = to_binned(center, b)
            if is_half_acquisition(c_b, proj_log.shape[2], theta, params.half_acquisition):
                proj_log, theta, c_b = stitch_half_acquisition(proj_log, theta, c_b)  # offset axis
            if recon is None:  # one plan for every slab: same angles, centre and width
                recon = make_chunk_reconstructor(np.asarray(theta, dtype=np.float64), c_b,
                                                 proj_log.shape[2], params, engine=report.engine)
            vol = reconstruct_prepared(proj_log, theta, c_b, params, recon=recon)
            del proj_log
            report.timings["reconstruct"] += time.perf_counter() - t
            report.warnings.extend(w for w in warnings if w not in report.warnings)
            report.slabs += 1
            if not _put(finished, (z, vol), stop):
                break
        _put(finished, _DONE, stop)
    except BaseException:
        stop.set()
        raise
    finally:
        for stage in (reader, writer):
            stage.join(timeout=None if stage is writer else 60)
    for stage in (reader, writer):
        if stage.error is not None:
            raise stage.error
    return report
