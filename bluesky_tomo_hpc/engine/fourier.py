"""Fourier (gridrec-like) reconstruction: filtered polar spectra -> image by one type-1 NUFFT.

Why: on a CPU only a Fourier method is fast (see ``cpu-baselines.md``); a non-uniform FFT
(FINUFFT; cuFINUFFT on a GPU) does gridding and FFT in one accurate, vectorised step. The
spectrum is the same filtered, centre-shifted one as :mod:`.fbp` uses, so both methods agree
and both are quantitative (attenuation per pixel).

The sum evaluated is the discrete FBP integral, exactly as in :mod:`.fbp`::

    f(x, y) = pi / M * sum_m 1 / L * sum_k Q_m(nu_k) exp(2 pi i nu_k (x cos t_m + y sin t_m))

The real-space back-projector interpolates linearly, which multiplies the spectrum by
``sinc(nu)**2``; the same factor is applied here so that one filter name means one result in
both methods (it also lowers the error against a pixel-averaged truth: Gibbs ringing of the
exact trigonometric interpolation is damped as in any FBP).

Where the time goes, and what is done about it (``benchmarks/bench_engine.py``):

* The filter needs the sinogram edge-padded (no wrap-around onto the part the image reads),
  and the image only reads the filtered projection where it lies: ``|x cos t + y sin t| <= n / 2``
  for the inscribed disc (every pipeline output is masked to it). So each row is filtered at
  ``1.5 n`` (:data:`FILTER_PAD`; ``2 n`` for the whole square)
  (FFT, filter, inverse FFT), then a window of ``L ~ n`` samples around the axis is transformed
  again: half the non-uniform points of the padded spectrum, the same slices inside the disc
  (``whole_square=True`` widens the window to the diagonal for callers without a mask).
* Two real sinograms travel as the real and imaginary parts of one complex input (the result is
  real for each, since their spectra are Hermitian), halving the work per slice.
* The points go to FINUFFT already in its bin order (:func:`.nufft_spread.bin_order`): its
  spreader then reads them in sequence; the spectrum is gathered into that order once per pair.
* The NUFFT's accuracy is 5e-3 (a kernel 4 points wide, one SIMD vector), not 1e-3 (width 5,
  padded to 8 by FINUFFT's SIMD code): the slices' error against the phantom does not move.
* On the CPU the NUFFT is FINUFFT's spreader plus SciPy's FFT (:mod:`.nufft_spread`): 3x faster
  than the wheel's FFTW transform, and no FFTW planning (20+ s at 2048). Threads work on whole
  slice pairs, each with its own spreader and scratch (no synchronisation inside a transform).
  The filtering runs in blocks of rows that stay in the core's cache.
"""

from __future__ import annotations

import hashlib
import math
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from ..extras import optional, require
from .backend import GPU_FEATURE, cpu_threads, get_array_module
from .filters import center_phase, filter_response, padded_width
from .nufft_spread import DEFAULT_EPS

# the GPU path (the ``gpu`` extra): used where it imports
_cufinufft: Any = optional("cufinufft")

#: rows of a slice pair filtered at once on the CPU: 32 x 4096 complex64 = 1 MiB, the L2 of a core
FILTER_BLOCK = 32


#: padded row length for the filter, in detector widths: the filtered rows are periodic, and the
#: window the image reads (``n`` samples about the axis) must stay clear of the wrap point, where
#: the right edge's value meets the left's; at 1.5 n it is n / 4 away, where the ramp's response
#: to that step has fallen to ~ step / (2.5 n). 2 n for ``whole_square`` (its window is 1.41 n).
FILTER_PAD = 1.5


def fourier_width(n_det: int, pad: bool = True, whole_square: bool = False) -> int:
    """The padded row length the Fourier method filters at (``n_pad`` of its plan): even,
    FFT-friendly, >= ``FILTER_PAD * n_det`` (>= 2 n for ``whole_square``; >= n without ``pad``)."""
    if not pad or whole_square:
        return padded_width(n_det, pad)
    import scipy.fft

    size = scipy.fft.next_fast_len(math.ceil(FILTER_PAD * n_det))
    return size + size % 2


