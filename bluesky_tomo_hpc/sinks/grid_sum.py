"""The running sum of a streamed volume kept as NUFFT grids, one per slice pair, not as slices.

Why: the Fourier method's slice is ``deconvolve(FFT(spread(spectrum)))`` (:mod:`..engine.fourier`,
:mod:`..engine.nufft_spread`), and both the FFT and the deconvolution are linear. Summing each
block's slices, as :class:`.running_volume.RunningVolume` first did, paid the oversampled grid's
FFT for every slice pair in every block: measured at ALS size, binning 4 (540 x 640 x 640, blocks
of 128 angles), 2.9 of a block's ~5 CPU seconds, so the total grew with the number of blocks and
the summing slowed the live feed. Here a block only filters and spreads its angles (a cost per
angle, whatever the block size) and adds each pair's grid to the sum; the ~270 FFTs and
deconvolutions are done once, at the stop, slab by slab (:meth:`GridSum.slabs`).

The grids cost ``pairs x nf^2 x 8`` bytes (nf ~ 1.25 n): 1.4 GB at ALS size, binning 4, against
0.9 GB of float32 slices; :func:`grid_bytes` is what the sink checks against its budget.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..engine.backend import cpu_threads
from ..engine.fourier import FourierPlan, fourier_width
from ..engine.nufft_spread import DEFAULT_EPS, deconvolution_weights, grid_size, grid_to_modes
from ..engine.params import ReconParams


def grid_bytes(nz: int, n: int) -> int:
    """Bytes of the grids of ``nz`` slices ``n`` wide (complex64, one grid per slice pair)."""
    nf = grid_size(n)
    return 8 * ((nz + 1) // 2) * nf * nf


class GridSum:
    """``sum_b k_b * grid_b`` per slice pair over the blocks added so far (``k_b``: the block's angle
    count, as :class:`.running_volume.RunningVolume` weighs them), for a volume ``(nz, n, n)``
    reconstructed at binned column ``center`` with ``params``' filter."""

    def __init__(self, nz: int, n: int, params: ReconParams, center: float):
        self.nz, self.n, self.params, self.center = nz, n, params, float(center)
        self.whole_square = params.circular_mask is None
        self.n_pad = fourier_width(n, params.pad, self.whole_square)
        nf = grid_size(n)
        self.grids = np.zeros(((nz + 1) // 2, nf, nf), dtype=np.complex64)  # pages touched as summed

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.nz, self.n, self.n

    def add(self, proj_log: np.ndarray, theta: np.ndarray, threads: int | None) -> None:
        """Spread a block ``proj_log (k, nz, n)`` of angles ``theta`` into the grids, times ``k``."""
        plan = FourierPlan(self.n, theta, self.n_pad, eps=DEFAULT_EPS, threads=threads,
                           whole_square=self.whole_square)
        try:
            left = (self.n_pad - proj_log.shape[2]) // 2
            p = self.params
            kernel = plan.kernel(self.center + left, p.filter_name, p.filter_cutoff, p.butterworth_order)
            plan.spread_cpu(proj_log.transpose(1, 0, 2), kernel, self.grids, left, scale=len(theta))
        finally:
            plan.close()

    def slices(self, z0: int, z1: int, out: np.ndarray, *, keep: bool = True,
               threads: int | None = 1) -> None:
        """Slices ``[z0, z1)`` (``z0`` even) into ``out (z1 - z0, n, n)`` float32: each pair's grid
        transformed and deconvolved; ``keep=False`` transforms the grids in place (the stop: they
        are not needed again), else a copy of each."""
        if z0 % 2:
            raise ValueError("slices start at an even slice (one grid holds a pair)")
        weights = deconvolution_weights(self.n, DEFAULT_EPS)

        def pair(p: int) -> None:
            z = 2 * p
            grid = self.grids[p] if not keep else self.grids[p].copy()
            second = out[z + 1 - z0] if z + 1 < z1 else None
            grid_to_modes(grid, self.n, weights, out[z - z0], second)

        pairs = range(z0 // 2, (z1 + 1) // 2)
        workers = min(cpu_threads(threads), len(pairs))
        if workers <= 1:
            for p in pairs:
                pair(p)
            return
        with ThreadPoolExecutor(workers, thread_name_prefix="grid-fft") as pool:
            list(pool.map(pair, pairs))

    def slabs(self, slices: int, threads: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """The whole volume, ``slices`` (even) at a time, each slab a fresh array; the grids are
        transformed in place and freed as the slabs are made (the stop)."""
        for z0 in range(0, self.nz, slices):
            z1 = min(z0 + slices, self.nz)
            out = np.empty((z1 - z0, self.n, self.n), dtype=np.float32)
            self.slices(z0, z1, out, keep=False, threads=threads)
            yield z0, out
        self.grids = np.zeros((0, 1, 1), dtype=np.complex64)

    def sampled(self, step: int) -> np.ndarray:
        """Every ``step``-th voxel of the volume so far (a look while the scan runs): only the
        grids of the slices kept are transformed, copies of them."""
        zs = range(0, self.nz, step)
        out = np.empty((len(zs), self.n, self.n), dtype=np.float32)
        pair_out = np.empty((2, self.n, self.n), dtype=np.float32)
        for i, z in enumerate(zs):
            z0 = z - z % 2
            self.slices(z0, min(z0 + 2, self.nz), pair_out[: min(2, self.nz - z0)])
            out[i] = pair_out[z - z0]
        return out[:, ::step, ::step]
