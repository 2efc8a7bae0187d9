"""Whole-scan loaders for files on disk: APS data-exchange HDF5 and NeXus/NXtomo.

``recon FILE``, the HPC batch program (one detector-row slab per MPI rank) and the reference-data
checks all start here. Format detection looks at the file's content, never at its suffix, and
NeXus external links are resolved relative to the file that holds them (not the working
directory), so a scan folder can be moved or mounted elsewhere and still load.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import h5py
import numpy as np

from ..engine.preprocess import bin_frames
from ..model import FrameBatch, FrameRole, ScanData, ScanEnd, ScanSpec, TomoDataError
from .hdf5 import open_swmr
from .scan_file_checks import (
    KEY_DARK,
    KEY_FLAT,
    KEY_PROJECTION,
    check_virtual_sources,
    image_keys,
    link_target,
    real_numbers,
)

__all__ = [
    "DatasetRef",
    "ScanDescription",
    "describe_scan",
    "file_run_uid",
    "iter_file_stream",
    "load_scan",
]


@dataclass(frozen=True)
class DatasetRef:
    """An HDF5 dataset as (real file, path in it): external links already followed."""

    file: str
    path: str


@dataclass(frozen=True, eq=False)
class ScanDescription:
    """What a scan file holds, found without reading any frame.

    ``*_index`` are frame indices into the dataset named by ``data``/``flats``/``darks``
    (for NXtomo all three are the same dataset, told apart by ``image_key``).
    """

    path: str
    format: Literal["dxchange", "nxtomo"]
    frame_shape: tuple[int, int]
    dtype: str
    n_projections: int
    n_flats: int
    n_darks: int
    first_projection: int
    data: DatasetRef
    flats: DatasetRef | None
    darks: DatasetRef | None
    projection_index: np.ndarray
    flat_index: np.ndarray
    dark_index: np.ndarray
    theta: np.ndarray  # radians, one per projection
    angle_source: str
    metadata: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly summary (index arrays reduced to counts and first/last)."""
        out = asdict(self)
        for key in ("projection_index", "flat_index", "dark_index", "theta"):
            out.pop(key)
        out["theta_range_deg"] = (
            [float(np.degrees(self.theta[0])), float(np.degrees(self.theta[-1]))]
            if len(self.theta) else []
        )
        return out


# -- HDF5 helpers ---------------------------------------------------------------------------

class _Resolver:
    """Opens HDF5 files read-only and follows external links relative to the linking file."""

    def __init__(self, stack: contextlib.ExitStack):
        self._stack = stack
        self._files: dict[str, h5py.File] = {}

    def open(self, path: str | os.PathLike[str]) -> h5py.File:
        real = os.path.realpath(path)
        if real not in self._files:
            if not os.path.exists(real):
                raise FileNotFoundError(real)
            # open_swmr: the file may be open in this process already (with other locking flags)
            self._files[real] = self._stack.enter_context(open_swmr(real))
        return self._files[real]

    def get(self, f: h5py.File, path: str) -> h5py.Dataset | h5py.Group | None:
        """The object at ``path``, following soft and external links by hand; None if absent
        or if a link points at a file or object that does not exist."""
        node: h5py.Group | h5py.Dataset = f["/"]
        for name in (p for p in path.split("/") if p):
            if not isinstance(node, h5py.Group):
                return None
            link = node.get(name, getlink=True)
            if link is None:
                return None
            if isinstance(link, h5py.ExternalLink):
                target = link_target(node, link, f"{node.name.rstrip('/')}/{name}")
                try:
                    ext = self.open(target)
                except OSError:  # FileNotFoundError included: a dangling link
                    return None
                child = self.get(ext, link.path)
            elif isinstance(link, h5py.SoftLink):
                target_path = link.path if link.path.startswith("/") else f"{node.name}/{link.path}"
                child = self.get(node.file, target_path)
            else:
                child = node.get(name)
            if child is None:
                return None
            node = child
        return node

    def dataset(self, f: h5py.File, path: str) -> h5py.Dataset | None:
        obj = self.get(f, path)
        if not isinstance(obj, h5py.Dataset):
            return None
        check_virtual_sources(obj, path)
        return obj


def _attr_str(obj: h5py.HLObject, name: str) -> str:
    value = obj.attrs.get(name)
    if value is None:
        return ""
    if isinstance(value, np.ndarray):
        value = value.flat[0] if value.size else ""
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    return str(value)


