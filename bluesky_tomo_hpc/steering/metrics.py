"""Numbers a plan can decide on, computed from a reconstruction's three orthogonal slices.

Why slices and not the volume: the live preview *is* three slices (a second after the stop),
and the full result's slices are already in memory beside it, so a decision costs milliseconds.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: (first row, stop row, first column, stop column) of the xy slice, as fractions (0..1)
Roi = tuple[float, float, float, float]


def sharpness(image: np.ndarray) -> float:
    """Mean squared gradient over the variance (scale-free): a blurred or mis-centred slice
    scores lower than a sharp one of the same object."""
    a = np.asarray(image, dtype=np.float64)
    if a.ndim != 2 or min(a.shape) < 3:
        raise ValueError(f"sharpness needs a 2-D slice of at least 3 x 3, got shape {a.shape}")
    gy, gx = np.gradient(a)
    var = float(a.var())
    return float(np.mean(gx * gx + gy * gy) / var) if var > 0 else 0.0


def roi_statistics(image: np.ndarray, roi: Roi = (0.0, 1.0, 0.0, 1.0)) -> dict[str, float]:
    """mean, std, min, max and 1st/99th percentiles of ``image`` inside ``roi`` (fractions)."""
    a = np.asarray(image, dtype=np.float64)
    r0, r1, c0, c1 = roi
    if not (0.0 <= r0 < r1 <= 1.0 and 0.0 <= c0 < c1 <= 1.0):
        raise ValueError(f"roi must be fractions (r0 < r1, c0 < c1) within 0..1, got {roi}")
    ny, nx = a.shape
    part = a[int(r0 * ny): max(int(r0 * ny) + 1, int(round(r1 * ny))),
             int(c0 * nx): max(int(c0 * nx) + 1, int(round(c1 * nx)))]
    p1, p99 = np.percentile(part, [1, 99])
    return {"mean": float(part.mean()), "std": float(part.std()), "min": float(part.min()),
            "max": float(part.max()), "p1": float(p1), "p99": float(p99), "pixels": int(part.size)}


@dataclass(frozen=True)
class SliceMetrics:
    """What a plan reads about one scan's preview (``kind="preview"``) or full result."""

    run_uid: str
    kind: str
    center: float | None
    center_confidence: float | None
    sharpness: dict[str, float]
    roi: dict[str, float]
    user: Any = None
    series: Mapping[str, Any] | None = None
    slices: dict[str, np.ndarray] = field(default_factory=dict, repr=False)


def measure(run_uid: str, kind: str, slices: Mapping[str, np.ndarray], *, center: float | None,
            center_confidence: float | None, series: Mapping[str, Any] | None = None,
            roi: Roi = (0.25, 0.75, 0.25, 0.75),
            user: Callable[[Mapping[str, np.ndarray]], Any] | None = None) -> SliceMetrics:
    """The metrics of one set of slices; ``user(slices)`` adds anything else (its result as is)."""
    clean = {k: np.asarray(v, dtype=np.float32) for k, v in slices.items()}
    return SliceMetrics(
        run_uid=run_uid, kind=kind, center=center, center_confidence=center_confidence,
        sharpness={k: sharpness(v) for k, v in clean.items() if min(v.shape) >= 3},
        roi=roi_statistics(clean["xy"], roi) if "xy" in clean else {},
        user=user(clean) if user is not None else None, series=series, slices=clean)
