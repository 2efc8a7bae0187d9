"""The one entry point every sink calls: scan arrays + :class:`ReconParams` -> slices.

Why one function: the live preview, the full-volume sink, the batch job and the CLI must give
the same slices for the same parameters hash. Order: validate, select rows, bin, normalise,
repair bad frames, dezinger, phase retrieval, -log, ring removal, centre, reconstruct in
chunks, circular mask. Centres are always reported in unbinned pixel-index detector columns.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ..model import ScanData, TomoDataError
from . import center as center_mod
from . import preprocess
from .backend import choose_device, get_array_module, gpu_devices, to_numpy
from .center import CenterEstimate, resolve_uncertain_center
from .halfturn import is_half_acquisition, stitch_half_acquisition
from .params import ReconParams
from .preprocess import bin_frames, to_binned, to_unbinned
from .sinogram_recon import make_chunk_reconstructor, reconstruct_sinograms
from .tomopy_engine import resolve_engine
from .volume import Progress, ReconChunk, reconstruct_volume

__all__ = [
    "ReconResult", "preprocess_projections", "find_center", "reconstruct_scan", "center_summary",
    "reconstruct_sinograms", "make_chunk_reconstructor", "to_binned", "to_unbinned",
]


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
    #: how the centre was found: uncertainty_px, half_acquisition, the automatic estimate when
    #: a fallback replaced it (``uncertain``), ... (JSON-friendly)
    center_details: dict[str, Any] = field(default_factory=dict)


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
    # integer frames convert to float32 in normalize's first pass
    proj_log = line_integrals(xp.asarray(proj), xp.asarray(flats, dtype=xp.float32),
                              xp.asarray(darks, dtype=xp.float32), data, params, warnings)
    return proj_log, theta, warnings


def line_integrals(proj: Any, flats: Any, darks: Any, data: ScanData, params: ReconParams,
                   warnings: list[str]) -> Any:
    """Binned frames (NumPy or CuPy) -> -log line integrals: normalise, repair bad frames and
    dead pixels, dezinger, phase, -log, rings. The one sequence for the whole scan on the host
    and for each row slab on a GPU (:func:`_reconstruct_scan_slabs`)."""
    xp = get_array_module(proj)
    norm = preprocess.normalize(
        proj, flats, darks, proj_times=data.projection_times, flat_times=data.flat_times,
        interpolate=params.flat_interpolation,
    )
    norm, bad = preprocess.mask_bad_frames(norm)
    if len(bad):
        warnings.append(f"{len(bad)} projections had NaN/inf values, repaired: {list(map(int, bad[:10]))}")
    saturated = None
    if np.issubdtype(proj.dtype, np.integer) and proj.dtype.itemsize <= 2:  # unbinned raw counts
        saturated = xp.asarray(proj >= np.iinfo(proj.dtype).max)  # a full-scale count is a floor
    norm, n_dead = preprocess.repair_dead_pixels(norm, saturated)
    if n_dead:
        warnings.append(f"{n_dead} pixels with zero, negative, non-finite or saturated values "
                        "(dead, dark-dominated or full-scale) were interpolated from their neighbours")
    if params.dezinger_threshold is not None:
        norm = preprocess.remove_zingers(norm, params.dezinger_threshold)
    if params.phase_retrieval is not None:
        from .phase import paganin

        pr = params.phase_retrieval
        pixel = pr.pixel_size_um * params.binning
        norm = paganin(norm, pixel, pr.distance_mm, pr.energy_kev, pr.delta_beta)
    proj_log = preprocess.minus_log(norm, params.minus_log_clip, out=norm)  # norm is ours: in place
    if params.ring_removal is not None:
        from .stripes import remove_rings

        proj_log = remove_rings(proj_log, params.ring_removal)
    return proj_log


def find_center(proj_log: Any, theta: np.ndarray, params: ReconParams) -> CenterEstimate:
    """The automatic centre in the columns of ``proj_log`` (binned if it is), with its
    confidence, uncertainty and ``details["seconds"]`` (the time it took, for provenance).

    The centre finder reads the -log rows as they are (after ring removal and phase retrieval;
    ``minus_logged``: no exp / -log round trip). ``proj_log`` holds the selected rows only, so
    ``params.rows`` must not apply again, and the search width shrinks with the binning.
    """
    t0 = time.perf_counter()
    xp = get_array_module(proj_log)
    local = params.with_updates(
        rows=None, center="auto",
        center_search_width=(None if params.center_search_width is None
                             else params.center_search_width / params.binning)
    )
    nz = proj_log.shape[1]
    pick = np.unique(np.linspace(0, nz - 1, min(nz, 16)).round().astype(int))  # all a search uses
    rows = xp.asarray(proj_log[:, pick, :], dtype=xp.float32)  # a copy of the rows the search uses
    est = center_mod.find_center(rows, theta, local, minus_logged=True)
    return replace(est, details={**est.details, "seconds": time.perf_counter() - t0})


def reconstruct_prepared(
    proj_log: Any,
    theta: Any,
    center: float,
    params: ReconParams,
    *,
    progress: Progress | None = None,
    recon: ReconChunk | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Preprocessed -log projections -> masked NumPy slices: the pipeline after the centre.

    ``center`` is in the (binned) columns of ``proj_log``; ``recon`` as in
    :func:`reconstruct_sinograms` (a plan built once for many slabs). ``out``: a float32
    ``(nz, nx, nx)`` NumPy array filled in place (no volume-sized copy).
    """
    nz, nx = proj_log.shape[1], proj_log.shape[2]
    vol = out if out is not None else np.empty((nz, nx, nx), dtype=np.float32)
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
    fallback: float | None = None,
    progress: Progress | None = None,
    out: Any = None,
) -> ReconResult:
    """Reconstruct a scan (or rows of it): the function every sink calls.

    ``center`` (unbinned pixel-index column) overrides ``params.center``; with neither,
    the centre is found from the data (``params.center_method``); when its confidence is below
    :data:`.center.CONFIDENCE_THRESHOLD` the rule of :func:`.center_estimate.resolve_uncertain_center`
    applies, with a warning: the estimate, or ``fallback`` (unbinned, like ``center``: the last
    confident centre of this detector) where it fits the data as well. A
    half-acquisition scan is stitched to 180 degrees first: the slices are then wider than the
    detector. ``out`` receives the masked slices when given (e.g. a Zarr array);
    ``ReconResult.volume`` is then that array.
    """
    if _gpu_slabs_apply(data, params, center):  # pragma: no cover - needs a CUDA device
        return _reconstruct_scan_slabs(data, params, rows=rows, center=center, progress=progress, out=out)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    hinted = _with_half_acquisition_hint(data, params)  # (the result keeps the params as given)
    proj_log, theta, warnings = preprocess_projections(data, params, rows)
    timings["preprocess"] = time.perf_counter() - t0
    b = params.binning
    (r0, r1), _ = _row_range(data, params, rows)

    t1 = time.perf_counter()
    given = _given_center(data, params, center)
    info: dict[str, Any] = {}
    if given is not None:
        c_b, conf, method = to_binned(given, b), 1.0, "given"
    else:
        est = find_center(proj_log, theta, hinted)
        fb = None if fallback is None else to_binned(fallback, b)
        est = resolve_uncertain_center(est, proj_log.shape[2], fb, b)
        c_b, conf, method = est.center, est.confidence, est.method
        info = center_summary(est, b)
        if est.details.get("uncertain"):
            warnings.append(est.details["warning"])
    timings["center"] = time.perf_counter() - t1

    t2 = time.perf_counter()
    c_rec = c_b
    if is_half_acquisition(c_b, proj_log.shape[2], theta, hinted.half_acquisition):
        # offset axis: the two half-turns make one 180-degree sinogram twice as wide
        proj_log, theta, c_rec = stitch_half_acquisition(proj_log, theta, c_b)
        info["half_acquisition"] = True
        info["field_of_view_px"] = int(proj_log.shape[2])
    nz, nx = proj_log.shape[1], proj_log.shape[2]
    direct = isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == (nz, nx, nx)
    vol = reconstruct_prepared(proj_log, theta, c_rec, params, progress=progress, out=out if direct else None)
    timings["reconstruct"] = time.perf_counter() - t2
    if out is not None and not direct:
        out[...] = vol
        vol = out
    timings["total"] = time.perf_counter() - t0
    return ReconResult(
        volume=vol, center=to_unbinned(c_b, b), center_confidence=conf, center_method=method,
        timings=timings, params=params, warnings=warnings, rows=(r0, r1),
        engine=resolve_engine(params), center_details=info,
    )


