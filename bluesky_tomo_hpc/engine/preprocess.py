"""Projection preprocessing: flat/dark normalisation, -log, outliers, bad frames, padding, masks.

Every function takes NumPy or CuPy arrays and answers in the same module (``get_array_module``),
so the live preview on a GPU node and the batch job on a CPU node run the same lines. Errors are
:class:`~bluesky_tomo_hpc.model.TomoDataError` s whose message says what is wrong with the data,
because a scan that cannot be normalised must stop the pipeline with a reason, not a NaN volume.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from bluesky_tomo_hpc.engine.backend import GPU_FEATURE, get_array_module, run_blocks, to_numpy
from bluesky_tomo_hpc.extras import require
from bluesky_tomo_hpc.model import MissingCalibrationError, ScanData, TomoDataError

__all__ = [
    "normalize",
    "minus_log",
    "all_finite",
    "remove_zingers",
    "validate_scan",
    "check_angles",
    "mask_bad_frames",
    "repair_dead_pixels",
    "pad_width_for",
    "pad_edge",
    "unpad",
    "circular_mask",
    "ndimage_for",
    "bin_frames",
    "to_binned",
    "to_unbinned",
]


def ndimage_for(xp: Any) -> Any:
    """``scipy.ndimage`` for NumPy, ``cupyx.scipy.ndimage`` for CuPy (submodules need importing)."""
    if xp is np:
        import scipy.ndimage as nd

        return nd
    return require("cupyx.scipy.ndimage", GPU_FEATURE)


# -- normalisation --------------------------------------------------------------------------------
def _as_stack(name: str, a: Any, frame_shape: tuple[int, ...] | None, xp: Any) -> Any:
    """A (n, ny, nx) stack in module ``xp``; a single (ny, nx) frame is accepted as n == 1."""
    a = xp.asarray(a)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3:
        raise TomoDataError(f"{name} must be (n, ny, nx) frames, got an array of shape {tuple(a.shape)}")
    if frame_shape is not None and tuple(a.shape[1:]) != tuple(frame_shape):
        raise TomoDataError(
            f"{name} frames are {tuple(a.shape[1:])} but projections are {tuple(frame_shape)}: "
            "darks, flats and projections must come from the same detector region"
        )
    return a


def _flat_weights(
    proj_times: Any, flat_times: Any, n_proj: int, n_flats: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Boolean masks of the flats before/after the projections and each projection's weight of
    the *after* group; ``None`` when the times do not bracket the projections (then average)."""
    pt = np.asarray(to_numpy(proj_times), dtype=float).ravel()
    ft = np.asarray(to_numpy(flat_times), dtype=float).ravel()
    if len(pt) != n_proj:
        raise TomoDataError(f"{len(pt)} projection times for {n_proj} projections")
    if len(ft) != n_flats:
        raise TomoDataError(f"{len(ft)} flat times for {n_flats} flats")
    if not (np.all(np.isfinite(pt)) and np.all(np.isfinite(ft))):
        raise TomoDataError("projection or flat timestamps contain NaN/inf")
    before = ft <= pt.min()
    after = ft >= pt.max()
    if not before.any() or not after.any():
        return None
    t_b, t_a = ft[before].mean(), ft[after].mean()
    if t_a <= t_b:
        return None
    w = np.clip((pt - t_b) / (t_a - t_b), 0.0, 1.0)
    return before, after, w


