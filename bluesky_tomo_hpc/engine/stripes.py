"""Stripe (ring artefact) removal on -log sinograms.

A detector pixel whose response differs from its neighbours draws a vertical stripe in every
sinogram, which back-projects into a ring. Two peer-proven filters are provided:

* :func:`remove_stripe_fw`, Münch et al. 2009 (Opt. Express 17, 8567): damp the near-zero
  angular frequencies of the vertical wavelet detail bands (TomoPy ``remove_stripe_fw``).
* :func:`remove_stripe_sort`, Vo et al. 2018 (Opt. Express 26, 28396): sort each detector
  column along the angles, median-filter across columns, unsort (algotom
  ``remove_stripe_based_sorting``).
* :func:`remove_all_stripe`, the combined approach of the same paper (algotom
  ``remove_all_stripe``): dead and fluctuating stripes are interpolated from their neighbours
  (:func:`remove_dead_stripe`), large stripes are normalised and replaced by their smoothed
  sorted values (:func:`remove_large_stripe`), then the sorting filter takes the small ones.
  Partial stripes (a column that misbehaves for some angles: arcs, not rings) are left as
  arcs instead of being spread into full rings as a Fourier filter does.

Both take ``(n_angles, nx)`` sinograms from NumPy or CuPy. PyWavelets is CPU-only, so the
wavelet transforms of ``fw`` run on the host; the Fourier damping runs in the input's module.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from bluesky_tomo_hpc.engine.backend import get_array_module, to_numpy
from bluesky_tomo_hpc.engine.params import RingRemoval
from bluesky_tomo_hpc.engine.preprocess import ndimage_for

__all__ = [
    "remove_stripe_fw",
    "remove_stripe_sort",
    "detect_stripe",
    "remove_dead_stripe",
    "remove_large_stripe",
    "remove_all_stripe",
    "remove_rings",
]


def _check_sino(sino: Any, name: str) -> None:
    if sino.ndim != 2:
        raise ValueError(f"{name} expects a (n_angles, nx) sinogram, got shape {tuple(sino.shape)}")


def _damp_vertical_band(band: np.ndarray, sigma: float) -> np.ndarray:
    """Suppress the angular frequencies near 0 (the stripes) of one vertical detail band."""
    n = band.shape[0]
    # TomoPy's frequency grid: centred half-integer steps in FFT-shifted order, so that its
    # results can be reproduced; for odd n the zero frequency is removed exactly.
    y = (np.arange(-n, n, 2, dtype=np.float64) + 1) / 2
    damp = np.fft.ifftshift(1.0 - np.exp(-(y**2) / (2.0 * sigma**2)))
    spec = np.fft.fft(band, axis=0) * damp[:, None]
    return np.real(np.fft.ifft(spec, axis=0))


def remove_stripe_fw(
    sino: Any, level: int | None = None, wavelet: str = "db5", sigma: float = 2.0, pad: bool = True
) -> Any:
    """Münch wavelet-Fourier stripe filter of one sinogram; float32 out, same shape and module.

    ``level`` defaults to ceil(log2(max(shape))) as in TomoPy; ``pad`` adds 1/16 of the number of
    angles of zeros above and below so the angular FFT does not wrap the first row onto the last.
    """
    import pywt

    _check_sino(sino, "remove_stripe_fw")
    if sigma <= 0:
        raise ValueError(f"remove_stripe_fw: sigma must be > 0, got {sigma}")
    xp = get_array_module(sino)
    host = np.asarray(to_numpy(sino), dtype=np.float32)
    n_ang, nx = host.shape
    if level is None:
        level = int(np.ceil(np.log2(max(host.shape))))
    if level < 1:
        raise ValueError(f"remove_stripe_fw: level must be >= 1, got {level}")
    n_pad = n_ang + n_ang // 8 if pad else n_ang
    top = (n_pad - n_ang) // 2
    work = np.zeros((n_pad, nx), dtype=np.float32)
    work[top : top + n_ang] = host

    details: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    approx = work
    with warnings.catch_warnings():
        # deep levels on small sinograms are legitimate (TomoPy does the same); pywt warns
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(level):
            approx, (c_h, c_v, c_d) = pywt.dwt2(approx, wavelet)
            details.append((c_h, _damp_vertical_band(c_v, sigma), c_d))
        for c_h, c_v, c_d in reversed(details):
            approx = approx[: c_h.shape[0], : c_h.shape[1]]
            approx = pywt.idwt2((approx, (c_h, c_v, c_d)), wavelet)
    out = np.ascontiguousarray(approx[top : top + n_ang, :nx], dtype=np.float32)
    return xp.asarray(out)


def remove_stripe_sort(sino: Any, size: int = 21) -> Any:
    """Vo's sorting-based stripe filter: stripes become smooth once each column is sorted along
    the angles, so a median across columns removes them without blurring the sample."""
    _check_sino(sino, "remove_stripe_sort")
    if size < 3:
        raise ValueError(f"remove_stripe_sort: size must be >= 3, got {size}")
    xp = get_array_module(sino)
    arr = xp.asarray(sino, dtype=xp.float32)
    order = xp.argsort(arr, axis=0)
    sorted_cols = xp.take_along_axis(arr, order, axis=0)
    smoothed = ndimage_for(xp).median_filter(sorted_cols, size=(1, size), mode="reflect")
    out = xp.empty_like(arr)
    out[order, xp.arange(arr.shape[1])[None, :]] = smoothed  # unsort (scatter back)
    return out


def detect_stripe(values: np.ndarray, snr: float = 3.0) -> np.ndarray:
    """Boolean mask of the outliers of a per-column statistic (Vo et al. 2018, algorithm 4):
    a line fitted to the middle half of the sorted values gives the noise level; values further
    than ``snr`` times that level beyond the line's ends are stripes."""
    v = np.asarray(values, dtype=np.float64)
    n = v.size
    srt = np.sort(v)
    x = np.arange(n, dtype=np.float64)
    drop = int(0.25 * n)
    if n - 2 * drop < 3:
        return np.zeros(n, dtype=bool)
    slope, intercept = np.polyfit(x[drop : n - drop - 1], srt[drop : n - drop - 1], 1)
    y_end = intercept + slope * x[-1]
    noise = max(abs(y_end - intercept), 1e-6)
    mask = np.zeros(n, dtype=bool)
    if abs(srt[-1] - y_end) / noise >= snr:
        mask |= v > y_end + noise * snr * 0.5
    if abs(intercept - srt[0]) / noise >= snr:
        mask |= v <= intercept - noise * snr * 0.5
    return mask


