"""Reading frames from HDF5 files that a detector may still be writing.

Documents announce frames (StreamDatum, Datum) as soon as the detector has *counted* them; the
file writer may flush a moment later, and a network filesystem may show the new size later
still. So a read that finds too few frames refreshes and retries for a short while before it
gives up with an error naming the file, dataset and range. Files are opened SWMR and without
file locking (the writer holds the lock; NFS/GPFS locking is unreliable anyway).
"""

from __future__ import annotations

import logging
import os
import stat
import time
from dataclasses import dataclass
from urllib.parse import unquote, urlparse

import h5py
import numpy as np

from ..model import TomoDataError
from .scan_file_checks import check_links, check_virtual_sources

log = logging.getLogger(__name__)

#: Legacy ophyd v1 AreaDetector HDF5 resource specs, all with frames in /entry/data/data
AD_HDF5_SPECS = frozenset({"AD_HDF5", "AD_HDF5_SWMR", "AD_HDF5_SINGLE", "AD_HDF5_SWMR_SINGLE"})
AD_HDF5_DATASET = "/entry/data/data"


def path_from_uri(uri: str) -> str:
    """Local path of a ``file://host/abs/path`` URI (what StreamResource documents carry)."""
    parsed = urlparse(uri)
    if parsed.scheme not in ("", "file"):
        raise TomoDataError(f"cannot read frames from {uri!r}: only file:// URIs are local files")
    return unquote(parsed.path) if parsed.scheme else uri


#: Ways to open a file being written, most preferred first. SWMR without locking is right for
#: another process's writer; a writer in *this* process (simulated detectors, tests) already
#: holds the file with its own flags, and HDF5 refuses a second open whose locking or SWMR flags
#: differ, so fall back to the defaults; a file written without SWMR needs a plain open.
_OPEN_VARIANTS: tuple[dict[str, object], ...] = (
    {"swmr": True, "locking": False},
    {"swmr": True},
    {"locking": False},
    {},
)


def open_swmr(path: str) -> h5py.File:
    """Open for reading while a writer (in this or another process) may still be writing. The path
    (from a document or a command line) must be a regular file: HDF5 would wait forever on a FIFO."""
    if not stat.S_ISREG(os.stat(path).st_mode):  # FileNotFoundError as before when missing
        raise TomoDataError(f"{path} is not a regular file (a FIFO, a device or a folder); give an HDF5 file")
    errors: list[str] = []
    for kwargs in _OPEN_VARIANTS:
        try:
            return h5py.File(path, "r", **kwargs)
        except FileNotFoundError:
            raise
        except OSError as exc:
            errors.append(f"{kwargs}: {exc}")
            if "file signature not found" in str(exc):  # no flags will help: say it plainly
                raise TomoDataError(f"{path} is not an HDF5 file (no HDF5 signature)") from exc
    raise OSError(f"cannot open {path} for reading: " + "; ".join(errors))


@dataclass(frozen=True)
class ReadResult:
    frames: np.ndarray
    path: str
    dataset: str
    start: int
    stop: int


class SwmrReader:
    """Keeps one handle per file for a run and reads ``[start, stop)`` along axis 0, waiting up
    to ``timeout`` seconds for frames that are announced but not yet visible."""

    def __init__(self, timeout: float = 5.0, poll: float = 0.05):
        self.timeout = timeout
        self.poll = poll
        self._files: dict[str, h5py.File] = {}

    def _file(self, path: str) -> h5py.File:
        f = self._files.get(path)
        if f is None:
            f = self._files[path] = open_swmr(path)
        return f

    def _drop(self, path: str) -> None:
        f = self._files.pop(path, None)
        if f is not None:
            try:
                f.close()
            except Exception:  # closing a handle of a vanished file must not mask the read error
                log.debug("closing %s failed", path, exc_info=True)

    def read(self, path: str, dataset: str, start: int, stop: int) -> ReadResult:
        """Frames ``start:stop`` of ``dataset``; raises TomoDataError naming what is missing."""
        if stop <= start:
            raise TomoDataError(f"{path}:{dataset}: empty frame range [{start}, {stop})")
        deadline = time.monotonic() + self.timeout
        last = "file not found"
        while True:
            try:
                if not os.path.exists(path):
                    raise FileNotFoundError(path)
                f = self._file(path)
                check_links(f, dataset)  # a document's file may link anywhere: only inside its folder
                ds = f.get(dataset)
                if ds is None:
                    # a reopened handle sees datasets created after the first open
                    self._drop(path)
                    ds = self._file(path).get(dataset)
                if isinstance(ds, h5py.Dataset):
                    check_virtual_sources(ds, dataset)
                    if f.swmr_mode:
                        ds.refresh()
                    if ds.shape[0] >= stop:
                        return ReadResult(np.asarray(ds[start:stop]), path, dataset, start, stop)
                    last = f"dataset holds {ds.shape[0]} frames"
                    if not f.swmr_mode:
                        self._drop(path)  # a non-SWMR handle never sees growth: reopen
                else:
                    last = "dataset not found"
            except (OSError, KeyError) as exc:
                last = f"{type(exc).__name__}: {exc}"
                self._drop(path)
            if time.monotonic() >= deadline:
                raise TomoDataError(
                    f"frames [{start}, {stop}) of {path}:{dataset} not readable after "
                    f"{self.timeout:g} s ({last})"
                )
            time.sleep(self.poll)

    def close(self) -> None:
        for path in list(self._files):
            self._drop(path)

    def __enter__(self) -> SwmrReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
