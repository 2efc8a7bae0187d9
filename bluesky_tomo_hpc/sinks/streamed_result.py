"""The stop of a streamed full volume: the centre, the remaining slices, the result folder.

Why its own module: the streaming sink (:mod:`.streaming_volume`) decides *when*; this decides
*what* is written, the same way the batch program does (:mod:`bluesky_tomo_hpc.batch.batch_program`):
the centre from the same middle rows, slices masked alike, one OME-Zarr result folder with its
provenance, renamed into place only when whole (its TIFF slices are written later, from the Zarr
volume: :func:`~..results.volume_files.tiffs_after`). The slices come either from the running sum
(:class:`.running_volume.RunningVolume`) or, when that cannot be used, from the binned store slab
by slab, exactly as the raw-file path computes them.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..engine.backend import cpu_threads
from ..engine.center import resolve_uncertain_center
from ..engine.fourier import plan_bytes
from ..engine.halfturn import is_half_acquisition, output_width, stitch_half_acquisition
from ..engine.memory import rows_per_slab
from ..engine.params import ReconParams
from ..engine.preprocess import circular_mask, to_binned, to_unbinned
from ..engine.reconstruct import (
    ReconResult,
    center_summary,
    find_center,
    make_chunk_reconstructor,
    preprocess_projections,
    reconstruct_prepared,
    with_half_acquisition_hint,
)
from ..engine.tomopy_engine import resolve_engine
from ..model import ScanSpec, TomoDataError
from ..results.provenance import CenterChoice, provenance_record
from ..results.volume_files import VolumeWriter
from .binned_store import BinnedScanStore
from .running_volume import RunningVolume

#: detector rows (x binning) the centre is found from, in the middle: as the batch program does
CENTER_ROWS = 8
#: slices per slab when the volume is made from the binned store
STORE_SLAB_SLICES = 16
#: result folder layout, as ``JobOutputs``' defaults
CHUNK_Z, LEVELS = 8, 3

Slabs = Iterator[tuple[int, np.ndarray]]


def stop_center(store: BinnedScanStore, params: ReconParams, given: float | None,
                fallback: float | None) -> CenterChoice:
    """The centre (unbinned column): ``given`` (pinned or in the parameters), else found from a
    few binned rows in the middle, as the batch program finds it (uncertain: ``fallback``)."""
    if given is not None:
        return CenterChoice(float(given), 1.0, "given")
    if params.center != "auto":
        return CenterChoice(float(params.center), 1.0, "given")
    b, nz = store.binning, store.shape[0]
    half = max(1, min(CENTER_ROWS, nz) // 2)
    z0 = max(0, nz // 2 - half)
    z1 = min(nz, z0 + 2 * half)
    proj_log, theta, _ = preprocess_projections(store.scan_data(z0, z1), params.with_updates(rows=None))
    fb = None if fallback is None else to_binned(float(fallback), b)
    est = resolve_uncertain_center(find_center(proj_log, theta, params), proj_log.shape[2], fb, b)
    details = center_summary(est, b)
    if est.details.get("uncertain"):
        details["warning"] = est.details["warning"]
    return CenterChoice(to_unbinned(est.center, b), est.confidence, est.method, details)


def slabs_from_sum(running: RunningVolume, n_angles: int, params: ReconParams) -> Slabs:
    """The running sum as final slices: divided by the angle count, masked, slab by slab in place."""
    for z0, slab in running.slabs(STORE_SLAB_SLICES):
        slab *= np.float32(1.0 / n_angles)
        if params.circular_mask is not None:
            circular_mask(slab, params.circular_mask, in_place=True)
        yield z0, slab


def half_acquisition(store: BinnedScanStore, params: ReconParams, center_b: float) -> bool:
    """Whether the slices are stitched from both half-turns (the batch program's rule)."""
    theta = np.array([store.angles[i] for i in store.order()])
    setting = with_half_acquisition_hint(params, store.spec.metadata).half_acquisition
    return is_half_acquisition(center_b, store.shape[1], theta, setting)


def store_slab_slices(budget: int, n_angles: int, width: int) -> int:
    """Slices per slab from the binned store within ``budget`` bytes (at most STORE_SLAB_SLICES).
    Per slice: the rows read, their -log copy and the engine's input (``4 B x angles x width``
    each), the slice made, the one queued and the one being written (``4 B x width^2`` each);
    once: the NUFFT plan with every core's worker. Raises :class:`MemoryBudgetError` naming the
    minimum when not even one slice fits, as the volume at stop does."""
    per_slice = 3 * 4 * n_angles * width + 3 * 4 * width * width
    fixed = plan_bytes(width, n_angles, cpu_threads())
    return min(STORE_SLAB_SLICES, rows_per_slab(budget, per_slice, fixed_bytes=fixed,
                                                what="slab from the binned store (one slice)"))


def slabs_from_store(store: BinnedScanStore, params: ReconParams, center_b: float,
                     warnings: list[str], budget: int) -> Slabs:
    """Slices made from the binned store, slab by slab within ``budget``, with one NUFFT plan for
    all slabs (a half acquisition stitched to the full field of view first, as the batch program
    does)."""
    local = params.with_updates(rows=None)
    stitch = half_acquisition(store, params, center_b)
    width = store.shape[1]
    if stitch:
        theta = np.array([store.angles[i] for i in store.order()])
        width = output_width(width, center_b, theta, with_half_acquisition_hint(params, store.spec.metadata)
                             .half_acquisition)
    step = store_slab_slices(budget, len(store.order()), width)
    recon = None
    for z0 in range(0, store.shape[0], step):
        z1 = min(z0 + step, store.shape[0])
        proj_log, theta, w = preprocess_projections(store.scan_data(z0, z1), local)
        warnings.extend(x for x in w if x not in warnings)
        c = center_b
        if stitch:
            proj_log, theta, c = stitch_half_acquisition(proj_log, theta, center_b)
        if recon is None:
            recon = make_chunk_reconstructor(np.asarray(theta, dtype=np.float64), c, proj_log.shape[2],
                                             local, engine=resolve_engine(params))
        yield z0, reconstruct_prepared(proj_log, theta, c, local, recon=recon)


def write_behind(slabs: Slabs, write: Callable[[int, np.ndarray], None], tick: Callable[[], None]) -> None:
    """``write`` each slab on a writer thread while the next one is made (Zarr compression and
    TIFF files wait on the disk and release the GIL); one slab queued at most."""
    q: queue.Queue = queue.Queue(maxsize=1)
    errors: list[BaseException] = []

    def drain() -> None:
        while (item := q.get()) is not None:
            if not errors:
                try:
                    write(*item)
                    tick()
                except BaseException as exc:  # noqa: BLE001 - handed to the caller
                    errors.append(exc)

    thread = threading.Thread(target=drain, name="volume-writer", daemon=True)
    thread.start()
    try:
        for item in slabs:
            if errors:
                break
            q.put(item)  # a fresh array, or a region of the sum no later slab touches
    finally:
        q.put(None)
        thread.join()
    if errors:
        raise errors[0]


def voxel_size_um(spec: ScanSpec, binning: int) -> float | None:
    """The volume's voxel (the scan's ``pixel_size_um`` x binning; None when unknown)."""
    pixel = spec.metadata.get("pixel_size_um") if isinstance(spec.metadata, dict) else None
    return float(pixel) * binning if isinstance(pixel, int | float) and pixel > 0 else None


def write_volume(spec: ScanSpec, store: BinnedScanStore, params: ReconParams, result_dir: Path,
                 center: CenterChoice, slabs: Slabs, *, how: dict[str, Any], warnings: list[str],
                 timings: dict[str, float], progress: Callable[[int, int], None] | None = None,
                 tiff: bool = True) -> tuple[ReconResult, Path]:
    """Write ``slabs`` into the result folder ``result_dir`` (all or nothing) with its provenance;
    return the result (the volume read lazily from its Zarr array) and that array's path."""
    import zarr

    b, (nz, nx) = store.binning, store.shape
    if half_acquisition(store, params, to_binned(center.value, b)):  # the stitched field of view
        theta = np.array([store.angles[i] for i in store.order()])
        setting = with_half_acquisition_hint(params, spec.metadata).half_acquisition
        nx = output_width(nx, to_binned(center.value, b), theta, setting)
        center.details.update(half_acquisition=True, field_of_view_px=nx)
    voxel = voxel_size_um(spec, b)
    writer = VolumeWriter(result_dir, (nz, nx, nx), first_row=0, row_step=b, voxel_size_um=voxel,
                          tiff=tiff, overwrite=True, chunk_z=CHUNK_Z, levels=LEVELS)
    t = time.perf_counter()
    try:
        write_behind(slabs, writer.write, lambda: progress(writer.slices_written, nz) if progress else None)
    except BaseException as exc:
        raise writer.fail(exc) from exc
    if writer.slices_written != nz:
        raise writer.fail(TomoDataError(f"{writer.slices_written} of {nz} slices were made"))
    timings["slices_and_write"] = time.perf_counter() - t
    record = provenance_record(
        params=params, center=center, source={"run_uid": spec.run_uid, "path": None},
        call=f"full volume streamed during run {spec.run_uid}", timings_s=timings, shape=(nz, nx, nx),
        rows=(0, nz * b), voxel_size_um=voxel, engine=resolve_engine(params), warnings=sorted(set(warnings)),
        extra={"streamed": how, "n_projections": len(store.slots)},
    )
    layout = writer.finish(record)
    result = ReconResult(
        volume=zarr.open_array(str(layout.full_resolution), mode="r"), center=center.value,
        center_confidence=center.confidence, center_method=center.method, center_details=dict(center.details),
        timings=dict(timings), params=params, warnings=sorted(set(warnings)), rows=(0, nz * b),
        engine=resolve_engine(params),
    )
    return result, layout.full_resolution
