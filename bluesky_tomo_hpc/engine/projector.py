"""Forward projection: the exact adjoint of :func:`.fbp.backproject`, and analytic phantoms.

Why: a matched projector/back-projector pair lets tests check the back-projector by the
dot-product test, and simulate data; exact line integrals of ellipses give benchmark and test
sinograms that involve no projector at all (no "inverse crime").
Geometry as in :mod:`.fbp`: ``s = x cos(theta) + y sin(theta)``, axis at detector column
``center``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .backend import get_array_module
from .fbp import grid_coords

# Modified Shepp-Logan (Toft): value, semi-axis a, semi-axis b, x0, y0, angle (degrees);
# coordinates in units of the half-width of the slice.
MODIFIED_SHEPP_LOGAN: tuple[tuple[float, float, float, float, float, float], ...] = (
    (1.0, 0.69, 0.92, 0.0, 0.0, 0.0),
    (-0.8, 0.6624, 0.874, 0.0, -0.0184, 0.0),
    (-0.2, 0.11, 0.31, 0.22, 0.0, -18.0),
    (-0.2, 0.16, 0.41, -0.22, 0.0, 18.0),
    (0.1, 0.21, 0.25, 0.0, 0.35, 0.0),
    (0.1, 0.046, 0.046, 0.0, 0.1, 0.0),
    (0.1, 0.046, 0.046, 0.0, -0.1, 0.0),
    (0.1, 0.046, 0.023, -0.08, -0.605, 0.0),
    (0.1, 0.023, 0.023, 0.0, -0.606, 0.0),
    (0.1, 0.023, 0.046, 0.06, -0.605, 0.0),
)


def project(vol: Any, theta: Any, n_det: int, center: float) -> Any:
    """Pixel-driven forward projection ``(nz, n, n)`` -> ``(nz, n_angles, n_det)``.

    Linear-interpolation splatting: the exact transpose of :func:`.fbp.backproject` with
    ``weight=1`` and ``axis_index=center`` on an unpadded ``n_det`` detector.
    """
    xp = get_array_module(vol)
    if vol.ndim == 2:
        vol = vol[None]
    nz, n, _ = vol.shape
    theta = np.asarray(theta, dtype=np.float64)
    x, y = grid_coords(n, xp)
    flat = vol.reshape(nz, n * n).astype(xp.float32)
    sino = xp.zeros((nz, len(theta), n_det), dtype=xp.float32)
    for m, th in enumerate(theta):
        t = (x * np.float32(np.cos(th)) + y * np.float32(np.sin(th)) + np.float32(center)).ravel()
        i0 = xp.floor(t)
        w = (t - i0).astype(xp.float32)
        i0 = i0.astype(xp.int64)
        inside = (i0 >= 0) & (i0 < n_det - 1)
        i0, w = i0[inside], w[inside]
        vals = flat[:, inside]
        for z in range(nz):
            sino[z, m] = xp.bincount(i0, vals[z] * (1 - w), minlength=n_det)[:n_det]
            sino[z, m] += xp.bincount(i0 + 1, vals[z] * w, minlength=n_det)[:n_det]
    return sino


def ellipse_image(
    n: int,
    ellipses: tuple[tuple[float, ...], ...] = MODIFIED_SHEPP_LOGAN,
    supersample: int = 1,
) -> np.ndarray:
    """The phantom on an ``n x n`` grid (pixel-centre or supersampled box average), float32."""
    s = supersample
    x, y = grid_coords(n * s)
    x = x / s / (n / 2.0)
    y = y / s / (n / 2.0)
    img = np.zeros((n * s, n * s), dtype=np.float64)
    for val, a, b, x0, y0, deg in ellipses:
        phi = np.deg2rad(deg)
        xr = (x - x0) * np.cos(phi) + (y - y0) * np.sin(phi)
        yr = -(x - x0) * np.sin(phi) + (y - y0) * np.cos(phi)
        img[(xr / a) ** 2 + (yr / b) ** 2 <= 1.0] += val
    if s > 1:
        img = img.reshape(n, s, n, s).mean(axis=(1, 3))
    return img.astype(np.float32)


def ellipse_sinogram(
    n: int,
    theta: np.ndarray,
    n_det: int | None = None,
    center: float | None = None,
    ellipses: tuple[tuple[float, ...], ...] = MODIFIED_SHEPP_LOGAN,
) -> np.ndarray:
    """Exact line integrals (pixel units) of the ellipse phantom of :func:`ellipse_image`.

    ``(n_angles, n_det)`` float32, sampled at detector-column centres, axis at ``center``
    (default ``(n_det - 1) / 2``).
    """
    n_det = n if n_det is None else n_det
    center = (n_det - 1) / 2.0 if center is None else center
    scale = n / 2.0
    s = (np.arange(n_det) - center) / scale
    th = np.asarray(theta, dtype=np.float64)[:, None]
    out = np.zeros((th.shape[0], n_det), dtype=np.float64)
    for val, a, b, x0, y0, deg in ellipses:
        phi = np.deg2rad(deg)
        alpha = th - phi
        a2 = (a * np.cos(alpha)) ** 2 + (b * np.sin(alpha)) ** 2
        s0 = s[None, :] - (x0 * np.cos(th) + y0 * np.sin(th))
        disc = a2 - s0**2
        out += np.where(disc > 0, 2 * val * a * b * np.sqrt(np.clip(disc, 0, None)) / a2, 0.0)
    return (out * scale).astype(np.float32)
