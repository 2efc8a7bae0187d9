"""-log sinograms -> slices, in chunks, with the configured engine and algorithm.

Why its own module: the orchestrator (:mod:`.pipeline`) and the centre finder (sharpness
refinement, ``try`` sweeps) both reconstruct single slices; both import this, so neither
imports the other.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .backend import choose_device
from .filters import padded_width
from .params import ReconParams
from .tomopy_engine import reconstruct_tomopy, resolve_engine
from .volume import Progress, reconstruct_volume

__all__ = ["reconstruct_sinograms", "make_chunk_reconstructor"]


def reconstruct_sinograms(
    proj_log: Any,
    theta: Any,
    center: float,
    params: ReconParams,
    *,
    progress: Progress | None = None,
    out: Any = None,
    recon: Callable[[Any], Any] | None = None,
) -> Any:
    """-log projections ``(n_angles, nz, nx)`` -> slices ``(nz, nx, nx)`` float32, in chunks.

    ``center`` is in the columns of ``proj_log``. ``out`` (any array-like) receives the slices;
    a new NumPy array otherwise. No circular mask here (that is the pipeline's last step).
    ``recon`` (from :func:`make_chunk_reconstructor` for the same angles, centre and width) lets
    a caller that reconstructs many slabs build the NUFFT plan once instead of once per slab.
    """
    n_angles, nz, nx = proj_log.shape
    theta = np.asarray(theta, dtype=np.float64)
    if out is None:
        out = np.empty((nz, nx, nx), dtype=np.float32)
    if recon is None:
        recon = make_chunk_reconstructor(theta, center, nx, params, engine=resolve_engine(params))
    return reconstruct_volume(
        proj_log, recon, out, rows=(0, nz), chunk=params.chunk_slices, progress=progress
    )


def make_chunk_reconstructor(
    theta: np.ndarray, center: float, nx: int, params: ReconParams, *, engine: str = "native"
) -> Callable[[Any], Any]:
    """``recon(block (n_angles, k, nx)) -> (k, nx, nx)`` for :func:`.volume.reconstruct_volume`.

    Builds the NUFFT plan once, so every chunk of a volume reuses it.
    """
    filt: dict[str, Any] = {"filter_name": params.filter_name, "cutoff": params.filter_cutoff,
                            "order": params.butterworth_order, "pad": params.pad}
    if engine == "tomopy":
        return lambda block: reconstruct_tomopy(np.asarray(block).transpose(1, 0, 2), theta, center, params)
    xp = choose_device(params.device)
    if params.algorithm == "fbp":
        from .fbp import reconstruct_fbp

        return lambda block: reconstruct_fbp(xp.asarray(block).transpose(1, 0, 2), theta, center, **filt)
    from .fourier import FourierPlan, reconstruct_fourier

    plan = FourierPlan(nx, theta, padded_width(nx, params.pad), gpu=xp is not np)
    return lambda block: reconstruct_fourier(
        xp.ascontiguousarray(xp.asarray(block).transpose(1, 0, 2)), theta, center, plan=plan, **filt
    )


def reconstruct_at_centers(sino: Any, theta: Any, centers: list[float], params: ReconParams) -> list[Any]:
    """One slice ``(nx, nx)`` of the -log sinogram ``(n_angles, nx)`` per candidate centre (for
    centre refinement and ``try`` sweeps). The native Fourier method builds its NUFFT plan once
    for all candidates, which is most of the cost of a single slice; other engines go slice by
    slice through :func:`reconstruct_sinograms`."""
    theta = np.asarray(theta, dtype=np.float64)
    block = sino[:, None, :]
    nx = sino.shape[-1]
    if resolve_engine(params) != "native" or params.algorithm != "fourier":
        return [reconstruct_sinograms(block, theta, float(c), params)[0] for c in centers]
    from .fourier import FourierPlan, reconstruct_fourier

    xp = choose_device(params.device)
    plan = FourierPlan(nx, theta, padded_width(nx, params.pad), gpu=xp is not np)
    row = xp.ascontiguousarray(xp.asarray(sino, dtype=xp.float32)[None])
    filt = {"filter_name": params.filter_name, "cutoff": params.filter_cutoff,
            "order": params.butterworth_order, "pad": params.pad}
    return [reconstruct_fourier(row, theta, float(c), plan=plan, **filt)[0] for c in centers]
