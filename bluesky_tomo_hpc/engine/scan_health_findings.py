"""Scan health findings: the named events, their messages, and the per-projection timeline.

Split from :mod:`.scan_health` (which decides); this module only describes and condenses.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

SEVERITIES = ("ok", "info", "warning", "error")


@dataclass
class Finding:
    """One named event: ``first``..``last`` projection indices (or flat indices for flats)."""

    kind: str
    severity: str
    first: int
    last: int
    n_frames: int
    angle_first_deg: float | None
    angle_last_deg: float | None
    value: float
    message: str
    role: str = "projection"

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("angle_first_deg", "angle_last_deg", "value"):
            if d[k] is not None:
                d[k] = round(float(d[k]), 4)
        return d


@dataclass
class OpenFinding:
    """A finding still growing: the same kind on consecutive projections."""

    severity: str
    first: int
    last: int
    angle_first: float
    angle_last: float
    worst: float
    n: int = 1


@dataclass
class HealthRecord:
    """Per-projection numbers kept for the whole scan (the timeline)."""

    index: list[int] = field(default_factory=list)
    angle_deg: list[float] = field(default_factory=list)
    intensity: list[float] = field(default_factory=list)
    saturated: list[float] = field(default_factory=list)
    shift_x: list[float] = field(default_factory=list)
    shift_z: list[float] = field(default_factory=list)


def message(kind: str, o: OpenFinding) -> str:
    """One line for a person: what happened, at which projections and angles."""
    frames = f"projections {o.first}-{o.last}" if o.last != o.first else f"projection {o.first}"
    at = ""
    if not math.isnan(o.angle_first):
        span = f"{o.angle_first:.1f}" if o.last == o.first else f"{o.angle_first:.1f}-{o.angle_last:.1f}"
        at = f" ({span} deg)"
    what = {
        "shutter_closed": f"no beam (intensity {o.worst:.0%} of the projections before)",
        "beam_loss": f"beam down to {o.worst:.0%} of the projections before",
        "low_intensity": f"intensity {o.worst:.0%} of the flats",
        "saturated": f"{o.worst:.2%} of pixels saturated",
        "zero_pixels": f"{o.worst:.2%} of pixels at zero counts",
        "sample_jump": f"sample jumped {o.worst:+.1f} px sideways",
        "sample_motion_vertical": f"sample moved {o.worst:+.1f} px vertically",
        "sample_motion_horizontal": f"sample moved sideways: 0/180 pair centre off by {o.worst:+.1f} px",
        "angles_out_of_order": f"angle behind the one before (step {o.worst:+.2f} deg)",
        "angle_repeated": "angle taken again",
        "angles_missing": f"angular gap of {o.worst:.2f} deg",
    }.get(kind, kind)
    return f"{what}: {frames}{at}"


def timeline(r: HealthRecord, max_points: int) -> dict[str, list]:
    """The per-projection numbers in at most ``max_points`` bins: the worst of each bin (lowest
    intensity, largest saturation and shifts, with their sign), so a short event is never averaged
    away. Vectorised (``reduceat``): the preview asks for it at every update."""
    n = len(r.index)
    if n == 0:
        return {"index": [], "angle_deg": [], "intensity": [], "saturated": [], "shift_x": [], "shift_z": []}
    starts = np.unique(np.linspace(0, n, min(n, max_points) + 1).astype(int)[:-1])

    def clean(a: np.ndarray) -> list[float | None]:
        return [None if math.isnan(v) else round(float(v), 5) for v in a]

    def signed_worst(values: list[float]) -> list[float | None]:
        a = np.asarray(values, np.float64)
        with np.errstate(invalid="ignore"):
            hi, lo = np.fmax.reduceat(a, starts), np.fmin.reduceat(a, starts)
        return clean(np.where(np.abs(lo) > np.abs(hi), lo, hi))

    with np.errstate(invalid="ignore"):
        intensity = np.fmin.reduceat(np.asarray(r.intensity, np.float64), starts)
        saturated = np.fmax.reduceat(np.asarray(r.saturated, np.float64), starts)
    return {"index": [int(r.index[k]) for k in starts],
            "angle_deg": [round(r.angle_deg[k], 3) for k in starts],
            "intensity": clean(intensity), "saturated": clean(saturated),
            "shift_x": signed_worst(r.shift_x), "shift_z": signed_worst(r.shift_z)}
