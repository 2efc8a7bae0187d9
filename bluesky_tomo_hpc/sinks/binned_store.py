"""A scan's frames binned as they arrive: what the full volume needs, a fraction of the raw scan.

Why: the full volume is reconstructed binned (binning 4: 1/16 of the pixels), yet the volume at
stop used to read and bin the whole raw scan (21 GB at ALS size) after the last frame, although
every frame had passed through this process while the scan ran. Here each frame is binned once,
on arrival, into a scratch HDF5 file in the data folder (float32, as :func:`~..engine.preprocess.
bin_frames` makes it, so the stop reads the very values the raw-file path computes); darks and
flats stay in memory (a few frames). Binning 1 keeps the raw dtype (saturated counts are only
recognised in integer frames).

Frames are placed by their index within their role, in a slot of the scratch file: frames that
arrive late, out of order or twice (a resumed scan) still read back in acquisition order, and the
last copy wins. Chunks hold 16 binned rows of one frame, so a slab of rows reads only its rows.
"""

from __future__ import annotations

import threading
from pathlib import Path

import h5py
import numpy as np

from ..engine.preprocess import bin_frames
from ..model import FrameBatch, FrameRole, MissingCalibrationError, ScanData, ScanSpec, TomoDataError
from .frame_store import run_file_stem

#: binned rows per HDF5 chunk of the scratch file (one frame per chunk along the angle axis)
CHUNK_ROWS = 16


