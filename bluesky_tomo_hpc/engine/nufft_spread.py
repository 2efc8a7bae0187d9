"""A CPU type-1 NUFFT made of FINUFFT's spreader and SciPy's FFT, for two real slices at a time.

Why not ``finufft.Plan`` whole: its FFT (FFTW as the PyPI wheel builds it) costs about 3x what
SciPy's pocketfft takes for the same 2D transform on this machine (0.17 against 0.06 CPU seconds
at 2560^2), and planning it with FFTW_MEASURE costs 20+ seconds per geometry and process. FINUFFT
spreads the non-uniform points onto the oversampled grid (``spreadinterponly``: its vectorised,
sorted spreader, no FFT), SciPy transforms the grid, and the kernel's Fourier series is divided
out. The division factors are calibrated once per plan by spreading a unit point at the origin
through the same spreader and transform, so the result is FINUFFT's own type-1 sum to its
accuracy (checked against ``finufft.nufft2d1`` in the tests), whatever kernel FINUFFT picks.

Why FINUFFT 2.4 (``finufft>=2.4.1,<2.5`` in the project's dependencies): 2.5's ``execute``
allocates and zero-fills a fine grid the size of ours on every call even when it only spreads
(``spreadinterponly``: the grid is never used); at 2560^2 that is 52 MB of fresh pages per slice
pair (12,800 page faults, about 55 ms of the 200 ms a 1500 x 2048 pair spent spreading), and
2.5's spreader was slower besides: 2.4.1 spreads the same pair in 0.11-0.15 s against 2.5.1's
0.20-0.21 s (CPU seconds, one thread, load 8-10; the NUFFT floor of ``benchmarks/bench_engine.py``
shows the same step). FINUFFT's master still allocates it, hence the upper bound.

The output modes are image pixels; they are written straight into two float32 slices (the real
and the imaginary part: two real slices travel in one complex transform), rows flipped (slices
are stored with y running down the rows), the deconvolution applied in the same pass.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import scipy.fft

#: FINUFFT's smallest upsampling factor: the smallest grid (the FFT); larger factors make the
#: grid's FFT and the memory traffic grow faster than the spreading shrinks
UPSAMPFAC = 1.25

#: the default accuracy: FINUFFT then picks a kernel 4 points wide at ``UPSAMPFAC`` (measured
#: with FINUFFT 2.4.1 on a 720 x 1024 slice pair inside the disc: 6e-3 of the peak at most
#: against an eps=1e-6 sum, well below the discretisation error of any FBP, whose NRMSE is
#: 0.03-0.04 here). At 3e-3 it picks width 5: 8e-4, for 10-20% more spreading time.
DEFAULT_EPS = 5e-3


def grid_size(n: int, upsampfac: float = UPSAMPFAC) -> int:
    """The oversampled grid's side: an even, FFT-friendly size >= ``upsampfac * n``."""
    nf = scipy.fft.next_fast_len(int(np.ceil(upsampfac * n)))
    return nf + nf % 2


def kernel_series(n: int, nf: int, opts: dict[str, Any], offsets: int = 8) -> np.ndarray:
    """The spreading kernel's Fourier series at modes ``-(n//2) .. n - n//2 - 1`` (times the
    grid's own phase), measured through FINUFFT's 1D spreader with the same options: one unit
    point at each of ``offsets`` positions spread over one grid cell, transformed, its shift
    removed, averaged. The average over the cell cancels the aliased terms (up to the
    ``offsets``-th), so this is the kernel's continuous transform, as FINUFFT divides by; one
    point on a grid node would leave them in. The 2D kernel is the product of two of these.
    """
    import finufft

    h = n // 2
    k = np.arange(-h, n - h)
    idx = k % nf
    series = np.zeros(n, dtype=np.complex128)
    grid = np.empty(nf, dtype=np.complex64)
    plan = finufft.Plan(1, (nf,), n_trans=1, **opts)
    for j in range(offsets):
        x = (j + 0.5) / offsets * 2 * np.pi / nf
        plan.setpts(np.array([x], dtype=np.float32))
        plan.execute(np.ones(1, dtype=np.complex64), out=grid)
        b = np.fft.ifft(grid.astype(np.complex128), norm="forward")[idx]
        series += b * np.exp(-1j * k * float(np.float32(x)))
    return series / offsets


def bin_order(y: np.ndarray, x: np.ndarray, nf: int) -> np.ndarray:
    """The permutation that puts points in the order FINUFFT's spreader visits them: by bins of
    4 grid rows, then 16 columns (its 2D bins). Why: points in that order make FINUFFT's own sort
    the identity, so spreading reads points and strengths in sequence instead of gathering
    them (25% less spreading time at 1500 x 2048; the one gather :meth:`SpreadNUFFT.execute`
    then does costs a third of that)."""
    gx = np.floor((x / (2 * np.pi) % 1.0) * (nf / 16)).astype(np.int64)
    gy = np.floor((y / (2 * np.pi) % 1.0) * (nf / 4)).astype(np.int64)
    return np.lexsort((gx, gy)).astype(np.intp)