def window_width(n: int, n_pad: int, whole_square: bool = False) -> int:
    """Samples of each filtered projection the image reads: even, FFT-friendly, >= ``n`` (the
    inscribed disc) or >= ``n * sqrt(2)`` (the whole square), at most the padded width."""
    import scipy.fft

    need = math.ceil(n * math.sqrt(2)) + 2 if whole_square else n
    size = scipy.fft.next_fast_len(need)
    return min(n_pad, size + size % 2)


def plan_bytes(n: int, n_angles: int, threads: int = 1, *, pad: bool = True,
               whole_square: bool = False) -> int:
    """Bytes a CPU :class:`FourierPlan` for ``n_angles`` x ``n`` holds once made and run with
    ``threads`` workers: what a slab budget must leave it (measured at 1969 x 2560 with FINUFFT 2.4.1:
    peak 0.44 GB over the input and output with one thread, 0.73 GB with two; the model says 0.59
    and 0.91).

    Why a model: the plan lives for the whole volume beside the slabs, and its per-thread part
    (oversampled grid, FINUFFT's sort and subproblem grids) grows with the cores. Shared by the
    threads: the points (2 x float32) and float64 temporaries while they are made, the half-pixel
    shift and two cached kernels (complex64) and the points' bin order (int64), all ``M x L``. Per
    thread: the oversampled grid and its transients while spreading and transforming (2 x ``nf^2``
    complex64), the deconvolution weights (``n^2`` float32), FINUFFT's sort indices (int64), the
    spectrum and its copy in bin order (complex64), ``M x L`` each, and a block of padded rows.
    """
    from .nufft_spread import grid_size

    n_pad = fourier_width(n, pad, whole_square)
    ml = int(n_angles) * window_width(n, n_pad, whole_square)
    nf = grid_size(n)
    shared = ml * (2 * 4 + 3 * 8 + 8) + ml * 2 * 8  # points, shift + 2 kernels, order; float64 while made
    per_thread = 2 * 8 * nf * nf + 4 * n * n + ml * (8 + 8 + 8) + FILTER_BLOCK * n_pad * 8
    return shared + max(1, int(threads)) * per_thread