def _angle_units(ds: h5py.Dataset, default: str = "deg") -> str:
    units = _attr_str(ds, "units").lower()
    if units.startswith("rad"):
        return "rad"
    if units.startswith("deg"):
        return "deg"
    return default


def _to_radians(values: np.ndarray, units: str) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    return values if units == "rad" else np.radians(values)


def _runs(index: np.ndarray) -> list[tuple[int, int]]:
    """Split sorted frame indices into [start, stop) runs of consecutive frames."""
    if len(index) == 0:
        return []
    breaks = np.nonzero(np.diff(index) != 1)[0] + 1
    return [(int(chunk[0]), int(chunk[-1]) + 1) for chunk in np.split(index, breaks)]


# -- format detection -----------------------------------------------------------------------

def _detect(f: h5py.File) -> Literal["dxchange", "nxtomo"]:
    if "exchange" in f and isinstance(f["exchange"], h5py.Group) and "data" in f["exchange"]:
        return "dxchange"
    for name in f:
        obj = f.get(name)
        if isinstance(obj, h5py.Group) and _attr_str(obj, "NX_class") == "NXentry":
            return "nxtomo"
    raise TomoDataError(
        f"{f.filename}: not a tomography file this loader knows: expected data-exchange "
        "(/exchange/data) or NeXus (an NXentry group with image_key)"
    )


_LENGTH_UM = {"m": 1e6, "mm": 1e3, "cm": 1e4, "um": 1.0, "µm": 1.0, "micron": 1.0, "microns": 1.0,
              "micrometer": 1.0, "micrometre": 1.0, "nm": 1e-3}


def _pixel_size_um(res: _Resolver, f: h5py.File, candidates: list[tuple[str, str]]) -> float | None:
    """The detector pixel size in micrometres from the first ``(path, default unit)`` present
    (its ``units`` attribute wins); None when absent or not a positive length."""
    for path, default_unit in candidates:
        ds = res.dataset(f, path)
        if ds is None or ds.size < 1 or not (np.issubdtype(ds.dtype, np.integer)
                                             or np.issubdtype(ds.dtype, np.floating)):
            continue
        factor = _LENGTH_UM.get((_attr_str(ds, "units") or default_unit).strip().lower())
        value = float(np.asarray(ds[()]).flat[0])
        if factor and np.isfinite(value) and value > 0:
            return value * factor
    return None


def _describe_dxchange(path: str, f: h5py.File, res: _Resolver) -> ScanDescription:
    data = res.dataset(f, "/exchange/data")
    if data is None:
        raise TomoDataError(f"{path}: /exchange/data is missing, not a dataset, or an external link to a "
                            "file or dataset that does not exist")
    real_numbers(data, "/exchange/data", path)
    if data.ndim != 3:
        raise TomoDataError(f"{path}: /exchange/data must be 3-D (theta, y, x), got shape {data.shape}")
    n, ny, nx = data.shape
    refs: dict[str, DatasetRef | None] = {}
    counts: dict[str, int] = {}
    for key, name in (("flats", "data_white"), ("darks", "data_dark")):
        ds = res.dataset(f, f"/exchange/{name}")
        if isinstance(ds, h5py.Dataset) and ds.ndim == 3 and ds.shape[0] > 0:
            real_numbers(ds, f"/exchange/{name}", path)
            if ds.shape[1:] != (ny, nx):
                raise TomoDataError(
                    f"{path}: /exchange/{name} frames are {ds.shape[1:]}, projections are {(ny, nx)}"
                )
            refs[key] = DatasetRef(os.path.realpath(ds.file.filename), ds.name)
            counts[key] = ds.shape[0]
        else:
            refs[key], counts[key] = None, 0
    theta_ds = res.dataset(f, "/exchange/theta")
    if theta_ds is not None:
        real_numbers(theta_ds, "/exchange/theta (angles, degrees unless its units say rad)", path)
    if isinstance(theta_ds, h5py.Dataset) and theta_ds.shape != (n,):
        raise TomoDataError(
            f"{path}: /exchange/theta has shape {theta_ds.shape} for {n} projections; it needs one "
            "angle per projection (fix it, or delete it to assume 0..180 degrees evenly)")
    if isinstance(theta_ds, h5py.Dataset):
        # data-exchange stores degrees unless the dataset says otherwise
        theta = _to_radians(theta_ds[()], _angle_units(theta_ds))
        angle_source = "/exchange/theta"
    else:
        theta = np.linspace(0.0, np.pi, n, endpoint=False)
        angle_source = "default: linspace(0, 180 deg, n, endpoint=False); /exchange/theta absent"
    # data-exchange: the effective pixel at the sample (objective resolution), else the camera's
    pixel = _pixel_size_um(res, f, [
        ("/measurement/instrument/detection_system/objective/resolution", "um"),
        ("/measurement/instrument/detector/pixel_size_x", "um")]) if "measurement" in f else None
    return ScanDescription(
        path=path, format="dxchange", frame_shape=(ny, nx), dtype=str(data.dtype),
        n_projections=n, n_flats=counts["flats"], n_darks=counts["darks"], first_projection=0,
        data=DatasetRef(os.path.realpath(data.file.filename), data.name),
        flats=refs["flats"], darks=refs["darks"],
        projection_index=np.arange(n), flat_index=np.arange(counts["flats"]),
        dark_index=np.arange(counts["darks"]), theta=theta, angle_source=angle_source,
        metadata=_pixel_metadata(pixel),
    )


