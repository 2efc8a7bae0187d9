"""Vo's centre: a sinogram joined with its mirrored copy has least energy outside the physical
double wedge of its 2-D spectrum when the assumed centre is right.

Vo, Atwood and Drakopoulos 2014 (Opt. Express 22, 19078): a coarse integer-shift search, then a
fine sub-pixel one (cubic B-spline column shifts).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from bluesky_tomo_hpc.engine.backend import get_array_module, to_numpy
from bluesky_tomo_hpc.engine.center_estimate import CenterEstimate
from bluesky_tomo_hpc.engine.preprocess import check_angles, ndimage_for
from bluesky_tomo_hpc.model import TomoDataError


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


def _smoothed_rows(s: Any, sigma: tuple[float, float], stride: int) -> Any:
    """``gaussian_filter(s, sigma, mode="reflect")[::stride]``, the same numbers, with the filter
    along the detector run only on the rows kept (SciPy filters axis 0 first, then axis 1)."""
    nd = ndimage_for(get_array_module(s))
    along_angles = nd.gaussian_filter1d(s, sigma[0], axis=0, mode="reflect")[::stride]
    return nd.gaussian_filter1d(along_angles, sigma[1], axis=1, mode="reflect")


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
    max_fine_cols: int | None = None,
) -> CenterEstimate:
    """Vo's centre for one -log sinogram (n_angles, nx), searched within ``center_guess`` (default
    the detector middle) +/- ``search_width`` px at 0.5 px, refined +/- ``fine_radius`` px at
    ``step``. ``theta`` (radians) restricts the data to the first half-turn; ``None`` assumes the
    sinogram covers [0, 180) degrees. ``ratio`` is the object's diameter / detector width.
    ``max_rows`` caps the angles used by the (coarse, fine) searches; the coarse search also
    bins the detector to at most ``max_cols`` columns, the fine one (when given) to at most
    ``max_fine_cols``; ``fine_radius <= 0`` stops after the coarse search."""
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
    # smoothing as Vo's reference code; on long scans every k-th angle is enough (the metric
    # compares angular against detector frequencies, and angular frequencies stay put)
    coarse_src = _smoothed_rows(s, (3, 1), -(-nrow // max_rows[0]))

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

    if fine_radius <= 0:  # coarse only (a wide first search that a local one refines)
        return _estimate(coarse, c_cands, c_metric, k, binf, lo, hi, {"coarse_center": coarse},
                         (int(c_src.shape[0]), 0))
    # fine: sub-pixel spline shifts around the coarse minimum
    fine_src = _smoothed_rows(s, (2, 2), -(-nrow // max_rows[1]))
    fb = 1
    while max_fine_cols and ncol // fb > max_fine_cols:
        fb *= 2
    if fb > 1:  # wide detectors: the fine metric on binned columns, its centre in binned ones
        nc = ncol // fb
        fine_src = fine_src[:, : nc * fb].reshape(fine_src.shape[0], nc, fb).mean(axis=2)
    f_ncol = fine_src.shape[1]
    rad = float(np.clip(abs(fine_radius), 1.0, ncol / 4.0)) / fb
    stp = float(np.clip(abs(step), 0.05, rad * fb)) / fb
    start = float(np.clip((coarse + 0.5) / fb - 0.5, rad, f_ncol - rad - 1))
    f_cands = start + np.arange(-rad, rad + stp / 2, stp)
    f_mask = _wedge_mask(2 * fine_src.shape[0], f_ncol, ratio, drop_for(fine_src.shape[0]), xp)
    f_metric = _vo_metrics(fine_src, f_cands, f_mask, integer=False)
    j = int(np.argmin(f_metric))
    center = float(f_cands[j])
    if 0 < j < len(f_metric) - 1:  # parabola through the minimum and its neighbours
        y0, y1, y2 = f_metric[j - 1], f_metric[j], f_metric[j + 1]
        curv = y0 - 2 * y1 + y2
        if curv > 0:
            center += float(np.clip(0.5 * (y0 - y2) / curv, -0.5, 0.5)) * stp
    center = (center + 0.5) * fb - 0.5
    f_cands = (f_cands + 0.5) * fb - 0.5

    details = {"coarse_center": coarse, "fine_centers": f_cands.tolist(), "fine_metric": f_metric.tolist()}
    return _estimate(center, c_cands, c_metric, k, binf, lo, hi, details,
                     (int(c_src.shape[0]), int(fine_src.shape[0])))


def _estimate(center: float, c_cands: np.ndarray, c_metric: np.ndarray, k: int, binf: int, lo: float,
              hi: float, details: dict[str, Any], rows_used: tuple[int, int]) -> CenterEstimate:
    """The answer with its confidence: how much deeper the coarse minimum is than the best
    minimum elsewhere (> 3 px away). Noise gives several minima of similar depth (prominence
    < 0.06); real scans 0.15 .. 0.6."""
    med = float(np.median(c_metric))
    depth = (med - float(c_metric[k])) / med if med > 0 else 0.0
    far = np.abs(c_cands - c_cands[k]) * binf > 3.0
    rival = (med - float(c_metric[far].min())) / med if far.any() and med > 0 else 0.0
    at_edge = k in (0, len(c_metric) - 1)
    confidence = float(np.clip((depth - max(rival, 0.0)) / 0.2, 0.0, 1.0)) * (0.3 if at_edge else 1.0)
    details = {
        **details,
        "coarse_centers": c_cands.tolist(),
        "coarse_metric": c_metric.tolist(),
        "metric_depth": depth,
        "rival_depth": rival,
        "minimum_at_search_edge": at_edge,
        "binning": binf,
        "rows_used": rows_used,
        "search_range": ((lo + 0.5) * binf - 0.5, (hi + 0.5) * binf - 0.5),
    }
    return CenterEstimate(center, confidence, "vo", details)
