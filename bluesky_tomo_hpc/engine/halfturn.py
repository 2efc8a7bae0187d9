"""360-degree scans: the second half-turn is the first one mirrored, which both fixes the axis and
widens the field of view.

Why one module: a projection at ``theta + 180`` mirrored is the projection at ``theta`` shifted
by ``d = 2 * centre - (nx - 1)``. Registering the two half-turns of a sinogram therefore gives
the centre wherever the axis is (Vo et al. 2021, Opt. Express 29, 17849; algotom
``find_center_360``), and, when the axis sits near one edge of the detector (half acquisition,
offset axis, for samples wider than the detector), the same shift stitches the two halves into
one 180-degree sinogram covering up to twice the detector width (algotom
``convert_sinogram_360_to_180``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from bluesky_tomo_hpc.engine.backend import to_numpy
from bluesky_tomo_hpc.model import TomoDataError

__all__ = [
    "HalfTurnMatch",
    "covers_full_turn",
    "mirrored_half_turns",
    "match_half_turns",
    "is_half_acquisition",
    "output_width",
    "stitch_half_acquisition",
]

HalfAcquisition = Literal["auto", "off", "on"]


def covers_full_turn(theta: np.ndarray) -> bool:
    """True when the angles (radians) reach round to 360 degrees (within one angular step)."""
    t = np.sort(np.asarray(theta, dtype=np.float64))
    if t.size < 4:
        return False
    step = float(np.median(np.diff(t)))
    return float(t[-1] - t[0]) + 1.5 * step >= 2 * np.pi - 1e-6


def mirrored_half_turns(sino: Any, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(first, mirrored_second, angles)``: the rows of the first half-turn and, for each, the
    row 180 degrees later (linear interpolation in angle, so no exact pair is needed) mirrored
    left-right. Rows are sorted by angle first (some scans store them in acquisition order)."""
    s = np.asarray(to_numpy(sino), dtype=np.float32)
    order = np.argsort(theta, kind="stable")
    t, s = np.asarray(theta, dtype=np.float64)[order], s[order]
    first = t - t[0] < np.pi - 1e-9
    partner = t[first] + np.pi
    inside = partner <= t[-1] + 1e-9
    if inside.sum() < 4:
        raise TomoDataError("fewer than 4 projections have a partner 180 degrees later: not a 360-degree "
                            "scan")
    idx = np.flatnonzero(first)[inside]
    pt = partner[inside]
    hi = np.clip(np.searchsorted(t, pt), 1, t.size - 1)
    lo = hi - 1
    w = ((pt - t[lo]) / np.maximum(t[hi] - t[lo], 1e-12)).astype(np.float32)[:, None]
    second = (1 - w) * s[lo] + w * s[hi]
    return s[idx], second[:, ::-1].copy(), t[idx]


@dataclass(frozen=True)
class HalfTurnMatch:
    """Result of registering the two half-turns: ``center`` (pixel-index column), ``shift``
    ``d = 2 * center - (nx - 1)``, ``overlap_px = nx - abs(d)``, ``uncertainty_px`` (from the
    disagreement of independent subsets of angles and the depth of the cost minimum)."""

    center: float
    shift: float
    overlap_px: float
    uncertainty_px: float
    details: dict[str, Any]


def _overlap_costs(a: np.ndarray, b: np.ndarray, shifts: np.ndarray) -> np.ndarray:
    """Normalised mean squared difference of ``a[:, x + d]`` and ``b[:, x]`` over their overlap,
    for every integer ``d`` in ``shifts``: one FFT correlation plus cumulative column energies,
    O(n log n) instead of one pass per shift."""
    import scipy.fft

    n = a.shape[1]
    m = scipy.fft.next_fast_len(2 * n)
    fa = scipy.fft.rfft(a, m, axis=1, workers=-1)
    fb = scipy.fft.rfft(b, m, axis=1, workers=-1)
    cross = scipy.fft.irfft((fa * np.conj(fb)).sum(axis=0), m)  # cross[d] = sum_x a[x + d] b[x]
    ea = np.concatenate([[0.0], np.cumsum((a.astype(np.float64) ** 2).sum(axis=0))])
    eb = np.concatenate([[0.0], np.cumsum((b.astype(np.float64) ** 2).sum(axis=0))])
    out = np.empty(len(shifts))
    for k, d in enumerate(shifts.astype(int)):
        lo, hi = max(d, 0), n + min(d, 0)  # columns of a in the overlap
        sa = ea[hi] - ea[lo]
        sb = eb[hi - d] - eb[lo - d]
        ab = cross[d % m]
        out[k] = (sa + sb - 2 * ab) / max(sa + sb, 1e-30)
    return out


