"""The full volume at stop: stage the scan, reconstruct it slab by slab into Zarr, in a budget.

Why: the full volume at stop must not hold the scan or the volume (a 21 GB scan makes a 56 GB
float32 volume). The scan is staged as one data-exchange file of virtual views onto the raw and
scratch files (:mod:`bluesky_tomo_hpc.sinks.frame_store`, :mod:`.staging`) and read back in
slabs of detector rows; each slab goes through the
one engine entry point, :func:`~bluesky_tomo_hpc.engine.reconstruct.reconstruct_scan`, with the
centre fixed once for the whole volume, and its slices are written into the Zarr array before
the next slab is read. The slab height derives from the memory budget
(:mod:`bluesky_tomo_hpc.engine.memory`); a budget below one slab is refused with the minimum.

Row-local steps (normalisation, -log, ring removal, reconstruction) give the same slices as a
whole-scan reconstruction; Paganin phase retrieval filters across rows, so its slab edges differ.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..engine.memory import rows_per_slab
from ..engine.params import ReconParams
from ..engine.reconstruct import ReconResult
from .staging import write_exchange_file

#: float32 working copies of a projection row alive at once in preprocessing (cast, normalised,
#: -log / ring removal); checked by ``tests/test_full_volume_bounded.py``
PREPROCESS_COPIES = 3


@dataclass(frozen=True)
class SlabPlan:
    """How a volume is cut: detector rows per slab and slices per reconstruction chunk."""

    rows: tuple[int, int]
    slab_rows: int
    chunk_slices: int
    budget: int

    def slabs(self) -> list[tuple[int, int]]:
        r0, r1 = self.rows
        return [(a, min(a + self.slab_rows, r1)) for a in range(r0, r1, self.slab_rows)]


def plan_slabs(budget: int, *, n_proj: int, n_calib: int, nx: int, itemsize: int,
               rows: tuple[int, int], params: ReconParams) -> SlabPlan:
    """Slab height and chunk size for a scan of ``n_proj`` projections + ``n_calib`` darks/flats
    of ``nx`` columns, so that one slab's buffers fit ``budget`` bytes (else MemoryBudgetError)."""
    from ..engine.filters import padded_width

    b = params.binning
    n = nx // b
    # reconstruction work per slice: the padded complex spectra and the NUFFT's fine grid
    per_slice = 8 * n_proj * padded_width(n, params.pad) + 24 * n * n
    chunk = int(max(1, min(params.chunk_slices, (budget // 2) // per_slice)))
    per_row = (n_proj + n_calib) * nx * itemsize  # raw frames as read
    per_row += PREPROCESS_COPIES * 4 * n_proj * n // b  # float32 copies of the (binned) row
    per_row += 2 * 4 * n * n // b  # the slab's slices, before and after the circular mask
    slab = rows_per_slab(budget, per_row, fixed_bytes=chunk * per_slice, minimum_rows=b,
                         what=f"slab of {n_proj} projections x {nx} columns")
    slab = max(b, slab - slab % b)
    r0, r1 = rows
    return SlabPlan(rows=(r0, r1 - (r1 - r0) % b), slab_rows=min(slab, r1 - r0), chunk_slices=chunk,
                    budget=budget)


def estimate_center(path: Path, plan: SlabPlan, params: ReconParams) -> tuple[float, float, str]:
    """``(centre, confidence, method)`` from a block of rows in the middle (at most one slab)."""
    from ..engine.reconstruct import find_center, preprocess_projections, to_unbinned
    from ..sources.raw_files import load_scan

    b = params.binning
    r0, r1 = plan.rows
    height = min(plan.slab_rows, 16 * b, r1 - r0)
    mid = (r0 + r1) // 2
    a = max(r0, mid - height // 2)
    a -= (a - r0) % b
    rows = (a, min(r1, a + height))
    data = load_scan(path, rows=rows)
    proj_log, theta, _ = preprocess_projections(data, params.with_updates(rows=None), rows=rows)
    c, conf, method = find_center(proj_log, theta, params)
    return to_unbinned(c, b), conf, method


def reconstruct_file_to_zarr(
    path: str | Path,
    params: ReconParams,
    zarr_path: str | Path,
    *,
    budget: int,
    progress: Callable[[int, int], None] | None = None,
    attrs: dict[str, Any] | None = None,
) -> ReconResult:
    """Reconstruct the data-exchange file ``path`` into a float32 Zarr array at ``zarr_path``.

    Written under ``<zarr_path>.partial`` and renamed when the last slab is in, so a failed or
    interrupted run never leaves something that looks complete. ``ReconResult.volume`` is the
    Zarr array (read lazily); ``rows`` and the centre are unbinned detector coordinates.
    """
    from ..engine.reconstruct import reconstruct_scan
    from ..model import TomoDataError
    from ..results.volume_files import create_zarr_volume
    from ..sources.raw_files import describe_scan, load_scan

    path, zarr_path = Path(path), Path(zarr_path)
    t0 = time.perf_counter()
    desc = describe_scan(path)
    ny, nx = desc.frame_shape
    rows = params.rows or (0, ny)
    if not (0 <= rows[0] < rows[1] <= ny):
        raise TomoDataError(f"rows {rows[0]}:{rows[1]} outside the detector's {ny} rows")
    plan = plan_slabs(budget, n_proj=desc.n_projections, n_calib=desc.n_flats + desc.n_darks, nx=nx,
                      itemsize=np.dtype(desc.dtype).itemsize, rows=rows, params=params)
    timings = {"stage": 0.0}
    t1 = time.perf_counter()
    if params.center == "auto":
        center, conf, method = estimate_center(path, plan, params)
    else:
        center, conf, method = float(params.center), 1.0, "given"
    timings["center"] = time.perf_counter() - t1

    b = params.binning
    run_params = params.with_updates(rows=None, center=center, chunk_slices=plan.chunk_slices)
    nz, n = (plan.rows[1] - plan.rows[0]) // b, nx // b
    partial = zarr_path.with_name(zarr_path.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    attrs = {**(attrs or {}), "params_hash": params.params_hash}
    volume = create_zarr_volume(partial, (nz, n, n), attrs=attrs)
    warnings: list[str] = []
    written = 0
    engine = "native"
    for s0, s1 in plan.slabs():
        data = load_scan(path, rows=(s0, s1))
        res = reconstruct_scan(data, run_params, rows=(s0, s1))
        k = res.volume.shape[0]
        volume[written : written + k] = res.volume
        written += k
        engine = res.engine
        for key in ("preprocess", "reconstruct"):
            timings[key] = timings.get(key, 0.0) + res.timings.get(key, 0.0)
        warnings.extend(w for w in res.warnings if w not in warnings)
        del data, res
        if progress is not None:
            progress(written, nz)
    if zarr_path.exists():
        shutil.rmtree(zarr_path)
    os.replace(partial, zarr_path)
    import zarr

    timings["total"] = time.perf_counter() - t0
    return ReconResult(volume=zarr.open_array(str(zarr_path), mode="r"), center=center,
                       center_confidence=conf, center_method=method, timings=timings, params=params,
                       warnings=warnings, rows=plan.rows, engine=engine)


class VolumeAtStop:
    """What a :class:`~bluesky_tomo_hpc.sinks.full_volume.FullVolumeSink` runs at stop: stage the
    frame store, then :func:`reconstruct_file_to_zarr` into ``out_dir/full.zarr`` within
    ``budget`` bytes."""

    def __init__(self, budget: int):
        self.budget = budget

    def __call__(self, store: Any, params: ReconParams, out_dir: Path,
                 progress: Callable[[int, int], None] | None = None) -> tuple[ReconResult, Path]:
        t0 = time.perf_counter()
        store.close_spill()
        store.check()
        staged = write_exchange_file(store.spec, store.batches(), store.staged_path)
        staging_s = time.perf_counter() - t0
        zarr_path = Path(out_dir) / "full.zarr"
        result = reconstruct_file_to_zarr(staged, params, zarr_path, budget=self.budget, progress=progress,
                                          attrs={"raw_uid": store.spec.run_uid})
        result.timings["stage"] = staging_s
        return result, zarr_path
