"""Moving the live preview to the right rotation centre, all three slices, as soon as the data
can give one.

Why a cache: a filtered back-projection's centre is baked into every projection already summed,
so a new centre needs the projections again. The preview keeps (a) row z0 of every projection
(the xy slice, exact at any centre) and (b) a bounded store of whole projections, thinned in
angle when it fills (every 2nd, 4th, ... one), from which the xz/yz slices are rebuilt at the new
centre and scaled to the number of projections seen. Small scans fit whole (exact); on large
frames the rebuilt part of xz/yz has fewer angles (streakier, but at the right centre), and the
projections that follow are summed at the right centre in full.

When: after two thirds of a half-turn, from the centre of mass of row z0 (it runs along
``c + a cos(theta) + b sin(theta)`` for a sample inside the field of view: :func:`centre_of_mass_axis`),
so a 180-degree scan is at the right centre well before stop; once the first projection's
0/180-degree partner has arrived (mid-scan on a 360-degree scan); and at stop, on the pair
(:func:`bluesky_tomo_hpc.engine.center.center_from_pair`), which then only rebuilds when the
earlier answer was off.
"""

from __future__ import annotations

import math
import time
from dataclasses import replace
from typing import Any

import numpy as np

from ..engine.backend import to_numpy
from ..engine.filters import center_phase, filter_response
from ..engine.preprocess import to_unbinned

#: Angular span (radians) the centre-of-mass fit waits for.
MASS_MIN_SPAN = 2 * np.pi / 3

#: At most this many angles rebuild the xy slice at a new centre (the live slice's quality, a
#: quarter of the cost of 1500).
XY_MAX_ANGLES = 360

#: Stored projections filtered and back-projected together by a centre move (bounds the
#: temporary arrays to a few padded projections).
REBUILD_BATCH = 4


def centre_of_mass_axis(rows: np.ndarray, theta: np.ndarray) -> float | None:
    """The axis from the centres of mass of -log rows (n_angles, nx) over two thirds of a half-turn,
    or None where that cannot be trusted: the sample touches the row's ends (truncated: mass
    leaves the field of view), the fit of ``c + a cos + b sin`` leaves more than 0.5 px RMS
    (drift, bad flats), or the angles span less than :data:`MASS_MIN_SPAN` (over less, the
    offset and the sinusoid are hard to tell apart)."""
    rows = np.asarray(rows, dtype=np.float64)
    theta = np.asarray(theta, dtype=np.float64)
    n = rows.shape[1]
    if len(theta) < 8 or np.ptp(theta) < MASS_MIN_SPAN:
        return None
    mass = rows.sum(axis=1)
    edge = max(1, n // 20)
    if np.any(mass <= 0) or np.abs(rows[:, :edge]).mean() + np.abs(rows[:, -edge:]).mean() > 0.05 * rows.mean(
            axis=0).max():
        return None
    com = rows @ np.arange(n) / mass
    design = np.stack([np.ones_like(theta), np.cos(theta), np.sin(theta)], axis=1)
    coef, *_ = np.linalg.lstsq(design, com, rcond=None)
    if np.sqrt(np.mean((design @ coef - com) ** 2)) > 0.5:
        return None
    return float(coef[0])


class ProjectionStore:
    """At most ``max_bytes`` of projections with their angles, evenly thinned in angle: when
    full, every other one is dropped and from then on only every ``stride``-th is kept."""

    def __init__(self, max_bytes: int):
        self.max_bytes = int(max_bytes)
        self.items: list[tuple[float, Any]] = []
        self.stride = 1
        self._seen = 0
        self.nbytes = 0

    def add(self, theta: float, projection: Any) -> None:
        k, self._seen = self._seen, self._seen + 1
        if self.max_bytes <= 0 or k % self.stride:
            return
        while self.items and self.nbytes + projection.nbytes > self.max_bytes:
            self.items = self.items[::2]
            self.nbytes = sum(p.nbytes for _, p in self.items)
            self.stride *= 2
            if k % self.stride:
                return
        if projection.nbytes <= self.max_bytes:
            self.items.append((theta, projection.copy()))
            self.nbytes += projection.nbytes


class PreviewRecentring:
    """Mixed into :class:`~bluesky_tomo_hpc.sinks.preview.PreviewSink`: the filter kernel for
    the current centre, and :meth:`_recentre`, which rebuilds the three slices at a new one."""

    xp: Any
    geo: Any
    filter_name: str
    n_used: int
    acc_xy: Any
    acc_xz: Any
    acc_yz: Any
    _n_pad: int
    _left: int
    _rows: list[Any]
    _row_angles: list[float]
    center_full: float
    center_source: str

    def _set_kernel(self) -> None:
        """The engine's filter, with the centre applied as a phase ramp: after filtering, the axis
        sits at padded column n_pad // 2 whatever the centre (no resampling of the data)."""
        n_pad = self._n_pad
        shift = (self.geo.center + self._left) - n_pad // 2
        kernel = filter_response(n_pad, self.filter_name) * center_phase(n_pad, shift)
        self._kernel = self.xp.asarray(kernel[: n_pad // 2 + 1].astype(np.complex64))

    def _recentre(self, center_binned: float, source: str) -> dict[str, Any]:
        """Rebuild all three slices at ``center_binned``: xy from the row-z0 sinogram (every
        projection), xz/yz from the :class:`ProjectionStore` scaled to ``n_used``; later
        projections are summed at the new centre. Returns what was done, for the metadata."""
        from ..engine.fourier import reconstruct_fourier

        t0 = time.perf_counter()
        self.geo = replace(self.geo, center=float(center_binned))
        self.center_full = to_unbinned(float(center_binned), self.geo.b)
        self.center_source = source
        self._set_kernel()
        store: ProjectionStore = self._store
        self.acc_xz[...] = 0
        self.acc_yz[...] = 0
        for k in range(0, len(store.items), REBUILD_BATCH):  # a few at once: one FFT call, every core
            chunk = store.items[k : k + REBUILD_BATCH]
            q = self._filter_rows(self.xp.stack([p for _, p in chunk]))
            angles = np.array([t for t, _ in chunk], dtype=np.float64)
            if self.xp is np:
                self._backproject_cpu(q, angles, xy=False)
            else:
                self._backproject_batch(q, angles, xy=False)
        scale = np.float32(self.n_used / max(1, len(store.items)))
        self.acc_xz *= scale
        self.acc_yz *= scale
        if self._rows:
            k = -(-len(self._rows) // XY_MAX_ANGLES)  # every k-th row: the slice, at a fraction of the cost
            sino = to_numpy(self.xp.stack(self._rows[::k]))[None]
            xy = reconstruct_fourier(sino, np.asarray(self._row_angles[::k]), float(center_binned),
                                     n=self.geo.nw, filter_name=self.filter_name,
                                     whole_square=True)[0]
            self.acc_xy[...] = self.xp.asarray(xy * np.float32(max(1, self.n_used) / math.pi))
        return {"recomputed": ["xy", "xz", "yz"], "xz_yz_projections": len(store.items),
                "seconds": round(time.perf_counter() - t0, 3)}

    # provided by the back-projection base class (preview_backprojection), listed for readers
    _store: ProjectionStore
    _filter_rows: Any
    _backproject_cpu: Any
    _backproject_batch: Any