def normalize(
    proj: Any,
    flats: Any,
    darks: Any,
    *,
    proj_times: Any = None,
    flat_times: Any = None,
    interpolate: bool = True,
) -> Any:
    """Transmission ``(proj - dark) / (flat - dark)`` as float32, shape of ``proj``.

    Several darks and flats are averaged. With ``interpolate`` and timestamps for both, flats
    taken before and after the projections are blended linearly in time (beam and scintillator
    drift during a long scan). Pixels where the flat is not brighter than the dark (dead pixels)
    get transmission 1, i.e. no attenuation, instead of an infinite value.
    """
    xp = get_array_module(proj, flats, darks)
    proj = _as_stack("projections", proj, None, xp)
    if proj.shape[0] == 0:
        raise TomoDataError("no projections to normalise")
    frame_shape = tuple(proj.shape[1:])
    if flats is None or getattr(flats, "size", 0) == 0:
        raise MissingCalibrationError("no flat (white) frames: cannot normalise the projections")
    if darks is None or getattr(darks, "size", 0) == 0:
        raise MissingCalibrationError("no dark frames: cannot normalise the projections")
    flats = _as_stack("flats", flats, frame_shape, xp).astype(xp.float32, copy=False)
    darks = _as_stack("darks", darks, frame_shape, xp).astype(xp.float32, copy=False)
    dark = darks.mean(axis=0)
    flat_mean = flats.mean(axis=0)

    span_flat, span_dark = float(flat_mean.mean()), float(dark.mean())
    if not math.isfinite(span_flat) or not math.isfinite(span_dark):
        raise TomoDataError("flats or darks contain NaN/inf values")
    if span_flat <= span_dark:
        raise TomoDataError(
            f"flats are darker than darks (mean flat {span_flat:.4g} <= mean dark {span_dark:.4g}): "
            "flat and dark streams swapped, or the shutter was closed during the flats"
        )

    weights = None
    if interpolate and proj_times is not None and flat_times is not None:
        weights = _flat_weights(proj_times, flat_times, proj.shape[0], flats.shape[0])

    def _inverse(denom: Any) -> tuple[Any, Any]:
        dead = denom <= 0
        return xp.float32(1.0) / xp.where(dead, xp.float32(1.0), denom), dead

    # one float32 result, filled block by block (cache-sized, threaded): large stacks stay
    # within 1x memory and each frame is read from main memory once
    out = xp.empty(proj.shape, dtype=xp.float32)
    if weights is None:
        inv, dead = _inverse(flat_mean - dark)
        any_dead = bool(dead.any())

        def block(sl: slice) -> None:
            o = out[sl]
            xp.subtract(proj[sl], dark, out=o)
            o *= inv
            if any_dead:
                o[:, dead] = 1.0

        _by_frames(block, out)
    else:
        xp.subtract(proj, dark, out=out)
        before, after, w = weights
        fb = flats[xp.asarray(before)].mean(axis=0) - dark
        fa = flats[xp.asarray(after)].mean(axis=0) - dark
        for k in range(out.shape[0]):  # per frame: no (n, ny, nx) temporary for the flat field
            wk = float(w[k])
            inv, dead = _inverse((1 - wk) * fb + wk * fa)
            out[k] *= inv
            out[k][dead] = 1.0
    return out


