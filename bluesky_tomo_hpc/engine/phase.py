"""Single-distance phase retrieval (Paganin et al. 2002, J. Microsc. 206, 33).

In propagation-based phase contrast the edges of a weakly absorbing sample ring with Fresnel
fringes; for a homogeneous material the low-pass filter ``1 / (1 + pi * lambda * z * (delta/beta)
* |u|^2)`` applied to the normalised intensity recovers a smooth projected thickness. Like
tomocupy's ``paganin_filter`` (and TomoPy's ``retrieve_phase`` up to its -log and scaling), the
result is still a transmission-like image: the pipeline applies ``minus_log`` afterwards.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from bluesky_tomo_hpc.engine.backend import get_array_module

__all__ = ["wavelength_m", "paganin_filter", "paganin"]

#: h * c in keV * m (CODATA 2018)
_HC_KEV_M = 1.239841984e-9


def wavelength_m(energy_kev: float) -> float:
    """X-ray wavelength in metres for a photon energy in keV."""
    if energy_kev <= 0:
        raise ValueError(f"energy must be > 0 keV, got {energy_kev}")
    return _HC_KEV_M / energy_kev


def _padded_size(n: int, fringe_px: float) -> int:
    """Next power of two that leaves room for the fringes on both sides (as TomoPy pads)."""
    return 1 << int(math.ceil(math.log2(n + fringe_px)))


def paganin_filter(
    shape: tuple[int, int], pixel_size_um: float, distance_mm: float, energy_kev: float,
    delta_beta: float, xp: Any = None, *, half: bool = False,
) -> Any:
    """The Paganin Fourier filter for an (ny, nx) grid in unshifted FFT order (1 at zero
    frequency); ``half`` gives the ``rfft2`` half-plane (ny, nx // 2 + 1)."""
    xp = np if xp is None else xp
    pix = pixel_size_um * 1e-6
    coef = math.pi * wavelength_m(energy_kev) * distance_mm * 1e-3 * delta_beta
    uy = xp.fft.fftfreq(shape[0], d=pix)
    ux = xp.fft.rfftfreq(shape[1], d=pix) if half else xp.fft.fftfreq(shape[1], d=pix)
    u2 = uy[:, None] ** 2 + ux[None, :] ** 2
    return (1.0 / (1.0 + coef * u2)).astype(xp.float32)


def paganin(
    proj: Any,
    pixel_size_um: float,
    distance_mm: float,
    energy_kev: float,
    delta_beta: float = 1000.0,
    *,
    pad: bool = True,
) -> Any:
    """Paganin-filter normalised projections (n, ny, nx) or one (ny, nx) frame; float32 out.

    With ``pad`` each frame is edge-padded to a power of two wide enough for the Fresnel fringes
    (pi * lambda * z / pixel^2 pixels), so that the filter's long tails do not wrap around.
    """
    for name, value in (("pixel_size_um", pixel_size_um), ("distance_mm", distance_mm),
                        ("energy_kev", energy_kev), ("delta_beta", delta_beta)):
        if not value > 0:
            raise ValueError(f"paganin: {name} must be > 0, got {value}")
    xp = get_array_module(proj)
    arr = xp.asarray(proj, dtype=xp.float32)
    squeeze = arr.ndim == 2
    if squeeze:
        arr = arr[None]
    if arr.ndim != 3:
        raise ValueError(f"paganin expects (n, ny, nx) or (ny, nx), got shape {tuple(arr.shape)}")
    _, ny, nx = arr.shape
    if pad:
        fringe = math.pi * wavelength_m(energy_kev) * distance_mm * 1e-3 / (pixel_size_um * 1e-6) ** 2
        # capped: beyond a few frame sizes more padding changes nothing but the cost
        py, px = _padded_size(ny, min(fringe, 3 * ny)), _padded_size(nx, min(fringe, 3 * nx))
    else:
        py, px = ny, nx
    top, left = (py - ny) // 2, (px - nx) // 2
    filt = paganin_filter((py, px), pixel_size_um, distance_mm, energy_kev, delta_beta, xp, half=True)
    if xp is np:  # multi-threaded, and float32 stays complex64
        import scipy.fft as fft

        kw: dict[str, Any] = {"workers": -1}
    else:
        fft, kw = xp.fft, {}
    out = xp.empty_like(arr)
    for i in range(arr.shape[0]):
        frame = arr[i]
        if pad:
            frame = xp.pad(frame, ((top, py - ny - top), (left, px - nx - left)), mode="edge")
        filtered = fft.irfft2(fft.rfft2(frame, **kw) * filt, s=(py, px), **kw)
        out[i] = filtered[top : top + ny, left : left + nx]
    return out[0] if squeeze else out