class SpreadNUFFT:
    """``sum_j c_j exp(+i (k_y y_j + k_x x_j))`` on ``n x n`` modes, one thread's worth.

    Not thread-safe (it owns its grid); make one per worker thread. ``points`` are
    ``(y, x)`` float32 in [-pi, pi), set once (FINUFFT sorts them into bins). ``order``: the
    points were given permuted by it (:func:`bin_order`, shared by the threads); ``c`` stays in
    the caller's order and is gathered into the points' order at each call.
    """

    def __init__(self, n: int, points: tuple[np.ndarray, np.ndarray], *, eps: float = DEFAULT_EPS,
                 upsampfac: float = UPSAMPFAC, order: np.ndarray | None = None) -> None:
        import finufft

        self.n, self.nf = n, grid_size(n, upsampfac)
        opts: dict[str, Any] = {"eps": eps, "isign": 1, "dtype": "complex64", "nthreads": 1,
                                "upsampfac": upsampfac, "spreadinterponly": 1}
        self._spread = finufft.Plan(1, (self.nf, self.nf), n_trans=1, **opts)
        self._spread.setpts(*points)
        self._grid = np.empty((self.nf, self.nf), dtype=np.complex64)
        self._order = order
        self._c = None if order is None else np.empty(len(order), dtype=np.complex64)
        self.weights = deconvolution_weights(n, eps, upsampfac)

    def spread(self, c: np.ndarray) -> np.ndarray:
        """The oversampled grid of ``c`` (complex64, one value per point): FINUFFT's spreading only,
        into this plan's own grid (overwritten by the next call). Linear in ``c``: grids of several
        blocks of points add up to the grid of all of them (:mod:`..sinks.grid_sum`)."""
        if self._order is not None:
            # 'clip': the order is a permutation (every index valid); no per-index bounds check
            # and no error path: 0.019 against 0.031 s per 1500 x 2048 pair
            c = np.take(c, self._order, out=self._c, mode="clip")
        self._spread.execute(c, out=self._grid)
        return self._grid

    def execute(self, c: np.ndarray, out_re: np.ndarray, out_im: np.ndarray | None) -> None:
        """Transform ``c`` (complex64, one value per point) into ``out_re`` / ``out_im`` (n x n
        float32, rows flipped: y down): the real and imaginary parts of the modes, deconvolved."""
        grid_to_modes(self.spread(c), self.n, self.weights, out_re, out_im)


@functools.lru_cache(maxsize=4)
def deconvolution_weights(n: int, eps: float = DEFAULT_EPS, upsampfac: float = UPSAMPFAC) -> np.ndarray:
    """``(n, n)`` float32: one over the spreading kernel's Fourier series, rows as stored (flipped);
    depends on the kernel only (size, accuracy, upsampling), never on the points: cached, shared
    by the plans (read only)."""
    nf = grid_size(n, upsampfac)
    opts: dict[str, Any] = {"eps": eps, "isign": 1, "dtype": "complex64", "nthreads": 1,
                            "upsampfac": upsampfac, "spreadinterponly": 1}
    series = kernel_series(n, nf, opts)
    # FINUFFT's kernel is even: its series is real (to rounding) and the two slices stay
    # apart; a complex one (a kernel off centre) would mix them
    if np.abs(series.imag).max() > 1e-4 * np.abs(series.real).max():
        raise RuntimeError("FINUFFT's spreading kernel is not centred: its deconvolution is complex")
    w = 1.0 / series.real
    return np.ascontiguousarray(np.outer(w[::-1], w), dtype=np.float32)


def grid_to_modes(grid: np.ndarray, n: int, weights: np.ndarray, out_re: np.ndarray,
                  out_im: np.ndarray | None) -> None:
    """An oversampled grid ``(nf, nf)`` complex64 (overwritten) -> its ``n x n`` modes, deconvolved
    by ``weights`` (:func:`deconvolution_weights`), real and imaginary parts into ``out_re`` /
    ``out_im`` (float32, rows flipped: y down).

    The grid's inverse FFT is pruned: down the columns for the whole grid (in place), then along
    the rows only for the ``n`` of ``nf`` rows the image keeps (about a tenth less).
    """
    nf, h = grid.shape[0], n // 2
    g = scipy.fft.ifft(grid, axis=0, norm="forward", workers=1, overwrite_x=True)
    w = weights
    # out row i holds mode k_y = n - h - 1 - i: the first n - h rows are the grid's rows
    # n - h - 1 .. 0, the rest its rows nf - 1 .. nf - h; columns k_x = -h .. n - h - 1
    for rows, first, last in ((slice(0, n - h), 0, n - h), (slice(n - h, n), nf - h, nf)):
        part = scipy.fft.ifft(g[first:last], axis=1, norm="forward", workers=1, overwrite_x=True)
        src = part[::-1]
        for cols, cs in ((slice(0, h), slice(nf - h, nf)), (slice(h, n), slice(0, n - h))):
            block = src[:, cs]
            np.multiply(block.real, w[rows, cols], out=out_re[rows, cols])
            if out_im is not None:
                np.multiply(block.imag, w[rows, cols], out=out_im[rows, cols])
