"""Array-module selection: one code path for NumPy and CuPy.

Engine functions call :func:`get_array_module` on their input and use the returned module
(``numpy`` or ``cupy``) for every operation, so a CuPy array in gives a CuPy array out.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from types import ModuleType
from typing import Any

import numpy as np

from ..extras import optional, require

#: what asks for CuPy, in the words of the setting (for the line naming the ``gpu`` extra)
GPU_FEATURE = "GPU reconstruction (device: gpu)"

# CuPy is optional (the ``gpu`` extra): used where it imports and sees a device
_cp: Any = optional("cupy")
try:
    _CUPY_USABLE = _cp is not None and _cp.cuda.runtime.getDeviceCount() > 0
except Exception:  # pragma: no cover - CuPy without a driver or a device
    _CUPY_USABLE = False


_PINNED: list[int] | None = None  # set by use_gpu_of_local_rank: this process keeps to one GPU


def gpu_devices() -> list[int]:
    """Ids of the CUDA devices this process may use (all visible ones; empty without CuPy).

    Why a list: a node's full-volume reconstruction runs one conveyor per device (the worker,
    the in-process session); an MPI rank keeps to the one :func:`use_gpu_of_local_rank` gave it.
    ``CUDA_VISIBLE_DEVICES`` narrows the list as usual.
    """
    if not _CUPY_USABLE:
        return []
    if _PINNED is not None:  # pragma: no cover - needs a CUDA device
        return list(_PINNED)
    return list(range(_cp.cuda.runtime.getDeviceCount()))  # pragma: no cover - needs a CUDA device


def use_gpu_of_local_rank(local_rank: int) -> int | None:
    """Give this MPI rank GPU ``local_rank % n_gpus`` of its node (one rank per device and
    stream set); ``None`` on a machine without GPUs, where nothing changes."""
    global _PINNED
    devices = gpu_devices()
    if not devices:
        return None
    device = devices[local_rank % len(devices)]  # pragma: no cover - needs a CUDA device
    _cp.cuda.Device(device).use()  # pragma: no cover
    _PINNED = [device]  # pragma: no cover
    return device  # pragma: no cover


def get_array_module(*arrays: Any) -> ModuleType:
    """``cupy`` if any argument is a CuPy array, else ``numpy``."""
    if _cp is not None:
        for a in arrays:
            if isinstance(a, _cp.ndarray):
                return _cp
    return np


def to_numpy(a: Any) -> np.ndarray:
    """A host NumPy array whatever the input lives on."""
    if _cp is not None and isinstance(a, _cp.ndarray):
        return _cp.asnumpy(a)
    return np.asarray(a)


def choose_device(requested: str = "auto") -> ModuleType:
    """Array module for a ``ReconParams.device`` value; ``gpu`` without CuPy names the extra, and
    without a CUDA device says so (a setting to change: ``auto`` or ``cpu``)."""
    if requested == "cpu":
        return np
    if requested == "gpu":
        if _cp is None:
            require("cupy", GPU_FEATURE)  # not installed: the line naming the extra
        if not _CUPY_USABLE:
            raise ValueError("device: gpu was requested but CuPy sees no usable CUDA device here; "
                             "use device: auto or cpu")
        return _cp
    return _cp if _CUPY_USABLE else np


def cpu_threads(threads: int | None = None) -> int:
    """Threads for CPU work: ``threads`` if given, else the CPUs this process may run on
    (``taskset``/cgroup affinity, which is what a batch rank or a pinned benchmark sees)."""
    if threads is not None:
        return max(1, int(threads))
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS
        return os.cpu_count() or 1


_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def run_blocks(work: Callable[[slice], None], n: int, block: int, threads: int | None = None) -> None:
    """Call ``work(slice)`` over ``[0, n)`` in blocks of ``block`` items, on :func:`cpu_threads` threads.

    Why: element-wise NumPy passes over a whole scan are memory-bound and single-threaded;
    blocks of about a megabyte stay in cache across several passes, and NumPy releases the GIL
    in its loops, so threads add up. ``work`` must only touch its own block.
    """
    global _POOL
    blocks = [slice(a, min(a + block, n)) for a in range(0, n, max(1, block))]
    t = min(cpu_threads(threads), len(blocks))
    if t <= 1:
        for b in blocks:
            work(b)
        return
    with _POOL_LOCK:
        if _POOL is None or _POOL._max_workers < t:
            _POOL = ThreadPoolExecutor(t, thread_name_prefix="tomo-blocks")
        pool = _POOL
    for f in [pool.submit(work, b) for b in blocks]:
        f.result()
