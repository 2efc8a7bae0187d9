"""Moving the live preview to the right rotation centre, all three slices, as soon as the data
can give one; and moving the slices themselves where a person asks (the web page).

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

A slice moved during the scan (:meth:`PreviewRecentring._move_to`) is rebuilt the same way, from
the projection store scaled to the projections seen (exact on small scans, fewer angles on large
frames), and the projections that follow are summed at its new position in full.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import replace
from typing import Any

import numpy as np

from ..engine.backend import get_array_module, to_numpy
from ..engine.filters import center_phase, filter_response
from ..engine.preprocess import to_unbinned
from .preview_backprojection import add_interpolated

log = logging.getLogger(__name__)

#: Angular span (radians) the centre-of-mass fit waits for.
MASS_MIN_SPAN = 2 * np.pi / 3

#: At most this many angles rebuild the xy slice at a new centre (the live slice's quality, a
#: quarter of the cost of 1500).
XY_MAX_ANGLES = 360

#: Stored projections filtered together when slices are rebuilt (one FFT call; bounds the
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
    _rows_z: int
    positions: tuple[float, float, float]
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
        t0 = time.perf_counter()
        self.geo = replace(self.geo, center=float(center_binned))
        self.center_full = to_unbinned(float(center_binned), self.geo.b)
        self.center_source = source
        self._set_kernel()
        self._lines_from_store(("xz", "yz"))
        if self._rows and self._rows_z == self.geo.z0:
            self._xy_from_sinogram(self._rows, self._row_angles)  # every projection's row z0
        else:  # the xy slice was moved off the kept row
            self._xy_from_sinogram([p[self.geo.z0] for _, p in self._store.items],
                                   [theta for theta, _ in self._store.items])
        return {"recomputed": ["xy", "xz", "yz"], "xz_yz_projections": len(self._store.items),
                "seconds": round(time.perf_counter() - t0, 3)}

    def _move_to(self, wanted: dict[str, int]) -> None:
        """Put the slices at ``wanted`` ({"xy": z, "xz": y, "yz": x}, checked by the caller) and
        rebuild those that moved from the projection store, scaled to ``n_used``."""
        g = self.geo
        moved = [p for p, now in (("xy", g.z0), ("xz", g.y0), ("yz", g.x0)) if wanted.get(p, now) != now]
        if not moved:
            return
        self.geo = replace(g, z0=wanted.get("xy", g.z0), y0=wanted.get("xz", g.y0), x0=wanted.get("yz", g.x0))
        m = (self.geo.nw - 1) / 2.0
        self._line_y0 = np.float32(m - self.geo.y0)
        self._line_x0 = np.float32(self.geo.x0 - m)
        self.positions = (self.geo.z0 / max(1, self.geo.nz - 1), self.geo.y0 / max(1, self.geo.nw - 1),
                          self.geo.x0 / max(1, self.geo.nw - 1))
        items = self._store.items
        if "xy" in moved:
            self.acc_xy[...] = 0
            if items:
                self._xy_from_sinogram([p[self.geo.z0] for _, p in items], [theta for theta, _ in items])
        self._lines_from_store(tuple(p for p in moved if p != "xy"))
        log.info("preview slices moved to %s (%s rebuilt from %d projections)",
                 {"xy": self.geo.z0, "xz": self.geo.y0, "yz": self.geo.x0}, ", ".join(moved), len(items))

    def _lines_from_store(self, planes: tuple[str, ...]) -> None:
        """The xz and/or yz slices from the kept projections, scaled to the projections seen."""
        if not planes:
            return
        accs = {"xz": self.acc_xz, "yz": self.acc_yz}
        for plane in planes:
            accs[plane][...] = 0
        items = self._store.items
        for k in range(0, len(items), REBUILD_BATCH):  # a few at once: one FFT call
            chunk = items[k : k + REBUILD_BATCH]
            q = self._filter_rows(self.xp.stack([p for _, p in chunk]))
            for (theta, _), filtered in zip(chunk, q, strict=True):
                self._backproject_lines(filtered, theta, planes)
        scale = np.float32(self.n_used / max(1, len(items)))
        for plane in planes:
            accs[plane] *= scale

    def _xy_from_sinogram(self, rows: list[Any], angles: list[float]) -> None:
        """The xy slice from one row of some projections, scaled to the projections seen."""
        if not rows:
            return
        from ..engine.fourier import reconstruct_fourier

        k = -(-len(rows) // XY_MAX_ANGLES)  # every k-th row: the slice, at a fraction of the cost
        sino = to_numpy(self.xp.stack(rows[::k]))[None]
        xy = reconstruct_fourier(sino, np.asarray(angles[::k]), float(self.geo.center), n=self.geo.nw,
                                 filter_name=self.filter_name, whole_square=True)[0]
        self.acc_xy[...] = self.xp.asarray(xy * np.float32(max(1, self.n_used) / math.pi))

    def _backproject_lines(self, q: Any, theta: float, planes: tuple[str, ...] = ("xz", "yz")) -> None:
        """The xz line (y = y0) and yz line (x = x0) of every row of one filtered projection:
        the line half of ``_backproject`` (the xy slice comes from the row sinogram)."""
        xp = get_array_module(q)
        c, s_ = np.float32(math.cos(theta)), np.float32(math.sin(theta))
        axis = np.float32(self._n_pad // 2)
        lines = {"xz": (self.acc_xz, self._gx[0] * c + (self._line_y0 * s_ + axis)),
                 "yz": (self.acc_yz, self._line_x0 * c + self._gy[:, 0] * s_ + axis)}
        shape = (q.shape[0], self.geo.nw)
        bufs = (np.empty(shape, np.float32), np.empty(shape, np.float32)) if xp is np else ()
        for acc, s_line in (lines[p] for p in planes):
            s_line = xp.array(s_line, dtype=xp.float32)
            i, w = self._positions(s_line)
            if bufs:
                add_interpolated(acc, q, i, w, bufs, axis=1)
                continue
            v0 = q[:, i]
            acc += v0 + w * (q[:, i + 1] - v0)

    # provided by the back-projection base class (preview_backprojection), listed for readers
    _gx: Any
    _gy: Any
    _line_y0: Any
    _line_x0: Any
    _store: ProjectionStore
    _filter_rows: Any
    _positions: Any
