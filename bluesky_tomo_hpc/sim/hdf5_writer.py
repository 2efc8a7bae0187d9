"""An AreaDetector-like HDF5 file: frames in ``/entry/data/data`` and the angle per frame.

Why SWMR + libver latest + flush per frame: consumers (live preview, Tiled) open the file while
the scan is still writing, exactly as they would with an AreaDetector HDF5 plugin.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

DATA_PATH = "/entry/data/data"
ANGLE_PATH = "/entry/instrument/NDAttributes/rotation_angle"


class FrameFile:
    """One open HDF5 file that grows by one frame per :meth:`append`."""

    def __init__(self, path: Path | str, shape: tuple[int, int]) -> None:
        self.path = Path(path)
        if self.path.exists():
            raise FileExistsError(f"refusing to overwrite existing detector file {self.path}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        ny, nx = shape
        self._file = h5py.File(self.path, "w", libver="latest")
        self._data = self._file.create_dataset(
            DATA_PATH, shape=(0, ny, nx), maxshape=(None, ny, nx), chunks=(1, ny, nx), dtype=np.uint16
        )
        self._angle = self._file.create_dataset(
            ANGLE_PATH, shape=(0,), maxshape=(None,), chunks=(1024,), dtype=np.float64
        )
        self._angle.attrs["units"] = "deg"
        self._file.swmr_mode = True
        self.frames_written = 0

    def append(self, frame: np.ndarray, angle_deg: float) -> int:
        """Write one frame and its angle; return the number of frames now in the file."""
        n = self.frames_written
        for dset, value in ((self._data, frame), (self._angle, angle_deg)):
            dset.resize(n + 1, axis=0)
            dset[n] = value
            dset.flush()
        self.frames_written = n + 1
        return self.frames_written

    def rewind_to(self, n: int) -> None:
        """Forget the frames from ``n`` on (a paused scan's frames that no event references);
        the next :meth:`append` writes frame ``n``."""
        n = max(0, min(int(n), self.frames_written))
        for dset in (self._data, self._angle):
            dset.resize(n, axis=0)
            dset.flush()
        self.frames_written = n

    def close(self) -> None:
        if self._file.id.valid:
            self._file.close()