def _with_half_acquisition_hint(data: ScanData, params: ReconParams) -> ReconParams:
    return with_half_acquisition_hint(params, data.metadata)


def with_half_acquisition_hint(params: ReconParams, metadata: Any) -> ReconParams:
    """``half_acquisition: auto`` follows the scan's own word when it has one
    (``metadata["tomo"]["half_acquisition"]``, from the start document: true or false); otherwise
    the data decide. Every path (in memory, batch program, streamed) decides alike."""
    tomo = metadata.get("tomo") if isinstance(metadata, dict) else None
    hint = tomo.get("half_acquisition") if isinstance(tomo, dict) else None
    if params.half_acquisition != "auto" or not isinstance(hint, bool):
        return params
    return params.with_updates(half_acquisition="on" if hint else "off")


def center_summary(est: CenterEstimate, binning: int) -> dict[str, Any]:
    """The JSON-friendly facts of an automatic centre (unbinned columns) for results and
    provenance: uncertainty, time, half acquisition, and the estimate a fallback replaced."""
    d = est.details
    out: dict[str, Any] = {"uncertainty_px": round(float(d.get("uncertainty_px", 0.0)) * binning, 3),
                           "seconds": round(float(d.get("seconds", 0.0)), 4),
                           "half_acquisition": bool(d.get("half_acquisition", False))}
    if d.get("uncertain"):
        out.update(uncertain=True, estimate=round(to_unbinned(float(d["estimate"]), binning), 3),
                   estimate_method=d.get("estimate_method"), fallback=d.get("fallback"))
    return out