def _pixel_metadata(pixel_um: float | None) -> dict[str, Any]:
    return {} if pixel_um is None else {"pixel_size_um": pixel_um}


def _find_image_keys(f: h5py.File) -> list[str]:
    """Paths of every dataset called ``image_key`` (NXtomo puts it in the NXdetector)."""
    found: list[str] = []

    def visit(name: str, obj: Any) -> None:
        if isinstance(obj, h5py.Dataset) and name.rsplit("/", 1)[-1] == "image_key":
            found.append("/" + name)

    # visititems does not cross external links, which is what we want for a cheap scan
    f.visititems(visit)
    # NXtomo's own place first
    found.sort(key=lambda p: (not p.endswith("/instrument/detector/image_key"), p))
    return found


def _nexus_angles(res: _Resolver, f: h5py.File, entry: str, det_group: str, n: int,
                  data_ref: DatasetRef) -> tuple[np.ndarray, str, str] | None:
    """Rotation angles for every frame, with their units and where they came from."""
    candidates = [
        f"{det_group}/rotation_angle",
        f"{entry}/sample/rotation_angle",
        f"{entry}/data/rotation_angle",
    ]
    # NXdata groups that plot the same detector frames name their angle axis
    entry_group = f[entry]
    ranked: list[tuple[bool, bool, str]] = []
    for name in entry_group:
        grp = entry_group.get(name)
        if not isinstance(grp, h5py.Group) or _attr_str(grp, "NX_class") != "NXdata":
            continue
        signal = res.dataset(f, f"{entry}/{name}/{_attr_str(grp, 'signal') or 'data'}")
        # prefer the NXdata group that plots these very frames
        same = signal is not None and DatasetRef(
            os.path.realpath(signal.file.filename), signal.name) == data_ref
        for m in grp:
            if "theta" in m.lower() or "angle" in m.lower():
                # measured values before set points
                ranked.append((not same, m.endswith("_set"), f"{entry}/{name}/{m}"))
    candidates += [path for *_, path in sorted(ranked)]
    for cand in candidates:
        ds = res.dataset(f, cand)
        if ds is not None and ds.shape == (n,):
            real_numbers(ds, f"{cand} (rotation angles)", data_ref.file)
            return np.asarray(ds[()], dtype=np.float64), _angle_units(ds), cand
    return None


