"""A 3D ellipsoid phantom with exact parallel-beam line integrals.

Why analytic: tests compare reconstructions against ground truth, so the simulated projections
must not carry errors of a discrete projector. An ellipsoid's chord length along a ray has a
closed form, so every projection is exact and costs O(pixels x ellipsoids).

Geometry (the convention every consumer of the simulator relies on)
-------------------------------------------------------------------
* Units are detector pixels; attenuation values are per pixel, so a line integral is
  dimensionless and ``-log(normalised projection)`` reconstructs to these values directly.
* The rotation axis is the volume's z axis. Detector row ``v`` sees height
  ``z = v - (ny - 1) / 2``. Volume slice ``k`` of :meth:`Phantom.voxelise` is detector row ``k``.
* At rotation angle ``theta`` the detector column ``u`` sees the line
  ``x cos(theta) + y sin(theta) = s`` with ``s = u - (nx - 1) / 2 - axis_offset_px``; the ray
  runs along ``(-sin(theta), cos(theta))``. This is the tomopy / skimage ``radon`` convention
  for a slice indexed ``[y, x]`` with ``x = j - (n - 1) / 2`` and ``y = (n - 1) / 2 - i``.
* So the rotation axis projects onto column ``(nx - 1) / 2 + axis_offset_px``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: Modified 3D Shepp-Logan (Kak & Slaney / Toft), as (value, a, b, c, x0, y0, z0, phi_deg) in
#: normalised units: x, y scaled by the in-plane radius and z by the half height.
_SHEPP_LOGAN_3D: tuple[tuple[float, ...], ...] = (
    (1.0, 0.6900, 0.920, 0.810, 0.00, 0.0000, 0.00, 0.0),
    (-0.8, 0.6624, 0.874, 0.780, 0.00, -0.0184, 0.00, 0.0),
    (-0.2, 0.1100, 0.310, 0.220, 0.22, 0.0000, 0.00, -18.0),
    (-0.2, 0.1600, 0.410, 0.280, -0.22, 0.0000, 0.00, 18.0),
    (0.1, 0.2100, 0.250, 0.410, 0.00, 0.3500, -0.15, 0.0),
    (0.1, 0.0460, 0.046, 0.050, 0.00, 0.1000, 0.25, 0.0),
    (0.1, 0.0460, 0.046, 0.050, 0.00, -0.1000, 0.25, 0.0),
    (0.1, 0.0460, 0.023, 0.050, -0.08, -0.6050, 0.00, 0.0),
    (0.1, 0.0230, 0.023, 0.020, 0.00, -0.6060, 0.00, 0.0),
    (0.1, 0.0230, 0.046, 0.020, 0.06, -0.6050, 0.00, 0.0),
)

#: Small high-contrast beads (value, radius in pixels, x0, y0, z0 normalised): features a few
#: pixels wide that reveal resolution loss, a wrong rotation centre or ring artefacts.
_BEADS: tuple[tuple[float, float, float, float, float], ...] = (
    (0.6, 1.5, 0.30, 0.30, 0.0),
    (0.6, 2.0, -0.35, 0.25, 0.3),
    (0.4, 2.5, 0.10, -0.45, -0.3),
    (0.8, 1.2, -0.15, -0.20, 0.1),
)


@dataclass(frozen=True)
class Ellipsoid:
    """One ellipsoid in pixel units: attenuation ``value`` (per pixel) added inside it."""

    value: float
    semi_axes: tuple[float, float, float]
    center: tuple[float, float, float]
    phi_deg: float = 0.0  # rotation about z


@dataclass(frozen=True)
class Phantom:
    """A sum of ellipsoids; see the module docstring for the geometry."""

    ellipsoids: tuple[Ellipsoid, ...]

    def line_integrals(self, theta: float, shape: tuple[int, int], axis_offset_px: float = 0.0) -> np.ndarray:
        """Exact line integrals (ny, nx) at ``theta`` radians for a detector of ``shape``.

        The ray through column offset ``s`` and height ``z`` is ``p + t d`` with
        ``p = (s cos, s sin, z)``, ``d = (-sin, cos, 0)``; in an ellipsoid's unit-sphere frame the
        chord length is ``2 sqrt(disc) / |e|^2``. Rotation only about z keeps everything separable
        into a column part and a row part, so no (ny, nx, 3) array is ever built.
        """
        ny, nx = shape
        s = np.arange(nx, dtype=float) - (nx - 1) / 2.0 - axis_offset_px
        z = np.arange(ny, dtype=float) - (ny - 1) / 2.0
        ct, st = np.cos(theta), np.sin(theta)
        out = np.zeros((ny, nx), dtype=float)
        for ell in self.ellipsoids:
            a, b, c = ell.semi_axes
            cx, cy, cz = ell.center
            co, si = np.cos(np.deg2rad(ell.phi_deg)), np.sin(np.deg2rad(ell.phi_deg))
            dx, dy = s * ct - cx, s * st - cy
            q0, q1 = (co * dx + si * dy) / a, (co * dy - si * dx) / b
            e0, e1 = (-co * st + si * ct) / a, (si * st + co * ct) / b
            ee = e0 * e0 + e1 * e1
            qe = q0 * e0 + q1 * e1
            q2sq = ((z - cz) / c) ** 2
            disc = (qe * qe - ee * (q0 * q0 + q1 * q1 - 1.0))[None, :] - ee * q2sq[:, None]
            out += ell.value * 2.0 * np.sqrt(np.maximum(disc, 0.0)) / ee
        return out

    def sinogram(
        self, thetas: Sequence[float] | np.ndarray, shape: tuple[int, int], axis_offset_px: float = 0.0
    ) -> np.ndarray:
        """Line integrals for many angles (radians): (n_angles, ny, nx)."""
        return np.stack([self.line_integrals(float(t), shape, axis_offset_px) for t in thetas])

    def voxelise(self, shape: tuple[int, int, int], supersample: int = 1,
                 slices: tuple[int, int] | None = None) -> np.ndarray:
        """Attenuation on a (nz, n, n) grid, indexed ``[z, y, x]`` as in the module docstring.

        ``supersample`` > 1 averages sub-voxels, so edges are partial-volume like a reconstruction.
        Each ellipsoid is only evaluated inside its bounding box, so small features cost little.
        ``slices``: only slices ``[z0, z1)`` of that grid (a slab: memory bounded by the slab,
        not the volume).
        """
        nz, n_y, n_x = shape
        if supersample < 1:
            raise ValueError(f"supersample must be >= 1, got {supersample}")
        z0, z1 = (0, nz) if slices is None else (int(slices[0]), int(slices[1]))
        if not 0 <= z0 < z1 <= nz:
            raise ValueError(f"slices [{z0}, {z1}) outside the grid's {nz} slices")
        sub = (np.arange(supersample) + 0.5) / supersample - 0.5
        z = np.arange(z0, z1, dtype=float) - (nz - 1) / 2.0
        y = (n_y - 1) / 2.0 - np.arange(n_y, dtype=float)
        x = np.arange(n_x, dtype=float) - (n_x - 1) / 2.0
        vol = np.zeros((z1 - z0, n_y, n_x), dtype=float)
        for ell in self.ellipsoids:
            a, b, c = ell.semi_axes
            cx, cy, cz = ell.center
            reach = max(a, b) + 1.0
            kz = np.flatnonzero(np.abs(z - cz) <= c + 1.0)
            iy = np.flatnonzero(np.abs(y - cy) <= reach)
            jx = np.flatnonzero(np.abs(x - cx) <= reach)
            if not (kz.size and iy.size and jx.size):
                continue
            box = (slice(kz[0], kz[-1] + 1), slice(iy[0], iy[-1] + 1), slice(jx[0], jx[-1] + 1))
            co, si = np.cos(np.deg2rad(ell.phi_deg)), np.sin(np.deg2rad(ell.phi_deg))
            inside = np.zeros((kz.size, iy.size, jx.size), dtype=float)
            for dz in sub:
                room = 1.0 - ((z[box[0]] + dz - cz) / c) ** 2  # (u^2 + v^2) allowed at each height
                for dy in sub:
                    yy = (y[box[1]] - dy - cy)[:, None]
                    for dx in sub:
                        xx = (x[box[2]] + dx - cx)[None, :]
                        r2 = ((co * xx + si * yy) / a) ** 2 + ((co * yy - si * xx) / b) ** 2
                        inside += r2[None, :, :] <= room[:, None, None]
            vol[box] += ell.value * inside
        return (vol / supersample**3).astype(np.float32)


def shepp_logan_3d(
    shape: tuple[int, int],
    *,
    peak_line_integral: float = 1.5,
    beads: bool = True,
    fill: float = 0.85,
) -> Phantom:
    """The modified 3D Shepp-Logan phantom sized for a detector of ``shape`` = (ny, nx).

    Its widest in-plane extent is ``fill * nx / 2`` pixels around the rotation axis (and
    ``fill * ny / 2`` in height), so it stays in the field of view for axis offsets up to
    ``(1 - fill) * nx / 2`` pixels (9 px at the defaults and nx = 128). Values are scaled so
    that the largest line integral is about ``peak_line_integral`` (transmission
    ~ exp(-1.5) = 22 %), whatever the detector size.
    """
    ny, nx = shape
    if ny < 4 or nx < 8:
        raise ValueError(f"detector shape {shape} too small for the phantom (need >= 4 x 8)")
    radius = fill * nx / 2.0 / 0.92  # the outer ellipsoid's long semi-axis is 0.92
    half_h = fill * ny / 2.0 / 0.81
    ells = [
        Ellipsoid(v, (a * radius, b * radius, c * half_h), (x0 * radius, y0 * radius, z0 * half_h), phi)
        for v, a, b, c, x0, y0, z0, phi in _SHEPP_LOGAN_3D
    ]
    if beads:
        ells += [
            Ellipsoid(v, (r, r, r), (x0 * radius, y0 * radius, z0 * half_h)) for v, r, x0, y0, z0 in _BEADS
        ]
    unscaled = Phantom(tuple(ells))
    peak = max(float(unscaled.line_integrals(t, shape).max()) for t in (0.0, np.pi / 2))
    k = peak_line_integral / peak
    return Phantom(tuple(Ellipsoid(e.value * k, e.semi_axes, e.center, e.phi_deg) for e in ells))