def _interpolate_columns(sino: np.ndarray, bad: np.ndarray) -> np.ndarray:
    """Replace the ``bad`` columns by linear interpolation between the nearest good ones."""
    good = np.flatnonzero(~bad)
    miss = np.flatnonzero(bad)
    if miss.size == 0 or good.size < 2:
        return sino
    right = np.clip(np.searchsorted(good, miss), 1, good.size - 1)
    left = right - 1
    gl, gr = good[left], good[right]
    w = np.clip((miss - gl) / np.maximum(gr - gl, 1), 0.0, 1.0).astype(np.float32)
    out = sino.copy()
    out[:, miss] = (1 - w) * sino[:, gl] + w * sino[:, gr]
    return out


def remove_dead_stripe(sino: Any, snr: float = 3.0, size: int = 51) -> Any:
    """Columns that do not follow the sample (dead, stuck or fluctuating pixels: their values
    differ from their own angular smoothing unlike their neighbours') are interpolated from the
    nearest good columns (Vo et al. 2018, algorithm 6)."""
    from scipy.ndimage import binary_dilation, median_filter, uniform_filter1d

    _check_sino(sino, "remove_dead_stripe")
    xp = get_array_module(sino)
    s = np.asarray(to_numpy(sino), dtype=np.float32)
    smooth = uniform_filter1d(s, 10, axis=0)
    diff = np.abs(s - smooth).sum(axis=0)
    bck = median_filter(diff, size, mode="reflect")
    bck[bck == 0] = float(np.mean(np.abs(bck))) or 1.0
    mask = binary_dilation(detect_stripe(diff / bck, snr), iterations=1)
    mask[:2] = mask[-2:] = False
    return xp.asarray(_interpolate_columns(s, mask))


def remove_large_stripe(sino: Any, snr: float = 3.0, size: int = 51, drop_ratio: float = 0.1) -> Any:
    """Large stripes (wide or strong, which a small median cannot reach): columns whose sorted
    values stand out from their median-smoothed neighbours are rescaled and replaced by the
    smoothed sorted values, unsorted back (Vo et al. 2018, algorithm 5)."""
    from scipy.ndimage import binary_dilation, median_filter

    _check_sino(sino, "remove_large_stripe")
    xp = get_array_module(sino)
    s = np.asarray(to_numpy(sino), dtype=np.float32)
    nrow = s.shape[0]
    drop = int(0.5 * float(np.clip(drop_ratio, 0.0, 0.8)) * nrow)
    order = np.argsort(s, axis=0)
    srt = np.take_along_axis(s, order, axis=0)
    smooth = median_filter(srt, size=(1, size), mode="reflect")
    m1 = srt[drop : nrow - drop].mean(axis=0)
    m2 = smooth[drop : nrow - drop].mean(axis=0)
    fact = np.divide(m1, m2, out=np.ones_like(m1), where=np.abs(m2) > 1e-12)
    mask = binary_dilation(detect_stripe(fact, snr), iterations=1)
    out = s / np.where(np.abs(fact) > 1e-6, fact, 1.0)[None, :].astype(np.float32)
    corrected = np.empty_like(s)
    np.put_along_axis(corrected, order, smooth, axis=0)  # smoothed values back in angle order
    out[:, mask] = corrected[:, mask]
    return xp.asarray(out)


def remove_all_stripe(
    sino: Any, snr: float = 3.0, large_size: int = 61, small_size: int = 21, drop_ratio: float = 0.1
) -> Any:
    """Vo et al.'s combined stripe removal: dead, then large, then small stripes (algotom
    ``remove_all_stripe`` with the same defaults)."""
    out = remove_dead_stripe(sino, snr, large_size)
    out = remove_large_stripe(out, snr, large_size, drop_ratio)
    return remove_stripe_sort(out, small_size)


def remove_rings(proj_stack: Any, ring: RingRemoval) -> Any:
    """Apply ``ring.method`` to every sinogram of a (n_angles, nz, nx) -log stack; new array."""
    if proj_stack.ndim != 3:
        raise ValueError(f"remove_rings expects (n_angles, nz, nx), got shape {tuple(proj_stack.shape)}")
    xp = get_array_module(proj_stack)
    out = xp.empty(proj_stack.shape, dtype=xp.float32)
    for z in range(proj_stack.shape[1]):
        sino = proj_stack[:, z, :]
        if ring.method == "fw":
            out[:, z, :] = remove_stripe_fw(sino, level=ring.level, wavelet=ring.wavelet, sigma=ring.sigma)
        elif ring.method == "sort":
            out[:, z, :] = remove_stripe_sort(sino, size=ring.size)
        elif ring.method == "all":
            out[:, z, :] = remove_all_stripe(sino, ring.snr, large_size=ring.large_size, small_size=ring.size)
        else:  # pragma: no cover - RingRemoval validates method
            raise ValueError(f"unknown ring removal method {ring.method!r}")
    return out