def _describe_nexus(path: str, f: h5py.File, res: _Resolver) -> ScanDescription:
    problems: list[str] = []
    for key_path in _find_image_keys(f):
        group = key_path.rsplit("/", 1)[0]
        data = res.dataset(f, f"{group}/data")
        keys, key_warnings = image_keys(f[key_path], path)
        if data is None:
            problems.append(f"{group}/data missing or its external file is absent")
            continue
        if data.ndim != 3 or data.shape[0] != len(keys):
            problems.append(f"{group}/data shape {data.shape} does not match {len(keys)} image keys")
            continue
        real_numbers(data, f"{group}/data", path)
        entry = "/" + key_path.strip("/").split("/", 1)[0]
        proj = np.nonzero(keys == KEY_PROJECTION)[0]
        flats = np.nonzero(keys == KEY_FLAT)[0]
        darks = np.nonzero(keys == KEY_DARK)[0]
        if len(proj) == 0:
            problems.append(f"{key_path} has no projection frames (image_key 0)")
            continue
        ref = DatasetRef(os.path.realpath(data.file.filename), data.name)
        found = _nexus_angles(res, f, entry, group, len(keys), ref)
        if found is None:
            raise TomoDataError(
                f"{path}: no rotation angles for {group}/data: looked for rotation_angle in the "
                f"detector, {entry}/sample and {entry}/data, and for *theta*/*angle* in NXdata groups"
            )
        angles, units, source = found
        return ScanDescription(
            path=path, format="nxtomo", frame_shape=(int(data.shape[1]), int(data.shape[2])),
            dtype=str(data.dtype), n_projections=len(proj), n_flats=len(flats), n_darks=len(darks),
            first_projection=int(proj[0]), data=ref,
            flats=ref if len(flats) else None, darks=ref if len(darks) else None,
            projection_index=proj, flat_index=flats, dark_index=darks,
            theta=_to_radians(angles[proj], units), angle_source=source,
            metadata={"image_key": key_path, "detector_group": group, "entry": entry,
                      "warnings": key_warnings, "angle_units": units, **_pixel_metadata(_pixel_size_um(
                          res, f, [(f"{group}/x_pixel_size", "m")]))},
        )
    why = "; ".join(problems) if problems else "no image_key dataset found"
    raise TomoDataError(f"{path}: NeXus file without a usable NXtomo detector: {why}")


def _describe(path: str, res: _Resolver) -> ScanDescription:
    f = res.open(path)
    kind = _detect(f)
    return _describe_dxchange(path, f, res) if kind == "dxchange" else _describe_nexus(path, f, res)


# -- public API ------------------------------------------------------------------------------

def describe_scan(path: str | os.PathLike[str]) -> ScanDescription:
    """Shapes, counts, first projection index and angles of a scan file, reading no frames."""
    path = os.path.realpath(path)
    with contextlib.ExitStack() as stack:
        return _describe(path, _Resolver(stack))


