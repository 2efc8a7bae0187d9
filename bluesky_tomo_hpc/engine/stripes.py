"""Stripe (ring artefact) removal on -log sinograms.

A detector pixel whose response differs from its neighbours draws a vertical stripe in every
sinogram, which back-projects into a ring. Two peer-proven filters are provided:

* :func:`remove_stripe_fw`, Münch et al. 2009 (Opt. Express 17, 8567): damp the near-zero
  angular frequencies of the vertical wavelet detail bands (TomoPy ``remove_stripe_fw``).
* :func:`remove_stripe_sort`, Vo et al. 2018 (Opt. Express 26, 28396): sort each detector
  column along the angles, median-filter across columns, unsort (algotom
  ``remove_stripe_based_sorting``).

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

__all__ = ["remove_stripe_fw", "remove_stripe_sort", "remove_rings"]


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
        else:  # pragma: no cover - RingRemoval validates method
            raise ValueError(f"unknown ring removal method {ring.method!r}")
    return out
