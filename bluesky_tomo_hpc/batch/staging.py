"""Stage a scan as one data-exchange HDF5 file: the single input format every job reads.

Frames that already sit in a detector file (``FrameBatch.origin`` set) are *not* copied: the
exchange datasets are HDF5 virtual datasets mapping into the raw file(s), so staging a 10 GB scan
writes a few kilobytes. Frames that travelled inside event documents are written as real data.
``/exchange/theta`` is in degrees, as the data-exchange convention has it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np

from ..engine.scan_health_report import spoiled_projections  # re-exported: staging applies it
from ..model import FrameBatch, FrameRole, ScanSpec, TomoDataError
from ..sources.hdf5 import open_swmr

log = logging.getLogger(__name__)

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
        with open_swmr(fname) as f:  # the file may be open in this process with other flags
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


def _without(batches: list[FrameBatch], drop: set[int]) -> list[FrameBatch]:
    """``batches`` without the frames whose index is in ``drop``; a batch with a gap is split in
    two, each piece keeping its part of the origin range (so raw files are still mapped, not copied)."""
    out = []
    for b in batches:
        keep = ~np.isin(np.asarray(b.indices), list(drop))
        if keep.all():
            out.append(b)
            continue
        edges = np.flatnonzero(np.diff(np.concatenate([[0], keep.astype(np.int8), [0]])))
        for start, stop in zip(edges[::2], edges[1::2], strict=True):
            origin = None
            if b.origin is not None:
                fname, dset, first, _ = b.origin
                origin = (fname, dset, first + int(start), first + int(stop))
            part = slice(int(start), int(stop))
            out.append(replace(
                b, indices=b.indices[part], frames=b.frames[part], origin=origin,
                angles=None if b.angles is None else b.angles[part],
                timestamps=None if b.timestamps is None else b.timestamps[part]))
    return out


def write_exchange_file(spec: ScanSpec, batches: Iterable[FrameBatch], path: str | Path) -> Path:
    """Write ``path`` (data-exchange HDF5) from the batches of one scan; returns the path.

    Per role: virtual datasets when every batch of that role has an ``origin``, real datasets
    otherwise. Duplicated frames (same role and index) keep the last copy. Missing projection
    angles are an error: a reconstruction without angles would be silently wrong. Projections the
    scan's health found without beam are left out (:func:`spoiled_projections`; their indices are
    the ``excluded_projections`` attribute of ``exchange/data``); the raw files keep them.
    """
    path = Path(path)
    by_role: dict[FrameRole, list[FrameBatch]] = {r: [] for r in FrameRole}
    for b in batches:
        by_role[FrameRole(b.role)].append(b)
    if not by_role[FrameRole.PROJECTION]:
        raise TomoDataError(f"run {spec.run_uid}: no projection frames to stage")
    n_proj = len({int(i) for b in by_role[FrameRole.PROJECTION] for i in b.indices})
    spoiled = spoiled_projections(spec, n_proj)
    if spoiled:
        by_role[FrameRole.PROJECTION] = _without(by_role[FrameRole.PROJECTION], set(spoiled))
        log.warning("run %s: %d projection(s) without beam left out of the reconstruction (%s); the raw "
                    "files keep them", spec.run_uid, len(spoiled), _ranges(spoiled))
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
        if spoiled:
            f[DATASETS[FrameRole.PROJECTION]].attrs["excluded_projections"] = np.asarray(spoiled, np.int64)
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


def _ranges(indices: list[int]) -> str:
    """``[40, 41, 42, 50]`` -> ``"40-42, 50"`` (for a log line)."""
    runs: list[list[int]] = []
    for i in sorted(indices):
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return ", ".join(f"{a}-{b}" if b > a else f"{a}" for a, b in runs)


def is_self_contained(path: str | Path) -> bool:
    """True when no dataset of ``path`` is virtual (it can be read without any other file)."""
    found: list[str] = []

    def visit(name: str, obj: object) -> None:
        if isinstance(obj, h5py.Dataset) and obj.is_virtual:
            found.append(name)

    with h5py.File(path, "r") as f:
        f.visititems(visit)
    return not found


def _check_sources(path: Path, name: str, dset: h5py.Dataset) -> None:
    """HDF5 reads a missing VDS source as fill values (zeros): refuse that instead of copying it."""
    for vmap in dset.virtual_sources():
        raw = Path(vmap.file_name)
        if not raw.is_absolute():
            raw = path.parent / raw
        if not raw.is_file():
            raise TomoDataError(f"{path}:{name} maps into {raw}, which does not exist (raw file moved?)")
        with open_swmr(str(raw)) as f:
            if vmap.dset_name not in f:
                raise TomoDataError(f"{path}:{name} maps into {raw}:{vmap.dset_name}, which does not exist")


def materialize_exchange_file(source: str | Path, destination: str | Path, *, chunk_frames: int = 16) -> Path:
    """Copy ``source`` to ``destination`` with every virtual dataset written as real data.

    Why: a staged input maps into raw files by absolute local paths, which mean nothing at a
    remote site. Writing the frames the scan actually uses into one file makes a single,
    self-contained transfer item (no path rewriting, no unused raw frames moved). Frames are
    copied ``chunk_frames`` at a time, so memory stays bounded whatever the scan's size.
    """
    source, destination = Path(source), Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    tmp = destination.with_name(destination.name + ".part")
    with h5py.File(source, "r") as src, h5py.File(tmp, "w") as dst:
        dst.attrs.update(dict(src.attrs))

        def copy(name: str, obj: object) -> None:
            if isinstance(obj, h5py.Group):
                dst.require_group(name).attrs.update(dict(obj.attrs))
                return
            if not isinstance(obj, h5py.Dataset):
                return
            if not obj.is_virtual:
                src.copy(obj, dst, name=name)
                return
            if obj.ndim < 1:
                raise TomoDataError(f"{source}:{name} is a virtual scalar; cannot materialise it")
            _check_sources(source, name, obj)
            out = dst.create_dataset(
                name, shape=obj.shape, dtype=obj.dtype, chunks=(1, *obj.shape[1:]) if obj.ndim > 1 else True
            )
            for start in range(0, obj.shape[0], chunk_frames):
                stop = min(obj.shape[0], start + chunk_frames)
                out[start:stop] = obj[start:stop]
            out.attrs.update({k: v for k, v in obj.attrs.items() if k != "virtual"})

        src.visititems(copy)
    if not is_self_contained(tmp):
        raise TomoDataError(f"materialising {source} left virtual datasets in {tmp}")
    tmp.replace(destination)
    return destination
