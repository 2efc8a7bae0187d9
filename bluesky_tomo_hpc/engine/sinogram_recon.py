"""-log sinograms -> slices, in chunks, with the configured engine and algorithm.

Why its own module: the orchestrator (:mod:`.pipeline`) and the centre finder (sharpness
refinement, ``try`` sweeps) both reconstruct single slices; both import this, so neither
imports the other.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .backend import choose_device, get_array_module, gpu_devices, to_numpy
from .params import ReconParams
from .tomopy_engine import reconstruct_tomopy, resolve_engine
from .volume import Progress, ReconChunk, reconstruct_volume

__all__ = ["reconstruct_sinograms", "make_chunk_reconstructor"]


def reconstruct_sinograms(
    proj_log: Any,
    theta: Any,
    center: float,
    params: ReconParams,
    *,
    progress: Progress | None = None,
    out: Any = None,
    recon: ReconChunk | None = None,
) -> Any:
    """-log projections ``(n_angles, nz, nx)`` -> slices ``(nz, nx, nx)`` float32, in chunks.

    ``center`` is in the columns of ``proj_log``. ``out`` (any array-like) receives the slices;
    a new NumPy array otherwise. No circular mask here (that is the pipeline's last step).
    Host projections with ``device`` on a GPU run through the overlapped conveyor on every
    visible GPU (:func:`.volume.reconstruct_volume`). ``recon`` (from
    :func:`make_chunk_reconstructor` for the same angles, centre and width) lets a caller that
    reconstructs many slabs build the NUFFT plan once instead of once per slab.
    """
    n_angles, nz, nx = proj_log.shape
    theta = np.asarray(theta, dtype=np.float64)
    if out is None:
        out = np.empty((nz, nx, nx), dtype=np.float32)
    engine = resolve_engine(params)
    if recon is None:
        recon = make_chunk_reconstructor(theta, center, nx, params, engine=engine)
    devices = None
    if engine == "native" and choose_device(params.device) is not np and get_array_module(proj_log) is np:
        devices = gpu_devices()  # pragma: no cover - needs a CUDA device
    return reconstruct_volume(
        proj_log, recon, out, rows=(0, nz), chunk=params.chunk_slices, progress=progress, devices=devices
    )


def make_chunk_reconstructor(
    theta: np.ndarray, center: float, nx: int, params: ReconParams, *, engine: str = "native",
) -> ReconChunk:
    """``recon(block (n_angles, k, nx), out) -> (k, nx, nx)`` for :func:`.volume.reconstruct_volume`.

    The NUFFT plan comes from the geometry cache (:func:`.fourier.fourier_plan`), so every
    chunk, slab and call with the same geometry reuses it. The block is read through a
    transposed view: no sinogram copy.
    """
    filt: dict[str, Any] = {"filter_name": params.filter_name, "cutoff": params.filter_cutoff,
                            "order": params.butterworth_order, "pad": params.pad}

    def filled(out: Any, slices: Any) -> Any:
        if out is None:
            return slices
        out[...] = to_numpy(slices)
        return out

    if engine == "tomopy":
        return lambda block, out=None: filled(
            out, reconstruct_tomopy(np.asarray(block).transpose(1, 0, 2), theta, center, params))
    xp = choose_device(params.device)
    if params.algorithm == "fbp":
        from .fbp import reconstruct_fbp

        return lambda block, out=None: filled(
            out, reconstruct_fbp(xp.asarray(block).transpose(1, 0, 2), theta, center, **filt))
    from .fourier import reconstruct_fourier

    filt["whole_square"] = params.circular_mask is None  # a mask keeps the disc only

    def fourier(block: Any, out: Any = None) -> Any:
        sino = xp.asarray(block).transpose(1, 0, 2)
        if xp is not np:  # pragma: no cover - needs a CUDA device
            return filled(out, reconstruct_fourier(sino, theta, center, **filt))
        return reconstruct_fourier(sino, theta, center, out=out, **filt)

    return fourier


def reconstruct_at_centers(sino: Any, theta: Any, centers: list[float], params: ReconParams) -> list[Any]:
    """One slice ``(nx, nx)`` of the -log sinogram ``(n_angles, nx)`` per candidate centre (for
    centre refinement and ``try`` sweeps). The native Fourier method builds its NUFFT plan once
    for all candidates, which is most of the cost of a single slice; other engines go slice by
    slice through :func:`reconstruct_sinograms`. On the CPU the rows are filtered once and the
    candidates go to all threads (:meth:`.fourier.FourierPlan.run_cpu_centers`). The whole
    square is made, filtered at 2 n:
    with the engine's 1.5 n for the inscribed disc, a truncated (interior) scan's edges wrap
    into the disc the centre's metrics read, and its answer moved by 0.7 px
    (IMAT interior, ``benchmarks/bench_center.py``)."""
    theta = np.asarray(theta, dtype=np.float64)
    block = sino[:, None, :]
    nx = sino.shape[-1]
    if resolve_engine(params) != "native" or params.algorithm != "fourier":
        return [reconstruct_sinograms(block, theta, float(c), params)[0] for c in centers]
    from .fourier import fourier_plan, fourier_width, reconstruct_fourier

    xp = choose_device(params.device)
    whole = True
    plan = fourier_plan(nx, theta, fourier_width(nx, params.pad, whole), gpu=xp is not np, whole_square=whole,
                        purpose="centre")
    row = xp.ascontiguousarray(xp.asarray(sino, dtype=xp.float32)[None])
    if xp is np:  # filtered once, the candidates on all threads
        left = (plan.n_pad - nx) // 2
        kernels = [plan.kernel(float(c) + left, params.filter_name, params.filter_cutoff,
                               params.butterworth_order) for c in centers]
        out = np.empty((len(centers), nx, nx), dtype=np.float32)
        plan.run_cpu_centers(np.asarray(sino, dtype=np.float32), kernels, out, left)
        return list(out)
    filt = {"filter_name": params.filter_name, "cutoff": params.filter_cutoff,
            "order": params.butterworth_order, "pad": params.pad, "whole_square": whole}
    return [reconstruct_fourier(row, theta, float(c), plan=plan, **filt)[0] for c in centers]
