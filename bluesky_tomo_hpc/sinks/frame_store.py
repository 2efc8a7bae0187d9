"""Keep track of a scan's frames without holding them: where each frame lives on disk.

Why: a real scan (1969 x 2160 x 2560 uint16, 21 GB) does not fit in a workstation's memory, and
most of it is already in the detector's HDF5 file. So the full-volume sink records, per role and
index, *where* a frame is: frames that arrive with an ``origin`` (Resource / StreamResource) stay
in their raw file; frames that travelled inside event documents are appended, as they arrive, to
a scratch HDF5 file in the data folder. At stop, :meth:`FrameStore.batches` lists the scan as
frame-less batches whose origins point at those frames: the zero-copy staging of a batch job
(:func:`~bluesky_tomo_hpc.batch.staging.write_exchange_file`) turns them into one data-exchange
file of HDF5 virtual views, which the reconstruction reads in row slabs
(:mod:`bluesky_tomo_hpc.batch.volume_at_stop`).

Frames are placed by their index within their role, so batches that arrive late, out of order or
twice (a replay after a worker restart) still stage in acquisition order; the last copy wins.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from ..model import (
    FrameBatch,
    FrameRole,
    MissingCalibrationError,
    ScanSpec,
    TomoDataError,
    name_or_hash,
)

log = logging.getLogger(__name__)

def run_file_stem(run_uid: object) -> str:
    """A file name for a run's scratch and volume: the uid made safe, or (a uid that cannot be a
    name: NUL, 10 kB...) its hash, so such a run is still reconstructed."""
    return name_or_hash(run_uid, "run uid")


@dataclass
class _RoleIndex:
    """Per frame index of one role: (file, dataset, position in it), angle, time."""

    where: dict[int, tuple[str, str, int]] = field(default_factory=dict)
    angles: dict[int, float] = field(default_factory=dict)
    times: dict[int, float] = field(default_factory=dict)


class FrameStore:
    """Where every frame of one scan lives; spills frames that live nowhere to ``scratch_dir``."""

    def __init__(self, spec: ScanSpec, scratch_dir: str | Path):
        self.spec = spec
        self.scratch_dir = Path(scratch_dir)
        stem = run_file_stem(spec.run_uid)  # an outside string: never a path out of the folder
        #: frames that came inside events, appended as they arrive
        self.spill_path = self.scratch_dir / f"{stem}.frames.h5"
        #: the data-exchange view of the whole scan, written at stop
        self.staged_path = self.scratch_dir / f"{stem}.input.h5"
        self._roles = {r: _RoleIndex() for r in FrameRole}
        self._spill: h5py.File | None = None
        # a file source that read a crop or a binning of its frames (``iter_file_stream`` records
        # them in the metadata): its origins point at the full frames, so its frames are spilled
        meta = spec.metadata or {}
        rows = meta.get("rows")
        self._cropped = int(meta.get("binning") or 1) != 1 or (
            rows is not None and list(rows) != [0, spec.frame_shape[0]])
        self.spilled_frames = 0

    # -- while the scan runs ----------------------------------------------------------------
    def add(self, batch: FrameBatch) -> None:
        role = FrameRole(batch.role)
        store = self._roles[role]
        indices = [int(i) for i in np.asarray(batch.indices).tolist()]
        if batch.origin is not None and not self._cropped:
            fname, dset, start, _ = batch.origin
            places = [(str(fname), str(dset), start + k) for k in range(len(indices))]
        else:
            places = self._spill_frames(role, batch.frames)
        for k, idx in enumerate(indices):
            store.where[idx] = places[k]
            if batch.angles is not None:
                store.angles[idx] = float(batch.angles[k])
            if batch.timestamps is not None:
                store.times[idx] = float(batch.timestamps[k])

    def _spill_frames(self, role: FrameRole, frames: np.ndarray) -> list[tuple[str, str, int]]:
        if self._spill is None:
            self.scratch_dir.mkdir(parents=True, exist_ok=True)
            self._spill = h5py.File(self.spill_path, "w")
            self._spill.attrs["run_uid"] = self.spec.run_uid
        frames = np.asarray(frames)
        name = role.value
        if name not in self._spill:
            self._spill.create_dataset(name, shape=(0, *frames.shape[1:]), maxshape=(None, *frames.shape[1:]),
                                       dtype=frames.dtype, chunks=(1, *frames.shape[1:]))
        ds = self._spill[name]
        start = ds.shape[0]
        ds.resize(start + len(frames), axis=0)
        ds[start:] = frames
        self.spilled_frames += len(frames)
        path = str(self.spill_path.resolve())
        return [(path, name, start + k) for k in range(len(frames))]

    def count(self, role: FrameRole) -> int:
        return len(self._roles[role].where)

    # -- at stop ----------------------------------------------------------------------------
    def check(self) -> None:
        """Raise :class:`TomoDataError` naming what the scan lacks for a reconstruction."""
        uid = self.spec.run_uid
        n_proj = self.count(FrameRole.PROJECTION)
        if not n_proj:
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
        n_angles = len(self._roles[FrameRole.PROJECTION].angles)
        if n_angles != n_proj:
            raise TomoDataError(
                f"run {uid}: {n_proj - n_angles} of {n_proj} projections have no rotation angle")
        absent = sorted({w[0] for r in self._roles.values() for w in r.where.values()
                         if not Path(w[0]).is_file()})
        if absent:
            raise TomoDataError(
                f"run {uid}: raw file(s) {', '.join(absent)} missing at stop; the full volume is not "
                "reconstructed (nothing was written; the frames that exist are untouched)")

    def batches(self) -> list[FrameBatch]:
        """The scan as frame-less batches, one per run of frames contiguous in one dataset,
        in index order (what :func:`~bluesky_tomo_hpc.batch.staging.write_exchange_file` stages)."""
        out: list[FrameBatch] = []
        for role, store in self._roles.items():
            order = sorted(store.where)
            runs: list[list[int]] = []
            for idx in order:
                if runs:
                    prev = runs[-1][-1]
                    (pf, pd, pp), (f, d, p) = store.where[prev], store.where[idx]
                    if (f, d) == (pf, pd) and p == pp + 1:
                        runs[-1].append(idx)
                        continue
                runs.append([idx])
            times_known = len(store.times) == len(order)
            for run in runs:
                f, d, p = store.where[run[0]]
                angles = (np.array([store.angles[i] for i in run]) if role is FrameRole.PROJECTION
                          and all(i in store.angles for i in run) else None)
                times = np.array([store.times[i] for i in run]) if times_known else None
                out.append(FrameBatch(role, np.asarray(run), np.empty((len(run), 0, 0), np.uint8),
                                      angles=angles, timestamps=times, run_uid=self.spec.run_uid,
                                      origin=(f, d, p, p + len(run))))
        return out

    def close_spill(self) -> None:
        if self._spill is not None:
            self._spill.close()
            self._spill = None

    def discard(self) -> None:
        """Remove the scratch files (after a success: the volume is written)."""
        self.close_spill()
        for p in (self.spill_path, self.staged_path):
            p.unlink(missing_ok=True)
