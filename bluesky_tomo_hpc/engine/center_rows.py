"""Which detector rows and columns the centre finders look at.

A few rows spread over the reconstructed range, summed in two groups (upper, lower) so that a
tilted axis or a local failure shows as a disagreement, and the search window around the middle.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from bluesky_tomo_hpc.engine.backend import get_array_module, to_numpy
from bluesky_tomo_hpc.engine.params import ReconParams
from bluesky_tomo_hpc.engine.preprocess import minus_log
from bluesky_tomo_hpc.model import TomoDataError


def check_projection_stack(proj: Any, theta: Any) -> Any:
    xp = get_array_module(proj)
    arr = xp.asarray(proj)
    if arr.ndim != 3:
        raise TomoDataError(f"centre finding expects (n_angles, ny, nx) projections, got {tuple(arr.shape)}")
    n = np.asarray(to_numpy(theta)).size
    if n != arr.shape[0]:
        raise TomoDataError(f"centre finding: {n} angles for {arr.shape[0]} projections")
    return arr


def rows_for_center(ny: int, params: ReconParams, n_rows: int = 5) -> list[int]:
    """A few rows spread over the reconstructed range (the middle 80 % of the detector by default)."""
    if params.rows is not None:
        lo, hi = params.rows[0], min(params.rows[1], ny)
        if lo >= hi:
            raise TomoDataError(f"rows {params.rows} are outside the detector's {ny} rows")
    else:
        lo, hi = int(ny * 0.1), max(int(math.ceil(ny * 0.9)), int(ny * 0.1) + 1)
    return sorted({int(r) for r in np.linspace(lo, hi - 1, min(n_rows, hi - lo)).round()})


def search_window(nx: int, params: ReconParams) -> tuple[float, float]:
    """Lowest and highest centre an automatic search may answer for a full-field scan:
    ``center_search_width`` px either side of the detector middle (default a quarter of the
    detector width: Vo's metric reaches that far, the axis of a full-field scan rarely further),
    within the detector."""
    mid = (nx - 1) / 2.0
    width = search_width(nx, params)
    return max(mid - width, 0.0), min(mid + width, nx - 1.0)


def search_width(nx: int, params: ReconParams) -> float:
    """``center_search_width``, or a quarter of the ``nx`` columns when it is not set."""
    return nx / 4.0 if params.center_search_width is None else float(params.center_search_width)


def row_group_sinograms(proj_norm: Any, params: ReconParams, clip: float | None,
                        ) -> tuple[list[int], list[Any]]:
    """Two -log sinograms, each the mean of up to 8 rows of one half of the rows used
    (``clip`` None: ``proj_norm`` is -log data already).

    Why sums: a sum of sinograms is the sinogram of the summed slices, with the same axis, and
    has less noise; two independent groups (upper, lower) still reveal a tilted axis or a
    local failure by disagreeing, at a third of the cost of five single rows."""
    rows = rows_for_center(proj_norm.shape[1], params, n_rows=16)
    halves = [rows[: (len(rows) + 1) // 2], rows[len(rows) // 2 :]] if len(rows) > 1 else [rows]
    xp = get_array_module(proj_norm)
    groups = [(proj_norm[:, g, :] if clip is None else minus_log(proj_norm[:, g, :], clip))
              .mean(axis=1, dtype=xp.float32) for g in halves]
    return rows, groups