def _given_center(data: ScanData, params: ReconParams, center: float | None) -> float | None:
    """The caller's or the parameters' centre (unbinned), checked; ``None`` means find it."""
    given = center if center is not None else (None if params.center == "auto" else float(params.center))
    if given is not None:
        nx_unbinned = data.projections.shape[2] * _loaded(data, params)[1]
        if not -nx_unbinned <= given <= 2 * nx_unbinned:
            raise TomoDataError(f"centre {given} is far outside the detector's {nx_unbinned} columns")
    return given


def _gpu_slabs_apply(data: ScanData, params: ReconParams, center: float | None) -> bool:
    """The GPU path streams raw row slabs through the device: only for the native Fourier method
    on a GPU with a given centre (an automatic one needs the whole scan), not a half
    acquisition, and no step that needs whole frames (Paganin, the zinger median filter)."""
    if not (choose_device(params.device) is not np and resolve_engine(params) == "native"
            and params.algorithm == "fourier" and params.phase_retrieval is None
            and params.dezinger_threshold is None):
        return False
    given = _given_center(data, params, center)
    if given is None:
        return False
    nx = data.projections.shape[2] * _loaded(data, params)[1]
    theta, _ = preprocess.check_angles(data.theta)
    hint = _with_half_acquisition_hint(data, params).half_acquisition
    return not is_half_acquisition(given, nx, theta, hint)  # unbinned centre, unbinned width


def _reconstruct_scan_slabs(
    data: ScanData, params: ReconParams, *, rows: tuple[int, int] | None, center: float | None,
    progress: Progress | None, out: Any,
) -> ReconResult:
    """:func:`reconstruct_scan` on GPUs: raw row slabs (darks, flats, projections in one
    upload, uint16 when the detector's) go through the overlapped conveyor of every visible GPU,
    where they are normalised, -log'ed, reconstructed and masked; only slices come back.

    With ``device="cpu"`` the same slabs run through the CPU loop: the NumPy twin the tests
    compare with :func:`reconstruct_scan`. Dead pixels are repaired within each slab. Not yet
    run on a GPU (see docs).
    """
    from .fourier import reconstruct_fourier

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    warnings = preprocess.validate_scan(data)
    theta, _ = preprocess.check_angles(data.theta)
    b_total = params.binning
    (r0, r1), (a0, a1) = _row_range(data, params, rows)
    b = _loaded(data, params)[2]
    given = _given_center(data, params, center)
    if given is None:
        raise TomoDataError("the slab path needs a given centre")
    c_b = to_binned(given, b_total)
    nd, nf = len(data.darks), len(data.flats)
    nz, nx = (a1 - a0) // b, data.projections.shape[2] // b

    def read(i: int, j: int) -> np.ndarray:
        ra, rb = a0 + i * b, a0 + j * b
        parts = [bin_frames(np.asarray(s[:, ra:rb]), b) for s in (data.darks, data.flats, data.projections)]
        return np.concatenate(parts, dtype=np.result_type(*parts))

    filt: dict[str, Any] = {"filter_name": params.filter_name, "cutoff": params.filter_cutoff,
                            "order": params.butterworth_order, "pad": params.pad}

    def recon(block: Any, _out: Any = None) -> Any:
        xp = get_array_module(block)
        darks = block[:nd].astype(xp.float32)
        flats = block[nd : nd + nf].astype(xp.float32)
        proj_log = line_integrals(block[nd + nf :], flats, darks, data, params, warnings)
        sino = proj_log.transpose(1, 0, 2)
        slices = reconstruct_fourier(sino, theta, c_b, whole_square=params.circular_mask is None, **filt)
        if params.circular_mask is not None:
            preprocess.circular_mask(slices, params.circular_mask, in_place=True)
        if _out is not None:  # the CPU loop hands a host view to fill
            _out[...] = to_numpy(slices)
        return slices

    vol = out if out is not None else np.empty((nz, nx, nx), dtype=np.float32)
    on_gpu = choose_device(params.device) is not np
    reconstruct_volume(read, recon, vol, rows=(0, nz), chunk=params.chunk_slices, progress=progress,
                       devices=gpu_devices() if on_gpu else None)
    timings.update(preprocess=0.0, center=0.0, reconstruct=time.perf_counter() - t0)  # all on the device
    timings["total"] = time.perf_counter() - t0
    return ReconResult(
        volume=vol, center=to_unbinned(c_b, b_total), center_confidence=1.0, center_method="given",
        timings=timings, params=params, warnings=warnings, rows=(r0, r1), engine="native",
    )
