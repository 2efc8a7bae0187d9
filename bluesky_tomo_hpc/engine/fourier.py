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

Speed on a CPU (measured in ``benchmarks/bench_engine.py``): the plan's 2D FFT is planned with
``FFTW_MEASURE`` (FINUFFT's default ``FFTW_ESTIMATE`` picks a plan 5-8x slower at 1280^2), which
costs seconds once per geometry, so plans live in a small cache keyed by the geometry; threads
work on whole slice pairs, each with its own single-threaded plan (no synchronisation inside a
transform: near-linear scaling).
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from ..extras import optional, require
from .backend import GPU_FEATURE, cpu_threads, get_array_module
from .filters import center_phase, filter_response, padded_width

# the GPU path (the ``gpu`` extra): used where it imports
_cufinufft: Any = optional("cufinufft")

#: FFTW planner flags as FINUFFT takes them (``fftw`` option)
FFTW_MEASURE, FFTW_ESTIMATE = 0, 64
#: FFTW_MEASURE (seconds of planning, once per geometry and process) only pays from about this
#: image size and this many slices in one call; one-slice calls (the preview's centre check,
#: centre searches) keep FFTW_ESTIMATE plans, which are made in milliseconds
MEASURE_FROM = 256
MEASURE_FROM_SLICES = 8


class FourierPlan:
    """NUFFT plans for one geometry (image size, angles, padded width), reused by every call.

    Why a class: setting the non-uniform points (sorting them), planning the FFT and the
    half-pixel phase factors cost seconds at 2048^2, so a volume makes them once and runs every
    chunk through the same plan (:func:`fourier_plan` keeps the last few). ``upsampfac=1.25`` is
    about 3x faster than 2.0 at the same ``eps``. On the CPU each of ``threads`` workers owns a
    single-threaded FINUFFT plan and takes whole slice pairs; on the GPU one cuFINUFFT plan runs
    ``batch_pairs`` pairs per call on the current CUDA stream.
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
        fft_measure: bool = True,
    ) -> None:
        self.n, self.n_pad, self.gpu = n, n_pad, gpu
        self.theta = np.asarray(theta, dtype=np.float64)
        self.batch_pairs = batch_pairs
        self.threads = 1 if gpu else cpu_threads(threads)
        self._kernels: OrderedDict[tuple, Any] = OrderedDict()
        omega = 2 * np.pi * np.fft.fftfreq(n_pad)
        wy = (np.sin(self.theta)[:, None] * omega[None, :]).ravel()
        wx = (np.cos(self.theta)[:, None] * omega[None, :]).ravel()
        # pixel positions are mode index + offset (0.5 on even grids: the axis is between pixels)
        offset = (n // 2) - (n - 1) / 2.0
        shift = np.exp(1j * offset * (wx + wy)).reshape(len(self.theta), n_pad)
        if n_pad % 2 == 0:
            shift[:, n_pad // 2] = 0.0  # Nyquist has no Hermitian partner: give it no weight
        self.shift = shift.astype(np.complex64)
        self._eps, self._upsampfac = eps, upsampfac
        self._lock = threading.Lock()  # one caller at a time: worker plans hold scratch state
        self._pool: ThreadPoolExecutor | None = None
        if gpu:
            cp = require("cupy", GPU_FEATURE)
            if _cufinufft is None:
                require("cufinufft", "Fourier reconstruction on the GPU")
            self.shift = cp.asarray(self.shift)
            self._points = (cp.asarray(wy, dtype=cp.float32), cp.asarray(wx, dtype=cp.float32))
            self._gpu_plans: dict[tuple[int, int], Any] = {}
        else:
            import finufft

            points = (wy.astype(np.float32), wx.astype(np.float32))
            fftw = FFTW_MEASURE if fft_measure and n >= MEASURE_FROM else FFTW_ESTIMATE
            self._cpu_plans = []
            for _ in range(self.threads):  # made one after the other: FFTW's planner is not thread-safe
                plan = finufft.Plan(1, (n, n), n_trans=1, eps=eps, isign=1, dtype="complex64",
                                    nthreads=1, upsampfac=upsampfac, fftw=fftw)
                plan.setpts(*points)
                self._cpu_plans.append(plan)

    def matches(self, n: int, theta: Any, n_pad: int) -> bool:
        """True when this plan was made for that geometry."""
        return (self.n, self.n_pad) == (n, n_pad) and np.array_equal(self.theta, theta)

    def kernel(self, center_pad: float, filter_name: str, cutoff: float, order: int) -> Any:
        """Per-(angle, frequency) factor: filter x sinc^2 x axis phase ramp x half-pixel shift.

        The last few are cached (keyed by centre and filter), so the chunks of one volume and
        repeated calls pay for it once.
        """
        key = (float(center_pad), filter_name, float(cutoff), int(order))
        if key in self._kernels:
            self._kernels.move_to_end(key)
            return self._kernels[key]
        xp = get_array_module(self.shift)
        n_angles, n_pad = self.shift.shape
        response = filter_response(n_pad, filter_name, cutoff, order) * (np.pi / n_angles / n_pad)
        response = response * np.sinc(np.fft.fftfreq(n_pad)) ** 2  # = fbp's linear interpolation
        ramp = xp.asarray((center_phase(n_pad, center_pad) * response).astype(np.complex64))
        k = self.shift * ramp[None, :]
        if len(self._kernels) >= 2:  # 50 MB each at 1500 x 4096
            self._kernels.popitem(last=False)
        self._kernels[key] = k
        return k

    # -- CPU ------------------------------------------------------------------------------
    def run_cpu(self, sino: np.ndarray, kernel: np.ndarray, out: np.ndarray, left: int) -> None:
        """Reconstruct ``sino`` (nz, M, n_det) (any strides) into ``out`` (nz, n, n) float32.

        Each task is one slice pair, start to end (pad, FFT, filter, NUFFT, split), so threads
        never wait on each other and the working set stays in cache.
        """
        nz = sino.shape[0]
        pairs = (nz + 1) // 2
        with self._lock:
            if self.threads == 1 or pairs == 1:
                for p in range(pairs):
                    self._pair(0, sino, kernel, out, left, p)
                return
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="nufft")
            worker = threading.local()
            slots = iter(range(self.threads))
            slot_lock = threading.Lock()

            def task(p: int) -> None:
                if not hasattr(worker, "slot"):
                    with slot_lock:
                        worker.slot = next(slots)
                self._pair(worker.slot, sino, kernel, out, left, p)

            for f in [self._pool.submit(task, p) for p in range(pairs)]:
                f.result()

    def _pair(self, slot: int, sino: Any, kernel: np.ndarray, out: np.ndarray, left: int, p: int) -> None:
        import scipy.fft

        n_angles, n_det = sino.shape[1], sino.shape[2]
        buf, img = self._scratch(slot, n_angles)
        mid = slice(left, left + n_det)
        z = 2 * p
        buf.real[:, mid] = sino[z]
        if z + 1 < sino.shape[0]:
            buf.imag[:, mid] = sino[z + 1]
        else:
            buf.imag[:, mid] = 0.0
        buf[:, :left] = buf[:, left : left + 1]
        buf[:, left + n_det :] = buf[:, left + n_det - 1 : left + n_det]
        spec = scipy.fft.fft(buf, axis=-1, workers=1, overwrite_x=True)  # in place
        spec *= kernel
        self._cpu_plans[slot].execute(spec.reshape(-1), out=img)
        # the transform's first axis runs up in y; slices are stored with y running down the rows
        # (TomoPy's orientation, as fbp.grid_coords), hence the row flip
        out[z] = img.real[::-1]
        if z + 1 < out.shape[0]:
            out[z + 1] = img.imag[::-1]

    def _scratch(self, slot: int, n_angles: int) -> tuple[np.ndarray, np.ndarray]:
        """Per-thread padded-spectrum and image buffers, kept between pairs and calls: fresh
        50 + 33 MB arrays per pair at 2048 cost as much in page faults as the FFT itself."""
        if not hasattr(self, "_buffers"):
            self._buffers: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        if slot not in self._buffers:
            self._buffers[slot] = (np.empty((n_angles, self.n_pad), dtype=np.complex64),
                                   np.empty((self.n, self.n), dtype=np.complex64))
        return self._buffers[slot]

    # -- GPU ------------------------------------------------------------------------------
    def _gpu_plan(self, n_trans: int) -> Any:  # pragma: no cover - needs a CUDA device
        """The cuFINUFFT plan for ``n_trans`` pairs on the current device and stream."""
        cp = require("cupy", GPU_FEATURE)
        stream = cp.cuda.get_current_stream()
        key = (n_trans, stream.ptr)
        if key not in self._gpu_plans:
            plan = _cufinufft.Plan(1, (self.n, self.n), n_trans=n_trans, eps=self._eps, isign=1,
                                   dtype="complex64", gpu_stream=stream.ptr,
                                   gpu_device_id=cp.cuda.Device().id)
            plan.setpts(*self._points)
            self._gpu_plans[key] = plan
        return self._gpu_plans[key]

    def run_gpu(self, spec: Any) -> Any:  # pragma: no cover - needs a CUDA device
        """``spec`` (pairs, M, n_pad) complex64 CuPy, weighted -> (pairs, n, n) complex64."""
        cp = require("cupy", GPU_FEATURE)
        pairs = spec.shape[0]
        c = spec.reshape(pairs, -1)
        out = cp.empty((pairs, self.n, self.n), dtype=cp.complex64)
        b = self.batch_pairs
        for start in range(0, pairs, b):
            k = min(b, pairs - start)
            self._gpu_plan(k).execute(c[start : start + k], out=out[start : start + k])
        return out


_PLAN_CACHE: OrderedDict[tuple, FourierPlan] = OrderedDict()
_PLAN_CACHE_SIZE = 2
_PLAN_CACHE_LOCK = threading.Lock()


def fourier_plan(
    n: int, theta: Any, n_pad: int, *, eps: float = 1e-3, threads: int | None = None, gpu: bool = False,
    fft_measure: bool = True,
) -> FourierPlan:
    """The cached :class:`FourierPlan` for this geometry (made on first use).

    Why a cache: a plan costs 0.1-6 s to make (point sorting, FFTW_MEASURE), a chunk of a few
    slices costs less than that, and the same geometry comes back for every slab, scan and
    preview check. Keyed by size, padding, angles, accuracy, threads and device; the last two
    geometries are kept (a 2048^2 plan holds ~150 MB).
    """
    theta = np.asarray(theta, dtype=np.float64)
    device = -1
    if gpu:  # pragma: no cover - needs a CUDA device
        device = require("cupy", GPU_FEATURE).cuda.Device().id
    key = (n, n_pad, hashlib.sha1(theta.tobytes()).hexdigest(), float(eps), cpu_threads(threads), gpu, device,
           bool(fft_measure))
    with _PLAN_CACHE_LOCK:
        plan = _PLAN_CACHE.get(key)
        if plan is None:
            plan = FourierPlan(n, theta, n_pad, eps=eps, threads=threads, gpu=gpu, fft_measure=fft_measure)
            _PLAN_CACHE[key] = plan
            while len(_PLAN_CACHE) > _PLAN_CACHE_SIZE:
                _PLAN_CACHE.popitem(last=False)
        else:
            _PLAN_CACHE.move_to_end(key)
    return plan


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
    out: Any = None,
    fft_measure: bool | None = None,
) -> Any:
    """Reconstruct sinograms ``(nz, n_angles, n_det)`` -> ``(nz, n, n)`` float32.

    ``sino`` may be a strided view (e.g. projections ``(n_angles, nz, n_det)`` transposed):
    it is read once, pair by pair, never copied whole. ``center``: the axis as a 0-based
    detector column. ``eps``: NUFFT relative accuracy (1e-3 is well below the discretisation
    error of any FBP). ``plan``: a given plan, else the cached one for this geometry
    (:func:`fourier_plan`). ``out``: an ``(nz, n, n)`` float32 array to fill. ``fft_measure``:
    plan the FFT with FFTW_MEASURE (default: for calls of ``MEASURE_FROM_SLICES`` slices or more;
    a volume's chunk reconstructor says yes for every chunk).
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
        measure = nz >= MEASURE_FROM_SLICES if fft_measure is None else fft_measure
        plan = fourier_plan(n, theta, n_pad, eps=eps, threads=threads, gpu=xp is not np, fft_measure=measure)
    elif not plan.matches(n, theta, n_pad):
        raise ValueError("FourierPlan was made for another geometry (size, padding or angles)")
    left = (n_pad - n_det) // 2
    kernel = plan.kernel(center + left, filter_name, cutoff, order)
    if out is None:
        out = xp.empty((nz, n, n), dtype=xp.float32)
    if xp is np:
        plan.run_cpu(sino, kernel, out, left)
        return out
    return _reconstruct_gpu(sino, plan, kernel, out, left)  # pragma: no cover - needs a CUDA device


def _reconstruct_gpu(
    sino: Any, plan: FourierPlan, kernel: Any, out: Any, left: int
) -> Any:  # pragma: no cover - needs a CUDA device
    """The CuPy path: all pairs at once (device memory is the slab's), same steps as the CPU."""
    cp = require("cupy", GPU_FEATURE)
    nz, n_angles, n_det = sino.shape
    pairs = (nz + 1) // 2
    buf = cp.zeros((pairs, n_angles, plan.n_pad), dtype=cp.complex64)
    mid = slice(left, left + n_det)
    buf.real[..., mid] = sino[0::2]
    buf.imag[: nz // 2, :, mid] = sino[1::2]
    buf[..., :left] = buf[..., left : left + 1]
    buf[..., left + n_det :] = buf[..., left + n_det - 1 : left + n_det]
    spec = cp.fft.fft(buf, axis=-1)
    spec *= kernel
    img = plan.run_gpu(spec)
    out[0::2] = img.real[:, ::-1, :]
    out[1::2] = img.imag[: nz // 2, ::-1, :]
    return out
