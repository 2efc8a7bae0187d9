"""One memory budget for every path that touches a whole scan or volume.

Real scans (1969 x 2160 x 2560 uint16 = 21 GB raw, a 56 GB float32 volume) do not fit in a
workstation's memory, so every path (full volume at stop, ``recon FILE``, each batch rank, the
streaming worker, re-processing) streams through files in slabs of rows whose size derives from
this one budget. A budget too small for the smallest slab is refused with the minimum it needs,
rather than failing later with an out-of-memory kill.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import math
import os

#: fraction of the machine's physical memory the default budget takes
DEFAULT_FRACTION = 0.25
#: the default never exceeds this (a larger slab buys no speed) nor goes below the floor
DEFAULT_CAP_BYTES = 16 * 2**30
DEFAULT_FLOOR_BYTES = 256 * 2**20


class MemoryBudgetError(ValueError):
    """The memory budget cannot hold even the smallest unit of work; the message names the minimum."""


def physical_memory_bytes() -> int:
    """Physical memory of this machine (cgroup limit if one is set and smaller)."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = open(limit_file).read().strip()
        except OSError:
            continue
        if text.isdigit() and 0 < int(text) < total:
            total = int(text)
    return total


def default_budget_bytes() -> int:
    """A quarter of physical memory, between 256 MiB and 16 GiB."""
    return int(min(DEFAULT_CAP_BYTES, max(DEFAULT_FLOOR_BYTES, DEFAULT_FRACTION * physical_memory_bytes())))


def budget_bytes(budget_mb: float | None) -> int:
    """The budget in bytes from a setting in MiB (``None``: the machine's default)."""
    if budget_mb is None:
        return default_budget_bytes()
    if budget_mb <= 0:
        raise MemoryBudgetError(f"memory budget must be positive, got {budget_mb} MiB")
    return int(budget_mb * 2**20)


def rows_per_slab(
    budget: int, bytes_per_row: int, *, fixed_bytes: int = 0, minimum_rows: int = 1, what: str = "slab",
) -> int:
    """How many rows fit in ``budget`` bytes when each row costs ``bytes_per_row`` plus ``fixed_bytes`` once.

    ``bytes_per_row`` must count every buffer a row lives in at once (raw frames, float32 working
    copies, the reconstructed slices, FFT scratch). Raises :class:`MemoryBudgetError` naming the
    minimum budget when not even ``minimum_rows`` fit.
    """
    if bytes_per_row <= 0:
        raise ValueError("bytes_per_row must be positive")
    rows = (budget - fixed_bytes) // bytes_per_row
    if rows < minimum_rows:
        need = fixed_bytes + minimum_rows * bytes_per_row
        raise MemoryBudgetError(
            f"memory budget {budget / 2**20:.0f} MiB is too small for one {what} of {minimum_rows} row(s): "
            f"at least {math.ceil(need / 2**20)} MiB is needed (set memory_budget_mb / --memory-budget-mb)"
        )
    return int(rows)


def describe_budget(budget_mb: float | None) -> tuple[int, str]:
    """``(bytes, where it came from)``: what ``bluesky-tomo-hpc config`` states."""
    if budget_mb is not None:
        return budget_bytes(budget_mb), f"memory_budget_mb setting ({budget_mb:g} MiB)"
    total = physical_memory_bytes()
    return default_budget_bytes(), (
        f"default: {DEFAULT_FRACTION:.0%} of this machine's {total / 2**30:.1f} GiB, "
        f"between {DEFAULT_FLOOR_BYTES // 2**20} MiB and {DEFAULT_CAP_BYTES // 2**30} GiB")




#: glibc ``mallopt`` parameter number of M_ARENA_MAX (malloc.h), and the arenas this process keeps
_M_ARENA_MAX = -8
MALLOC_ARENAS = 4


@functools.cache  # find_library runs ldconfig: once per process, not per slab run
def limit_malloc_arenas() -> bool:
    """Cap glibc's per-thread malloc arenas at :data:`MALLOC_ARENAS` (process-wide; no-op
    elsewhere). True when the cap is set.

    Why: each thread that meets a busy arena gets its own (up to 8 per core), and every arena
    keeps the slab-sized blocks freed into it. With the reader, compute and writer threads
    interleaving, that retained memory took a rank ~10-25 MiB past its budget (``recon FILE``,
    180 x 128 x 768, 256 MiB budget, VmHWM above baseline: 245-261 MiB by default, 188-189 MiB
    with 4 arenas, 183-185 with 2, at the same CPU time; load 2-5, 2026-12-07).
    """
    name = ctypes.util.find_library("c")
    if not name or os.uname().sysname != "Linux":
        return False
    try:
        return bool(ctypes.CDLL(name).mallopt(_M_ARENA_MAX, MALLOC_ARENAS))
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