class FourierPlan:
    """Everything that depends on the geometry (image size, angles, padded and window widths),
    made once and reused by every call.

    Why a class: sorting the non-uniform points, the half-pixel phase factors and the
    deconvolution weights cost up to seconds at 2048^2, so a volume makes them once and runs
    every chunk through the same plan (:func:`fourier_plan` keeps the last few). On the CPU each
    of ``threads`` workers owns a :class:`.nufft_spread.SpreadNUFFT` and takes whole slice
    pairs; on the GPU one cuFINUFFT plan runs ``batch_pairs`` pairs per call on the current
    CUDA stream.
    """

    def __init__(
        self,
        n: int,
        theta: Any,
        n_pad: int,
        *,
        eps: float = DEFAULT_EPS,
        threads: int | None = None,
        batch_pairs: int = 4,
        gpu: bool = False,
        whole_square: bool = False,
    ) -> None:
        self.n, self.n_pad, self.gpu = n, n_pad, gpu
        self.window = window_width(n, n_pad, whole_square)
        self.theta = np.asarray(theta, dtype=np.float64)
        self.batch_pairs = batch_pairs
        self.threads = 1 if gpu else cpu_threads(threads)
        self._kernels: OrderedDict[tuple, Any] = OrderedDict()
        L = self.window
        omega = 2 * np.pi * np.fft.fftfreq(L)
        wy = (np.sin(self.theta)[:, None] * omega[None, :]).ravel()
        wx = (np.cos(self.theta)[:, None] * omega[None, :]).ravel()
        # pixel positions are mode index + offset (0.5 on even grids: the axis is between pixels)
        offset = (n // 2) - (n - 1) / 2.0
        shift = np.exp(1j * offset * (wx + wy)).reshape(len(self.theta), L)
        if L % 2 == 0:
            shift[:, L // 2] = 0.0  # Nyquist has no Hermitian partner: give it no weight
        self.shift = shift.astype(np.complex64)
        self._eps = eps
        self._lock = threading.Lock()  # one caller at a time: worker plans hold scratch state
        self._pool: ThreadPoolExecutor | None = None
        self._buffers: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        if gpu:
            cp = require("cupy", GPU_FEATURE)
            if _cufinufft is None:
                require("cufinufft", "Fourier reconstruction on the GPU")
            self.shift = cp.asarray(self.shift)
            self._points = (cp.asarray(wy, dtype=cp.float32), cp.asarray(wx, dtype=cp.float32))
            self._gpu_plans: dict[tuple[int, int], Any] = {}
        else:
            from .nufft_spread import SpreadNUFFT, bin_order, grid_size

            y32, x32 = wy.astype(np.float32), wx.astype(np.float32)
            order = bin_order(y32, x32, grid_size(n))
            points = (y32[order], x32[order])
            self._cpu_plans = [SpreadNUFFT(n, points, eps=eps, order=order) for _ in range(self.threads)]

    def matches(self, n: int, theta: Any, n_pad: int, whole_square: bool = False) -> bool:
        """True when this plan was made for that geometry."""
        return ((self.n, self.n_pad, self.window) == (n, n_pad, window_width(n, n_pad, whole_square))
                and np.array_equal(self.theta, theta))

    def kernel(self, center_pad: float, filter_name: str, cutoff: float, order: int) -> tuple[Any, int, Any]:
        """``(filter, window start, window factor)`` for an axis at padded column ``center_pad``.

        The filter (length ``n_pad``) acts on the padded rows; the window of ``L`` samples
        starts at the integer column nearest ``center_pad - L / 2`` (modulo ``n_pad``: the
        filtered rows are periodic); its spectrum is multiplied by the factor: the rest of the
        axis shift, sinc^2 (= fbp's linear interpolation), the half-pixel shift and the scale.
        The last two are cached (keyed by centre and filter): the chunks of one volume and
        repeated calls pay for it once.
        """
        key = (float(center_pad), filter_name, float(cutoff), int(order))
        if key in self._kernels:
            self._kernels.move_to_end(key)
            return self._kernels[key]
        xp = get_array_module(self.shift)
        n_angles, L = self.shift.shape
        response = xp.asarray(filter_response(self.n_pad, filter_name, cutoff, order).astype(np.complex64))
        start = math.floor(center_pad + 0.5) - L // 2
        weight = np.sinc(np.fft.fftfreq(L)) ** 2 * (np.pi / n_angles / L)
        ramp = xp.asarray((center_phase(L, center_pad - start) * weight).astype(np.complex64))
        entry = (response, start, self.shift * ramp[None, :])
        if len(self._kernels) >= 2:  # 25 MB each at 1500 x 2048
            self._kernels.popitem(last=False)
        self._kernels[key] = entry
        return entry

    # -- CPU ------------------------------------------------------------------------------
    def run_cpu(self, sino: np.ndarray, kernel: tuple, out: np.ndarray, left: int) -> None:
        """Reconstruct ``sino`` (nz, M, n_det) (any strides) into ``out`` (nz, n, n) float32.

        Each task is one slice pair, start to end (pad, filter, window, NUFFT, split), so
        threads never wait on each other.
        """
        def pair(slot: int, p: int) -> None:
            z = 2 * p
            spec = self._spectrum(slot, sino, kernel, left, p)
            second = out[z + 1] if z + 1 < sino.shape[0] else None
            self._cpu_plans[slot].execute(spec.reshape(-1), out[z], second)

        self._each_pair(pair, (sino.shape[0] + 1) // 2)

    def spread_cpu(self, sino: np.ndarray, kernel: tuple, grids: np.ndarray, left: int,
                   scale: float = 1.0) -> None:
        """Add ``scale`` times each slice pair's oversampled grid into ``grids`` ``(pairs, nf, nf)``
        complex64: :meth:`run_cpu` without the grid's FFT and deconvolution, which are linear, so
        the grids of blocks of angles can be summed and transformed once
        (:func:`.nufft_spread.grid_to_modes`; :mod:`bluesky_tomo_hpc.sinks.grid_sum`)."""
        def pair(slot: int, p: int) -> None:
            spec = self._spectrum(slot, sino, kernel, left, p)
            if scale != 1.0:
                spec *= np.float32(scale)
            grids[p] += self._cpu_plans[slot].spread(spec.reshape(-1))

        self._each_pair(pair, (sino.shape[0] + 1) // 2)

    def close(self) -> None:
        """End this plan's worker threads (a plan used once, not kept by :func:`fourier_plan`)."""
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def _each_pair(self, pair: Any, pairs: int) -> None:
        """``pair(slot, p)`` for ``p`` in ``range(pairs)`` (slice pairs, or axes), on this plan's
        threads: each pool thread keeps one ``slot`` (its spreader and scratch)."""
        with self._lock:
            if self.threads == 1 or pairs == 1:
                for p in range(pairs):
                    pair(0, p)
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
                pair(worker.slot, p)

            for f in [self._pool.submit(task, p) for p in range(pairs)]:
                f.result()

    def _spectrum(self, slot: int, sino: Any, kernel: tuple, left: int, p: int) -> np.ndarray:
        """Slice pair ``p``'s windowed, filtered spectrum ``(M, L)`` (the slot's scratch)."""
        n_angles, n_det = sino.shape[1], sino.shape[2]
        buf, spec = self._scratch(slot, n_angles)
        z = 2 * p
        second = z + 1 < sino.shape[0]
        for a in range(0, n_angles, FILTER_BLOCK):
            b = min(n_angles, a + FILTER_BLOCK)
            rows = buf[: b - a]
            rows.real[:, left : left + n_det] = sino[z, a:b]
            rows.imag[:, left : left + n_det] = sino[z + 1, a:b] if second else 0.0
            windowed_spectrum(rows, kernel, left, n_det, self.window, spec[a:b], (a, b))
        return spec

    def run_cpu_centers(self, sino: np.ndarray, kernels: list[tuple], out: np.ndarray, left: int) -> None:
        """One sinogram ``(M, n_det)`` at several axes (one kernel each) into ``out`` (k, n, n).

        Why: the centre finder compares a slice at many candidate axes. The filter does not
        depend on the axis, so the rows are filtered once, and the axes go to all threads (one
        slice at a time used one thread). Each axis has a transform of its own: two axes as
        the real and imaginary part of one would leak the NUFFT's error of each (~1e-3) into the
        other, enough to move a 16-angle scan's centre by 0.5 px.
        """
        n_angles, n_det = sino.shape
        rows = np.zeros((n_angles, self.n_pad), dtype=np.complex64)
        rows.real[:, left : left + n_det] = sino
        filtered = filtered_rows(rows, kernels[0][0], left, n_det, workers=self.threads)

        def one(slot: int, j: int) -> None:
            _, spec = self._scratch(slot, n_angles)
            window_spectrum(filtered, kernels[j], self.window, spec)
            self._cpu_plans[slot].execute(spec.reshape(-1), out[j], None)

        self._each_pair(one, len(kernels))

    def _scratch(self, slot: int, n_angles: int) -> tuple[np.ndarray, np.ndarray]:
        """Per-thread row-block and spectrum buffers, kept between pairs and calls: fresh
        arrays per pair at 2048 cost as much in page faults as the FFT itself."""
        if slot not in self._buffers:
            self._buffers[slot] = (np.empty((FILTER_BLOCK, self.n_pad), dtype=np.complex64),
                                   np.empty((n_angles, self.window), dtype=np.complex64))
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
        """``spec`` (pairs, M, L) complex64 CuPy, weighted -> (pairs, n, n) complex64."""
        cp = require("cupy", GPU_FEATURE)
        pairs = spec.shape[0]
        c = spec.reshape(pairs, -1)
        out = cp.empty((pairs, self.n, self.n), dtype=cp.complex64)
        b = self.batch_pairs
        for start in range(0, pairs, b):
            k = min(b, pairs - start)
            self._gpu_plan(k).execute(c[start : start + k], out=out[start : start + k])
        return out


def windowed_spectrum(rows: Any, kernel: tuple, left: int, n_det: int, L: int, out: Any,
                      angles: tuple[int, int] | None = None) -> Any:
    """Padded rows ``(..., n_pad)`` complex (the detector at ``[left, left + n_det)``) ->
    ``out`` ``(..., L)``: edge-pad, FFT, filter, inverse FFT, the window around the axis, FFT,
    window factor. ``angles``: the rows' ``[a, b)`` among the plan's angles (the factor's rows);
    all of them when None. NumPy (in place, one thread) and CuPy alike.
    """
    filtered = filtered_rows(rows, kernel[0], left, n_det)
    return window_spectrum(filtered, kernel, L, out, angles)


def filtered_rows(rows: Any, response: Any, left: int, n_det: int, workers: int = 1) -> Any:
    """Padded rows ``(..., n_pad)`` complex, the detector at ``[left, left + n_det)`` -> the
    filtered rows (edge-padded first; the axis plays no part, so many axes may share them)."""
    xp = get_array_module(rows)
    rows[..., :left] = rows[..., left : left + 1]
    rows[..., left + n_det :] = rows[..., left + n_det - 1 : left + n_det]
    if xp is np:
        import scipy.fft

        spec = scipy.fft.fft(rows, axis=-1, workers=workers, overwrite_x=True)
        spec *= response
        return scipy.fft.ifft(spec, axis=-1, workers=workers, overwrite_x=True)
    return xp.fft.ifft(xp.fft.fft(rows, axis=-1) * response, axis=-1)


def window_spectrum(filtered: Any, kernel: tuple, L: int, out: Any, angles: tuple[int, int] | None = None,
                    ) -> Any:
    """Filtered rows ``(..., n_pad)`` -> ``out`` ``(..., L)``: the window of ``L`` samples
    around the kernel's axis, its FFT, times the kernel's window factor."""
    xp = get_array_module(filtered)
    _, start, factor = kernel
    n_pad = filtered.shape[-1]
    i0 = start % n_pad  # the filtered rows are n_pad-periodic
    first = min(L, n_pad - i0)
    out[..., :first] = filtered[..., i0 : i0 + first]
    if first < L:
        out[..., first:] = filtered[..., : L - first]
    if xp is np:
        import scipy.fft

        win = scipy.fft.fft(out, axis=-1, workers=1, overwrite_x=True)
    else:
        win = xp.fft.fft(out, axis=-1)
    f = factor if angles is None else factor[angles[0] : angles[1]]
    xp.multiply(win, f, out=out)
    return out


#: Plans kept per purpose: a volume's (its slabs, the next scan of that detector) and the
#: centre finder's (one per candidate geometry: a slice's angles, the even and odd halves). Why
#: apart: the centre's three geometries evicted the volume's plan from a shared cache of two,
#: and each automatic run then made it again (0.3 s CPU at 720 x 1024).
_PLAN_CACHE_SIZE = {"volume": 2, "centre": 4}
#: The centre's cache also stays under this many bytes (:func:`plan_bytes`): a ``try`` sweep
#: at full width makes plans of hundreds of MB that are not worth keeping.
_CENTRE_CACHE_BYTES = 256 * 2**20
_PLAN_CACHES: dict[str, OrderedDict[tuple, tuple[FourierPlan, int]]] = {
    k: OrderedDict() for k in _PLAN_CACHE_SIZE}
_PLAN_CACHE_LOCK = threading.Lock()


def fourier_plan(
    n: int, theta: Any, n_pad: int, *, eps: float = DEFAULT_EPS, threads: int | None = None,
    gpu: bool = False, whole_square: bool = False, purpose: str = "volume",
) -> FourierPlan:
    """The cached :class:`FourierPlan` for this geometry (made on first use).

    Why a cache: a plan costs up to a second or two to make (point sorting per thread, the
    deconvolution weights), a chunk of a few slices costs less than that, and the same geometry
    comes back for every slab, scan and preview check. Keyed by size, padding, window, angles,
    accuracy, threads and device; per ``purpose`` (``volume`` or ``centre``, kept apart) the
    last few geometries are kept (a 2048^2 plan holds ~250 MB with two threads).
    """
    theta = np.asarray(theta, dtype=np.float64)
    device = -1
    if gpu:  # pragma: no cover - needs a CUDA device
        device = require("cupy", GPU_FEATURE).cuda.Device().id
    key = (n, n_pad, hashlib.sha1(theta.tobytes()).hexdigest(), float(eps), cpu_threads(threads), gpu, device,
           bool(whole_square))
    cache = _PLAN_CACHES[purpose]
    with _PLAN_CACHE_LOCK:
        entry = cache.get(key)
        if entry is None:
            plan = FourierPlan(n, theta, n_pad, eps=eps, threads=threads, gpu=gpu, whole_square=whole_square)
            size = plan_bytes(n, len(theta), plan.threads, whole_square=whole_square)
            cache[key] = (plan, size)
            limit = _CENTRE_CACHE_BYTES if purpose == "centre" else math.inf
            while len(cache) > 1 and (len(cache) > _PLAN_CACHE_SIZE[purpose]
                                      or sum(b for _, b in cache.values()) > limit):
                cache.popitem(last=False)
        else:
            plan = entry[0]
            cache.move_to_end(key)
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
    eps: float = DEFAULT_EPS,
    threads: int | None = None,
    plan: FourierPlan | None = None,
    out: Any = None,
    whole_square: bool = False,
) -> Any:
    """Reconstruct sinograms ``(nz, n_angles, n_det)`` -> ``(nz, n, n)`` float32.

    ``sino`` may be a strided view (e.g. projections ``(n_angles, nz, n_det)`` transposed):
    it is read once, pair by pair, never copied whole. ``center``: the axis as a 0-based
    detector column. ``eps``: NUFFT relative accuracy (the default,
    :data:`.nufft_spread.DEFAULT_EPS`, is well below the discretisation error of any FBP).
    ``plan``: a given plan, else the cached one for this geometry (:func:`fourier_plan`).
    ``out``: an ``(nz, n, n)`` float32 array to fill.
    ``whole_square``: slices right up to the corners; by default they are right inside the
    inscribed disc (what every angle saw, and all that a circular mask keeps), and the corners
    outside it carry the filtered projections' periodic wrap.
    """
    xp = get_array_module(sino)
    if sino.ndim == 2:
        sino = sino[None]
    nz, n_angles, n_det = sino.shape
    theta = np.asarray(theta, dtype=np.float64)
    if len(theta) != n_angles:
        raise ValueError(f"{len(theta)} angles for a sinogram with {n_angles} projections")
    n = n_det if n is None else n
    n_pad = fourier_width(n_det, pad, whole_square)
    if plan is None:
        plan = fourier_plan(n, theta, n_pad, eps=eps, threads=threads, gpu=xp is not np,
                            whole_square=whole_square)
    elif not plan.matches(n, theta, n_pad, whole_square):
        raise ValueError("FourierPlan was made for another geometry (size, padding, window or angles)")
    left = (n_pad - n_det) // 2
    kernel = plan.kernel(center + left, filter_name, cutoff, order)
    if out is None:
        out = xp.empty((nz, n, n), dtype=xp.float32)
    if xp is np:
        plan.run_cpu(sino, kernel, out, left)
        return out
    return _reconstruct_gpu(sino, plan, kernel, out, left)  # pragma: no cover - needs a CUDA device


def _reconstruct_gpu(
    sino: Any, plan: FourierPlan, kernel: tuple, out: Any, left: int
) -> Any:  # pragma: no cover - needs a CUDA device
    """The CuPy path: all pairs at once (device memory is the slab's), same steps as the CPU."""
    cp = require("cupy", GPU_FEATURE)
    nz, n_angles, n_det = sino.shape
    pairs = (nz + 1) // 2
    buf = cp.zeros((pairs, n_angles, plan.n_pad), dtype=cp.complex64)
    mid = slice(left, left + n_det)
    buf.real[..., mid] = sino[0::2]
    buf.imag[: nz // 2, :, mid] = sino[1::2]
    spec = cp.empty((pairs, n_angles, plan.window), dtype=cp.complex64)
    windowed_spectrum(buf, kernel, left, n_det, plan.window, spec)
    img = plan.run_gpu(spec)
    out[0::2] = img.real[:, ::-1, :]
    out[1::2] = img.imag[: nz // 2, ::-1, :]
    return out
