"""Rotation-axis (centre) finding: the parameter that most often spoils an automatic reconstruction.

Convention everywhere: the centre is a 0-based detector column index; an axis in the middle of
an N-pixel detector is at (N - 1) / 2. TomoPy's ``find_center_pc`` answers 0.5 px higher.

* :func:`find_center_pairs`: register the 0-degree projection with the mirrored 180-degree one
  (phase correlation, sub-pixel by a locally up-sampled DFT), as TomoPy ``find_center_pc`` and
  ALS 8.3.2's default. Cheap and independent of the sinogram, but needs a (near) 180 pair.
* :func:`find_center_vo`: Vo et al. 2014 (Opt. Express 22, 19078): a sinogram joined with its
  mirrored copy has least energy outside the physical double wedge of its 2-D spectrum when the
  assumed centre is right. Coarse integer-shift search, then a fine sub-pixel search.
* :func:`find_center`: dispatch on ``ReconParams.center_method``; ``auto`` registers the two
  half-turns of a 360-degree scan (:mod:`.halfturn`, also for half acquisitions), or runs Vo on
  a few rows of a 180-degree scan, polished by slice sharpness and cross-checked with the pair.
  Each answer carries an uncertainty in px; the confidence is a fixed function of it.
* :func:`try_centers`: one slice per candidate centre, for a person to compare.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bluesky_tomo_hpc.engine.backend import get_array_module, to_numpy
from bluesky_tomo_hpc.engine.halfturn import covers_full_turn, is_half_acquisition, match_half_turns
from bluesky_tomo_hpc.engine.params import ReconParams
from bluesky_tomo_hpc.engine.preprocess import (
    check_angles,
    circular_mask,
    minus_log,
    ndimage_for,
    to_binned,
    to_unbinned,
)
from bluesky_tomo_hpc.engine.sinogram_recon import reconstruct_at_centers
from bluesky_tomo_hpc.model import TomoDataError

__all__ = [
    "CenterEstimate",
    "phase_correlation_shift",
    "center_from_pair",
    "find_center_pairs",
    "find_center_vo",
    "find_center",
    "search_window",
    "confidence_from_uncertainty",
    "CONFIDENCE_THRESHOLD",
    "resolve_uncertain_center",
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


def center_from_pair(p0: Any, p180: Any, upsample: int = 20, max_rows: int = 256) -> tuple[float, float]:
    """Centre (pixel-index convention) and correlation peak from a projection and the one taken
    180 degrees later: ``p180`` mirrored is ``p0`` shifted by (N - 1) - 2 * centre. Frames taller
    than ``max_rows`` are averaged in blocks of rows first (the live preview's 1 s budget)."""
    if p0.shape != p180.shape or p0.ndim != 2:
        raise ValueError(f"center_from_pair: need two equal (ny, nx) images, got {p0.shape}, {p180.shape}")
    xp = get_array_module(p0, p180)
    a, b = xp.asarray(p0, dtype=xp.float32), xp.asarray(p180, dtype=xp.float32)
    k = -(-a.shape[0] // max_rows)
    if k > 1:  # only the horizontal shift matters: averaging rows keeps it and saves the time
        n = a.shape[0] // k
        a = a[: n * k].reshape(n, k, -1).mean(axis=1)
        b = b[: n * k].reshape(n, k, -1).mean(axis=1)
    _, dx, peak = phase_correlation_shift(a, xp.flip(b, axis=1), upsample)
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
    max_cols: int = 1024,
) -> CenterEstimate:
    """Vo's centre for one -log sinogram (n_angles, nx), searched within ``center_guess`` (default
    the detector middle) +/- ``search_width`` px at 0.5 px, refined +/- ``fine_radius`` px at
    ``step``. ``theta`` (radians) restricts the data to the first half-turn; ``None`` assumes the
    sinogram covers [0, 180) degrees. ``ratio`` is the object's diameter / detector width.
    ``max_rows`` caps the angles used by the (coarse, fine) searches; the coarse search also
    bins the detector to at most ``max_cols`` columns."""
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
    while ncol // binf > max_cols:
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
#: Below this confidence an automatic centre is not used as is: warning, contact sheet, fallback.
CONFIDENCE_THRESHOLD = 0.5
#: The confidence is exp(-u^2 / (2 s^2)) of the estimated uncertainty u (px), with s this scale:
#: confidence 0.5 <=> u = 0.59 px, 0.9 <=> u = 0.23 px (calibration: docs/how-to/center.md).
UNCERTAINTY_SCALE_PX = 0.5


def confidence_from_uncertainty(uncertainty_px: float) -> float:
    """Map an estimated centre uncertainty (px) to a confidence in [0, 1]."""
    if not math.isfinite(uncertainty_px):
        return 0.0
    return float(math.exp(-0.5 * (uncertainty_px / UNCERTAINTY_SCALE_PX) ** 2))


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


def search_window(nx: int, params: ReconParams) -> tuple[float, float]:
    """Lowest and highest centre an automatic search may answer for a full-field scan:
    ``center_search_width`` px either side of the detector middle, within the detector."""
    mid = (nx - 1) / 2.0
    return max(mid - params.center_search_width, 0.0), min(mid + params.center_search_width, nx - 1.0)


def _row_groups(proj_norm: Any, params: ReconParams, clip: float) -> tuple[list[int], list[Any]]:
    """Two -log sinograms, each the mean of up to 8 rows of one half of the rows used.

    Why sums: a sum of sinograms is the sinogram of the summed slices, with the same axis, and
    has less noise; two independent groups (upper, lower) still reveal a tilted axis or a
    local failure by disagreeing, at a third of the cost of five single rows."""
    rows = _rows_for(proj_norm.shape[1], params, n_rows=16)
    halves = [rows[: (len(rows) + 1) // 2], rows[len(rows) // 2 :]] if len(rows) > 1 else [rows]
    xp = get_array_module(proj_norm)
    groups = [minus_log(proj_norm[:, g, :], clip).mean(axis=1, dtype=xp.float32) for g in halves]
    return rows, groups


def _vo_rows(proj_norm: Any, theta: np.ndarray, params: ReconParams) -> CenterEstimate:
    """Vo's centre of two row groups (see :func:`_row_groups`), sized for speed: at most 192 / 384
    angles and 512 columns in the coarse search, +/- 2 px at 0.25 px in the fine one."""
    rows, groups = _row_groups(proj_norm, params, params.minus_log_clip)
    width = params.center_search_width
    ests = [find_center_vo(g, theta, width, fine_radius=2.0, max_rows=(192, 384), max_cols=512)
            for g in groups]
    centers = np.array([e.center for e in ests])
    center = float(np.median(centers))
    spread = float(np.abs(centers - center).max()) if len(centers) > 1 else 0.0
    conf = float(np.median([e.confidence for e in ests]))
    details = {"rows": rows, "row_centers": centers.tolist(), "row_spread_px": spread,
               "row_confidences": [e.confidence for e in ests],
               "minimum_at_search_edge": any(e.details["minimum_at_search_edge"] for e in ests)}
    return CenterEstimate(center, float(np.clip(conf, 0.0, 1.0)), "vo", details)


def _halfturn_rows(proj_norm: Any, theta: np.ndarray, params: ReconParams) -> CenterEstimate:
    """360-degree scans: register the two half-turns of a few rows (any axis position); a
    half acquisition (axis in the outer quarter) is recognised here, else the search window
    applies."""
    nx = proj_norm.shape[2]
    rows = _rows_for(proj_norm.shape[1], params)
    sinos = [to_numpy(minus_log(proj_norm[:, r, :], params.minus_log_clip)) for r in rows]
    matches = [match_half_turns(s, theta) for s in sinos]
    free = float(np.median([m.center for m in matches]))
    half = is_half_acquisition(free, nx, theta, params.half_acquisition)
    window = search_window(nx, params)
    if not half and not window[0] <= free <= window[1]:
        matches = [match_half_turns(s, theta, window=window) for s in sinos]
    centers = np.array([m.center for m in matches])
    center = float(np.median(centers))
    spread = float(np.median(np.abs(centers - center))) if len(centers) > 1 else 0.0
    u = math.hypot(float(np.median([m.uncertainty_px for m in matches])), spread)
    details: dict[str, Any] = {
        "rows": rows, "row_centers": centers.tolist(), "row_spread_px": spread,
        "row_uncertainties_px": [m.uncertainty_px for m in matches], "half_acquisition": half,
        "overlap_px": float(np.median([m.overlap_px for m in matches])),
        "matches": [m.details for m in matches],
    }
    if half:
        details["axis_side"] = "right" if center > (nx - 1) / 2.0 else "left"
    else:
        details["search_window"] = window
    details["uncertainty_px"] = u
    return CenterEstimate(center, confidence_from_uncertainty(u), "halfturn", details)


def _vo_uncertainty(vo: CenterEstimate) -> float:
    """Vo's metric: a deep, unrivalled minimum (confidence 1) pins the centre to ~0.3 px; a
    shallow one (noise, truncation) leaves it loose."""
    return math.hypot(0.3 / max(vo.confidence, 0.05), float(vo.details.get("row_spread_px", 0.0)))


def find_center(proj_norm: Any, theta: Any, params: ReconParams) -> CenterEstimate:
    """The rotation axis for normalised projections (n_angles, ny, nx), per ``params``.

    A numeric ``params.center`` is returned as is (method ``manual``). ``auto``: a 360-degree
    scan registers its two half-turns (:mod:`.halfturn`; recognises half acquisitions); a
    180-degree scan takes Vo's multi-row result polished to the sharpest slice
    (:func:`refine_center_sharpness`) and cross-checked with the 0/180 pair when there is one.
    Every automatic answer stays within :func:`search_window` (unless a half acquisition) and
    carries ``details["uncertainty_px"]``; the confidence is
    :func:`confidence_from_uncertainty` of it, compare with :data:`CONFIDENCE_THRESHOLD`.
    """
    arr = _check_stack(proj_norm, theta)
    if params.center != "auto":
        return CenterEstimate(float(params.center), 1.0, "manual", {})
    th, warn = check_angles(theta)
    if np.any(np.diff(th) < 0):  # Vo's metric and the pairs need the rows in angle order
        order = np.argsort(th, kind="stable")
        th, arr = th[order], arr[get_array_module(arr).asarray(order)]
    extra = {"angle_warning": warn} if warn else {}
    method = params.center_method
    if method == "halfturn" or (method == "auto" and covers_full_turn(th)):
        est = _halfturn_rows(arr, th, params)
        return CenterEstimate(est.center, est.confidence, est.method, {**est.details, **extra})
    if method == "pairs":
        est = find_center_pairs(arr, th)
        return CenterEstimate(est.center, est.confidence, "pairs", {**est.details, **extra})
    vo = _vo_rows(arr, th, params)
    if method == "vo":
        u = _vo_uncertainty(vo)
        return CenterEstimate(vo.center, confidence_from_uncertainty(u), "vo",
                              {**vo.details, **extra, "uncertainty_px": u})
    try:
        pr: CenterEstimate | None = find_center_pairs(arr, th)
    except TomoDataError:
        pr = None
    lo, hi = search_window(arr.shape[2], params)
    start, u_start = vo, _vo_uncertainty(vo)
    if (pr is not None and (vo.details["minimum_at_search_edge"] or vo.confidence < 0.3)
            and lo <= pr.center <= hi and min(pr.details["peaks"]) > 0.5
            and pr.details["angle_mismatch_deg"] <= 1.5):
        # Vo's metric has a false minimum where the mirrored copy barely overlaps (axis more
        # than ~nx/8 from the middle, small sample): the 0/180 pair does not, so start there;
        # features at a quarter of the width move by r * mismatch between the two projections
        start = pr
        u_start = math.hypot(0.3 / min(pr.details["peaks"]),
                             0.125 * arr.shape[2] * math.radians(pr.details["angle_mismatch_deg"]))
    est = refine_center_sharpness(arr, th, start, params)
    details: dict[str, Any] = {**est.details, "vo": vo, "pairs": pr, "started_from": start.method, **extra}
    # the image optimum is what a person checks; Vo's metric may sit ~1 px off it (the tooth)
    u = math.hypot(u_start, 0.25 * abs(est.center - start.center))
    if est.details.get("sharpness_at_edge"):
        u += 1.0  # the image optimum is further from the start than the refinement follows
    if pr is not None and start is vo and pr.details["angle_mismatch_deg"] < 0.5 and pr.confidence > 0.3:
        diff = abs(pr.center - est.center)
        details["disagreement_px"] = diff
        if diff > 1.0:  # two independent methods disagree: the worse of them bounds the error
            u = math.hypot(u, diff / 2.0)
        elif diff < 0.5 and pr.confidence >= 0.5:
            # a sinogram metric plus image sharpness, and a projection registration, fail in
            # different ways: agreeing, they pin the centre to about their difference
            u = min(u, max(0.35, diff))
    center = est.center
    if not lo <= center <= hi:
        center = float(np.clip(center, lo, hi))
        u += abs(center - est.center)
    details.update(uncertainty_px=u, search_window=(lo, hi))
    return CenterEstimate(center, confidence_from_uncertainty(u), f"auto:{est.method}", details)


def resolve_uncertain_center(
    est: CenterEstimate, nx: int, fallback: float | None = None, binning: int = 1
) -> CenterEstimate:
    """An automatic centre whose confidence is below :data:`CONFIDENCE_THRESHOLD` is not used
    silently: it is replaced by ``fallback`` (the last confident centre of this detector, same
    columns) or else the detector middle, and ``details`` say so (``uncertain``, ``warning``,
    ``estimate``); the warning names unbinned columns (``binning``). A half acquisition keeps
    its estimate when there is no fallback: the middle of the detector cannot be its axis.
    Confident, manual and given centres pass unchanged."""
    if est.confidence >= CONFIDENCE_THRESHOLD or est.method in ("manual", "given"):
        return est
    half = bool(est.details.get("half_acquisition"))
    if fallback is not None:
        use, source = float(fallback), "last confident centre of this detector"
    elif half:
        use, source = est.center, "uncertain estimate (half acquisition: the middle cannot be the axis)"
    else:
        use, source = (nx - 1) / 2.0, "detector middle"
    u = float(est.details.get("uncertainty_px", float("nan"))) * binning
    warning = (f"centre uncertain: the automatic centre {to_unbinned(est.center, binning):.2f} px "
               f"({est.method}) has confidence {est.confidence:.2f} < {CONFIDENCE_THRESHOLD} (uncertainty "
               f"{u:.2f} px); using the {source}, {to_unbinned(use, binning):.2f} px: check it with "
               "`recon --center try`")
    details = {**est.details, "uncertain": True, "warning": warning, "estimate": est.center,
               "estimate_method": est.method, "fallback": source}
    return CenterEstimate(use, est.confidence, "fallback", details)


def total_variation(img: Any) -> float:
    """Sum of absolute neighbour differences: smallest for the sharpest, least smeared slice."""
    xp = get_array_module(img)
    return float(xp.abs(xp.diff(img, axis=0)).sum() + xp.abs(xp.diff(img, axis=1)).sum())


def refine_center_sharpness(
    proj_norm: Any, theta: np.ndarray, estimate: CenterEstimate, params: ReconParams,
    radius: float = 1.0, step: float = 0.25, max_width: int = 768, max_angles: int = 400, extend: int = 2,
) -> CenterEstimate:
    """Polish an estimate to the centre whose reconstructed slice is sharpest (least total
    variation), within ``radius`` px, followed up to ``extend`` px further when the
    sharpest is on the window's edge. Sinogram metrics such as Vo's can sit a pixel off the
    image optimum (the TomoPy tooth: Vo 295.0, sharpest slice 296.0); a handful of one-slice
    reconstructions (of the mean of the rows used, see :func:`_row_groups`) settles it. A
    minimum on the window's edge leaves the estimate as it was (``details["sharpness_at_edge"]``).
    """
    _, groups = _row_groups(proj_norm, params, params.minus_log_clip)
    xp = get_array_module(proj_norm)
    sino = xp.stack(groups, axis=0).mean(axis=0)
    cands = estimate.center + np.arange(-radius, radius + step / 2, step)
    ratio = params.circular_mask or 0.95
    b = 1
    while sino.shape[1] // (2 * b) >= max_width // 2 and sino.shape[1] // b > max_width:
        b *= 2  # wide detectors: slices of at most ~max_width px are sharp enough to compare
    if b > 1:
        nb = sino.shape[1] // b
        sino = sino[:, : nb * b].reshape(sino.shape[0], nb, b).mean(axis=2)
    stride = -(-sino.shape[0] // max_angles)  # long scans: every k-th angle is enough to compare
    sino, theta = sino[::stride], np.asarray(theta)[::stride]
    def tv_at(cs: np.ndarray) -> np.ndarray:
        slices = reconstruct_at_centers(sino, theta, [to_binned(float(c), b) for c in cs], params)
        return np.array([total_variation(circular_mask(s, ratio)) for s in slices])

    tv = tv_at(cands)
    for _ in range(extend):  # the optimum lies beyond the window: follow it a pixel at a time
        k = int(np.argmin(tv))
        if 0 < k < len(cands) - 1:
            break
        sign = -1.0 if k == 0 else 1.0
        more = cands[k] + sign * step * np.arange(1, int(round(1.0 / step)) + 1)
        more_tv = tv_at(more)
        cands, tv = (np.concatenate([more[::-1], cands]), np.concatenate([more_tv[::-1], tv])) if sign < 0 \
            else (np.concatenate([cands, more]), np.concatenate([tv, more_tv]))
    k = int(np.argmin(tv))
    details = {**estimate.details, "sharpness_centers": cands.tolist(), "sharpness_tv": tv.tolist(),
               "before_sharpness": estimate.center, "sharpness_at_edge": k in (0, len(cands) - 1)}
    if k in (0, len(cands) - 1):
        return CenterEstimate(estimate.center, estimate.confidence, estimate.method, details)
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
    row: int = 0,
) -> dict[float, np.ndarray]:
    """Reconstruct ``row`` of ``proj_log`` once per candidate centre: ``{centre: (n, n) slice}``.

    ``proj_log`` is (n_angles, ny, nx) -log data and ``centers`` are in its columns (binned ones
    if it is binned); slices get ``params.circular_mask`` like the pipeline's output. The
    contact sheet people look at is :func:`bluesky_tomo_hpc.results.pictures.save_center_sheet_png`.
    """
    arr = _check_stack(proj_log, theta)
    ny = arr.shape[1]
    r = int(row)
    if not 0 <= r < ny:
        raise TomoDataError(f"try_centers: row {r} outside the {ny} rows given")
    cands = [float(c) for c in np.atleast_1d(np.asarray(centers, dtype=float))]
    if not cands:
        raise ValueError("try_centers: no centres given")
    th, _ = check_angles(theta)
    slices = reconstruct_at_centers(arr[:, r, :], th, cands, params)
    return {c: to_numpy(circular_mask(img, params.circular_mask) if params.circular_mask else img)
            for c, img in zip(cands, slices, strict=True)}