def file_run_uid(path: str | os.PathLike[str]) -> str:
    """A stable run uid for a file source (the same file always gets the same uid)."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, Path(path).resolve().as_uri()))


def _check_rows(rows: tuple[int, int] | None, ny: int, binning: int, path: str) -> tuple[int, int]:
    if binning < 1:
        raise ValueError(f"binning must be >= 1, got {binning}")
    r0, r1 = (0, ny) if rows is None else (int(rows[0]), int(rows[1]))
    if not (0 <= r0 < r1 <= ny):
        raise TomoDataError(f"{path}: rows {rows} outside the detector's {ny} rows ([start, stop))")
    r1 -= (r1 - r0) % binning
    if r1 <= r0:
        raise TomoDataError(f"{path}: rows {rows} hold fewer rows than the binning {binning}")
    return r0, r1


def _read(ds: h5py.Dataset, index: np.ndarray, r0: int, r1: int, binning: int) -> np.ndarray:
    """Frames ``index`` (sorted) rows [r0, r1), read as a few contiguous hyperslabs."""
    out = np.empty((len(index), r1 - r0, ds.shape[2]), dtype=ds.dtype)
    pos = 0
    for a, b in _runs(index):
        ds.read_direct(out, np.s_[a:b, r0:r1, :], np.s_[pos:pos + b - a])
        pos += b - a
    return bin_frames(out, binning)


def load_scan(path: str | os.PathLike[str], rows: tuple[int, int] | None = None, *,
              binning: int = 1) -> ScanData:
    """Load a whole scan (or detector rows ``[start, stop)`` of it) from a data-exchange or
    NeXus/NXtomo file. ``theta`` is in radians; with ``binning`` > 1 frames are averaged in
    ``binning`` x ``binning`` blocks and returned as float32."""
    path = os.path.realpath(path)
    with contextlib.ExitStack() as stack:
        res = _Resolver(stack)
        desc = _describe(path, res)
        r0, r1 = _check_rows(rows, desc.frame_shape[0], binning, path)

        def read(ref: DatasetRef | None, index: np.ndarray) -> np.ndarray:
            if ref is None or len(index) == 0:
                nx = desc.frame_shape[1] // binning
                dtype = np.float32 if binning > 1 else np.dtype(desc.dtype)
                return np.empty((0, (r1 - r0) // binning, nx), dtype=dtype)
            ds = res.open(ref.file)[ref.path]
            return _read(ds, index, r0, r1, binning)

        projections = read(desc.data, desc.projection_index)
        flats = read(desc.flats, desc.flat_index)
        darks = read(desc.darks, desc.dark_index)
        times = _exchange_times(res.open(path), desc) if desc.format == "dxchange" else (None, None)
    meta = desc.as_dict()
    meta.update(source_file=path, rows=[r0, r1], binning=binning)
    return ScanData(projections=projections, theta=desc.theta, darks=darks, flats=flats,
                    projection_times=times[0], flat_times=times[1], run_uid=file_run_uid(path), metadata=meta)


def _exchange_times(f: h5py.File, desc: ScanDescription) -> tuple[np.ndarray | None, np.ndarray | None]:
    """``/exchange/time_data`` and ``time_white`` (epoch seconds, as staging writes them), both or
    neither: flats taken before and after the projections are then interpolated in time."""
    found = [f.get(f"exchange/{name}") for name in ("time_data", "time_white")]
    if not all(isinstance(d, h5py.Dataset) and d.shape == (n,) for d, n in
               zip(found, (desc.n_projections, desc.n_flats), strict=True)):
        return None, None
    return tuple(np.asarray(d[()], dtype=np.float64) for d in found)  # type: ignore[return-value]


def iter_file_stream(path: str | os.PathLike[str], chunk: int = 64, *,
                     rows: tuple[int, int] | None = None,
                     binning: int = 1) -> Iterator[ScanSpec | FrameBatch | ScanEnd]:
    """A scan file as the normalised stream: one ScanSpec, darks, flats, then projections in
    batches of at most ``chunk`` frames, then a ScanEnd. Every batch carries ``origin`` (real
    file, dataset, first and stop frame index there); ``rows``/``binning`` are recorded in
    ``ScanSpec.metadata`` since they crop what ``origin`` points at."""
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    path = os.path.realpath(path)
    run_uid = file_run_uid(path)
    with contextlib.ExitStack() as stack:
        res = _Resolver(stack)
        desc = _describe(path, res)
        r0, r1 = _check_rows(rows, desc.frame_shape[0], binning, path)
        ny, nx = (r1 - r0) // binning, desc.frame_shape[1] // binning
        units = desc.metadata.get("angle_units", "deg")
        files = tuple(sorted({ref.file for ref in (desc.data, desc.flats, desc.darks) if ref}))
        yield ScanSpec(
            run_uid=run_uid, frame_shape=(ny, nx),
            dtype="float32" if binning > 1 else desc.dtype, detector_key=desc.data.path,
            plan_name=None, n_projections=desc.n_projections, n_darks=desc.n_darks,
            n_flats=desc.n_flats, angle_units=units,
            streams={"projection": desc.data.path,
                     "flat": desc.flats.path if desc.flats else "",
                     "dark": desc.darks.path if desc.darks else ""},
            raw_files=files, source="file",
            metadata={"file": desc.as_dict(), "rows": [r0, r1], "binning": binning},
        )
        counts = {role.value: 0 for role in FrameRole}
        parts = ((FrameRole.DARK, desc.darks, desc.dark_index),
                 (FrameRole.FLAT, desc.flats, desc.flat_index),
                 (FrameRole.PROJECTION, desc.data, desc.projection_index))
        for role, ref, index in parts:
            if ref is None or len(index) == 0:
                continue
            ds = res.open(ref.file)[ref.path]
            role_pos = 0
            for a, b in _runs(index):
                for start in range(a, b, chunk):
                    stop = min(start + chunk, b)
                    frames = _read(ds, np.arange(start, stop), r0, r1, binning)
                    n = stop - start
                    role_idx = np.arange(role_pos, role_pos + n)
                    yield FrameBatch(
                        role=role, indices=role_idx, frames=frames,
                        angles=desc.theta[role_idx] if role is FrameRole.PROJECTION else None,
                        run_uid=run_uid, origin=(ref.file, ref.path, start, stop),
                    )
                    role_pos += n
                    counts[role.value] += n
        yield ScanEnd(run_uid=run_uid, exit_status="success", num_frames=counts, time=time.time())