def _fine_shift(a: np.ndarray, b: np.ndarray, d0: int, radius: float = 1.5, step: float = 0.1) -> float:
    """Sub-pixel shift near the integer ``d0``: ``b`` resampled (linear) at ``x - f`` for
    fractional ``f``, cost on the common columns, parabola through the minimum."""
    n = a.shape[1]
    cands = d0 + np.arange(-radius, radius + step / 2, step)
    margin = int(math.ceil(radius)) + 1
    costs = []
    for d in cands:
        di = int(math.floor(d))
        f = d - di
        lo, hi = max(di, 0) + margin, n + min(di, 0) - margin
        if hi - lo < 4:
            return float(d0)
        xb = np.arange(lo - di, hi - di)
        # a[x + d] ~ b[x]  <=>  a[y] ~ b[y - d] = (1 - f) b[y - di] + f b[y - di - 1]
        bb = (1 - f) * b[:, xb] + f * b[:, xb - 1]
        aa = a[:, lo:hi]
        costs.append(float(((aa - bb) ** 2).mean() / max(float((aa**2).mean() + (bb**2).mean()), 1e-30)))
    c = np.asarray(costs)
    j = int(np.argmin(c))
    best = float(cands[j])
    if 0 < j < len(c) - 1:
        curv = c[j - 1] - 2 * c[j] + c[j + 1]
        if curv > 0:
            best += float(np.clip(0.5 * (c[j - 1] - c[j + 1]) / curv, -0.5, 0.5)) * step
    return best


def _edges(rows: np.ndarray) -> np.ndarray:
    """Smoothed derivative along the detector: what fixes the shift are the sample's edges;
    values would also match on flat background (air on both sides) and on slow trends."""
    from scipy.ndimage import gaussian_filter1d

    smooth = gaussian_filter1d(rows.astype(np.float32), 1.0, axis=0, mode="nearest")
    return gaussian_filter1d(smooth, 1.5, axis=1, order=1, mode="nearest")


def match_half_turns(
    sino: Any, theta: np.ndarray, *, min_overlap: float = 0.12, window: tuple[float, float] | None = None
) -> HalfTurnMatch:
    """The centre of a 360-degree -log sinogram (n_angles, nx) from its two half-turns.

    ``min_overlap`` (fraction of nx) keeps the mirrored copy from matching on a few edge columns;
    ``window`` = (lowest, highest) centre to consider. The uncertainty combines the spread of the
    centres from the first and second quarter-turns of pairs (sample drift, wobble) with the
    depth of the cost minimum against the best rival more than 2 px away.
    """
    first, second, _ = mirrored_half_turns(sino, theta)
    n = first.shape[1]
    a, b = _edges(first), _edges(second)
    reach = int(n - max(4, round(min_overlap * n)))
    shifts = np.arange(-reach, reach + 1)
    if window is not None:
        lo_d, hi_d = 2 * window[0] - (n - 1), 2 * window[1] - (n - 1)
        shifts = shifts[(shifts >= math.floor(lo_d)) & (shifts <= math.ceil(hi_d))]
        if shifts.size == 0:
            raise TomoDataError(f"centre window {window} leaves no overlap of the two half-turns")
    costs = _overlap_costs(a, b, shifts)
    k = int(np.argmin(costs))
    d0 = int(shifts[k])
    d = _fine_shift(a, b, d0)
    # two independent subsets of the pairs (the first and second quarter-turn): they disagree
    # when the sample moved or the axis wobbled
    half = a.shape[0] // 2
    subs = [_fine_shift(a[s], b[s], d0) for s in (slice(0, half), slice(half, None))] if half >= 4 else [d, d]
    spread_c = abs(subs[0] - subs[1]) / 2.0
    med = float(np.median(costs))
    far = np.abs(shifts - d0) > 4
    rival = float(costs[far].min()) if far.any() else med
    # depth: how much lower the minimum is than the best rival, relative to the typical cost;
    # a shallow minimum (rival almost as good) means the data cannot decide
    prominence = (rival - float(costs[k])) / max(med - float(costs[k]), 1e-12)
    at_edge = k in (0, len(costs) - 1)
    uncertainty = math.hypot(spread_c, 0.1) / max(min(prominence, 1.0), 0.05) * (4.0 if at_edge else 1.0)
    center = (d + n - 1) / 2.0
    details = {"shift_px": d, "subset_centers": [(s + n - 1) / 2.0 for s in subs], "prominence": prominence,
               "cost_min": float(costs[k]), "cost_median": med, "minimum_at_window_edge": at_edge,
               "pairs": int(first.shape[0])}
    return HalfTurnMatch(center, d, n - abs(d), uncertainty, details)


