"""Rotation-axis (centre) finding: the parameter that most often spoils an automatic reconstruction.

Convention everywhere: the centre is a 0-based detector column index; an axis in the middle of
an N-pixel detector is at (N - 1) / 2. TomoPy's ``find_center_pc`` answers 0.5 px higher.

* :func:`find_center_pairs`: register the 0-degree projection with the mirrored 180-degree one
  (phase correlation, sub-pixel by a locally up-sampled DFT), as TomoPy ``find_center_pc`` and
  ALS 8.3.2's default. Cheap and independent of the sinogram, but needs a (near) 180 pair.
* :func:`find_center_vo`: Vo et al. 2014 (Opt. Express 22, 19078): a sinogram joined with its
  mirrored copy has least energy outside the physical double wedge of its 2-D spectrum when the
  assumed centre is right. Coarse integer-shift search, then a fine sub-pixel search.
* :func:`find_center`: dispatch on ``ReconParams.center_method``; ``auto`` runs Vo on a few rows
  and the pair method as a cross-check, and turns their agreement into a confidence.
* :func:`try_centers`: one slice per candidate centre and a labelled contact sheet, for a person.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bluesky_tomo_hpc.engine.backend import get_array_module, to_numpy
from bluesky_tomo_hpc.engine.params import ReconParams
from bluesky_tomo_hpc.engine.preprocess import check_angles, circular_mask, minus_log, ndimage_for
from bluesky_tomo_hpc.model import TomoDataError

__all__ = [
    "CenterEstimate",
    "phase_correlation_shift",
    "center_from_pair",
    "find_center_pairs",
    "find_center_vo",
    "find_center",
    "try_centers",
]


@dataclass(frozen=True)
class CenterEstimate:
    """A rotation-axis estimate: ``center`` (pixel-index convention), ``confidence`` in [0, 1]
    (how much an automatic pipeline may trust it), the ``method`` and its diagnostics."""

    center: float
    confidence: float
    method: str
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not math.isfinite(self.center):
            raise ValueError(f"CenterEstimate: centre must be finite, got {self.center}")
        if not 0.0 <= self.confidence <= 1.0:
            raise ValueError(f"CenterEstimate: confidence must be in [0, 1], got {self.confidence}")


# -- 0/180 pair registration ----------------------------------------------------------------------
def phase_correlation_shift(
    ref: Any, moving: Any, upsample: int = 20, lowpass: float | None = 0.15
) -> tuple[float, float, float]:
    """Sub-pixel (dy, dx) with ``moving(y, x) ~ ref(y - dy, x - dx)`` and the correlation peak
    height in [0, 1] (1: identical up to the shift), by phase correlation refined with a
    Guizar-Sicairos up-sampled DFT around the integer peak."""
    xp = get_array_module(ref, moving)
    a = xp.asarray(ref, dtype=xp.float64)
    b = xp.asarray(moving, dtype=xp.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"phase_correlation_shift: need two equal 2-D images, got {a.shape} and {b.shape}")
    ny, nx = a.shape
    cross = xp.fft.fft2(b - b.mean()) * xp.conj(xp.fft.fft2(a - a.mean()))
    cross /= xp.maximum(xp.abs(cross), 1e-12 * float(xp.abs(cross).max()) + 1e-30)
    if lowpass:
        # whitening weighs every frequency alike; the highest ones carry noise and the phase
        # errors of interpolated shifts, so taper them with a Gaussian (sigma in cycles/px)
        f2 = xp.fft.fftfreq(ny)[:, None] ** 2 + xp.fft.fftfreq(nx)[None, :] ** 2
        cross *= xp.exp(-f2 / (2 * lowpass**2))
    corr = xp.real(xp.fft.ifft2(cross))
    iy, ix = (int(v) for v in np.unravel_index(int(xp.argmax(corr)), corr.shape))
    y0 = iy - ny if iy > ny // 2 else iy
    x0 = ix - nx if ix > nx // 2 else ix
    # local up-sampled DFT: correlation sampled every 1/upsample px within +/-0.75 px of the peak
    m = int(math.ceil(1.5 * upsample)) | 1
    offs = (xp.arange(m, dtype=xp.float64) - m // 2) / upsample
    ys, xs = y0 + offs, x0 + offs
    ky = xp.fft.fftfreq(ny) * ny
    kx = xp.fft.fftfreq(nx) * nx
    ey = xp.exp(2j * xp.pi * ys[:, None] * ky[None, :] / ny)
    ex = xp.exp(2j * xp.pi * kx[:, None] * xs[None, :] / nx)
    local = xp.real(ey @ cross @ ex) / float(xp.abs(cross).sum())
    jy, jx = (int(v) for v in np.unravel_index(int(xp.argmax(local)), local.shape))
    peak = float(local[jy, jx])
    return float(ys[jy]), float(xs[jx]), max(0.0, min(1.0, peak))


def center_from_pair(p0: Any, p180: Any, upsample: int = 20) -> tuple[float, float]:
    """Centre (pixel-index convention) and correlation peak from a projection and the one taken
    180 degrees later: ``p180`` mirrored is ``p0`` shifted by (N - 1) - 2 * centre."""
    if p0.shape != p180.shape or p0.ndim != 2:
        raise ValueError(f"center_from_pair: need two equal (ny, nx) images, got {p0.shape}, {p180.shape}")
    xp = get_array_module(p0, p180)
    _, dx, peak = phase_correlation_shift(p0, xp.flip(xp.asarray(p180), axis=1), upsample)
    return ((p0.shape[1] - 1) - dx) / 2.0, peak


def _pairs(theta: np.ndarray, max_pairs: int) -> tuple[list[tuple[int, int]], float]:
    """Index pairs about 180 degrees apart (several for 360-degree scans) and the worst mismatch."""
    cands = []
    for i, t in enumerate(theta):
        j = int(np.argmin(np.abs(theta - (t + np.pi))))
        mis = abs(theta[j] - t - np.pi)
        cands.append((mis, i, j))
    best = min(c[0] for c in cands)
    tol = max(best, 1e-3) * 1.0001 + 1e-9
    good = [c for c in cands if c[0] <= tol and c[1] != c[2]]
    if len(good) > max_pairs:
        pick = np.linspace(0, len(good) - 1, max_pairs).round().astype(int)
        good = [good[k] for k in pick]
    return [(i, j) for _, i, j in good], max(c[0] for c in good)


def find_center_pairs(
    proj_norm: Any, theta: Any, *, max_pairs: int = 5, upsample: int = 20
) -> CenterEstimate:
    """Centre from the projection pair(s) closest to 180 degrees apart.

    ``proj_norm`` is normalised transmission (n_angles, ny, nx); it is -log'ed so the background
    is zero. Without an exact 180-degree pair the nearest one is used and its angle mismatch lowers
    the confidence (features off the axis then disagree by up to radius * mismatch).
    """
    arr = _check_stack(proj_norm, theta)
    th, warn = check_angles(theta)
    pairs, mismatch = _pairs(th, max_pairs)
    if not pairs:
        raise TomoDataError("find_center_pairs: no two projections are near 180 degrees apart")
    centers, peaks = [], []
    for i, j in pairs:
        c, pk = center_from_pair(minus_log(arr[i]), minus_log(arr[j]), upsample)
        centers.append(c)
        peaks.append(pk)
    center = float(np.median(centers))
    spread = float(np.std(centers)) if len(centers) > 1 else 0.0
    mis_deg = float(np.rad2deg(mismatch))
    confidence = float(np.median(peaks)) ** 0.5 / (1.0 + spread) / (1.0 + mis_deg)
    details = {
        "pairs": pairs,
        "centers": centers,
        "peaks": peaks,
        "angle_mismatch_deg": mis_deg,
        "spread_px": spread,
    }
    if warn:
        details["angle_warning"] = warn
    return CenterEstimate(center, float(np.clip(confidence, 0.0, 1.0)), "pairs", details)


# -- Vo's Fourier metric --------------------------------------------------------------------------
def _wedge_mask(nrow: int, ncol: int, ratio: float, drop: int, xp: Any) -> Any:
    """Where a correctly centred 360-degree sinogram of an object of radius ``ratio * ncol / 2``
    has (almost) no energy: detector frequency small compared with the angular one. Laid out as
    an ``rfft2`` half-plane (rows FFT-shifted, columns k = 0 .. ncol // 2). The lowest angular
    frequencies (``drop`` rows) and the two lowest detector frequencies are left out (DC, noise)."""
    a = xp.abs(xp.arange(nrow, dtype=xp.float64) - nrow // 2)
    k = xp.arange(ncol // 2 + 1, dtype=xp.float64)
    half_width = xp.round(a * (nrow - 1) / (nrow * math.pi * ratio))
    mask = (k[None, :] <= half_width[:, None]) & (a[:, None] > drop) & (k[None, :] > 1)
    return mask.astype(xp.float32)


def _fft_module(xp: Any) -> Any:
    """``scipy.fft`` (multi-threaded, keeps float32) for NumPy, ``cupy.fft`` for CuPy."""
    if xp is np:
        import scipy.fft

        return scipy.fft
    return xp.fft


def _bspline3(u: float) -> float:
    u = abs(u)
    if u < 1:
        return 2.0 / 3.0 - u * u + 0.5 * u**3
    return (2.0 - u) ** 3 / 6.0 if u < 2 else 0.0


def _spline_shift_columns(coeffs: Any, shift: float) -> Any:
    """Cubic B-spline shift along the columns of prefiltered ``coeffs`` (edges repeated): a
    4-tap gather, much cheaper than ``ndimage.shift``'s 2-D 16-tap interpolation."""
    xp = get_array_module(coeffs)
    ncol = coeffs.shape[1]
    base = math.floor(shift)
    t = 1.0 - (shift - base)  # source position x - shift = (x - base - 1) + t, t in (0, 1]
    src = xp.arange(ncol) - base - 1
    out = xp.zeros_like(coeffs)
    for j in (-1, 0, 1, 2):
        w = _bspline3(t - j)
        if w:
            out += xp.float32(w) * coeffs[:, xp.clip(src + j, 0, ncol - 1)]
    return out


def _vo_metrics(sino: Any, centers: np.ndarray, mask: Any, integer: bool, budget: float = 8e6) -> np.ndarray:
    """Vo's metric for each candidate centre: energy inside ``mask`` of [sino; mirrored sino].

    The 2-D spectrum of the stack is assembled from separable pieces: the detector-axis rFFT is
    cut to the columns the mask uses, and the angular DFT of the fixed upper half is computed
    once (the lower half's DFT is the same transform times (-1)^a, a shift by ``nrow`` rows).
    """
    xp = get_array_module(sino)
    nrow, ncol = sino.shape
    mid = (ncol - 1) / 2.0
    used = xp.flatnonzero(mask.any(axis=0))
    kmax = int(to_numpy(used).max()) + 1 if used.size else 1
    mask = mask[:, :kmax]
    chunk = int(max(1, min(32, budget // (2 * nrow * kmax))))  # bounds the complex work array
    fft = _fft_module(xp)
    kw = {"workers": -1} if xp is np else {}

    def spectrum_rows(block: Any) -> Any:  # (..., nrow, ncol) -> (..., 2 nrow, kmax)
        cols = fft.rfft(block, axis=-1, **kw)[..., :kmax]
        return fft.fft(cols, n=2 * nrow, axis=-2, **kw)

    upper = spectrum_rows(sino)
    sign = xp.asarray((-1.0) ** np.arange(2 * nrow), dtype=xp.float32)[:, None]
    flipped = xp.flip(sino, axis=1)
    upside = xp.flip(sino, axis=0)  # fills the columns the shift uncovers (avoids a false edge)
    col_idx = xp.arange(ncol)
    nd = None
    if not integer:
        nd = ndimage_for(xp)
        flipped = nd.spline_filter1d(flipped, order=3, axis=1, mode="nearest")
    mask_norm = float(mask.shape[0] * (ncol // 2 + 1))
    out = np.empty(len(centers), dtype=np.float64)
    for start in range(0, len(centers), chunk):
        block = centers[start : start + chunk]
        lower = xp.empty((len(block), nrow, ncol), dtype=xp.float32)
        for b, cor in enumerate(block):
            shift = 2.0 * (cor - mid)
            if integer:
                shift = float(int(shift))
                moved = xp.roll(flipped, int(shift), axis=1)
            else:
                moved = _spline_shift_columns(flipped, shift)
            if shift >= 0:
                uncovered = col_idx < math.ceil(shift)
            else:
                uncovered = col_idx >= ncol + math.floor(shift)
            lower[b] = xp.where(uncovered[None, :], upside, moved)
        spec = xp.abs(xp.fft.fftshift(upper + sign * spectrum_rows(lower), axes=1))
        out[start : start + len(block)] = to_numpy((spec * mask).sum(axis=(1, 2))) / mask_norm
    return out


def _half_turn(sino: Any, theta: np.ndarray) -> Any:
    """The rows within the first 180 degrees: Vo's method mirrors them into the second half."""
    keep = theta - theta[0] < np.pi - 1e-6
    if keep.sum() < 2:
        raise TomoDataError("find_center_vo: fewer than 2 projections within the first 180 degrees")
    if keep.all():
        return sino
    return sino[get_array_module(sino).asarray(np.flatnonzero(keep))]


def find_center_vo(
    sino: Any,
    theta: Any = None,
    search_width: float = 50.0,
    *,
    center_guess: float | None = None,
    fine_radius: float = 6.0,
    step: float = 0.25,
    ratio: float = 0.5,
    drop: int = 20,
    max_rows: tuple[int, int] = (512, 1024),
) -> CenterEstimate:
    """Vo's centre for one -log sinogram (n_angles, nx), searched within ``center_guess`` (default
    the detector middle) +/- ``search_width`` px at 0.5 px, refined +/- ``fine_radius`` px at
    ``step``. ``theta`` (radians) restricts the data to the first half-turn; ``None`` assumes the
    sinogram covers [0, 180) degrees. ``ratio`` is the object's diameter / detector width.
    ``max_rows`` caps the angles used by the (coarse, fine) searches; the coarse search also
    bins the detector to at most 1024 columns."""
    xp = get_array_module(sino)
    s = xp.asarray(sino, dtype=xp.float32)
    if s.ndim != 2:
        raise ValueError(f"find_center_vo expects a (n_angles, nx) sinogram, got shape {tuple(s.shape)}")
    if theta is not None:
        th, _ = check_angles(theta)
        if th.size != s.shape[0]:
            raise TomoDataError(f"find_center_vo: {th.size} angles for {s.shape[0]} sinogram rows")
        s = _half_turn(s, th)
    if not bool(xp.all(xp.isfinite(s))):
        raise TomoDataError("find_center_vo: sinogram contains NaN/inf (mask bad frames first)")
    nrow, ncol = s.shape
    if ncol < 8 or nrow < 4:
        raise TomoDataError(f"find_center_vo: sinogram {tuple(s.shape)} is too small")
    mid = (ncol - 1) / 2.0
    guess = mid if center_guess is None else float(center_guess)
    nd = ndimage_for(xp)
    # smoothing as Vo's reference code; on long scans every k-th angle is enough (the metric
    # compares angular against detector frequencies, and angular frequencies stay put)
    coarse_src = nd.gaussian_filter(s, (3, 1), mode="reflect")[:: -(-nrow // max_rows[0])]
    fine_src = nd.gaussian_filter(s, (2, 2), mode="reflect")[:: -(-nrow // max_rows[1])]

    def drop_for(rows: int) -> int:
        return int(min(drop, max(rows // 2 - 2, 0)))

    # coarse: integer shifts of the mirror, i.e. half-pixel steps in centre; binned if huge
    binf = 1
    while ncol // binf > 1024:
        binf *= 2
    c_src = coarse_src
    if binf > 1:
        nc = ncol // binf
        c_src = c_src[:, : nc * binf].reshape(c_src.shape[0], nc, binf).mean(axis=2)
    c_ncol = c_src.shape[1]
    c_mid = (c_ncol - 1) / 2.0
    # the mirrored copy must overlap at least half the detector: beyond that the metric of the
    # almost entirely substituted copy is trivially small (a false minimum at the edges)
    reach = c_ncol / 4.0
    lo = max((guess - search_width + 0.5) / binf - 0.5, c_mid - reach)
    hi = min((guess + search_width + 0.5) / binf - 0.5, c_mid + reach)
    if hi <= lo:
        raise TomoDataError(
            f"find_center_vo: search range {guess:.1f} +/- {search_width} px is outside the detector"
        )
    c_cands = c_mid + np.arange(np.ceil(2 * (lo - c_mid)), np.floor(2 * (hi - c_mid)) + 1) / 2.0
    c_mask = _wedge_mask(2 * c_src.shape[0], c_ncol, ratio, drop_for(c_src.shape[0]), xp)
    c_metric = _vo_metrics(c_src, c_cands, c_mask, integer=True)
    k = int(np.argmin(c_metric))
    coarse = (float(c_cands[k]) + 0.5) * binf - 0.5

    # fine: sub-pixel spline shifts around the coarse minimum
    rad = float(np.clip(abs(fine_radius), 1.0, ncol / 4.0))
    stp = float(np.clip(abs(step), 0.05, rad))
    start = float(np.clip(coarse, rad, ncol - rad - 1))
    f_cands = start + np.arange(-rad, rad + stp / 2, stp)
    f_mask = _wedge_mask(2 * fine_src.shape[0], ncol, ratio, drop_for(fine_src.shape[0]), xp)
    f_metric = _vo_metrics(fine_src, f_cands, f_mask, integer=False)
    j = int(np.argmin(f_metric))
    center = float(f_cands[j])
    if 0 < j < len(f_metric) - 1:  # parabola through the minimum and its neighbours
        y0, y1, y2 = f_metric[j - 1], f_metric[j], f_metric[j + 1]
        curv = y0 - 2 * y1 + y2
        if curv > 0:
            center += float(np.clip(0.5 * (y0 - y2) / curv, -0.5, 0.5)) * stp

    # confidence: how much deeper the minimum is than the best minimum elsewhere (> 3 px away).
    # Noise gives several minima of similar depth (prominence < 0.06); real scans 0.15 .. 0.6.
    med = float(np.median(c_metric))
    depth = (med - float(c_metric[k])) / med if med > 0 else 0.0
    far = np.abs(c_cands - c_cands[k]) * binf > 3.0
    rival = (med - float(c_metric[far].min())) / med if far.any() and med > 0 else 0.0
    at_edge = k in (0, len(c_metric) - 1)
    confidence = float(np.clip((depth - max(rival, 0.0)) / 0.2, 0.0, 1.0)) * (0.3 if at_edge else 1.0)
    details = {
        "coarse_center": coarse,
        "coarse_centers": c_cands.tolist(),
        "coarse_metric": c_metric.tolist(),
        "fine_centers": f_cands.tolist(),
        "fine_metric": f_metric.tolist(),
        "metric_depth": depth,
        "rival_depth": rival,
        "minimum_at_search_edge": at_edge,
        "binning": binf,
        "rows_used": (int(c_src.shape[0]), int(fine_src.shape[0])),
        "search_range": ((lo + 0.5) * binf - 0.5, (hi + 0.5) * binf - 0.5),
    }
    return CenterEstimate(center, confidence, "vo", details)


# -- dispatch -------------------------------------------------------------------------------------
def _check_stack(proj: Any, theta: Any) -> Any:
    xp = get_array_module(proj)
    arr = xp.asarray(proj)
    if arr.ndim != 3:
        raise TomoDataError(f"centre finding expects (n_angles, ny, nx) projections, got {tuple(arr.shape)}")
    n = np.asarray(to_numpy(theta)).size
    if n != arr.shape[0]:
        raise TomoDataError(f"centre finding: {n} angles for {arr.shape[0]} projections")
    return arr


def _rows_for(ny: int, params: ReconParams, n_rows: int = 5) -> list[int]:
    """A few rows spread over the reconstructed range (the middle 80 % of the detector by default)."""
    if params.rows is not None:
        lo, hi = params.rows[0], min(params.rows[1], ny)
        if lo >= hi:
            raise TomoDataError(f"rows {params.rows} are outside the detector's {ny} rows")
    else:
        lo, hi = int(ny * 0.1), max(int(math.ceil(ny * 0.9)), int(ny * 0.1) + 1)
    return sorted({int(r) for r in np.linspace(lo, hi - 1, min(n_rows, hi - lo)).round()})


def _vo_rows(proj_norm: Any, theta: np.ndarray, params: ReconParams) -> CenterEstimate:
    rows = _rows_for(proj_norm.shape[1], params)
    width = params.center_search_width
    ests = [find_center_vo(minus_log(proj_norm[:, r, :], params.minus_log_clip), theta, width) for r in rows]
    centers = np.array([e.center for e in ests])
    center = float(np.median(centers))
    spread = float(np.median(np.abs(centers - center))) if len(centers) > 1 else 0.0
    conf = float(np.median([e.confidence for e in ests])) / (1.0 + spread)
    details = {"rows": rows, "row_centers": centers.tolist(), "row_spread_px": spread,
               "row_confidences": [e.confidence for e in ests]}
    return CenterEstimate(center, float(np.clip(conf, 0.0, 1.0)), "vo", details)


def find_center(proj_norm: Any, theta: Any, params: ReconParams) -> CenterEstimate:
    """The rotation axis for normalised projections (n_angles, ny, nx), per ``params``.

    A numeric ``params.center`` is returned as is (method ``manual``). ``auto`` takes Vo's
    multi-row result, checks it against the 0/180 pair and lowers the confidence when they
    disagree by more than a pixel or two; if the pair method is much more confident and Vo's
    minimum was weak, the pair result wins. The winner is then polished to the sharpest
    reconstructed slice within 1.5 px (:func:`refine_center_sharpness`).
    """
    arr = _check_stack(proj_norm, theta)
    if params.center != "auto":
        return CenterEstimate(float(params.center), 1.0, "manual", {})
    th, warn = check_angles(theta)
    extra = {"angle_warning": warn} if warn else {}
    if params.center_method == "vo":
        est = _vo_rows(arr, th, params)
        return CenterEstimate(est.center, est.confidence, "vo", {**est.details, **extra})
    if params.center_method == "pairs":
        est = find_center_pairs(arr, th)
        return CenterEstimate(est.center, est.confidence, "pairs", {**est.details, **extra})

    vo = _vo_rows(arr, th, params)
    try:
        pr: CenterEstimate | None = find_center_pairs(arr, th)
    except TomoDataError:
        pr = None
    details: dict[str, Any] = {"vo": vo, "pairs": pr, **extra}
    if pr is None:
        return refine_center_sharpness(
            arr, th, CenterEstimate(vo.center, vo.confidence * 0.8, "auto:vo", details), params)
    diff = abs(vo.center - pr.center)
    details["disagreement_px"] = diff
    agreement = math.exp(-((diff / 2.0) ** 2))
    if pr.confidence > 2 * vo.confidence and vo.confidence < 0.3:
        conf = pr.confidence * (0.5 + 0.5 * agreement)
        est = CenterEstimate(pr.center, float(np.clip(conf, 0, 1)), "auto:pairs", details)
        return refine_center_sharpness(arr, th, est, params)
    conf = vo.confidence * (0.5 + 0.5 * agreement) + (1 - vo.confidence) * pr.confidence * agreement * 0.5
    est = CenterEstimate(vo.center, float(np.clip(conf, 0, 1)), "auto:vo", details)
    return refine_center_sharpness(arr, th, est, params)


def total_variation(img: Any) -> float:
    """Sum of absolute neighbour differences: smallest for the sharpest, least smeared slice."""
    xp = get_array_module(img)
    return float(xp.abs(xp.diff(img, axis=0)).sum() + xp.abs(xp.diff(img, axis=1)).sum())


def refine_center_sharpness(
    proj_norm: Any, theta: np.ndarray, estimate: CenterEstimate, params: ReconParams,
    radius: float = 1.5, step: float = 0.25, n_rows: int = 2,
) -> CenterEstimate:
    """Polish an estimate to the centre whose reconstructed slices are sharpest (least total
    variation), within ``radius`` px. Sinogram metrics such as Vo's can sit a pixel off the
    image optimum (the TomoPy tooth: Vo 295.0, sharpest slice 296.0); a handful of one-slice
    reconstructions settles it. A minimum on the window's edge leaves the estimate as it was.
    """
    from .reconstruct import reconstruct_sinograms

    rows = _rows_for(proj_norm.shape[1], params, n_rows)
    sino = minus_log(proj_norm[:, rows, :], params.minus_log_clip)
    cands = estimate.center + np.arange(-radius, radius + step / 2, step)
    local = params.with_updates(rows=None, circular_mask=params.circular_mask or 0.95)
    tv = np.array([sum(total_variation(s) for s in reconstruct_sinograms(sino, theta, float(c), local))
                   for c in cands])
    k = int(np.argmin(tv))
    details = {**estimate.details, "sharpness_centers": cands.tolist(), "sharpness_tv": tv.tolist(),
               "before_sharpness": estimate.center}
    if k in (0, len(cands) - 1):
        return CenterEstimate(estimate.center, estimate.confidence * 0.8, estimate.method, details)
    center = float(cands[k])
    y0, y1, y2 = tv[k - 1], tv[k], tv[k + 1]
    curv = y0 - 2 * y1 + y2
    if curv > 0:
        center += float(np.clip(0.5 * (y0 - y2) / curv, -0.5, 0.5)) * step
    return CenterEstimate(center, estimate.confidence, f"{estimate.method}+sharpness", details)


# -- try mode -------------------------------------------------------------------------------------
def try_centers(
    proj_log: Any,
    theta: Any,
    centers: Any,
    params: ReconParams,
    png_path: str | Path | None = None,
    row: int | None = None,
) -> dict[float | str, Any]:
    """Reconstruct detector ``row`` (default: the middle) once per candidate centre.

    ``proj_log`` is (n_angles, ny, nx) -log data and ``centers`` are in its columns (binned ones
    if it is binned); slices get ``params.circular_mask`` like the pipeline's output. Returns
    ``{centre: (n, n) slice}`` and, when ``png_path`` is given, ``"png": Path`` of a contact
    sheet with each slice titled by its centre, on one grey scale so that they compare.
    """
    from bluesky_tomo_hpc.engine.reconstruct import reconstruct_sinograms

    arr = _check_stack(proj_log, theta)
    ny = arr.shape[1]
    r = ny // 2 if row is None else int(row)
    if not 0 <= r < ny:
        raise TomoDataError(f"try_centers: row {r} outside the detector's {ny} rows")
    cands = [float(c) for c in np.atleast_1d(np.asarray(centers, dtype=float))]
    if not cands:
        raise ValueError("try_centers: no centres given")
    th, _ = check_angles(theta)
    sino = arr[:, r : r + 1, :]
    out: dict[float | str, Any] = {}
    for c in cands:
        img = to_numpy(reconstruct_sinograms(sino, th, c, params))[0]
        out[c] = circular_mask(img, params.circular_mask) if params.circular_mask else img
    if png_path is not None:
        out["png"] = _contact_sheet([out[c] for c in cands], cands, Path(png_path), r)
    return out


def _contact_sheet(slices: list[np.ndarray], centers: list[float], path: Path, row: int) -> Path:
    """A grid of slices labelled by centre (matplotlib Agg, no pyplot state: thread-safe)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    k = len(slices)
    ncols = int(math.ceil(math.sqrt(k)))
    nrows = int(math.ceil(k / ncols))
    allv = np.concatenate([s[np.isfinite(s)].ravel() for s in slices])
    vmin, vmax = (np.percentile(allv, [1, 99]) if allv.size else (0.0, 1.0))
    fig = Figure(figsize=(2.2 * ncols, 2.4 * nrows), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    for i, (img, c) in enumerate(zip(slices, centers, strict=True)):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        ax.imshow(img, cmap="gray", vmin=vmin, vmax=vmax)
        ax.set_title(f"center {c:.2f}", fontsize=9)
        ax.axis("off")
    fig.suptitle(f"row {row}: candidate rotation centres", fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path
