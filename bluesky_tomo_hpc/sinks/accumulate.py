"""Collect a scan's frame batches and assemble them into :class:`ScanData` for the engine.

Frames are placed by their index within their role, so batches that arrive late, out of order
or twice (a replay after a worker restart) still assemble into the right order.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..model import FrameBatch, FrameRole, MissingCalibrationError, ScanData, ScanSpec, TomoDataError


@dataclass
class _RoleFrames:
    frames: dict[int, np.ndarray] = field(default_factory=dict)
    angles: dict[int, float] = field(default_factory=dict)
    times: dict[int, float] = field(default_factory=dict)
    origins: list[tuple[str, str, int, int]] = field(default_factory=list)


class FrameAccumulator:
    """Holds the frames of one scan in memory, keyed by role and index."""

    def __init__(self, spec: ScanSpec):
        self.spec = spec
        self._roles: dict[FrameRole, _RoleFrames] = {r: _RoleFrames() for r in FrameRole}

    def add(self, batch: FrameBatch) -> None:
        store = self._roles[batch.role]
        for k, idx in enumerate(np.asarray(batch.indices).tolist()):
            store.frames[int(idx)] = batch.frames[k]
            if batch.angles is not None:
                store.angles[int(idx)] = float(batch.angles[k])
            if batch.timestamps is not None:
                store.times[int(idx)] = float(batch.timestamps[k])
        if batch.origin is not None:
            store.origins.append(batch.origin)

    def count(self, role: FrameRole) -> int:
        return len(self._roles[role].frames)

    @property
    def origins(self) -> dict[FrameRole, list[tuple[str, str, int, int]]]:
        return {r: list(s.origins) for r, s in self._roles.items()}

    def _stack(self, role: FrameRole) -> tuple[np.ndarray, list[int]]:
        store = self._roles[role]
        order = sorted(store.frames)
        ny, nx = self.spec.frame_shape
        if not order:
            return np.empty((0, ny, nx), dtype=np.float32), order
        return np.stack([store.frames[i] for i in order]), order

    def assemble(self) -> ScanData:
        """The scan as arrays; raises :class:`MissingCalibrationError` naming what is absent."""
        uid = self.spec.run_uid
        proj, order = self._stack(FrameRole.PROJECTION)
        if not order:
            raise TomoDataError(f"run {uid}: no projection frames arrived; nothing to reconstruct")
        missing = []
        if self.count(FrameRole.FLAT) == 0:
            missing.append(f"flat-field frames (stream {self.spec.streams.get('flat', 'flat')!r})")
        if self.count(FrameRole.DARK) == 0:
            missing.append(f"dark frames (stream {self.spec.streams.get('dark', 'dark')!r})")
        if missing:
            raise MissingCalibrationError(
                f"run {uid}: no {' and no '.join(missing)}; normalisation needs both. "
                "The raw data is kept; re-run the reconstruction once darks/flats are available "
                "(e.g. a dark/flat run referenced by start['tomo']['dark_flat_uid'])."
            )
        angles = self._roles[FrameRole.PROJECTION].angles
        if len(angles) != len(order):
            raise TomoDataError(
                f"run {uid}: {len(order) - len(angles)} of {len(order)} projections have no rotation angle"
            )
        theta = np.array([angles[i] for i in order], dtype=np.float64)
        darks, _ = self._stack(FrameRole.DARK)
        flats, flat_order = self._stack(FrameRole.FLAT)
        ptimes = self._roles[FrameRole.PROJECTION].times
        ftimes = self._roles[FrameRole.FLAT].times
        proj_times = np.array([ptimes[i] for i in order]) if len(ptimes) == len(order) else None
        flat_times = (np.array([ftimes[i] for i in flat_order])
                      if flat_order and len(ftimes) == len(flat_order) else None)
        return ScanData(
            projections=proj,
            theta=theta,
            darks=darks,
            flats=flats,
            projection_times=proj_times,
            flat_times=flat_times,
            run_uid=uid,
            metadata=dict(self.spec.metadata),
        )
