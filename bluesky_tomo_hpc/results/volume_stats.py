"""A reconstruction volume's histogram and display window, computed once when the result is
written and stored in its node's metadata.

Why: the web page shows a volume with this window and histogram as soon as it opens it. Computed
on open, it costs a read of the volume (and Tiled's look-up of where the volume lives) before the
first slice; stored with the result, opening needs the node's metadata only. Results written
before this was stored have none: the page computes it on open (:func:`volume_stats` again).
Whatever is read back from metadata is outside data: :func:`stored_stats` accepts only a record
of the exact form written here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

#: the metadata key of the stored record
STATS_KEY = "volume_stats"
#: the histogram's bins, and about how many pixels per side each sampled xy slice keeps
BINS, SIDE = 128, 256
#: how many xy slices are sampled (10-90 % of the height)
SAMPLED_SLICES = 5
#: the most bins a stored record may have (it is outside data when read back)
MAX_BINS = 4096
#: a stored shape's axes are at most this long (a 2^20-voxel side is past any detector)
MAX_SIDE = 1 << 20


def sample_planes(shape: tuple[int, int, int], side: int = SIDE) -> tuple[range, int]:
    """The z indices of the sampled xy slices (evenly spaced) and the stride within each."""
    nz, ny, nx = shape
    step = max(1, math.ceil(max(ny, nx) / side))
    z0, z1 = int(round(0.1 * (nz - 1))), int(round(0.9 * (nz - 1)))
    dz = max(1, (z1 - z0) // (SAMPLED_SLICES - 1))
    return range(z0, z1 + 1, dz), step


def volume_stats(shape: tuple[int, int, int], read_planes: Callable[[range, int], np.ndarray],
                 bins: int = BINS, side: int = SIDE) -> dict[str, Any]:
    """The histogram and 0.5-99.5 % window of a (nz, ny, nx) volume from a few strided xy slices:
    ``read_planes(zs, step)`` returns ``volume[zs, ::step, ::step]`` (memory: those slices)."""
    zs, step = sample_planes(shape, side)
    sample = np.asarray(read_planes(zs, step), dtype=np.float32)
    values = sample[np.isfinite(sample)]
    out: dict[str, Any] = {"shape": [int(n) for n in shape], "step": step}
    if values.size == 0:
        return {**out, "counts": [0] * bins, "range": [0.0, 1.0], "window": [0.0, 1.0], "sampled": 0}
    lo, hi, a, b = (float(v) for v in np.percentile(values, [0.5, 99.5, 0.05, 99.95]))
    if not b > a:
        a, b = float(values.min()), float(values.max()) + 1.0
    pad = 0.05 * (b - a)
    a, b = a - pad, b + pad
    counts, _ = np.histogram(values, bins=bins, range=(a, b))
    return {**out, "counts": counts.tolist(), "range": [a, b],
            "window": [lo, hi if hi > lo else lo + 1.0], "sampled": int(values.size)}


def stats_of_array(volume: Any) -> dict[str, Any]:
    """:func:`volume_stats` of a 3-D array-like (numpy or Zarr), read one sampled slice at a time."""
    shape = tuple(int(n) for n in volume.shape)
    return volume_stats(shape, lambda zs, step: np.stack(  # type: ignore[arg-type]
        [np.asarray(volume[z, ::step, ::step], dtype=np.float32) for z in zs]))


def _pair(v: Any) -> list[float] | None:
    if (isinstance(v, list) and len(v) == 2 and all(isinstance(x, int | float) and not isinstance(x, bool)
                                                    and math.isfinite(x) for x in v) and v[0] < v[1]):
        return [float(v[0]), float(v[1])]
    return None


def _count(v: Any, least: int = 0) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) and v >= least else None


def stored_stats(md: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The record :func:`volume_stats` stored in ``md``, checked field by field (it comes back
    from Tiled, outside data); None when absent or not of that form (the caller computes it)."""
    rec = (md or {}).get(STATS_KEY)
    if not isinstance(rec, Mapping):
        return None
    counts, shape = rec.get("counts"), rec.get("shape")
    if not (isinstance(counts, list) and 0 < len(counts) <= MAX_BINS
            and all(_count(c) is not None for c in counts)):
        return None
    if not (isinstance(shape, list) and len(shape) == 3
            and all(_count(n, 1) is not None and n <= MAX_SIDE for n in shape)):
        return None
    rng, window = _pair(rec.get("range")), _pair(rec.get("window"))
    sampled, step = _count(rec.get("sampled")), _count(rec.get("step"), 1)
    if rng is None or window is None or sampled is None or step is None:
        return None
    return {"shape": list(shape), "counts": list(counts), "range": rng, "window": window,
            "sampled": sampled, "step": step}
