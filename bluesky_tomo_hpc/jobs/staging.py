"""Stage a scan as one data-exchange HDF5 file: the single input format every job reads.

Frames that already sit in a detector file (``FrameBatch.origin`` set) are *not* copied: the
exchange datasets are HDF5 virtual datasets mapping into the raw file(s), so staging a 10 GB scan
writes a few kilobytes. Frames that travelled inside event documents are written as real data.
``/exchange/theta`` is in degrees, as the data-exchange convention has it.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import h5py
import numpy as np

from ..model import FrameBatch, FrameRole, ScanSpec, TomoDataError

DATASETS = {
    FrameRole.PROJECTION: "exchange/data",
    FrameRole.FLAT: "exchange/data_white",
    FrameRole.DARK: "exchange/data_dark",
}


def _ordered(batches: list[FrameBatch]) -> list[FrameBatch]:
    return sorted(batches, key=lambda b: int(b.indices[0]) if len(b) else 0)


def _virtual(batches: list[FrameBatch], frame_shape: tuple[int, int]) -> h5py.VirtualLayout:
    """A layout whose rows are the origin ranges of ``batches``, in acquisition order."""
    n = sum(len(b) for b in batches)
    dtype = None
    sources = []
    for b in batches:
        fname, dset, start, stop = b.origin  # type: ignore[misc]
        if stop - start != len(b):
            raise TomoDataError(f"origin {b.origin} spans {stop - start} frames but the batch has {len(b)}")
        with h5py.File(fname, "r") as f:
            if dset not in f:
                raise TomoDataError(f"raw file {fname} has no dataset {dset!r}")
            shape, dtype = f[dset].shape, f[dset].dtype
        if tuple(shape[-2:]) != tuple(frame_shape):
            raise TomoDataError(f"{fname}:{dset} frames are {shape[-2:]}, the scan says {frame_shape}")
        sources.append((h5py.VirtualSource(str(Path(fname).resolve()), dset, shape=shape), start, stop))
    layout = h5py.VirtualLayout(shape=(n, *frame_shape), dtype=dtype)
    pos = 0
    for src, start, stop in sources:
        layout[pos : pos + stop - start] = src[start:stop]
        pos += stop - start
    return layout


def write_exchange_file(spec: ScanSpec, batches: Iterable[FrameBatch], path: str | Path) -> Path:
    """Write ``path`` (data-exchange HDF5) from the batches of one scan; returns the path.

    Per role: virtual datasets when every batch of that role has an ``origin``, real datasets
    otherwise. Duplicated frames (same role and index) keep the last copy. Missing projection
    angles are an error: a reconstruction without angles would be silently wrong.
    """
    path = Path(path)
    by_role: dict[FrameRole, list[FrameBatch]] = {r: [] for r in FrameRole}
    for b in batches:
        by_role[FrameRole(b.role)].append(b)
    if not by_role[FrameRole.PROJECTION]:
        raise TomoDataError(f"run {spec.run_uid}: no projection frames to stage")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    with h5py.File(tmp, "w") as f:
        f.attrs["run_uid"] = spec.run_uid
        f.create_dataset("implements", data="exchange:measurement")
        for role, name in DATASETS.items():
            group = _ordered(by_role[role])
            if not group:
                continue
            if all(b.origin is not None for b in group):
                f.create_virtual_dataset(name, _virtual(group, spec.frame_shape))
                f[name].attrs["virtual"] = True
            else:
                frames: dict[int, np.ndarray] = {}
                for b in group:
                    for i, fr in zip(b.indices, b.frames, strict=True):
                        frames[int(i)] = fr
                order = sorted(frames)
                f.create_dataset(
                    name, data=np.stack([frames[i] for i in order]), chunks=(1, *spec.frame_shape)
                )
        proj = _ordered(by_role[FrameRole.PROJECTION])
        if any(b.angles is None for b in proj):
            raise TomoDataError(f"run {spec.run_uid}: projection frames without angles cannot be staged")
        angles = np.concatenate([np.asarray(b.angles, dtype=np.float64) for b in proj])
        f.create_dataset("exchange/theta", data=np.degrees(angles))
        f["exchange/theta"].attrs["units"] = "degrees"
        times = [b.timestamps for b in proj]
        if all(t is not None for t in times):
            f.create_dataset("exchange/time_data", data=np.concatenate(times))  # type: ignore[arg-type]
        flats = _ordered(by_role[FrameRole.FLAT])
        if flats and all(b.timestamps is not None for b in flats):
            f.create_dataset("exchange/time_white", data=np.concatenate([b.timestamps for b in flats]))
    tmp.replace(path)
    return path
