"""FBP filters in the frequency domain, with the rotation centre applied as a phase ramp.

Why here: both reconstruction methods (real-space :mod:`.fbp` and NUFFT :mod:`.fourier`) need the
same filtered, padded sinogram spectrum, so their outputs agree to interpolation error. The
centre shift is a phase ramp on the spectrum, so the data are never resampled; edge padding to
at least ``2 n`` keeps the filter's circular convolution from wrapping one edge onto the other.

Conventions: a sinogram is ``(..., n_angles, n_det)`` in line-integral units (attenuation x
pixel); the rotation axis is the 0-based detector column ``center``. After :func:`padded_spectrum`
the axis sits exactly at padded index ``n_pad // 2``.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np

from .backend import get_array_module

FILTER_NAMES = ("none", "ramp", "shepp", "cosine", "hann", "hamming", "parzen", "butterworth")


def padded_width(n_det: int, pad: bool = True) -> int:
    """FFT length: the smallest fast size >= 2 n (or >= n without padding), even."""
    import scipy.fft

    target = 2 * n_det if pad else n_det
    size = scipy.fft.next_fast_len(target, real=False)
    return size + (size % 2)


def _ramp(n_pad: int, xp: ModuleType) -> Any:
    """Ramp from the band-limited spatial kernel (Kak & Slaney eq. 61): correct DC, no offset."""
    k = np.arange(-(n_pad // 2), n_pad - n_pad // 2)
    h = np.zeros(n_pad, dtype=np.float64)
    h[n_pad // 2] = 0.25
    odd = (k % 2) == 1
    h[odd] = -1.0 / (np.pi * k[odd]) ** 2
    ramp = np.abs(np.fft.fft(np.fft.ifftshift(h)))
    return xp.asarray(ramp)


def _window(name: str, f: np.ndarray, cutoff: float, order: int) -> np.ndarray:
    """Apodisation as a function of ``f`` = |frequency| / Nyquist in [0, 1]."""
    x = f / cutoff
    if name in ("ramp", "none"):
        w = np.ones_like(x)
    elif name == "shepp":
        w = np.sinc(x / 2.0)
    elif name == "cosine":
        w = np.cos(np.pi * x / 2.0)
    elif name == "hann":
        w = 0.5 * (1.0 + np.cos(np.pi * x))
    elif name == "hamming":
        w = 0.54 + 0.46 * np.cos(np.pi * x)
    elif name == "parzen":
        w = np.where(x <= 0.5, 1 - 6 * x**2 + 6 * x**3, 2 * (1 - x) ** 3)
    elif name == "butterworth":
        return 1.0 / (1.0 + x ** (2 * order))
    else:
        raise ValueError(f"unknown filter {name!r}; choose one of {', '.join(FILTER_NAMES)}")
    return np.where(x <= 1.0, w, 0.0)


def filter_response(
    n_pad: int,
    name: str = "shepp",
    cutoff: float = 1.0,
    order: int = 2,
    xp: ModuleType = np,
) -> Any:
    """Real frequency response of length ``n_pad`` in FFT order (``fftfreq`` layout).

    ``none`` is no filter at all (plain back-projection, arbitrary scale); every other name is
    the ramp times an apodisation window reaching zero (or cut) at ``cutoff`` x Nyquist.
    """
    if name not in FILTER_NAMES:
        raise ValueError(f"unknown filter {name!r}; choose one of {', '.join(FILTER_NAMES)}")
    if not 0 < cutoff <= 1:
        raise ValueError(f"filter cutoff must be in (0, 1] (fraction of Nyquist), got {cutoff}")
    if name == "none":
        return xp.ones(n_pad, dtype=xp.float64)
    f = np.abs(np.fft.fftfreq(n_pad)) * 2.0
    window = xp.asarray(_window(name, f, cutoff, order))
    return _ramp(n_pad, xp) * window


def edge_pad(sino: Any, n_pad: int) -> tuple[Any, int]:
    """Edge-pad the last axis to ``n_pad``; returns the padded array and the left pad width."""
    xp = get_array_module(sino)
    n = sino.shape[-1]
    if n_pad < n:
        raise ValueError(f"padded width {n_pad} is smaller than the detector width {n}")
    left = (n_pad - n) // 2
    widths = [(0, 0)] * (sino.ndim - 1) + [(left, n_pad - n - left)]
    return xp.pad(sino, widths, mode="edge"), left


def center_phase(n_pad: int, shift: float, xp: ModuleType = np) -> Any:
    """exp(2 pi i nu shift): multiplying a spectrum by this moves its content by ``-shift``.

    With ``shift = c_pad - n_pad // 2`` the axis at padded column ``c_pad`` lands at
    ``n_pad // 2``. The Nyquist bin gets the real part only, so real input stays real.
    """
    nu = np.fft.fftfreq(n_pad)
    ph = np.exp(2j * np.pi * nu * shift)
    if n_pad % 2 == 0:
        ph[n_pad // 2] = np.cos(np.pi * shift)
    return xp.asarray(ph)


def padded_spectrum(
    sino: Any,
    center: float,
    *,
    filter_name: str = "shepp",
    cutoff: float = 1.0,
    order: int = 2,
    pad: bool = True,
    weight: float = 1.0,
    axis_at: int | None = None,
    workers: int | None = None,
) -> tuple[Any, int]:
    """Filtered, centre-shifted spectrum of ``sino`` along its last axis.

    Returns ``(spectrum, n_pad)``: complex, FFT order, the axis moved to padded index
    ``axis_at`` (default ``n_pad // 2``; 0 gives the spectrum relative to the axis, which is what
    a Fourier-slice method needs), multiplied by the filter and by ``weight``. Real and complex
    input both work (a complex input carries two real sinograms, one in each part).
    ``workers`` threads the NumPy FFT (scipy.fft); ignored for CuPy.
    """
    xp = get_array_module(sino)
    n = sino.shape[-1]
    n_pad = padded_width(n, pad)
    padded, left = edge_pad(sino, n_pad)
    if xp is np:
        import scipy.fft

        spec = scipy.fft.fft(padded, axis=-1, workers=workers)
    else:
        spec = xp.fft.fft(padded, axis=-1)
    resp = filter_response(n_pad, filter_name, cutoff, order, xp) * weight
    target = n_pad // 2 if axis_at is None else axis_at
    shift = (center + left) - target
    kernel = (resp * center_phase(n_pad, shift, xp)).astype(xp.complex64)
    spec = spec.astype(xp.complex64, copy=False)
    spec *= kernel
    return spec, n_pad


def filter_sinogram(
    sino: Any,
    center: float,
    *,
    filter_name: str = "shepp",
    cutoff: float = 1.0,
    order: int = 2,
    pad: bool = True,
) -> tuple[Any, int]:
    """Filtered sinogram in real space, padded, axis at column ``n_pad // 2`` (float32).

    Returns ``(filtered, axis_index)``; this is what the real-space back-projectors consume.
    """
    xp = get_array_module(sino)
    spec, n_pad = padded_spectrum(
        sino, center, filter_name=filter_name, cutoff=cutoff, order=order, pad=pad
    )
    out = xp.fft.ifft(spec, axis=-1)
    if xp.iscomplexobj(sino):
        return out.astype(xp.complex64), n_pad // 2
    return out.real.astype(xp.float32), n_pad // 2
