"""What goes wrong at a beamline, on purpose: beam dumps, sample drift and jumps, saturation.

Why by projection number (the n-th projection the detector takes, darks and flats not counted):
a test or a demo then says "the beam drops to 10 % for projections 40-69" and the scan's health
must name exactly those frames, whatever the plan's timing. Re-taken projections get new numbers,
so a plan that repeats the frames lost to a dump takes them with the beam back.
"""

from __future__ import annotations

from dataclasses import dataclass


def _check_windows(name: str, windows: tuple[tuple[int, int, float], ...]) -> None:
    for first, stop, value in windows:
        if not 0 <= first < stop:
            raise ValueError(f"{name}: window ({first}, {stop}) must have 0 <= first < stop")
        if value < 0:
            raise ValueError(f"{name}: factor {value} must be >= 0")


@dataclass(frozen=True)
class BeamlineFaults:
    """Faults of the simulated beamline, by projection number.

    * ``beam_dumps``: ``(first, stop, fraction)``: the beam at ``fraction`` of its current for
      projections ``first`` .. ``stop - 1`` (0 is a closed shutter or a full dump).
    * ``drift_px_per_projection``: ``(rows, columns)`` the sample moves per projection.
    * ``jumps``: ``(projection, rows, columns)``: from that projection on, the sample sits that
      far from where it was (a knock, a slipping mount).
    * ``overexposed``: ``(first, stop, gain)``: the camera gets ``gain`` times the light (a
      filter out, an exposure too long): what is bright saturates at 65535.
    """

    beam_dumps: tuple[tuple[int, int, float], ...] = ()
    drift_px_per_projection: tuple[float, float] = (0.0, 0.0)
    jumps: tuple[tuple[int, float, float], ...] = ()
    overexposed: tuple[tuple[int, int, float], ...] = ()

    def __post_init__(self) -> None:
        _check_windows("beam_dumps", self.beam_dumps)
        _check_windows("overexposed", self.overexposed)
        if any(k < 0 for k, _, _ in self.jumps):
            raise ValueError(f"jumps: projection numbers must be >= 0, got {self.jumps}")

    def intensity(self, k: int) -> float:
        """Light on the detector at projection ``k``, relative to a healthy beam."""
        value = 1.0
        for first, stop, fraction in self.beam_dumps:
            if first <= k < stop:
                value *= fraction
        for first, stop, gain in self.overexposed:
            if first <= k < stop:
                value *= gain
        return value

    def offset_px(self, k: int) -> tuple[float, float]:
        """(rows, columns) the sample is displaced by at projection ``k``."""
        dz, dx = (d * k for d in self.drift_px_per_projection)
        for at, rows, cols in self.jumps:
            if k >= at:
                dz, dx = dz + rows, dx + cols
        return dz, dx
