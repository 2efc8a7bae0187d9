"""Detector physics: turn line integrals into the uint16 counts a real tomography camera records.

Why each effect is here: every one of them is something the reconstruction pipeline must undo
(dark subtraction, flat-field normalisation, centre finding, ring removal), so a pipeline that
passes on this simulator has been exercised on each.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .faults import BeamlineFaults
from .phantom import Phantom

_UINT16_MAX = np.iinfo(np.uint16).max


@dataclass(frozen=True)
class DetectorPhysics:
    """Counts model: ``dark + Poisson(flat * exp(-line_integral * scale))``, clipped to uint16.

    * ``photons``: mean counts per pixel of the flat field at its brightest.
    * ``flat_nonuniformity``: depth of the smooth 2D beam profile (0 = uniform).
    * ``flat_drift_per_frame``: relative change of the beam intensity per acquired frame, so flats
      taken before and after the projections differ.
    * ``dark_offset`` / ``read_noise``: dark current (counts) and Gaussian read noise (counts rms).
    * ``ring_columns``: ``{column: error}``; those columns respond non-linearly,
      ``out = flat * t ** (1 + error)`` for transmission ``t``. Flats still look right, but
      ``-log(normalised)`` is off by ``error * line_integral`` in that column: a ring.
    """

    shape: tuple[int, int] = (64, 128)
    photons: float = 2.0e4
    flat_nonuniformity: float = 0.2
    flat_drift_per_frame: float = 0.0
    dark_offset: float = 100.0
    read_noise: float = 2.0
    scale: float = 1.0
    ring_columns: dict[int, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        ny, nx = self.shape
        if ny < 1 or nx < 1:
            raise ValueError(f"detector shape must be positive, got {self.shape}")
        if self.photons <= 0:
            raise ValueError(f"photons per pixel must be > 0, got {self.photons}")
        bad = [c for c in self.ring_columns if not 0 <= c < nx]
        if bad:
            raise ValueError(f"ring_columns {bad} outside the detector (0..{nx - 1})")

    def flat_profile(self) -> np.ndarray:
        """The noiseless beam profile (ny, nx), max 1: a wide Gaussian beam with weak ripples."""
        ny, nx = self.shape
        v = (np.arange(ny) - 0.45 * (ny - 1)) / max(ny, 2)
        u = (np.arange(nx) - 0.55 * (nx - 1)) / max(nx, 2)
        beam = np.exp(-(v[:, None] ** 2) / 0.5 - (u[None, :] ** 2) / 0.8)
        ripple = 1.0 + 0.02 * np.sin(2 * np.pi * np.arange(nx) / 11.0)[None, :]
        profile = beam * ripple
        profile = profile / profile.max()
        return 1.0 - self.flat_nonuniformity * (1.0 - profile)

    def expected_flat(self, frame_number: int = 0) -> np.ndarray:
        """Mean flat counts (without dark) at acquisition ``frame_number``."""
        drift = 1.0 + self.flat_drift_per_frame * frame_number
        return self.photons * drift * self.flat_profile()

    def counts(
        self,
        line_integral: np.ndarray | None,
        *,
        beam_on: bool,
        frame_number: int,
        rng: np.random.Generator,
        intensity: float = 1.0,
    ) -> np.ndarray:
        """One uint16 frame. ``line_integral`` None means sample out; ``beam_on`` False: dark.
        ``intensity`` scales the beam (a dump, an overexposure: :mod:`.faults`)."""
        ny, nx = self.shape
        signal = np.zeros(self.shape, dtype=float)
        if beam_on:
            flat = self.expected_flat(frame_number) * intensity
            if line_integral is None:
                transmission = np.ones(self.shape)
            else:
                if line_integral.shape != self.shape:
                    raise ValueError(f"line integral shape {line_integral.shape} != detector {self.shape}")
                transmission = np.exp(-line_integral * self.scale)
            if self.ring_columns:
                cols = np.fromiter(self.ring_columns, dtype=int)
                gamma = 1.0 + np.fromiter(self.ring_columns.values(), dtype=float)
                transmission[:, cols] = transmission[:, cols] ** gamma
            signal = rng.poisson(flat * transmission).astype(float)
        dark = self.dark_offset + rng.normal(0.0, self.read_noise, size=(ny, nx))
        return np.clip(np.rint(signal + dark), 0, _UINT16_MAX).astype(np.uint16)


@dataclass
class FrameSimulator:
    """Phantom + detector physics + rotation-axis offset: the sample-side truth of the beamline.

    Frames are numbered in acquisition order; frame ``i`` uses the random stream
    ``(seed, i)``, so a scan is reproducible whatever the timing of the acquisition.
    """

    phantom: Phantom
    physics: DetectorPhysics
    rotation_offset_px: float = 3.5
    seed: int = 0
    frames_acquired: int = 0
    #: beam dumps, sample motion, overexposure by projection number (None: a healthy beamline)
    faults: BeamlineFaults | None = None
    projections_acquired: int = 0

    def expected_line_integrals(self, angle_deg: float) -> np.ndarray:
        """The exact (noiseless) line integrals the detector sees at ``angle_deg``."""
        return self.phantom.line_integrals(np.deg2rad(angle_deg), self.physics.shape, self.rotation_offset_px)

    def acquire(self, *, angle_deg: float, shutter_open: bool, sample_in: bool) -> np.ndarray:
        """Take the next frame with the beamline in the given state."""
        rng = np.random.default_rng([self.seed, self.frames_acquired])
        li, intensity = None, 1.0
        if shutter_open and sample_in:
            li, intensity = self._projection(angle_deg)
        frame = self.physics.counts(li, beam_on=shutter_open, frame_number=self.frames_acquired, rng=rng,
                                    intensity=intensity)
        self.frames_acquired += 1
        return frame

    def _projection(self, angle_deg: float) -> tuple[np.ndarray, float]:
        """Line integrals and beam intensity of the next projection, faults included."""
        k = self.projections_acquired
        self.projections_acquired += 1
        if self.faults is None:
            return self.expected_line_integrals(angle_deg), 1.0
        dz, dx = self.faults.offset_px(k)
        theta = np.deg2rad(angle_deg)
        li = self.phantom.line_integrals(theta, self.physics.shape, self.rotation_offset_px + dx)
        if dz:
            from scipy import ndimage

            li = ndimage.shift(li, (dz, 0.0), order=1, mode="constant", cval=0.0)
        return li, self.faults.intensity(k)
