"""Real-space filtered back-projection with linear interpolation, NumPy or CuPy.

Why: on a GPU this is the fast method, on a CPU it serves small previews and the live-preview
worker, which adds one new projection at a time to three orthogonal slices
(:func:`backproject_projection`). It shares its filter with :mod:`.fourier`, so both agree.

Geometry (shared by :mod:`.fourier` and :mod:`.projector`): a slice is ``(n, n)`` indexed
``[row, col]``; ``x = col - (n - 1) / 2``, ``y = row - (n - 1) / 2`` (the rotation axis sits in the
middle of the image); a point projects to detector coordinate ``s = x cos(theta) + y sin(theta)``
measured from the axis. Output units: attenuation per pixel when the input is line integrals in
pixel units (``-log`` of normalised transmission).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .backend import get_array_module
from .filters import filter_sinogram


def grid_coords(n: int, xp: Any = np) -> tuple[Any, Any]:
    """``(x, y)`` of an ``n x n`` slice, each ``(n, n)`` float32, axis in the middle.

    TomoPy's (and scikit-image's) orientation: x grows along columns, y grows *up* the rows
    (row ``i`` is ``y = (n - 1) / 2 - i``), so our slices look like TomoPy's of the same data.
    """
    c = xp.arange(n, dtype=xp.float32) - (n - 1) / 2.0
    y, x = xp.meshgrid(-c, c, indexing="ij")
    return x, y


def backproject_projection(
    filtered_rows: Any,
    theta: float,
    axis_index: float,
    x: Any,
    y: Any,
    *,
    weight: float = 1.0,
    out: Any = None,
) -> Any:
    """Add one filtered projection to arbitrary in-plane points of every row.

    ``filtered_rows`` is ``(nz, n_det)`` (one angle, any number of detector rows), with the axis
    at column ``axis_index`` (``filter_sinogram`` gives ``n_pad // 2``). ``x``/``y`` are the
    points' in-plane coordinates (any shape ``P``). Returns (or adds into ``out``)
    ``(nz, *P)`` = ``weight * q(x cos(theta) + y sin(theta))``; points projecting off the
    detector get nothing.

    For a live preview: an axial slice is ``x, y = grid_coords(n)`` on one row; a vertical
    slice through row-plane line ``y = y0`` is ``x = grid_coords(n)[0][0], y = full(n, y0)`` on
    all rows (result ``(nz, n)``). With ``weight = pi / n_angles`` the sum over all angles is
    the full FBP.
    """
    xp = get_array_module(filtered_rows)
    q = xp.asarray(filtered_rows, dtype=xp.float32)
    if q.ndim == 1:
        q = q[None]
    n_det = q.shape[-1]
    t = x * np.float32(np.cos(theta)) + y * np.float32(np.sin(theta)) + np.float32(axis_index)
    i0 = xp.floor(t)
    w = (t - i0).astype(xp.float32)
    i0 = i0.astype(xp.int64)
    inside = (i0 >= 0) & (i0 < n_det - 1)
    i0 = xp.where(inside, i0, 0)
    w1 = xp.where(inside, w, 0.0).astype(xp.float32) * np.float32(weight)
    w0 = xp.where(inside, 1.0 - w, 0.0).astype(xp.float32) * np.float32(weight)
    contrib = q[:, i0] * w0 + q[:, i0 + 1] * w1
    if out is None:
        return contrib
    out += contrib
    return out


def backproject(
    filtered: Any,
    theta: Any,
    axis_index: float,
    n: int,
    *,
    weight: float | None = None,
    out: Any = None,
) -> Any:
    """Back-project filtered sinograms ``(nz, n_angles, n_det)`` onto ``(nz, n, n)`` float32.

    ``weight`` defaults to ``pi / n_angles`` (uniform angles over 180 degrees), which makes a
    ramp-filtered back-projection quantitative.
    """
    xp = get_array_module(filtered)
    if filtered.ndim == 2:
        filtered = filtered[None]
    nz, n_angles, _ = filtered.shape
    theta = np.asarray(theta, dtype=np.float64)
    if len(theta) != n_angles:
        raise ValueError(f"{len(theta)} angles for a sinogram with {n_angles} projections")
    w = np.pi / n_angles if weight is None else weight
    x, y = grid_coords(n, xp)
    vol = xp.zeros((nz, n, n), dtype=xp.float32) if out is None else out
    for m in range(n_angles):
        backproject_projection(filtered[:, m], float(theta[m]), axis_index, x, y, weight=w, out=vol)
    return vol


def reconstruct_fbp(
    sino: Any,
    theta: Any,
    center: float,
    *,
    n: int | None = None,
    filter_name: str = "shepp",
    cutoff: float = 1.0,
    order: int = 2,
    pad: bool = True,
) -> Any:
    """Filtered back-projection of sinograms ``(nz, n_angles, n_det)`` -> ``(nz, n, n)``.

    ``center`` is the axis as a 0-based detector column (sub-pixel allowed); ``n`` defaults to
    the detector width.
    """
    if sino.ndim == 2:
        sino = sino[None]
    n = sino.shape[-1] if n is None else n
    filtered, axis = filter_sinogram(
        sino, center, filter_name=filter_name, cutoff=cutoff, order=order, pad=pad
    )
    return backproject(filtered, theta, axis, n)
