"""Volume reconstruction in chunks of detector rows: bounded memory for any dataset size.

Why: a 2k x 2k x 2k scan does not fit in memory twice over; reading a block of rows from the
projections (HDF5, Zarr, a NumPy array or a reader callable), reconstructing it and writing
the slices into an output array-like (Zarr, HDF5, memmap) keeps memory at a few chunks.

On a GPU the same loop becomes a conveyor (:func:`_gpu_conveyor`): while chunk ``i`` is
reconstructed on a compute stream, chunk ``i + 1`` is read and uploaded from pinned host memory
on a copy stream and chunk ``i - 1`` is downloaded on a third and written out by the host, so
the device never waits for the disk or the bus. With several GPUs the rows are split into one
contiguous part per device, one conveyor (host thread + three streams) each. Both paths share
:func:`chunk_ranges`, which is what the CPU tests check; the conveyor has not run on a GPU here.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from ..extras import require
from .backend import GPU_FEATURE

ReadRows = Callable[[int, int], Any]
"""``read(start, stop) -> (n_angles, stop - start, nx)`` array of -log projections."""
ReconChunk = Callable[[Any, Any], Any]
"""``recon(block (n_angles, k, nx), out) -> (k, n, n)`` slices; ``out`` is a host ``(k, n, n)``
float32 array to fill (saves a copy) or ``None``."""
Progress = Callable[[int, int], None]
"""``progress(rows_done, rows_total)``."""


def chunk_ranges(start: int, stop: int, chunk: int) -> Iterator[tuple[int, int]]:
    """``[a, b)`` row ranges of at most ``chunk`` rows covering ``[start, stop)``."""
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1 row, got {chunk}")
    if stop < start:
        raise ValueError(f"row range [{start}, {stop}) is empty or reversed")
    for a in range(start, stop, chunk):
        yield a, min(a + chunk, stop)


def as_reader(source: Any) -> ReadRows:
    """A row reader for a callable or any array-like sliceable as ``[:, a:b]`` (h5py, zarr, NumPy)."""
    if callable(source):
        return source
    if not hasattr(source, "shape") or len(source.shape) != 3:
        raise TypeError(
            "projections must be a reader callable or an (n_angles, ny, nx) array-like, "
            f"got {type(source).__name__}"
        )
    return lambda a, b: source[:, a:b]


def reconstruct_volume(
    source: Any,
    recon: ReconChunk,
    out: Any,
    *,
    rows: tuple[int, int],
    chunk: int = 16,
    progress: Progress | None = None,
    out_offset: int = 0,
    devices: Sequence[int] | None = None,
) -> Any:
    """Reconstruct detector rows ``rows = (start, stop)`` chunk by chunk into ``out``.

    ``out`` is any array-like accepting ``out[i:j] = slices`` (NumPy, Zarr, HDF5 dataset);
    slice ``r`` of the detector goes to ``out[r - rows[0] + out_offset]``. A NumPy ``out`` is
    filled in place by ``recon`` (no intermediate copy). ``devices``: CUDA device ids; when
    given, ``recon`` takes and returns CuPy arrays and the rows run through one overlapped
    conveyor per device (:func:`_gpu_conveyor`). Returns ``out``.
    """
    from .backend import get_array_module, to_numpy

    read = as_reader(source)
    start, stop = rows
    ranges = list(chunk_ranges(start, stop, chunk))
    if devices:  # pragma: no cover - needs a CUDA device
        _on_devices(read, recon, out, ranges, rows, out_offset, progress, list(devices))
        return out
    for a, b in ranges:
        block = read(a, b)
        if get_array_module(block) is np:  # h5py / zarr slices become NumPy; CuPy stays put
            block = np.asarray(block, dtype=np.float32)
        target = slice(a - start + out_offset, b - start + out_offset)
        if isinstance(out, np.ndarray) and out.dtype == np.float32:
            recon(block, out[target])
        else:
            out[target] = to_numpy(recon(block, None))
        if progress is not None:
            progress(b - start, stop - start)
    return out


def _on_devices(
    read: ReadRows, recon: ReconChunk, out: Any, ranges: list[tuple[int, int]], rows: tuple[int, int],
    out_offset: int, progress: Progress | None, devices: list[int],
) -> None:  # pragma: no cover - needs a CUDA device
    """Contiguous shares of ``ranges`` per device, one conveyor thread each; writes to ``out``
    and progress reports are serialised (a Zarr chunk may span two devices' rows)."""
    lock = threading.Lock()
    done = [0]
    total = rows[1] - rows[0]

    def written(a: int, b: int, host: np.ndarray) -> None:
        with lock:
            out[a - rows[0] + out_offset : b - rows[0] + out_offset] = host
            done[0] += b - a
            if progress is not None:
                progress(done[0], total)

    shares = [list(s) for s in np.array_split(np.arange(len(ranges)), len(devices)) if len(s)]
    if len(shares) == 1:
        _gpu_conveyor(read, recon, [ranges[i] for i in shares[0]], written, devices[0])
        return
    errors: list[BaseException] = []

    def run(share: list[int], device: int) -> None:
        try:
            _gpu_conveyor(read, recon, [ranges[i] for i in share], written, device)
        except BaseException as exc:  # re-raised in the caller's thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(share, devices[k]), name=f"gpu-{devices[k]}")
               for k, share in enumerate(shares)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def _gpu_conveyor(
    read: ReadRows, recon: ReconChunk, ranges: list[tuple[int, int]],
    written: Callable[[int, int, np.ndarray], None], device: int,
) -> None:  # pragma: no cover - needs a CUDA device
    """H2D / compute / D2H overlap on one device with two pinned buffers each way.

    Per chunk ``i``: the host reads it into pinned buffer ``i % 2`` (free once upload ``i - 2``
    is done), the copy stream uploads it (after compute ``i - 2`` released the device buffer),
    the compute stream runs ``recon``, the download stream copies the slices to pinned memory,
    and the host writes chunk ``i - 1`` out meanwhile. Events order the streams; the host only
    ever waits for the chunk it is about to touch.
    """
    cp = require("cupy", GPU_FEATURE)
    cupyx = require("cupyx", GPU_FEATURE)

    if not ranges:
        return
    with cp.cuda.Device(device):
        h2d, comp, d2h = (cp.cuda.Stream(non_blocking=True) for _ in range(3))
        pin_in: list[np.ndarray | None] = [None, None]
        pin_out: list[np.ndarray | None] = [None, None]
        dev_in: list[Any] = [None, None]
        uploaded: list[Any] = [None, None]  # event per slot: pinned input free again
        computed: list[Any] = [None, None]  # event per slot: device input free again
        pending: tuple[int, int, np.ndarray, Any, Any] | None = None  # chunk waiting for download

        def flush() -> None:
            nonlocal pending
            if pending is not None:
                a, b, host, ev, _keep = pending
                ev.synchronize()
                written(a, b, host)
                pending = None

        for i, (a, b) in enumerate(ranges):
            s = i % 2
            block = np.asarray(read(a, b))
            if block.dtype == np.float64:
                block = block.astype(np.float32)
            if uploaded[s] is not None:
                uploaded[s].synchronize()
            if pin_in[s] is None or pin_in[s].nbytes < block.nbytes:
                pin_in[s] = cupyx.empty_pinned(block.nbytes, dtype=np.uint8)
            host_in = pin_in[s][: block.nbytes].view(block.dtype).reshape(block.shape)
            host_in[...] = block
            if computed[s] is not None:
                h2d.wait_event(computed[s])
            if dev_in[s] is None or dev_in[s].nbytes < block.nbytes:
                with h2d:
                    dev_in[s] = cp.empty(block.nbytes, dtype=cp.uint8)
            dev = dev_in[s][: block.nbytes].view(block.dtype).reshape(block.shape)
            dev.set(host_in, stream=h2d)
            uploaded[s] = h2d.record()
            comp.wait_event(uploaded[s])
            with comp:
                res = recon(dev, None)
                computed[s] = comp.record()
            d2h.wait_event(computed[s])
            flush()  # chunk i - 1 leaves pinned memory before its buffer is reused
            if pin_out[s] is None or pin_out[s].nbytes < res.nbytes:
                pin_out[s] = cupyx.empty_pinned(res.nbytes, dtype=np.uint8)
            host_out = pin_out[s][: res.nbytes].view(res.dtype).reshape(res.shape)
            res.get(stream=d2h, out=host_out, blocking=False)  # the host goes on reading chunk i + 1
            pending = (a, b, host_out, d2h.record(), res)
        flush()
        for st in (h2d, comp, d2h):
            st.synchronize()
