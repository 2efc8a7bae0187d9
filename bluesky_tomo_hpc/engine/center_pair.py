"""The centre from the 0-degree projection and the mirrored 180-degree one.

Phase correlation, sub-pixel by a locally up-sampled DFT, as TomoPy ``find_center_pc`` and ALS
8.3.2's default: cheap and independent of the sinogram, but it needs a (near) 180-degree pair.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from bluesky_tomo_hpc.engine.backend import get_array_module
from bluesky_tomo_hpc.engine.center_estimate import CenterEstimate
from bluesky_tomo_hpc.engine.center_rows import check_projection_stack
from bluesky_tomo_hpc.engine.preprocess import check_angles, minus_log
from bluesky_tomo_hpc.model import TomoDataError


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
    proj_norm: Any, theta: Any, *, max_pairs: int = 5, upsample: int = 20, minus_logged: bool = False
) -> CenterEstimate:
    """Centre from the projection pair(s) closest to 180 degrees apart.

    ``proj_norm`` is normalised transmission (n_angles, ny, nx); it is -log'ed so the background
    is zero (``minus_logged``: it is -log data already). Without an exact 180-degree pair the
    nearest one is used and its angle mismatch lowers the confidence (features off the axis then
    disagree by up to radius * mismatch).
    """
    arr = check_projection_stack(proj_norm, theta)
    th, warn = check_angles(theta)
    pairs, mismatch = _pairs(th, max_pairs)
    if not pairs:
        raise TomoDataError("find_center_pairs: no two projections are near 180 degrees apart")
    centers, peaks = [], []
    for i, j in pairs:
        a, b = (arr[i], arr[j]) if minus_logged else (minus_log(arr[i]), minus_log(arr[j]))
        c, pk = center_from_pair(a, b, upsample)
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
