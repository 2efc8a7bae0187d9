"""Scan health while the frames come: named findings, each with its frames and a severity.

:class:`ScanHealth` takes a scan's darks, flats and projections in acquisition order (any batch
size) and keeps, in bounded memory, one record per projection (intensity, saturated and zero
fractions, horizontal and vertical motion) and the findings made from them:

* ``shutter_closed`` (error): a projection under 5 % of the intensity of the good ones before it;
* ``beam_loss`` (error under 40 %, warning under 70 %): intensity against the median of the last
  good projections (frozen while the loss lasts, so a dump never becomes the reference);
* ``low_intensity`` (warning): the projections' open beam under 50 % of the flats';
* ``saturated`` (error over 1 %, warning over 0.01 % of pixels; flats count too);
* ``zero_pixels`` (warning over 0.1 % of a projection); ``dead_pixels`` (warning: over 0.1 % of
  the first flat under 10 % of its median);
* ``sample_jump`` (error): a sideways step between consecutive projections over ``jump_px`` (or
  8 robust standard deviations of the recent steps on noisy data), confirmed by the projection
  after it;
* ``sample_motion_vertical`` (warning, error over 4x): the row profile against the first
  projections moved over ``motion_px``; ``sample_motion_horizontal``: in a 360-degree scan, the
  centre of each projection and its mirrored partner 180 degrees earlier moved over
  ``motion_px / 2`` from the first pairs' (the 0/180 check, for every projection);
* ``flat_field_drift`` (warning): last flats against the first, level off by > 5 % or pattern
  by > 3 %;
* ``angles_out_of_order`` and ``angle_repeated`` (info: the reconstruction sorts; a re-take),
  ``angles_missing`` (warning: a gap over 1.5 steps, or fewer projections than planned).

Frames are named by their projection index (``FrameBatch.indices``) and angle (degrees).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

from .scan_health_findings import SEVERITIES, Finding, HealthRecord, OpenFinding, message, timeline
from .scan_health_measures import (
    MIN_PEAK,
    MIN_PROFILE,
    attenuation,
    coarse_grid,
    compare_flats,
    dead_pixel_fraction,
    frame_profiles,
    intensity_level,
    mirror_center,
    profile_steps,
    register_shift,
)

#: consecutive profiles less alike than this (noisy single-row sinograms) are not judged for jumps
JUMP_MIN_PEAK = 0.8


@dataclass(frozen=True)
class HealthThresholds:
    """Where a number becomes a finding (defaults: see the module table)."""

    beam_warning: float = 0.7
    beam_error: float = 0.4
    shutter: float = 0.05
    low_intensity: float = 0.5
    saturated_warning: float = 1e-4
    saturated_error: float = 1e-2
    zero_warning: float = 1e-3
    dead_warning: float = 1e-3
    jump_px: float = 2.0
    motion_px: float = 2.0
    max_step_deg: float = 5.0
    flat_level: float = 0.05
    flat_pattern: float = 0.03
    gap_steps: float = 1.5


class ScanHealth:
    """The health of one scan, fed in acquisition order; bounded by ``max_frames`` records and
    ``max_pairs`` stored profiles (for the 360-degree pairs), ``max_findings`` findings."""

    def __init__(self, frame_shape: tuple[int, int], *, n_projections: int | None = None,
                 saturation: float | None = None, thresholds: HealthThresholds | None = None,
                 max_frames: int = 20000, max_pairs: int = 4096, max_findings: int = 200):
        self.shape = tuple(int(n) for n in frame_shape)
        self.steps = profile_steps(self.shape)
        self.n_expected = n_projections
        self.saturation = saturation
        self.t = thresholds or HealthThresholds()
        self.max_frames, self.max_pairs, self.max_findings = max_frames, max_pairs, max_findings
        self.findings: list[Finding] = []
        self.n_dropped_findings = 0
        self.record = HealthRecord()
        self.n_projections = 0
        self._open: dict[str, OpenFinding] = {}
        self._dark_cols: np.ndarray | float = 0.0
        self._dark_rows: np.ndarray | float = 0.0
        self._dark_grid: np.ndarray | float = 0.0
        self._n_dark = 0
        self._flat_sets: list[dict[str, Any]] = []  # each: cols, rows, grid sums, n, first index
        self._flats_closed = True  # the next flat starts a new set
        self._levels: deque[float] = deque(maxlen=8)
        self._beam_ref: float | None = None
        self._prev: tuple[np.ndarray, float, int] | None = None  # columns, angle (rad), index
        self._jump_candidate: tuple[int, float, float, np.ndarray] | None = None
        self._shifts: deque[float] = deque(maxlen=64)  # recent consecutive shifts (noise level)
        self._z_ref: list[np.ndarray] = []
        self._pairs: list[tuple[float, np.ndarray]] = []  # (angle rad, columns) of the first half turn
        self._pair_centers: list[float] = []
        self._first_angle: float | None = None
        self._last_angle: float | None = None
        self._direction = 0.0
        self._steps_seen: deque[float] = deque(maxlen=64)
        self._seen_indices: set[int] = set()
        self._unordered = False  # an angle came behind another: gaps only judged at the end
        self.finished = False

    # -- calibration frames --------------------------------------------------------------
    def add_darks(self, frames: np.ndarray) -> None:
        mean = frames.mean(axis=0, dtype=np.float64)
        w = self._n_dark / (self._n_dark + len(frames))
        prof = frame_profiles(mean, self.steps, None)
        cols, rows = prof.columns, prof.rows
        self._dark_cols = w * self._dark_cols + (1 - w) * cols
        self._dark_rows = w * self._dark_rows + (1 - w) * rows
        self._dark_grid = w * self._dark_grid + (1 - w) * coarse_grid(mean)
        self._n_dark += len(frames)

    def add_flats(self, frames: np.ndarray, indices: np.ndarray) -> None:
        mean = frames.mean(axis=0, dtype=np.float64)
        prof = frame_profiles(mean, self.steps, None)
        if self._flats_closed or not self._flat_sets:
            self._flat_sets.append({"cols": 0.0, "rows": 0.0, "grid": 0.0, "n": 0,
                                    "first": int(indices[0]), "last": int(indices[-1]),
                                    "dead": dead_pixel_fraction(mean, self._dark_grid.mean()
                                                                if isinstance(self._dark_grid, np.ndarray)
                                                                else self._dark_grid)})
            self._flats_closed = False
        s = self._flat_sets[-1]
        w = s["n"] / (s["n"] + len(frames))
        s["cols"] = w * s["cols"] + (1 - w) * prof.columns
        s["rows"] = w * s["rows"] + (1 - w) * prof.rows
        s["grid"] = w * s["grid"] + (1 - w) * coarse_grid(mean)
        s["n"] += len(frames)
        s["last"] = int(indices[-1])
        for frame, idx in zip(frames, indices, strict=True):
            if self.saturation is not None and frame.max() >= self.saturation:
                frac = np.count_nonzero(frame >= self.saturation) / frame.size
                self._saturation_finding(frac, int(idx), None, role="flat")

    @property
    def _flat(self) -> dict[str, Any] | None:
        return self._flat_sets[0] if self._flat_sets else None

    # -- projections ----------------------------------------------------------------------
    def add_projections(self, frames: np.ndarray, indices: np.ndarray, angles_rad: np.ndarray) -> None:
        self._flats_closed = True
        for frame, idx, theta in zip(frames, indices, angles_rad, strict=True):
            self._add_one(frame, int(idx), float(theta))

    def _add_one(self, frame: np.ndarray, idx: int, theta: float) -> None:
        prof = frame_profiles(frame, self.steps, self.saturation)
        deg = math.degrees(theta)
        self.n_projections += 1
        self._check_angle(idx, theta)
        # intensity: against the projections just before (a beam loss is a sudden drop; the
        # reference freezes while it lasts), and against the flats
        level = intensity_level(prof.columns, self._dark_cols)
        flat = self._flat
        flat_level = intensity_level(flat["cols"], self._dark_cols) if flat else None
        beam_ok = self._check_beam(level, idx, deg, prof.saturated_fraction <= self.t.saturated_warning)
        if beam_ok and flat_level and level / flat_level < self.t.low_intensity:
            self._flag("low_intensity", "warning", idx, deg, level / flat_level)
        self._saturation_finding(prof.saturated_fraction, idx, deg)
        if prof.zero_fraction > self.t.zero_warning:
            self._flag("zero_pixels", "warning", idx, deg, prof.zero_fraction)
        shift_x = shift_z = math.nan
        if beam_ok:
            shift_x, shift_z = self._motion(prof.columns, prof.rows, idx, theta)
        for kind in list(self._open):
            if self._open[kind].last != idx:
                self._close(kind)
        if len(self.record.index) < self.max_frames:
            r = self.record
            r.index.append(idx)
            r.angle_deg.append(deg)
            r.intensity.append(level / flat_level if flat_level else level / (self._beam_ref or level or 1.0))
            r.saturated.append(prof.saturated_fraction)
            r.shift_x.append(shift_x)
            r.shift_z.append(shift_z)

    def _check_beam(self, level: float, idx: int, deg: float, reference_worthy: bool = True) -> bool:
        """Whether the beam was there: the level against the median of the last good projections
        (frozen at the last good value while a loss lasts, so a dump cannot become the norm)."""
        ref = self._beam_ref if "beam_loss" in self._open or "shutter_closed" in self._open else (
            float(np.median(self._levels)) if self._levels else None)
        if not ref or ref <= 0:
            if reference_worthy:
                self._levels.append(level)
            return True
        rel = level / ref
        if rel < self.t.shutter:
            self._flag("shutter_closed", "error", idx, deg, rel)
        elif rel < self.t.beam_warning:
            self._flag("beam_loss", "error" if rel < self.t.beam_error else "warning", idx, deg, rel)
        else:
            if reference_worthy:
                self._levels.append(level)
                self._beam_ref = float(np.median(self._levels))
            return True
        self._beam_ref = ref
        return False

    def _saturation_finding(self, frac: float, idx: int, deg: float | None, role: str = "projection") -> None:
        if frac > self.t.saturated_warning:
            sev = "error" if frac > self.t.saturated_error else "warning"
            if role == "projection":
                self._flag("saturated", sev, idx, deg, frac)
            else:
                self._add(Finding("saturated", sev, idx, idx, 1, None, None, frac,
                                  f"{frac:.2%} of flat {idx}'s pixels saturated", role=role))

    def _motion(self, cols: np.ndarray, rows: np.ndarray, idx: int, theta: float) -> tuple[float, float]:
        flat = self._flat
        att = attenuation(cols, self._dark_cols, flat["cols"] if flat else None)
        shift_x = shift_z = math.nan
        deg = math.degrees(theta)
        if self._prev is not None:
            prev_cols, prev_theta, _ = self._prev
            if abs(theta - prev_theta) <= math.radians(self.t.max_step_deg) and len(att) >= MIN_PROFILE:
                prev_att = attenuation(prev_cols, self._dark_cols, flat["cols"] if flat else None)
                shift_x, peak = register_shift(prev_att, att, max_shift=len(att) // 4)
                if peak < MIN_PEAK:
                    shift_x = math.nan
                usual, threshold = self._usual_shift()
                self._confirm_jump(att, shift_x, usual)
                if abs(shift_x - usual) > threshold and peak >= JUMP_MIN_PEAK:  # next one confirms
                    self._jump_candidate = (idx, deg, shift_x - usual, prev_att)
                if not math.isnan(shift_x):  # all of them: the median and spread are robust
                    self._shifts.append(shift_x)
            else:
                self._jump_candidate = None
        self._prev = (cols, theta, idx)
        # vertical: against the first projections (rotation moves nothing up or down)
        if len(rows) >= MIN_PROFILE:
            z_att = attenuation(rows, self._dark_rows, flat["rows"] if flat else None)
            if len(self._z_ref) < 3:
                self._z_ref.append(z_att)
                shift_z = 0.0
            else:
                shift_z, peak = register_shift(np.mean(self._z_ref, axis=0), z_att, max_shift=len(rows) // 4)
                if peak < MIN_PEAK:
                    shift_z = math.nan
                else:
                    self._motion_flag(idx, deg, shift_z, "sample_motion_vertical", self.t.motion_px)
        # horizontal drift: 0/180 pairs (a 360-degree scan has one for every projection after 180)
        first = self._first_angle if self._first_angle is not None else theta
        turned = abs(theta - first)
        if turned < math.pi - 1e-9:
            if len(self._pairs) < self.max_pairs:
                self._pairs.append((theta, cols.astype(np.float32)))
        elif self._pairs:
            target = theta - math.copysign(math.pi, theta - first)
            k = int(np.argmin([abs(a - target) for a, _ in self._pairs]))
            step = float(np.median(self._steps_seen)) if self._steps_seen else math.radians(1)
            if abs(self._pairs[k][0] - target) <= max(0.5 * step, math.radians(0.1)):
                earlier = attenuation(self._pairs[k][1], self._dark_cols, flat["cols"] if flat else None)
                center, peak = mirror_center(earlier, att)
                if peak > MIN_PEAK and len(att) >= MIN_PROFILE:
                    self._pair_centers.append(center)
                    ref = float(np.median(self._pair_centers[:5]))
                    if len(self._pair_centers) > 5:
                        self._motion_flag(idx, deg, center - ref, "sample_motion_horizontal",
                                          0.5 * self.t.motion_px)
        return shift_x, shift_z

    def _usual_shift(self) -> tuple[float, float]:
        """The usual shift between consecutive projections (features turning with the sample
        move the profiles a little, more on coarse steps) and how far from it a jump is:
        ``jump_px``, or on noisy data 8 robust standard deviations of the recent shifts."""
        if len(self._shifts) < 8:
            return 0.0, self.t.jump_px
        a = np.asarray(self._shifts)
        usual = float(np.median(a))
        spread = 1.4826 * float(np.median(np.abs(a - usual)))
        return usual, max(self.t.jump_px, 8.0 * spread)

    def _confirm_jump(self, att: np.ndarray, shift_next: float, usual: float) -> None:
        """A jump stays: the projection after a candidate must sit at the candidate's shift from
        the one before it, and barely move from the candidate (noise alternates instead)."""
        cand, self._jump_candidate = self._jump_candidate, None
        if cand is None:
            return
        idx, deg, jump, before = cand
        across, peak = register_shift(before, att, max_shift=len(att) // 4)
        stays = abs(across - 2 * usual - jump) < 0.5 * abs(jump)
        if peak >= JUMP_MIN_PEAK and stays and not abs(shift_next - usual) > 0.5 * abs(jump):
            self._flag("sample_jump", "error", idx, deg, jump)
            self._close("sample_jump")

    def _motion_flag(self, idx: int, deg: float, shift: float, kind: str, threshold: float) -> None:
        """Flag motion over ``threshold``; a finding already open goes on down to half of it."""
        limit = 0.5 * threshold if kind in self._open else threshold
        if abs(shift) > limit:
            self._flag(kind, "error" if abs(shift) > 4 * threshold else "warning", idx, deg, shift)

    def _check_angle(self, idx: int, theta: float) -> None:
        deg = math.degrees(theta)
        if idx in self._seen_indices or len(self._seen_indices) >= self.max_frames:
            if idx in self._seen_indices:
                self._flag("angle_repeated", "info", idx, deg, deg)
        else:
            self._seen_indices.add(idx)
        if self._first_angle is None:
            self._first_angle = theta
        last = self._last_angle
        if last is not None:
            step = theta - last
            if self._direction == 0.0 and abs(step) > 1e-9:
                self._direction = math.copysign(1.0, step)
            typical = float(np.median(self._steps_seen)) if len(self._steps_seen) >= 3 else None
            if abs(step) <= 1e-9:
                self._flag("angle_repeated", "info", idx, deg, deg)
            elif self._direction and step * self._direction < 0:
                self._unordered = True
                self._flag("angles_out_of_order", "info", idx, deg, math.degrees(step))
            else:
                if typical and abs(step) > self.t.gap_steps * typical and not self._unordered:
                    self._flag("angles_missing", "warning", idx, deg, math.degrees(step))
                self._steps_seen.append(abs(step))
        self._last_angle = theta

    # -- findings -------------------------------------------------------------------------
    def _flag(self, kind: str, severity: str, idx: int, deg: float | None, value: float) -> None:
        """This projection shows ``kind``: extend the open finding (consecutive projections, the
        worse severity and value win) or start one."""
        d = deg if deg is not None else math.nan
        o = self._open.get(kind)
        if o is not None and idx in (o.last, o.last + 1):
            if idx != o.last:
                o.last, o.angle_last, o.n = idx, d, o.n + 1
            o.severity = max(o.severity, severity, key=SEVERITIES.index)
            low_is_worse = kind in ("beam_loss", "shutter_closed", "low_intensity")
            if (value < o.worst) if low_is_worse else (abs(value) > abs(o.worst)):
                o.worst = value
            return
        if o is not None:
            self._close(kind)
        self._open[kind] = OpenFinding(severity, idx, idx, d, d, value)

    def _close(self, kind: str) -> None:
        o = self._open.pop(kind)
        self._add(Finding(kind, o.severity, o.first, o.last, o.n, o.angle_first, o.angle_last, o.worst,
                          message(kind, o)))

    def _add(self, finding: Finding) -> None:
        if len(self.findings) < self.max_findings:
            self.findings.append(finding)
        else:
            self.n_dropped_findings += 1

    def finish(self) -> None:
        """The scan has stopped: close open findings, compare the flats, count what is missing."""
        for kind in list(self._open):
            self._close(kind)
        if self._flat_sets and self._flat_sets[0]["dead"] > self.t.dead_warning:
            s = self._flat_sets[0]
            self._add(Finding("dead_pixels", "warning", s["first"], s["last"], s["n"], None, None, s["dead"],
                              f"{s['dead']:.2%} of the flat's pixels under 10 % of its median (dead or "
                              "covered): rings in the volume unless removed", role="flat"))
        if len(self._flat_sets) >= 2:
            a, b = self._flat_sets[0], self._flat_sets[-1]
            cmp = compare_flats(a["grid"], b["grid"], self._dark_grid)
            if abs(cmp.level_ratio - 1) > self.t.flat_level or cmp.pattern_change > self.t.flat_pattern:
                self._add(Finding(
                    "flat_field_drift", "warning", a["first"], b["last"], a["n"] + b["n"], None, None,
                    cmp.level_ratio,
                    f"last flats at {cmp.level_ratio:.1%} of the first, pattern changed by "
                    f"{cmp.pattern_change:.1%}: normalise with both (interpolated in time)", role="flat"))
        if self._unordered:
            self._sorted_gaps()
        if self.n_expected is not None and self.n_projections < self.n_expected:
            missing = self.n_expected - len(self._seen_indices)
            if missing > 0:
                self._add(Finding("angles_missing", "warning", self.n_projections, self.n_expected - 1,
                                  missing,
                                  None, None, missing,
                                  f"{missing} of {self.n_expected} planned projections never came"))
        self.finished = True

    def _sorted_gaps(self) -> None:
        """Angles taken out of order: gaps in the sorted angles (live gaps meant nothing)."""
        deg = np.asarray(self.record.angle_deg)
        if len(deg) < 4:
            return
        order = np.argsort(deg)
        steps = np.diff(deg[order])
        typical = float(np.median(steps[steps > 1e-6])) if np.any(steps > 1e-6) else 0.0
        for k in np.flatnonzero(steps > self.t.gap_steps * typical)[:20] if typical else ():
            i0, i1 = order[k], order[k + 1]
            self._add(Finding("angles_missing", "warning", int(self.record.index[i0]),
                              int(self.record.index[i1]),
                              2, float(deg[i0]), float(deg[i1]), float(steps[k]),
                              f"no projection between {deg[i0]:.2f} and {deg[i1]:.2f} deg (sorted angles)"))

    @property
    def status(self) -> str:
        """The worst severity found so far ("ok" when nothing)."""
        found = [f.severity for f in self.findings] + [o.severity for o in self._open.values()]
        return max(found, key=SEVERITIES.index, default="ok")

    def all_findings(self) -> list[Finding]:
        """Closed findings and the ones still open (as they stand now)."""
        live = [Finding(k, o.severity, o.first, o.last, o.n, o.angle_first, o.angle_last, o.worst,
                        message(k, o)) for k, o in self._open.items()]
        return sorted(self.findings + live, key=lambda f: (f.first, f.kind))

    def summary(self, max_points: int = 256, with_timeline: bool = True) -> dict[str, Any]:
        """JSON-ready: status, findings, counts and the timeline (at most ``max_points`` bins;
        ``with_timeline=False``: without it, for the per-frame updates, a few hundred bytes)."""
        findings = self.all_findings()
        out = {"version": 1, "status": self.status, "final": self.finished,
               "n_projections": self.n_projections, "n_expected": self.n_expected,
               "findings": [f.as_dict() for f in findings], "n_findings_dropped": self.n_dropped_findings}
        if with_timeline:
            out["timeline"] = timeline(self.record, max_points)
        return out
