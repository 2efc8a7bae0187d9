"""The one entry point every sink calls: scan arrays + :class:`ReconParams` -> slices.

Why one function: the live preview, the full-volume sink, the batch job and the CLI must give
the same slices for the same parameters hash. Order: validate, select rows, bin, normalise,
repair bad frames, dezinger, phase retrieval, -log, ring removal, centre, reconstruct in
chunks, circular mask. Centres are always reported in unbinned pixel-index detector columns.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..model import ScanData, TomoDataError
from . import preprocess
from .backend import choose_device, get_array_module
from .filters import padded_width
from .params import ReconParams
from .preprocess import bin_frames
from .tomopy_engine import reconstruct_tomopy, resolve_engine
from .volume import Progress, reconstruct_volume


@dataclass
class ReconResult:
    """Slices and everything needed to say how they were made (provenance)."""

    volume: np.ndarray
    center: float
    center_confidence: float
    center_method: str
    timings: dict[str, float]
    params: ReconParams
    warnings: list[str] = field(default_factory=list)
    rows: tuple[int, int] = (0, 0)
    engine: str = "native"


def to_binned(center: float, binning: int) -> float:
    """Unbinned pixel-index column -> binned pixel-index column."""
    return (center - (binning - 1) / 2.0) / binning


def to_unbinned(center: float, binning: int) -> float:
    """Binned pixel-index column -> unbinned pixel-index column."""
    return center * binning + (binning - 1) / 2.0


def _loaded(data: ScanData, params: ReconParams) -> tuple[int, int, int]:
    """``(first detector row, binning already applied by the loader, binning still to apply)``.

    A file loader may have read only some rows (``metadata["rows"]``) and binned them
    (``metadata["binning"]``); rows and centres stay in unbinned detector coordinates.
    """
    meta = data.metadata or {}
    base = int((meta.get("rows") or [0])[0])
    pre = int(meta.get("binning") or 1)
    if pre == 1:
        return base, 1, params.binning
    if pre != params.binning:
        raise TomoDataError(
            f"the scan was loaded with binning {pre} but the parameters ask for binning {params.binning}"
        )
    return base, pre, 1


def _row_range(
    data: ScanData, params: ReconParams, rows: tuple[int, int] | None
) -> tuple[tuple[int, int], tuple[int, int]]:
    """``(absolute detector rows, rows of data.projections)`` for ``rows`` (or ``params.rows``)."""
    base, pre, _ = _loaded(data, params)
    top = base + data.projections.shape[1] * pre
    r = rows if rows is not None else params.rows
    r0, r1 = (base, top) if r is None else (int(r[0]), int(r[1]))
    if not (base <= r0 < r1 <= top):
        raise TomoDataError(f"rows [{r0}, {r1}) outside the detector's rows [{base}, {top}) in this scan")
    if (r1 - r0) < params.binning:
        raise TomoDataError(f"rows [{r0}, {r1}) hold fewer rows than binning {params.binning}")
    r1 -= (r1 - r0) % params.binning  # a partial bin at the end is dropped
    return (r0, r1), ((r0 - base) // pre, (r1 - base) // pre)


def preprocess_projections(
    data: ScanData, params: ReconParams, rows: tuple[int, int] | None = None
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Raw scan -> ``(proj_log (n_angles, nz, nx) float32, theta radians, warnings)``.

    ``rows`` (default ``params.rows``, else all the scan holds) are unbinned ``[start, stop)``
    detector rows; the output is binned by ``params.binning``.
    """
    warnings = preprocess.validate_scan(data)
    theta, _ = preprocess.check_angles(data.theta)  # validate_scan already reported the warning
    _, (r0, r1) = _row_range(data, params, rows)
    b = _loaded(data, params)[2]
    proj = bin_frames(np.asarray(data.projections[:, r0:r1]), b)
    flats = bin_frames(np.asarray(data.flats[:, r0:r1]), b)
    darks = bin_frames(np.asarray(data.darks[:, r0:r1]), b)
    xp = choose_device(params.device)
    norm = preprocess.normalize(
        xp.asarray(proj, dtype=xp.float32), xp.asarray(flats, dtype=xp.float32),
        xp.asarray(darks, dtype=xp.float32),
        proj_times=data.projection_times, flat_times=data.flat_times,
        interpolate=params.flat_interpolation,
    )
    norm, bad = preprocess.mask_bad_frames(norm)
    if len(bad):
        warnings.append(f"{len(bad)} projections had NaN/inf values, repaired: {list(map(int, bad[:10]))}")
    if params.dezinger_threshold is not None:
        norm = preprocess.remove_zingers(norm, params.dezinger_threshold)
    if params.phase_retrieval is not None:
        from .phase import paganin

        pr = params.phase_retrieval
        pixel = pr.pixel_size_um * params.binning
        norm = paganin(norm, pixel, pr.distance_mm, pr.energy_kev, pr.delta_beta)
    proj_log = preprocess.minus_log(norm, params.minus_log_clip)
    if params.ring_removal is not None:
        from .stripes import remove_rings

        proj_log = remove_rings(proj_log, params.ring_removal)
    return proj_log, theta, warnings


def find_center(proj_log: Any, theta: np.ndarray, params: ReconParams) -> tuple[float, float, str]:
    """``(center, confidence, method)`` in the columns of ``proj_log`` (binned if it is).

    The centre finder takes transmission; ``exp(-proj_log)`` gives it back after ring removal
    and phase retrieval. ``proj_log`` holds the selected rows only, so ``params.rows`` must not
    apply again, and the search width shrinks with the binning.
    """
    from .center import find_center as _find

    xp = get_array_module(proj_log)
    local = params.with_updates(
        rows=None, center="auto", center_search_width=params.center_search_width / params.binning
    )
    est = _find(xp.exp(-proj_log), theta, local)
    return float(est.center), float(est.confidence), str(est.method)


