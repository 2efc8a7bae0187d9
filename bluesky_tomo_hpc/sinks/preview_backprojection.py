"""The live preview's arithmetic: each projection normalised, ramp-filtered and back-projected
onto three orthogonal slices, once.

A filtered back-projection is a sum over projections, so the slices can grow one projection at a
time: the xy slice at row z0 (one filtered row onto an n x n grid), and the xz line (y = y0) and
yz line (x = x0) of every row (one gather per row). Geometry of :mod:`bluesky_tomo_hpc.engine.fbp`.
NumPy: a batch of frames on every core (:meth:`_backproject_cpu`: rows of the xy slice and of
the lines split between threads, each thread adding the frames in order); on a GPU a batch of
projections per gather (:meth:`_backproject_batch`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.fft

from ..engine.backend import cpu_threads, get_array_module, run_blocks

__all__ = ["OrthoSliceBackprojection", "SliceGeometry", "add_interpolated"]


@dataclass
class SliceGeometry:
    nz: int
    nw: int
    b: int
    center: float  # binned pixel-index convention
    z0: int
    y0: int
    x0: int


def add_interpolated(acc: np.ndarray, src: np.ndarray, i: np.ndarray, w: np.ndarray,
              bufs: tuple[np.ndarray, np.ndarray], axis: int) -> None:
    """``acc += v0 + w * (v1 - v0)`` with ``v0, v1`` = ``src`` taken at ``i, i + 1`` along
    ``axis``, through two reused buffers: the same float32 sums as the fancy-indexed
    expression, about 3x faster (no temporaries; measured in benchmarks/bench_center.py)."""
    v0, v1 = bufs
    np.take(src, i, axis=axis, out=v0)
    np.take(src, i + 1, axis=axis, out=v1)
    v1 -= v0
    v1 *= w
    v1 += v0
    acc += v1


class OrthoSliceBackprojection:
    """Normalise, filter and back-project onto the three accumulators.

    A base of :class:`~.preview.PreviewSink`, which sets the state used here in its ``_setup``:
    ``xp``, ``geo``, ``_n_pad``/``_left``, ``_kernel``, the grids ``_gx``/``_gy``/``_line_*``, the
    accumulators ``acc_xy``/``acc_xz``/``acc_yz`` and the dark/flat sums."""

    def _normalise(self, frames: np.ndarray) -> np.ndarray:
        """-log transmission. Before any flat has arrived (flats taken after the projections) the
        flat is provisionally a per-row constant, the brightest pixel of the row in the first
        projection: the error is then the flat's variation along each row, which is smooth and
        mostly removed by the ramp filter (the metadata counts such projections)."""
        xp = self.xp
        dark = (self._dark_sum / self.n_dark).astype(xp.float32) if self.n_dark else np.float32(0)
        p = xp.maximum(frames - dark, np.float32(self.min_transmission))
        if self.n_flat:
            f = xp.maximum((self._flat_sum / self.n_flat).astype(xp.float32) - dark, np.float32(1e-3))
        else:
            if self._provisional_flat is None:
                self._provisional_flat = p[0].max(axis=-1, keepdims=True)
            f = self._provisional_flat
            self.n_before_flat += len(frames)
        p /= f
        xp.maximum(p, np.float32(self.min_transmission), out=p)
        xp.log(p, out=p)
        xp.negative(p, out=p)
        return p

    def _filter_rows(self, sino: np.ndarray) -> np.ndarray:
        """Filter along detector rows, edge-padded; returns (n, nz, n_pad + 3) with the axis at
        column n_pad // 2 + 1 and zero columns at both ends, so off-detector positions read 0."""
        xp = self.xp
        n, nz, nw = sino.shape
        n_pad, left = self._n_pad, self._left
        padded = xp.empty((n, nz, n_pad), xp.float32)
        padded[..., left:left + nw] = sino
        padded[..., :left] = sino[..., :1]
        padded[..., left + nw:] = sino[..., -1:]
        fft = scipy.fft if xp is np else xp.fft
        kw = {"workers": cpu_threads()} if xp is np else {}
        spec = fft.rfft(padded, axis=-1, **kw)
        spec *= self._kernel
        q = xp.empty((n, nz, n_pad + 3), xp.float32)
        q[..., 0] = 0
        q[..., n_pad + 1:] = 0
        q[..., 1:n_pad + 1] = fft.irfft(spec, n=n_pad, axis=-1, **kw)
        return q

    def _positions(self, s: Any) -> tuple[Any, Any]:
        """Column in the zero-bordered filtered row, and the linear weight of the next one."""
        xp = get_array_module(s)
        xp.clip(s, -1.0, float(self._n_pad), out=s)
        i0 = xp.floor(s)
        w = s - i0
        return i0.astype(np.intp) + 1, w

    def _backproject(self, q: np.ndarray, theta: float) -> None:
        """Add one filtered projection (nz, n_pad + 3) to the three accumulators.

        Geometry of :mod:`bluesky_tomo_hpc.engine.fbp`: s = x cos(theta) + y sin(theta) from the
        axis; the same sum as ``engine.fbp.backproject_projection``, with the row, line and
        slice gathers written out to avoid its per-call masks (this loop runs per frame).
        """
        c, s_ = np.float32(math.cos(theta)), np.float32(math.sin(theta))
        axis = np.float32(self._n_pad // 2)
        # xy slice at row z0
        row = q[self.geo.z0]
        s = self._gx * c + (self._gy * s_ + axis)
        i, w = self._positions(s)
        v0 = row[i]
        self.acc_xy += v0 + w * (row[i + 1] - v0)
        # xz line (y = y0) and yz line (x = x0) in every row
        for acc, s_line in ((self.acc_xz, self._gx[0] * c + (self._line_y0 * s_ + axis)),
                            (self.acc_yz, self._line_x0 * c + self._gy[:, 0] * s_ + axis)):
            i, w = self._positions(s_line)
            v0 = q[:, i]
            acc += v0 + w * (q[:, i + 1] - v0)

    def _backproject_cpu(self, q: np.ndarray, thetas: Any, threads: int | None = None, *,
                         xy: bool = True) -> None:
        """:meth:`_backproject` for a batch of frames (B, nz, n_pad + 3), on every core: the
        rows of the xy slice, then the rows of the xz/yz lines, split between ``threads``
        (default: the CPUs this process may use); each thread adds all frames to its rows in
        order, so the sums are exactly the per-frame ones (NumPy's gathers release the GIL).
        ``xy=False``: the lines only (a centre move rebuilds the xy slice from its own rows)."""
        trig = [(np.float32(math.cos(t)), np.float32(math.sin(t))) for t in np.asarray(thetas, float)]
        axis = np.float32(self._n_pad // 2)
        rows_xy = q[:, self.geo.z0]
        t = cpu_threads(threads)

        def xy_rows(rows: slice) -> None:
            gy, acc = self._gy[rows], self.acc_xy[rows]
            bufs = (np.empty(acc.shape, np.float32), np.empty(acc.shape, np.float32))
            for row, (c, s_) in zip(rows_xy, trig, strict=True):
                i, w = self._positions(self._gx * c + (gy * s_ + axis))
                add_interpolated(acc, row, i, w, bufs, axis=0)

        def lines(zs: slice) -> None:
            shape = (zs.stop - zs.start, self.acc_xz.shape[1])
            bufs = (np.empty(shape, np.float32), np.empty(shape, np.float32))
            for qq, (c, s_) in zip(q[:, zs], trig, strict=True):
                for acc, s_line in ((self.acc_xz, self._gx[0] * c + (self._line_y0 * s_ + axis)),
                                    (self.acc_yz, self._line_x0 * c + self._gy[:, 0] * s_ + axis)):
                    i, w = self._positions(s_line)
                    add_interpolated(acc[zs], qq, i, w, bufs, axis=1)

        ny, nz = self.acc_xy.shape[0], q.shape[1]
        if xy:
            run_blocks(xy_rows, ny, -(-ny // t), t)
        run_blocks(lines, nz, -(-nz // t), t)

    def _backproject_batch(self, q: Any, thetas: np.ndarray, *, xy: bool = True) -> None:
        """Add ``B`` filtered projections (B, nz, n_pad + 3) at once: one gather per slice for
        the whole batch (what keeps a GPU busy; per frame it would wait on kernel launches).
        The same sums as :meth:`_backproject`, which the tests check on NumPy; ``xy=False``:
        the lines only."""
        xp = get_array_module(q)
        n_b, nz, width = q.shape
        c = xp.asarray(np.cos(thetas), dtype=xp.float32)[:, None, None]
        s_ = xp.asarray(np.sin(thetas), dtype=xp.float32)[:, None, None]
        axis = np.float32(self._n_pad // 2)
        if xy:  # xy slice at row z0: rows (B, width) gathered at (B, nw, nw) positions
            rows = q[:, self.geo.z0, :].ravel()
            i, w = self._positions(self._gx[None] * c + (self._gy[None] * s_ + axis))
            flat = i + (xp.arange(n_b, dtype=i.dtype) * width)[:, None, None]
            v0 = rows[flat]
            self.acc_xy += (v0 + w * (rows[flat + 1] - v0)).sum(axis=0)
        # xz line (y = y0) and yz line (x = x0) of every row: (B, nz, nw) gathers
        cb, sb = c[:, 0], s_[:, 0]  # (B, 1)
        for acc, s_line in ((self.acc_xz, self._gx[0][None, :] * cb + (self._line_y0 * sb + axis)),
                            (self.acc_yz, self._line_x0 * cb + self._gy[:, 0][None, :] * sb + axis)):
            i, w = self._positions(s_line)  # (B, nw)
            idx = xp.broadcast_to(i[:, None, :], (n_b, nz, i.shape[-1]))
            v0 = xp.take_along_axis(q, idx, axis=2)
            v1 = xp.take_along_axis(q, idx + 1, axis=2)
            acc += (v0 + w[:, None, :] * (v1 - v0)).sum(axis=0)
