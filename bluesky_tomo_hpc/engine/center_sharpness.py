"""Centres judged by the reconstructed image: the sharpest slice, and one slice per candidate.

A sinogram metric can sit a pixel off the image optimum; a handful of one-slice reconstructions
settles it (:func:`refine_center_sharpness`). :func:`try_centers` makes the slices a person compares.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bluesky_tomo_hpc.engine.backend import get_array_module, to_numpy
from bluesky_tomo_hpc.engine.center_estimate import CenterEstimate
from bluesky_tomo_hpc.engine.center_rows import check_projection_stack, row_group_sinograms
from bluesky_tomo_hpc.engine.params import ReconParams
from bluesky_tomo_hpc.engine.preprocess import check_angles, circular_mask, to_binned
from bluesky_tomo_hpc.engine.sinogram_recon import reconstruct_at_centers
from bluesky_tomo_hpc.model import TomoDataError


def total_variation(img: Any) -> float:
    """Sum of absolute neighbour differences: smallest for the sharpest, least smeared slice."""
    xp = get_array_module(img)
    return float(xp.abs(xp.diff(img, axis=0)).sum() + xp.abs(xp.diff(img, axis=1)).sum())


def refine_center_sharpness(
    proj_norm: Any, theta: np.ndarray, estimate: CenterEstimate, params: ReconParams,
    radius: float = 1.0, step: float = 0.25, max_width: int = 768, max_angles: int = 400, extend: int = 2,
    sino: Any = None,
) -> CenterEstimate:
    """Polish an estimate to the centre whose reconstructed slice is sharpest (least total
    variation), within ``radius`` px, followed up to ``extend`` px further when the
    sharpest is on the window's edge. Sinogram metrics such as Vo's can sit a pixel off the
    image optimum (the TomoPy tooth: Vo 295.0, sharpest slice 296.0); a handful of one-slice
    reconstructions (of the mean of the rows used, see :func:`row_group_sinograms`, or ``sino``
    where the caller has it already) settles it. A
    minimum on the window's edge leaves the estimate as it was (``details["sharpness_at_edge"]``).
    """
    if sino is None:
        _, groups = row_group_sinograms(proj_norm, params, params.minus_log_clip)
        sino = get_array_module(proj_norm).stack(groups, axis=0).mean(axis=0)
    cands = estimate.center + np.arange(-radius, radius + step / 2, step)
    ratio = params.circular_mask or 0.95
    b = 1
    while sino.shape[1] // (2 * b) >= max_width // 2 and sino.shape[1] // b > max_width:
        b *= 2  # wide detectors: slices of at most ~max_width px are sharp enough to compare
    if b > 1:
        nb = sino.shape[1] // b
        sino = sino[:, : nb * b].reshape(sino.shape[0], nb, b).mean(axis=2)
    stride = -(-sino.shape[0] // max_angles)  # long scans: every k-th angle is enough to compare
    sino, theta = sino[::stride], np.asarray(theta)[::stride]
    def tv_at(cs: np.ndarray) -> np.ndarray:
        slices = reconstruct_at_centers(sino, theta, [to_binned(float(c), b) for c in cs], params)
        return np.array([total_variation(circular_mask(s, ratio)) for s in slices])

    tv = tv_at(cands)
    for _ in range(extend):  # the optimum lies beyond the window: follow it a pixel at a time
        k = int(np.argmin(tv))
        if 0 < k < len(cands) - 1:
            break
        sign = -1.0 if k == 0 else 1.0
        more = cands[k] + sign * step * np.arange(1, int(round(1.0 / step)) + 1)
        more_tv = tv_at(more)
        cands, tv = (np.concatenate([more[::-1], cands]), np.concatenate([more_tv[::-1], tv])) if sign < 0 \
            else (np.concatenate([cands, more]), np.concatenate([tv, more_tv]))
    k = int(np.argmin(tv))
    details = {**estimate.details, "sharpness_centers": cands.tolist(), "sharpness_tv": tv.tolist(),
               "before_sharpness": estimate.center, "sharpness_at_edge": k in (0, len(cands) - 1)}
    if k in (0, len(cands) - 1):
        return CenterEstimate(estimate.center, estimate.confidence, estimate.method, details)
    center = float(cands[k])
    y0, y1, y2 = tv[k - 1], tv[k], tv[k + 1]
    curv = y0 - 2 * y1 + y2
    if curv > 0:
        center += float(np.clip(0.5 * (y0 - y2) / curv, -0.5, 0.5)) * step
    return CenterEstimate(center, estimate.confidence, f"{estimate.method}+sharpness", details)


def try_centers(
    proj_log: Any,
    theta: Any,
    centers: Any,
    params: ReconParams,
    row: int = 0,
) -> dict[float, np.ndarray]:
    """Reconstruct ``row`` of ``proj_log`` once per candidate centre: ``{centre: (n, n) slice}``.

    ``proj_log`` is (n_angles, ny, nx) -log data and ``centers`` are in its columns (binned ones
    if it is binned); slices get ``params.circular_mask`` like the pipeline's output. The
    contact sheet people look at is :func:`bluesky_tomo_hpc.results.pictures.save_center_sheet_png`.
    """
    arr = check_projection_stack(proj_log, theta)
    ny = arr.shape[1]
    r = int(row)
    if not 0 <= r < ny:
        raise TomoDataError(f"try_centers: row {r} outside the {ny} rows given")
    cands = [float(c) for c in np.atleast_1d(np.asarray(centers, dtype=float))]
    if not cands:
        raise ValueError("try_centers: no centres given")
    th, _ = check_angles(theta)
    slices = reconstruct_at_centers(arr[:, r, :], th, cands, params)
    return {c: to_numpy(circular_mask(img, params.circular_mask) if params.circular_mask else img)
            for c, img in zip(cands, slices, strict=True)}
