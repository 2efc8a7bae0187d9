"""Fourier (gridrec-like) reconstruction: filtered polar spectra -> image by one type-1 NUFFT.

Why: on a CPU only a Fourier method is fast (see ``cpu-baselines.md``); a non-uniform FFT
(FINUFFT; cuFINUFFT on a GPU) does gridding and FFT in one accurate, vectorised step. The
spectrum is the same filtered, centre-shifted one as :mod:`.fbp` uses, so both methods agree
and both are quantitative (attenuation per pixel).

The sum evaluated is the discrete FBP integral, exactly as in :mod:`.fbp`::

    f(x, y) = pi / M * sum_m 1 / N * sum_k Q_m(nu_k) exp(2 pi i nu_k (x cos t_m + y sin t_m))

The real-space back-projector interpolates linearly, which multiplies the spectrum by
``sinc(nu)**2``; the same factor is applied here so that one filter name means one result in
both methods (it also lowers the error against a pixel-averaged truth: Gibbs ringing of the
exact trigonometric interpolation is damped as in any FBP).

Two real sinograms travel as the real and imaginary parts of one complex input (the result is
real for each, since their spectra are Hermitian), halving the work per slice.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from .backend import get_array_module
from .filters import center_phase, filter_response, padded_width

try:  # the GPU path; import errors on machines without CUDA are normal
    import cufinufft as _cufinufft  # type: ignore[import-not-found]
except Exception:  # pragma: no cover - depends on the machine
    _cufinufft = None


def _threads(threads: int | None) -> int:
    if threads is not None:
        return max(1, int(threads))
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS
        return os.cpu_count() or 1


class FourierPlan:
    """A NUFFT plan for one geometry (image size, angles, padded width), reusable per batch.

    Why a class: setting the non-uniform points (sorting them) and the half-pixel phase factors
    cost about one transform, so a volume reconstruction makes them once and runs every chunk
    through the same plan. ``upsampfac=1.25`` is about 3x faster than 2.0 at the same ``eps``.
    """

    def __init__(
        self,
        n: int,
        theta: Any,
        n_pad: int,
        *,
        eps: float = 1e-3,
        threads: int | None = None,
        batch_pairs: int = 4,
        gpu: bool = False,
        upsampfac: float = 1.25,
    ) -> None:
        self.n, self.n_pad, self.gpu = n, n_pad, gpu
        self.theta = np.asarray(theta, dtype=np.float64)
        self.batch_pairs = batch_pairs
        self.threads = _threads(threads)
        self._kernels: dict[tuple, Any] = {}
        omega = 2 * np.pi * np.fft.fftfreq(n_pad)
        wy = (np.sin(self.theta)[:, None] * omega[None, :]).ravel()
        wx = (np.cos(self.theta)[:, None] * omega[None, :]).ravel()
        # pixel positions are mode index + offset (0.5 on even grids: the axis is between pixels)
        offset = (n // 2) - (n - 1) / 2.0
        shift = np.exp(1j * offset * (wx + wy)).reshape(len(self.theta), n_pad)
        if n_pad % 2 == 0:
            shift[:, n_pad // 2] = 0.0  # Nyquist has no Hermitian partner: give it no weight
        self.shift = shift.astype(np.complex64)
        if gpu:
            import cupy as cp  # type: ignore[import-not-found]

            if _cufinufft is None:
                raise RuntimeError(
                    "Fourier reconstruction on the GPU needs cufinufft, which is not installed"
                )
            self.shift = cp.asarray(self.shift)
            self._points = (cp.asarray(wy, dtype=cp.float32), cp.asarray(wx, dtype=cp.float32))
        else:
            self._points = (wy.astype(np.float32), wx.astype(np.float32))
        self._eps, self._upsampfac = eps, upsampfac
        self._plans: dict[int, Any] = {}

    def _plan(self, n_trans: int) -> Any:
        """The NUFFT plan for ``n_trans`` transforms at once (made on first use, points set)."""
        if n_trans not in self._plans:
            if self.gpu:
                plan = _cufinufft.Plan(1, (self.n, self.n), n_trans=n_trans, eps=self._eps, isign=1,
                                       dtype="complex64")
            else:
                import finufft

                plan = finufft.Plan(1, (self.n, self.n), n_trans=n_trans, eps=self._eps, isign=1,
                                    dtype="complex64", nthreads=self.threads, upsampfac=self._upsampfac)
            plan.setpts(*self._points)
            self._plans[n_trans] = plan
        return self._plans[n_trans]

    def kernel(self, center_pad: float, response: Any, key: tuple | None = None) -> Any:
        """Per-(angle, frequency) factor: filter x axis phase ramp x half-pixel shift.

        With a ``key`` (centre and filter settings) the last few kernels are cached, so the
        chunks of one volume pay for it once.
        """
        if key is not None and key in self._kernels:
            return self._kernels[key]
        xp = get_array_module(self.shift)
        ramp = (center_phase(self.n_pad, center_pad, xp) * response).astype(xp.complex64)
        k = self.shift * ramp[None, :]
        if key is not None:
            if len(self._kernels) >= 4:
                self._kernels.pop(next(iter(self._kernels)))
            self._kernels[key] = k
        return k

    def execute(self, spec: Any) -> Any:
        """``spec`` (pairs, M, n_pad) complex64, weighted -> (pairs, n, n) complex64."""
        xp = get_array_module(spec)
        pairs = spec.shape[0]
        c = spec.reshape(pairs, -1)
        out = xp.empty((pairs, self.n, self.n), dtype=xp.complex64)
        b = self.batch_pairs
        for start in range(0, pairs, b):
            block = c[start : start + b]
            k = block.shape[0]
            if k < b:  # a short last batch runs one pair at a time rather than padded with zeros
                for j in range(k):
                    self._execute(self._plan(1), xp.ascontiguousarray(block[j]), out[start + j])
                continue
            self._execute(self._plan(b), xp.ascontiguousarray(block), out[start : start + k])
        return out

    def _execute(self, plan: Any, data: Any, out: Any) -> None:
        """Run ``plan`` writing straight into ``out`` (a contiguous view: no extra copy)."""
        if self.gpu:
            out[...] = plan.execute(data).reshape(out.shape)
        else:
            plan.execute(data, out=out)


def reconstruct_fourier(
    sino: Any,
    theta: Any,
    center: float,
    *,
    n: int | None = None,
    filter_name: str = "shepp",
    cutoff: float = 1.0,
    order: int = 2,
    pad: bool = True,
    eps: float = 1e-3,
    threads: int | None = None,
    plan: FourierPlan | None = None,
) -> Any:
    """Reconstruct sinograms ``(nz, n_angles, n_det)`` -> ``(nz, n, n)`` float32.

    ``center``: the axis as a 0-based detector column. ``eps``: NUFFT relative accuracy (1e-3
    is well below the discretisation error of any FBP). ``plan``: reuse one across chunks.
    """
    xp = get_array_module(sino)
    if sino.ndim == 2:
        sino = sino[None]
    nz, n_angles, n_det = sino.shape
    theta = np.asarray(theta, dtype=np.float64)
    if len(theta) != n_angles:
        raise ValueError(f"{len(theta)} angles for a sinogram with {n_angles} projections")
    n = n_det if n is None else n
    n_pad = padded_width(n_det, pad)
    if plan is None:
        plan = FourierPlan(n, theta, n_pad, eps=eps, threads=threads, gpu=xp is not np)
    elif (plan.n, plan.n_pad) != (n, n_pad) or not np.array_equal(plan.theta, theta):
        raise ValueError("FourierPlan was made for another geometry (size, padding or angles)")
    # two slices per complex line, edge-padded in place (no intermediate copies)
    pairs, left = (nz + 1) // 2, (n_pad - n_det) // 2
    buf = xp.empty((pairs, n_angles, n_pad), dtype=xp.complex64)
    mid = slice(left, left + n_det)
    buf.real[..., mid] = sino[0::2]
    buf.imag[..., mid] = sino[1::2] if nz % 2 == 0 else xp.concatenate(
        [sino[1::2], xp.zeros((1, n_angles, n_det), dtype=sino.dtype)])
    buf[..., :left] = buf[..., left : left + 1]
    buf[..., left + n_det :] = buf[..., left + n_det - 1 : left + n_det]
    if xp is np:
        import scipy.fft

        spec = scipy.fft.fft(buf, axis=-1, workers=plan.threads, overwrite_x=True)
    else:
        spec = xp.fft.fft(buf, axis=-1)
    key = (float(center) + left, filter_name, float(cutoff), int(order))
    if key not in plan._kernels:
        response = filter_response(n_pad, filter_name, cutoff, order, xp) * (np.pi / n_angles / n_pad)
        response = response * xp.asarray(np.sinc(np.fft.fftfreq(n_pad)) ** 2)  # = fbp's interpolation
    else:
        response = None
    spec *= plan.kernel(center + left, response, key=key)
    img = plan.execute(spec)
    out = xp.empty((2 * img.shape[0], n, n), dtype=xp.float32)
    # the transform's first axis runs up in y; slices are stored with y running down the rows
    # (TomoPy's orientation, as fbp.grid_coords), hence the row flip
    out[0::2] = img.real[:, ::-1, :]
    out[1::2] = img.imag[:, ::-1, :]
    return out[:nz]