def _by_frames(work: Any, arr: Any) -> None:
    """``work(slice of frames)`` over ``arr``'s first axis: cache-sized threaded blocks for
    NumPy (:func:`~bluesky_tomo_hpc.engine.backend.run_blocks`), one call on a GPU."""
    if get_array_module(arr) is not np or arr.ndim < 2:
        work(slice(None))
        return
    frame_bytes = max(1, arr[0].nbytes)
    run_blocks(work, arr.shape[0], max(1, 2**20 // frame_bytes))


def minus_log(x: Any, clip: float = 1e-6, *, out: Any = None) -> Any:
    """``-log(x)`` with transmission floored at ``clip`` and NaN/inf mapped to finite values,
    so one saturated or dead pixel cannot poison a whole slice through the filter.
    ``out=x`` (a float32 array the caller owns) works in place."""
    xp = get_array_module(x)
    if out is None:
        out = xp.array(x, dtype=xp.float32, copy=True)
    elif out is not x:
        out[...] = x

    def block(sl: slice) -> None:
        o = out[sl]
        if not bool(xp.isfinite(o).all()):  # rare: skip nan_to_num's extra passes otherwise
            xp.nan_to_num(o, copy=False, nan=1.0, posinf=1.0, neginf=clip)
        xp.maximum(o, xp.float32(clip), out=o)
        xp.log(o, out=o)
        xp.negative(o, out=o)

    _by_frames(block, out)
    return out


def all_finite(arr: Any) -> bool:
    """True when ``arr`` holds no NaN/inf (integers always do): one threaded pass, no full-size mask."""
    xp = get_array_module(arr)
    if not np.issubdtype(arr.dtype, np.inexact):  # dtypes are NumPy's for CuPy too
        return True
    flags: list[bool] = []

    def block(sl: slice) -> None:
        flags.append(bool(xp.isfinite(arr[sl]).all()))

    _by_frames(block, arr)
    return all(flags)


# -- outliers and bad frames ----------------------------------------------------------------------
def remove_zingers(proj: Any, threshold: float, size: int = 3, *, mode: str = "sigma") -> Any:
    """Replace isolated bright outliers (zingers) by the local median of their frame.

    ``mode="sigma"`` (what ``ReconParams.dezinger_threshold`` means): a pixel is an outlier when it
    exceeds the median by ``threshold`` robust standard deviations (1.4826 * MAD of the residual,
    per frame), which works on raw counts and on normalised data alike. ``mode="absolute"`` is
    TomoPy's ``remove_outlier(dif=threshold)`` / tomocupy's ``dezinger_threshold``.
    """
    if threshold <= 0:
        raise ValueError(f"remove_zingers: threshold must be > 0, got {threshold}")
    if size < 2:
        raise ValueError(f"remove_zingers: size must be >= 2, got {size}")
    if mode not in ("sigma", "absolute"):
        raise ValueError(f"remove_zingers: mode must be 'sigma' or 'absolute', got {mode!r}")
    xp = get_array_module(proj)
    arr = xp.asarray(proj, dtype=xp.float32)
    squeeze = arr.ndim == 2
    if squeeze:
        arr = arr[None]
    med = ndimage_for(xp).median_filter(arr, size=(1, size, size), mode="reflect")
    resid = arr - med
    if mode == "sigma":
        flat_resid = resid.reshape(resid.shape[0], -1)
        mad = xp.median(xp.abs(flat_resid - xp.median(flat_resid, axis=1, keepdims=True)), axis=1)
        sigma = 1.4826 * mad
        sigma = xp.where(sigma > 0, sigma, flat_resid.std(axis=1))
        limit = (threshold * sigma)[:, None, None]
    else:
        limit = xp.float32(threshold)
    out = xp.where(resid > limit, med, arr)
    return out[0] if squeeze else out


def mask_bad_frames(proj: Any, max_bad_fraction: float = 0.5) -> tuple[Any, np.ndarray]:
    """Replace non-finite values so that they cannot spread through FFT filters.

    A frame with more than ``max_bad_fraction`` non-finite pixels is replaced by the mean of its
    nearest good neighbours in angle; scattered NaN/inf pixels take the value of the same pixel
    in the neighbouring frames (or the frame's median when those are bad too). Returns the
    cleaned stack (the input itself when nothing was wrong) and the indices of the frames that
    were repaired, so that the caller can report them.
    """
    xp = get_array_module(proj)
    arr = xp.asarray(proj)
    if arr.ndim != 3:
        raise TomoDataError(f"mask_bad_frames expects (n_angles, ny, nx), got shape {tuple(arr.shape)}")
    if all_finite(arr):  # the usual case: one pass, no boolean stack
        return arr, np.empty(0, dtype=np.int64)
    bad = ~xp.isfinite(arr)
    frac = to_numpy(bad.reshape(arr.shape[0], -1).mean(axis=1))
    touched = np.flatnonzero(frac > 0)
    if touched.size == 0:
        return arr, touched
    whole = frac > max_bad_fraction
    if whole.all():
        raise TomoDataError(f"all {arr.shape[0]} projections are NaN/inf: nothing to reconstruct")
    out = arr.astype(xp.float32, copy=True)
    # scattered pixels first, so that whole-frame repairs average clean neighbours
    for i in touched[~whole[touched]]:
        frame_bad = bad[i]
        stack = xp.stack([arr[j] for j in (i - 1, i + 1) if 0 <= j < arr.shape[0]])
        fin = xp.isfinite(stack)
        cnt = fin.sum(axis=0)
        mean_nb = xp.where(fin, stack, 0).sum(axis=0) / xp.maximum(cnt, 1)
        fallback = xp.median(out[i][~frame_bad])
        fill = xp.where(cnt > 0, mean_nb, fallback)
        out[i] = xp.where(frame_bad, fill, out[i])
    good_idx = np.flatnonzero(~whole)
    for i in np.flatnonzero(whole):
        left, right = good_idx[good_idx < i], good_idx[good_idx > i]
        nbrs = [int(a[0]) for a in (left[-1:], right[:1]) if a.size]
        out[i] = xp.mean(xp.stack([out[j] for j in nbrs]), axis=0)
    return out, touched


def repair_dead_pixels(norm: Any, saturated: Any = None) -> tuple[Any, int]:
    """Interpolate the pixels -log cannot take: transmission <= 0 (dead or zero-count pixels,
    dark >= signal), non-finite values, and ``saturated`` (a boolean mask of the raw frames at
    the detector's full scale, where the count is a floor, not a measure).

    Why not clip: a floor of 1e-6 turns a zero into an attenuation of 13.8, which the ramp filter
    spreads into streaks. A bad pixel takes the mean of its row's good pixels within +/-2 columns
    (wider gaps: the nearest good ones). Returns the stack (the input if nothing was bad) and the
    count of repaired pixels, for the caller to report."""
    xp = get_array_module(norm)
    sat = None if saturated is None else xp.asarray(saturated)
    if norm.size == 0 or (bool(xp.min(norm) > 0) and bool(xp.max(norm) < xp.inf)  # NaN fails both
                          and (sat is None or not bool(sat.any()))):  # no full-size masks then
        return norm, 0
    bad = (~(norm > 0) | ~xp.isfinite(norm) | (False if sat is None else sat)).reshape(-1, norm.shape[-1])
    n_bad, lines = int(bad.sum()), xp.nonzero(bad.any(axis=-1))[0]  # only these lines are filtered
    whole = norm.astype(xp.float32, copy=True)
    flat = whole.reshape(bad.shape)
    sub, bad = flat[lines], bad[lines]
    out = xp.where(bad, xp.float32(0), sub)
    good = (~bad).astype(xp.float32)
    for reach in (2, 8, 32):  # grow the window until every bad pixel has a good neighbour
        kernel = ndimage_for(xp).uniform_filter1d
        total = kernel(out * good, 2 * reach + 1, axis=-1, mode="nearest")
        count = kernel(good, 2 * reach + 1, axis=-1, mode="nearest")
        fill = bad & (count > 0)
        out = xp.where(fill, total / xp.maximum(count, 1e-12), out)
        good = xp.where(fill, xp.float32(1), good)
        bad = bad & ~fill
        if not bool(bad.any()):
            break
    flat[lines] = xp.where(bad, xp.float32(1), out)  # whole dead rows: no attenuation
    return whole, n_bad


# -- validation -----------------------------------------------------------------------------------
#: angles spanning less than this are refused: nothing rotated (a stuck stage, the wrong signal)
MIN_SPAN_DEG = 1.0


def check_angles(theta: Any) -> tuple[np.ndarray, str | None]:
    """Radians for angles that should be radians, with a warning when they evidently were degrees.

    Rotation stages report degrees; ``FrameBatch`` angles are radians. A span or value beyond
    2*pi (plus a margin for over-scans) cannot be radians of a tomography scan, so it is
    converted and reported rather than reconstructed as a smeared mess.
    """
    t = np.asarray(to_numpy(theta), dtype=np.float64).ravel()
    if t.size == 0:
        raise TomoDataError("no projection angles")
    if not np.all(np.isfinite(t)):
        raise TomoDataError(f"{int((~np.isfinite(t)).sum())} projection angles are NaN/inf")
    span = float(t.max() - t.min())
    if span > 2 * np.pi * 1.05 or np.abs(t).max() > 4 * np.pi:
        warn = (
            f"angles span {span:.4g} (max |angle| {np.abs(t).max():.4g}), impossible in radians: "
            "treated as degrees and converted"
        )
        return np.deg2rad(t), warn
    return t, None


def validate_scan(data: ScanData) -> list[str]:
    """Check a whole scan before the engine spends time on it.

    Raises :class:`TomoDataError` (or :class:`MissingCalibrationError`) for what makes a
    reconstruction impossible; returns human-readable warnings for what degrades it.
    """
    tag = f"run {data.run_uid}: " if data.run_uid else ""
    warnings: list[str] = []
    proj = data.projections
    if proj.ndim != 3:
        raise TomoDataError(f"{tag}projections must be (n_angles, ny, nx), got shape {tuple(proj.shape)}")
    n, ny, nx = proj.shape
    if n == 0 or ny == 0 or nx == 0:
        raise TomoDataError(f"{tag}empty projection stack of shape {tuple(proj.shape)}")
    theta = np.asarray(to_numpy(data.theta)).ravel()
    if theta.size != n:
        raise TomoDataError(f"{tag}{theta.size} angles for {n} projections")
    for name, stack in (("flats", data.flats), ("darks", data.darks)):
        if stack is None or stack.size == 0:
            raise MissingCalibrationError(f"{tag}no {name}: cannot normalise the projections")
        if stack.ndim != 3 or tuple(stack.shape[1:]) != (ny, nx):
            raise TomoDataError(
                f"{tag}{name} have shape {tuple(stack.shape)} but projections are (n, {ny}, {nx})"
            )
    mean_flat = float(np.nanmean(to_numpy(data.flats)))
    mean_dark = float(np.nanmean(to_numpy(data.darks)))
    if not mean_flat > mean_dark:
        raise TomoDataError(
            f"{tag}flats are darker than darks (mean flat {mean_flat:.4g} <= mean dark {mean_dark:.4g})"
        )
    if data.projection_times is not None and len(data.projection_times) != n:
        raise TomoDataError(f"{tag}{len(data.projection_times)} projection times for {n} projections")
    if data.flat_times is not None and len(data.flat_times) != len(data.flats):
        raise TomoDataError(f"{tag}{len(data.flat_times)} flat times for {len(data.flats)} flats")

    theta_rad, warn = check_angles(theta)
    if warn:
        warnings.append(tag + warn)
    if n < 2:
        raise TomoDataError(f"{tag}a single projection cannot be reconstructed")
    span = float(theta_rad.max() - theta_rad.min())
    if span < np.deg2rad(MIN_SPAN_DEG):
        raise TomoDataError(
            f"{tag}the {n} projection angles span {np.rad2deg(span):.3g} degrees (from "
            f"{np.rad2deg(theta_rad.min()):.4g}): the sample did not rotate; check the rotation "
            "stage and which signal gives the angles")
    step = span / max(n - 1, 1)
    if span + 1.5 * step < np.pi * 0.98:
        warnings.append(f"{tag}angles cover only {np.rad2deg(span):.1f} degrees (limited-angle artefacts)")
    uniq = np.unique(np.round(theta_rad, 9))
    if uniq.size < n:
        warnings.append(f"{tag}{n - uniq.size} duplicate projection angles")
    if np.any(np.diff(theta_rad) < 0) and not np.all(np.diff(theta_rad) <= 0):
        warnings.append(f"{tag}projection angles are not monotonic")
    n_bad = 0
    if not all_finite(proj):
        n_bad = int((~np.isfinite(to_numpy(proj).reshape(n, -1))).any(axis=1).sum())
    if n_bad:
        warnings.append(f"{tag}{n_bad} projections contain NaN/inf values (will be masked)")
    dead = int(np.count_nonzero(to_numpy(data.flats).mean(axis=0) <= to_numpy(data.darks).mean(axis=0)))
    if dead:
        warnings.append(f"{tag}{dead} detector pixels are not brighter in flats than in darks (dead)")
    return warnings


# -- padding and masks ----------------------------------------------------------------------------
def pad_width_for(nx: int, factor: float = math.sqrt(2)) -> int:
    """Pixels to add on each side so that a sinogram of width ``nx`` covers the reconstruction
    circle's diagonal (``factor`` sqrt(2)): the padding TomoPy-based pipelines use."""
    if nx <= 0:
        raise ValueError(f"detector width must be positive, got {nx}")
    return (int(math.ceil(nx * factor)) - nx) // 2


def pad_edge(x: Any, npad: int | tuple[int, int], axis: int = -1, mode: str = "edge") -> Any:
    """Pad one axis (default: detector columns) by repeating the edge values, which avoids the
    wrap-around and truncation artefacts of FFT filtering a sinogram that does not fall to 0."""
    xp = get_array_module(x)
    before, after = (npad, npad) if isinstance(npad, int) else npad
    if before < 0 or after < 0:
        raise ValueError(f"pad widths must be >= 0, got {npad}")
    width = [(0, 0)] * x.ndim
    width[axis] = (before, after)
    return xp.pad(x, width, mode=mode)


def unpad(x: Any, npad: int | tuple[int, int], axis: int = -1) -> Any:
    """Undo :func:`pad_edge` on the same axis."""
    before, after = (npad, npad) if isinstance(npad, int) else npad
    index = [slice(None)] * x.ndim
    index[axis] = slice(before, x.shape[axis] - after)
    return x[tuple(index)]


def circular_mask(vol: Any, ratio: float = 0.95, val: float = 0.0, *, in_place: bool = False) -> Any:
    """Set everything outside a centred circle of radius ``ratio * n / 2`` to ``val`` in each
    (…, ny, nx) slice: outside that circle not every angle saw the sample. ``in_place`` writes
    into ``vol`` (no volume-sized copy) and returns it."""
    if not 0 < ratio <= 1:
        raise ValueError(f"circular_mask ratio must be in (0, 1], got {ratio}")
    xp = get_array_module(vol)
    ny, nx = vol.shape[-2:]
    yy = xp.arange(ny, dtype=xp.float32) - (ny - 1) / 2
    xx = xp.arange(nx, dtype=xp.float32) - (nx - 1) / 2
    r = ratio * min(nx, ny) / 2
    inside = (yy[:, None] ** 2 + xx[None, :] ** 2) <= r * r
    if in_place and xp is np:  # two slice writes per row (the disc is convex): no mask gather
        for y, row in enumerate(inside):
            cols = np.flatnonzero(row)
            if cols.size == 0:
                vol[..., y, :] = val
            else:
                vol[..., y, : cols[0]] = val
                vol[..., y, cols[-1] + 1 :] = val
        return vol
    if in_place:
        vol[..., ~inside] = val
        return vol
    return xp.where(inside, vol, xp.asarray(val, dtype=vol.dtype))


def bin_frames(frames: Any, binning: int) -> Any:
    """Average ``binning x binning`` pixel blocks of ``(n, ny, nx)`` frames as float32 (edges that
    do not fill a block are cut); ``binning == 1`` returns the frames as they are. Strided adds
    rather than a reshaped mean: about 5x faster on 2160 x 2560 frames (the live preview).
    NumPy or CuPy, answered in the same module."""
    if binning == 1:
        return frames
    xp = get_array_module(frames)
    n, ny, nx = frames.shape
    by, bx = ny // binning, nx // binning
    if by == 0 or bx == 0:
        raise TomoDataError(f"binning {binning} is larger than the frame ({ny} x {nx})")
    f = frames[:, : by * binning, : bx * binning]
    rows = xp.zeros((n, by, bx * binning), xp.float32)
    for k in range(binning):
        rows += f[:, k::binning, :]
    out = xp.zeros((n, by, bx), xp.float32)
    for k in range(binning):
        out += rows[..., k::binning]
    out *= np.float32(1.0 / (binning * binning))
    return out


def to_binned(center: float, binning: int) -> float:
    """Unbinned pixel-index column -> binned pixel-index column (bin k covers unbinned
    columns k*b .. k*b + b - 1, so its middle is k*b + (b - 1) / 2)."""
    return (center - (binning - 1) / 2.0) / binning


def to_unbinned(center: float, binning: int) -> float:
    """Binned pixel-index column -> unbinned pixel-index column."""
    return center * binning + (binning - 1) / 2.0
