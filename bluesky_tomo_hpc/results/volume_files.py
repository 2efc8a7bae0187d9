"""Reconstructions on disk: a Zarr volume, a TIFF stack and a provenance JSON beside them.

Why files as well as Tiled: beamline users open TIFF stacks in Fiji/Avizo, HPC jobs write Zarr
chunk by chunk from many ranks, and the provenance JSON (every parameter, its hash, the centre
and its confidence, timings, versions) makes a result reproducible without the catalog.
Multiscale OME-Zarr lives with the HPC batch code; this is the plain single-scale array.
"""

from __future__ import annotations

import datetime as _dt
import json
import platform
import socket
from importlib import metadata as _md
from pathlib import Path
from typing import Any

import numpy as np

#: distributions whose versions go into provenance records
VERSIONED = ("bluesky-tomo-hpc", "numpy", "scipy", "finufft", "cufinufft", "cupy", "tomopy", "h5py",
             "zarr", "tifffile", "pydantic")


def create_zarr_volume(
    path: str | Path, shape: tuple[int, int, int], *, chunks: tuple[int, int, int] | None = None,
    attrs: dict[str, Any] | None = None,
) -> Any:
    """An empty float32 Zarr array to fill slice by slice (``out=`` of the chunked engine).

    Default chunks are one slice thick with at most 512 x 512 pixels, so slabs from different
    writers never share a chunk.
    """
    import zarr

    nz, ny, nx = shape
    chunks = chunks or (1, min(ny, 512), min(nx, 512))
    arr = zarr.open_array(str(path), mode="w", shape=shape, chunks=chunks, dtype="float32",
                          fill_value=0.0)
    if attrs:
        arr.attrs.update(_jsonable(attrs))
    return arr


def write_zarr_volume(
    path: str | Path, volume: np.ndarray, *, chunks: tuple[int, int, int] | None = None,
    attrs: dict[str, Any] | None = None,
) -> Any:
    """Write a whole ``(nz, ny, nx)`` volume as a Zarr array; returns the array."""
    vol = np.asarray(volume, dtype=np.float32)
    if vol.ndim != 3:
        raise ValueError(f"a volume is (nz, ny, nx), got shape {vol.shape}")
    arr = create_zarr_volume(path, vol.shape, chunks=chunks, attrs=attrs)
    arr[:] = vol
    return arr


def write_tiff_stack(
    directory: str | Path, volume: Any, *, prefix: str = "recon", start: int = 0
) -> list[Path]:
    """One float32 TIFF per slice, ``{prefix}_{index:05d}.tiff``; ``start`` numbers the first.

    ``start`` lets slabs written separately (chunks, MPI ranks) carry detector row numbers.
    """
    import tifffile

    out_dir = Path(directory)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(volume.shape[0]):
        p = out_dir / f"{prefix}_{start + i:05d}.tiff"
        tifffile.imwrite(p, np.asarray(volume[i], dtype=np.float32))
        paths.append(p)
    return paths


def versions() -> dict[str, str]:
    """Installed versions of the packages that determine a result (absent ones left out)."""
    out = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            out[name] = _md.version(name)
        except _md.PackageNotFoundError:
            continue
    return out


def provenance(result: Any, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The provenance record of a :class:`~bluesky_tomo_hpc.engine.reconstruct.ReconResult`."""
    params = result.params
    record = {
        "params": params.model_dump(mode="json"),
        "params_hash": params.params_hash,
        "center": float(result.center),
        "center_convention": "0-based unbinned detector column (pixel-index)",
        "center_confidence": float(result.center_confidence),
        "center_method": result.center_method,
        "center_details": dict(getattr(result, "center_details", {}) or {}),
        "engine": getattr(result, "engine", "native"),
        "rows": list(result.rows),
        "shape": list(result.volume.shape),
        "units": "attenuation per reconstructed voxel edge (line integrals in pixels)",
        "timings_s": {k: round(float(v), 4) for k, v in result.timings.items()},
        "warnings": list(result.warnings),
        "versions": versions(),
        "host": socket.gethostname(),
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
    if extra:
        record.update(_jsonable(extra))
    return record


def write_provenance(path: str | Path, result: Any, extra: dict[str, Any] | None = None) -> Path:
    """Write :func:`provenance` as indented JSON to ``path``; returns the path."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(provenance(result, extra), indent=2, sort_keys=True) + "\n")
    return p


def _jsonable(obj: Any) -> Any:
    """NumPy scalars/arrays and paths -> plain JSON types."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    return obj