class BinnedScanStore:
    """Binned projections in ``scratch_dir/<run>.binned.h5``; binned darks and flats in memory."""

    def __init__(self, spec: ScanSpec, binning: int, scratch_dir: str | Path):
        ny, nx = (int(n) for n in spec.frame_shape)
        if ny < binning or nx < binning:
            raise TomoDataError(f"run {spec.run_uid}: binning {binning} is larger than the frame {ny} x {nx}")
        self.spec, self.binning = spec, int(binning)
        self.shape = (ny // binning, nx // binning)
        self.dtype = np.dtype(np.float32) if binning > 1 else np.dtype(spec.dtype)
        self.path = Path(scratch_dir) / f"{run_file_stem(spec.run_uid)}.binned.h5"
        self.slots: dict[int, int] = {}  # projection index -> slot in the file
        self.angles: dict[int, float] = {}
        self.times: dict[int, float] = {}
        self.calibration: dict[FrameRole, dict[int, np.ndarray]] = {FrameRole.DARK: {}, FrameRole.FLAT: {}}
        self.calibration_times: dict[FrameRole, dict[int, float]] = {FrameRole.DARK: {}, FrameRole.FLAT: {}}
        #: projections left out of the volume (no beam: :func:`~..batch.staging.spoiled_projections`)
        self.excluded: frozenset[int] = frozenset()
        self._file: h5py.File | None = None
        self._lock = threading.Lock()  # the ingest thread writes while the accumulator reads

    # -- while the scan runs ----------------------------------------------------------------
    def bin(self, frames: np.ndarray) -> np.ndarray:
        """Frames binned as the raw-file path bins them (float32 block means; raw at binning 1)."""
        frames = np.asarray(frames)
        if frames.ndim != 3 or tuple(frames.shape[1:]) != tuple(self.spec.frame_shape):
            raise TomoDataError(f"run {self.spec.run_uid}: frames of shape {frames.shape[1:]}, the scan "
                                f"declared {tuple(self.spec.frame_shape)}")
        return bin_frames(frames, self.binning)

    def add(self, batch: FrameBatch) -> list[int]:
        """Bin and keep ``batch``; returns the projection indices written (empty for darks/flats)."""
        role = FrameRole(batch.role)
        binned = self.bin(batch.frames)
        indices = [int(i) for i in np.asarray(batch.indices).tolist()]
        if role is not FrameRole.PROJECTION:
            for k, idx in enumerate(indices):
                self.calibration[role][idx] = np.array(binned[k], dtype=np.float32)
                if batch.timestamps is not None:
                    self.calibration_times[role][idx] = float(batch.timestamps[k])
            return []
        with self._lock:
            ds = self._dataset()
            for k, idx in enumerate(indices):
                slot = self.slots.get(idx)
                if slot is None:
                    slot = self.slots[idx] = len(self.slots)
                    if slot >= ds.shape[0]:
                        ds.resize(max(2 * ds.shape[0], slot + 1), axis=0)
                ds[slot] = binned[k]
                if batch.angles is not None:
                    self.angles[idx] = float(batch.angles[k])
                if batch.timestamps is not None:
                    self.times[idx] = float(batch.timestamps[k])
        return indices

    def _dataset(self) -> h5py.Dataset:
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = h5py.File(self.path, "w")
            self._file.attrs["run_uid"] = self.spec.run_uid
            self._file.attrs["binning"] = self.binning
            ny, nx = self.shape
            n0 = max(1, int(self.spec.n_projections or 64))
            self._file.create_dataset("projection", shape=(n0, ny, nx), maxshape=(None, ny, nx),
                                      dtype=self.dtype, chunks=(1, min(ny, CHUNK_ROWS), nx))
        return self._file["projection"]

    # -- reading back -----------------------------------------------------------------------
    def frames(self, indices: list[int]) -> np.ndarray:
        """Binned projections ``indices`` (any order), whole frames."""
        with self._lock:
            ds = self._dataset()
            slots = np.array([self.slots[i] for i in indices], dtype=np.int64)
            order = np.argsort(slots)
            out = np.empty((len(slots), *self.shape), dtype=self.dtype)
            for k in order:  # one chunk row of frames at a time: h5py's fancy indexing is slower
                ds.read_direct(out, np.s_[int(slots[k])], np.s_[int(k)])
        return out

    def order(self) -> list[int]:
        """Projection indices in acquisition order, without the :attr:`excluded` ones."""
        return sorted(i for i in self.slots if i not in self.excluded)

    def rows(self, z0: int, z1: int) -> np.ndarray:
        """Binned rows ``[z0, z1)`` of every projection of :meth:`order`, in acquisition order."""
        with self._lock:
            ds = self._dataset()
            n = len(self.slots)
            block = np.empty((n, z1 - z0, self.shape[1]), dtype=self.dtype)
            ds.read_direct(block, np.s_[0:n, z0:z1])
            slots = np.array([self.slots[i] for i in self.order()], dtype=np.int64)
        return block if np.array_equal(slots, np.arange(n)) else block[slots]

    def calibration_frames(self, role: FrameRole, z0: int = 0, z1: int | None = None) -> np.ndarray:
        frames = self.calibration[role]
        z1 = self.shape[0] if z1 is None else z1
        if not frames:
            return np.empty((0, z1 - z0, self.shape[1]), dtype=np.float32)
        return np.stack([frames[i][z0:z1] for i in sorted(frames)])

    def scan_data(self, z0: int, z1: int) -> ScanData:
        """Binned rows ``[z0, z1)`` as the engine takes a scan: ``metadata`` says the rows (unbinned)
        and the binning already applied, so :func:`~..engine.reconstruct.preprocess_projections`
        does not bin again."""
        order = self.order()
        b = self.binning
        times = np.array([self.times[i] for i in order]) if all(i in self.times for i in order) else None
        flat_t = self.calibration_times[FrameRole.FLAT]
        flats = self.calibration[FrameRole.FLAT]
        flat_times = (np.array([flat_t[i] for i in sorted(flats)]) if len(flat_t) == len(flats) else None)
        return ScanData(
            projections=self.rows(z0, z1), theta=np.array([self.angles[i] for i in order]),
            darks=self.calibration_frames(FrameRole.DARK, z0, z1),
            flats=self.calibration_frames(FrameRole.FLAT, z0, z1),
            projection_times=times if flat_times is not None else None,
            flat_times=flat_times if times is not None else None,
            run_uid=self.spec.run_uid,
            metadata={**self.spec.metadata, "rows": [z0 * b, z1 * b], "binning": b},
        )

    # -- at stop ----------------------------------------------------------------------------
    def check(self) -> None:
        """Raise :class:`TomoDataError` naming what the scan lacks for a reconstruction."""
        uid = self.spec.run_uid
        if not self.slots:
            raise TomoDataError(f"run {uid}: no projection frames arrived; nothing to reconstruct")
        missing = [f"{what} frames (stream {self.spec.streams.get(role.value, role.value)!r})"
                   for role, what in ((FrameRole.FLAT, "flat-field"), (FrameRole.DARK, "dark"))
                   if not self.calibration[role]]
        if missing:
            raise MissingCalibrationError(
                f"run {uid}: no {' and no '.join(missing)}; normalisation needs both. The raw data is "
                "kept; re-run the reconstruction once darks/flats are available.")
        if len(self.angles) != len(self.slots):
            raise TomoDataError(f"run {uid}: {len(self.slots) - len(self.angles)} of {len(self.slots)} "
                                "projections have no rotation angle")

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def discard(self) -> None:
        """Remove the scratch file (it is derived data: the raw frames are elsewhere)."""
        self.close()
        self.path.unlink(missing_ok=True)
