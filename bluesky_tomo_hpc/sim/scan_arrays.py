"""Simulated scans as arrays (no RunEngine): known centre, real detector physics, seconds to make.

Why: centre finding, ring removal and half acquisition are calibrated and tested on many scans
whose truth is known (180/360 degrees, axis far from the middle, offset axis, interior, few
projections, low contrast, rings). The frames come from the same :class:`FrameSimulator` the
simulated beamline's detectors use, so they carry its noise, flat field and ring physics.
"""

from __future__ import annotations

import numpy as np

from bluesky_tomo_hpc.model import ScanData

from .optics import DetectorPhysics, FrameSimulator
from .phantom import Phantom, shepp_logan_3d

__all__ = ["offset_axis_geometry", "simulate_scan"]


def offset_axis_geometry(nx: int, margin_px: float | None = None) -> tuple[float, float]:
    """``(rotation_offset_px, phantom_fill)`` of a half-acquisition (offset-axis) scan on an
    ``nx``-wide detector: the axis ``margin_px`` (default nx / 8) from the right edge, and a
    sample whose radius reaches 90 % of the way to the far (left) edge, so that it is wider than
    the detector and every part of it is seen in one half-turn or the other."""
    margin = nx / 8.0 if margin_px is None else float(margin_px)
    center = (nx - 1) - margin
    offset = center - (nx - 1) / 2.0
    fill = 0.9 * 2.0 * center / nx  # shepp_logan_3d: widest extent is fill * nx / 2 around the axis
    return offset, fill


def simulate_scan(
    shape: tuple[int, int] = (4, 256),
    *,
    angles_deg: np.ndarray | None = None,
    n_angles: int = 360,
    span_deg: float = 180.0,
    rotation_offset_px: float = 0.0,
    fill: float = 0.85,
    peak_line_integral: float = 1.5,
    photons: float = 2.0e4,
    ring_columns: dict[int, float] | None = None,
    n_flats: int = 4,
    seed: int = 0,
    phantom: Phantom | None = None,
) -> ScanData:
    """A whole scan (projections, flats, darks as uint16; theta in radians) of the Shepp-Logan
    phantom; the rotation axis is on column ``(nx - 1) / 2 + rotation_offset_px``, recorded in
    ``metadata["true_center"]``. ``fill`` > 1 makes a sample wider than the detector (interior
    tomography, half acquisition)."""
    ny, nx = shape
    if angles_deg is None:
        angles_deg = np.arange(n_angles) * span_deg / n_angles
    physics = DetectorPhysics(shape=(ny, nx), photons=photons, ring_columns=dict(ring_columns or {}))
    ph = phantom or shepp_logan_3d((ny, nx), peak_line_integral=peak_line_integral, fill=fill)
    sim = FrameSimulator(ph, physics, rotation_offset_px=rotation_offset_px, seed=seed)
    def frames(angles: np.ndarray, shutter_open: bool, sample_in: bool) -> np.ndarray:
        return np.stack([sim.acquire(angle_deg=float(a), shutter_open=shutter_open, sample_in=sample_in)
                         for a in angles])

    darks = frames(np.zeros(n_flats), False, False)
    flats = frames(np.zeros(n_flats), True, False)
    proj = frames(np.asarray(angles_deg), True, True)
    center = (nx - 1) / 2.0 + rotation_offset_px
    return ScanData(projections=proj, theta=np.deg2rad(np.asarray(angles_deg, dtype=float)), darks=darks,
                    flats=flats, run_uid=f"sim-{seed}", metadata={"true_center": center})