def reconstruct_sinograms(
    proj_log: Any,
    theta: Any,
    center: float,
    params: ReconParams,
    *,
    progress: Progress | None = None,
    out: Any = None,
    recon: Callable[[Any], Any] | None = None,
) -> Any:
    """-log projections ``(n_angles, nz, nx)`` -> slices ``(nz, nx, nx)`` float32, in chunks.

    ``center`` is in the columns of ``proj_log``. ``out`` (any array-like) receives the slices;
    a new NumPy array otherwise. No circular mask here (that is the pipeline's last step).
    ``recon`` (from :func:`make_chunk_reconstructor` for the same angles, centre and width) lets
    a caller that reconstructs many slabs build the NUFFT plan once instead of once per slab.
    """
    n_angles, nz, nx = proj_log.shape
    theta = np.asarray(theta, dtype=np.float64)
    if out is None:
        out = np.empty((nz, nx, nx), dtype=np.float32)
    if recon is None:
        recon = make_chunk_reconstructor(theta, center, nx, params, engine=resolve_engine(params))
    return reconstruct_volume(
        proj_log, recon, out, rows=(0, nz), chunk=params.chunk_slices, progress=progress
    )


def make_chunk_reconstructor(
    theta: np.ndarray, center: float, nx: int, params: ReconParams, *, engine: str = "native"
) -> Callable[[Any], Any]:
    """``recon(block (n_angles, k, nx)) -> (k, nx, nx)`` for :func:`.volume.reconstruct_volume`.

    Builds the NUFFT plan once, so every chunk of a volume reuses it.
    """
    filt: dict[str, Any] = {"filter_name": params.filter_name, "cutoff": params.filter_cutoff,
                            "order": params.butterworth_order, "pad": params.pad}
    if engine == "tomopy":
        return lambda block: reconstruct_tomopy(np.asarray(block).transpose(1, 0, 2), theta, center, params)
    xp = choose_device(params.device)
    if params.algorithm == "fbp":
        from .fbp import reconstruct_fbp

        return lambda block: reconstruct_fbp(xp.asarray(block).transpose(1, 0, 2), theta, center, **filt)
    from .fourier import FourierPlan, reconstruct_fourier

    plan = FourierPlan(nx, theta, padded_width(nx, params.pad), gpu=xp is not np)
    return lambda block: reconstruct_fourier(
        xp.ascontiguousarray(xp.asarray(block).transpose(1, 0, 2)), theta, center, plan=plan, **filt
    )


def reconstruct_prepared(
    proj_log: Any,
    theta: Any,
    center: float,
    params: ReconParams,
    *,
    progress: Progress | None = None,
    recon: Callable[[Any], Any] | None = None,
) -> np.ndarray:
    """Preprocessed -log projections -> masked NumPy slices: the pipeline after the centre.

    ``center`` is in the (binned) columns of ``proj_log``; ``recon`` as in
    :func:`reconstruct_sinograms` (a plan built once for many slabs).
    """
    nz, nx = proj_log.shape[1], proj_log.shape[2]
    vol = np.empty((nz, nx, nx), dtype=np.float32)
    reconstruct_sinograms(proj_log, theta, center, params, progress=progress, out=vol, recon=recon)
    if params.circular_mask is not None:
        preprocess.circular_mask(vol, params.circular_mask, in_place=True)
    return vol


def reconstruct_scan(
    data: ScanData,
    params: ReconParams,
    *,
    rows: tuple[int, int] | None = None,
    center: float | None = None,
    progress: Progress | None = None,
    out: Any = None,
) -> ReconResult:
    """Reconstruct a scan (or rows of it): the function every sink calls.

    ``center`` (unbinned pixel-index column) overrides ``params.center``; with neither,
    the centre is found from the data (``params.center_method``). ``out`` receives the masked
    slices when given (e.g. a Zarr array); ``ReconResult.volume`` is then that array.
    """
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    proj_log, theta, warnings = preprocess_projections(data, params, rows)
    timings["preprocess"] = time.perf_counter() - t0
    b = params.binning
    (r0, r1), _ = _row_range(data, params, rows)

    t1 = time.perf_counter()
    given = center if center is not None else (None if params.center == "auto" else float(params.center))
    if given is not None:
        nx_unbinned = data.projections.shape[2] * _loaded(data, params)[1]
        if not -nx_unbinned <= given <= 2 * nx_unbinned:
            raise TomoDataError(f"centre {given} is far outside the detector's {nx_unbinned} columns")
        c_b, conf, method = to_binned(given, b), 1.0, "given"
    else:
        c_b, conf, method = find_center(proj_log, theta, params)
    timings["center"] = time.perf_counter() - t1

    t2 = time.perf_counter()
    vol = reconstruct_prepared(proj_log, theta, c_b, params, progress=progress)
    timings["reconstruct"] = time.perf_counter() - t2
    if out is not None:
        out[...] = vol
        vol = out
    timings["total"] = time.perf_counter() - t0
    return ReconResult(
        volume=vol, center=to_unbinned(c_b, b), center_confidence=conf, center_method=method,
        timings=timings, params=params, warnings=warnings, rows=(r0, r1),
        engine=resolve_engine(params),
    )