def is_half_acquisition(center: float, nx: int, theta: np.ndarray, setting: str = "auto") -> bool:
    """Whether a scan is a half acquisition: ``on``/``off`` as configured; ``auto``: a 360-degree
    scan whose axis lies in the outer quarter of the detector (its half-turns overlap on less
    than half the width, so the sample must extend beyond the detector on the other side)."""
    if setting == "off":
        return False
    full = covers_full_turn(theta)
    if setting == "on":
        if not full:
            raise TomoDataError("half acquisition needs a 360-degree scan; the angles cover less")
        return True
    return full and abs(center - (nx - 1) / 2.0) > nx / 4.0


def output_width(nx: int, center: float, theta: np.ndarray, setting: str = "auto") -> int:
    """Width of the reconstructed slices of an ``nx``-wide scan with this centre: ``nx``, or the
    stitched width ``nx + |round(2 * center - (nx - 1))|`` of a half acquisition."""
    if is_half_acquisition(center, nx, theta, setting):
        return nx + abs(int(round(2.0 * center - (nx - 1))))
    return nx


def stitch_half_acquisition(
    proj_log: Any, theta: np.ndarray, center: float
) -> tuple[np.ndarray, np.ndarray, float]:
    """A 360-degree offset-axis stack (n_angles, nz, nx) -> the 180-degree stack of the full
    field of view ``(n_half, nz, nx + abs(d))``, its angles and the centre in the new columns.

    The second half-turn, mirrored and shifted by ``d = 2 * center - (nx - 1)`` (fractional part
    by linear interpolation), continues the first one beyond the axis; in the overlap the two are
    blended with linear weights so that no seam is left (Vo's ``convert_sinogram_360_to_180``).
    """
    arr = np.asarray(to_numpy(proj_log), dtype=np.float32)
    if arr.ndim != 3:
        raise TomoDataError(f"stitch_half_acquisition expects (n_angles, nz, nx), got {arr.shape}")
    n_ang, nz, nx = arr.shape
    d = 2.0 * center - (nx - 1)
    di = int(round(d))
    frac = d - di
    if abs(di) >= nx - 2:
        raise TomoDataError(
            f"centre {center:.1f} leaves no overlap between the half-turns of a {nx}-px detector"
        )
    flat = arr.transpose(1, 0, 2).reshape(nz * n_ang, nx)  # (nz * n_ang, nx) rows, angle fastest
    firsts, seconds, angles = [], [], None
    for z in range(nz):
        f, s, angles = mirrored_half_turns(flat[z * n_ang : (z + 1) * n_ang], theta)
        if frac:  # g[x] = s[x - frac]
            x = np.arange(nx) - frac
            x0 = np.clip(np.floor(x).astype(int), 0, nx - 1)
            x1 = np.clip(x0 + 1, 0, nx - 1)
            w = (x - np.floor(x)).astype(np.float32)
            s = (1 - w) * s[:, x0] + w * s[:, x1]
        firsts.append(f)
        seconds.append(s)
    a, g = np.stack(firsts, axis=1), np.stack(seconds, axis=1)  # (n_half, nz, nx)
    width = nx + abs(di)
    out = np.zeros((a.shape[0], nz, width), dtype=np.float32)
    ov = nx - abs(di)
    ramp = np.linspace(1.0, 0.0, ov + 2, dtype=np.float32)[1:-1]  # weight of the unmirrored half
    if di >= 0:  # axis right of the middle: the mirrored half extends to the right
        out[..., :di] = a[..., :di]
        out[..., di:nx] = ramp * a[..., di:] + (1 - ramp) * g[..., :ov]
        out[..., nx:] = g[..., ov:]
        new_center = center
    else:
        e = -di
        out[..., :e] = g[..., :e]
        out[..., e:nx] = ramp[::-1] * a[..., :ov] + (1 - ramp[::-1]) * g[..., e:]
        out[..., nx:] = a[..., ov:]
        new_center = center + e
    assert angles is not None
    return out, angles, float(new_center)
