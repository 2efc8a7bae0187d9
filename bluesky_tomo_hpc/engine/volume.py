"""Volume reconstruction in chunks of detector rows: bounded memory for any dataset size.

Why: a 2k x 2k x 2k scan does not fit in memory twice over; reading a block of rows from the
projections (HDF5, Zarr, a NumPy array or a reader callable), reconstructing it and writing
the slices into an output array-like (Zarr, HDF5, memmap) keeps memory at a few chunks. The
GPU variant overlaps host->device copy, compute and device->host copy on CuPy streams; its
chunk logic is the same :func:`chunk_ranges` as the CPU path, which is what the tests check.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

ReadRows = Callable[[int, int], Any]
"""``read(start, stop) -> (n_angles, stop - start, nx)`` array of -log projections."""
ReconChunk = Callable[[Any], Any]
"""``recon(block (n_angles, k, nx)) -> (k, n, n)`` slices."""
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
) -> Any:
    """Reconstruct detector rows ``rows = (start, stop)`` chunk by chunk into ``out``.

    ``out`` is any array-like accepting ``out[i:j] = slices`` (NumPy, Zarr, HDF5 dataset);
    slice ``r`` of the detector goes to ``out[r - rows[0] + out_offset]``. Returns ``out``.
    """
    from .backend import get_array_module, to_numpy

    read = as_reader(source)
    start, stop = rows
    for a, b in chunk_ranges(start, stop, chunk):
        block = read(a, b)
        if get_array_module(block) is np:  # h5py / zarr slices become NumPy; CuPy stays put
            block = np.asarray(block, dtype=np.float32)
        out[a - start + out_offset : b - start + out_offset] = to_numpy(recon(block))
        if progress is not None:
            progress(b - start, stop - start)
    return out


def reconstruct_volume_gpu(
    source: Any,
    recon: ReconChunk,
    out: Any,
    *,
    rows: tuple[int, int],
    chunk: int = 16,
    progress: Progress | None = None,
) -> Any:  # pragma: no cover - needs a CUDA device
    """GPU variant of :func:`reconstruct_volume` with copy/compute overlap.

    Chunk ``i + 1`` is uploaded from pinned host memory on a copy stream while chunk ``i`` is
    reconstructed on the compute stream, and chunk ``i - 1`` is downloaded on a third; ``recon``
    must take and return CuPy arrays. Events order the three streams.
    """
    import cupy as cp  # type: ignore[import-not-found]

    read = as_reader(source)
    start, stop = rows
    ranges = list(chunk_ranges(start, stop, chunk))
    h2d, comp, d2h = cp.cuda.Stream(non_blocking=True), cp.cuda.Stream(non_blocking=True), cp.cuda.Stream(
        non_blocking=True
    )

    def pinned(shape: tuple[int, ...]) -> np.ndarray:
        mem = cp.cuda.alloc_pinned_memory(int(np.prod(shape)) * 4)
        return np.frombuffer(mem, np.float32, int(np.prod(shape))).reshape(shape)

    def upload(a: int, b: int) -> tuple[Any, Any]:
        host = np.asarray(read(a, b), dtype=np.float32)
        buf = pinned(host.shape)
        buf[...] = host
        with h2d:
            dev = cp.asarray(buf)
            ev = h2d.record()
        return dev, ev

    pending = upload(*ranges[0]) if ranges else None
    downloads: list[tuple[int, int, Any, Any, Any]] = []
    for i, (a, b) in enumerate(ranges):
        dev, ready = pending  # type: ignore[misc]
        comp.wait_event(ready)
        with comp:
            vol = recon(dev)
            done = comp.record()
        pending = upload(*ranges[i + 1]) if i + 1 < len(ranges) else None
        host = pinned(tuple(vol.shape))
        d2h.wait_event(done)
        with d2h:
            vol.get(stream=d2h, out=host)
            downloads.append((a, b, host, d2h.record(), vol))
        while downloads and (downloads[0][3].done or len(downloads) > 2):
            da, db, dh, ev, _ = downloads.pop(0)
            ev.synchronize()
            out[da - start : db - start] = dh
            if progress is not None:
                progress(db - start, stop - start)
    for da, db, dh, ev, _ in downloads:
        ev.synchronize()
        out[da - start : db - start] = dh
        if progress is not None:
            progress(db - start, stop - start)
    return out
