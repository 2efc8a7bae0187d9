"""The one provenance record of a reconstruction: what was run, on what, with which software.

Why one schema: ``recon FILE``, every batch rank's job, the full volume at stop and the streaming
worker all write the same ``provenance.json`` beside the volume (and the same ``versions`` into
Tiled), so one reader can reproduce any result without the catalog. The record is versioned by
``schema``; a field is never renamed without bumping it.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import platform
import socket
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import metadata as _md
from pathlib import Path
from typing import Any

import numpy as np

from ..untrusted.secrets_mask import mask_secrets

#: the version of the record below; bump on any renamed or re-meant field
PROVENANCE_SCHEMA = "bluesky_tomo_hpc/provenance/1"
#: distributions whose versions determine a result (absent ones are left out)
VERSIONED = ("bluesky-tomo-hpc", "numpy", "scipy", "finufft", "cufinufft", "cupy", "tomopy", "h5py",
             "zarr", "ome-zarr", "tifffile", "pydantic", "tiled", "bluesky", "event-model", "mpi4py")
#: the stages every record times (seconds; 0.0 only when the stage did not run)
STAGES = ("read", "preprocess", "center", "reconstruct", "write", "total")


def software_versions() -> dict[str, str]:
    """Installed versions of the packages that determine a result, and Python's."""
    out = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            out[name] = _md.version(name)
        except _md.PackageNotFoundError:
            continue
    return out


def file_sha256(path: str | Path, block: int = 8 * 2**20) -> str:
    """SHA-256 of a file's bytes, read in blocks (hashlib releases the GIL: fine on a thread)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class CenterChoice:
    """The rotation axis used and how it was chosen (0-based unbinned detector column)."""

    value: float
    confidence: float
    method: str
    #: how an automatic centre was found (uncertainty_px, seconds, uncertain + estimate + warning
    #: when a fallback replaced it): ``engine.reconstruct.center_summary``
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        out = {"value": float(self.value), "confidence": float(self.confidence), "method": self.method,
               "convention": "0-based unbinned detector column (pixel-index)"}
        if self.details:
            out["details"] = jsonable(self.details)
        return out


def command_line() -> list[str]:
    """This process's command line, as the user typed it (program name first)."""
    return [Path(sys.argv[0]).name, *sys.argv[1:]] if sys.argv and sys.argv[0] else list(sys.argv)


def provenance_record(
    *,
    params: Any,
    center: CenterChoice,
    source: dict[str, Any],
    call: list[str] | str,
    timings_s: dict[str, float],
    shape: tuple[int, ...],
    rows: tuple[int, int],
    voxel_size_um: float | None,
    engine: str = "native",
    warnings: list[str] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The provenance record (see the module docstring); ``source`` holds ``path`` + ``sha256``
    for a file and/or ``run_uid`` for a Bluesky run. Every stage of :data:`STAGES` is present."""
    timings = {k: round(float(timings_s.get(k, 0.0)), 4) for k in STAGES}
    timings.update({k: round(float(v), 4) for k, v in timings_s.items() if k not in timings})
    record = {
        "schema": PROVENANCE_SCHEMA,
        "params": params.model_dump(mode="json"),
        "params_hash": params.params_hash,
        "center": center.as_dict(),
        "source": jsonable(source),
        "call": call,
        "engine": engine,
        "rows": [int(rows[0]), int(rows[1])],
        "shape": [int(n) for n in shape],
        "voxel_size_um": voxel_size_um,
        "units": "attenuation per reconstructed voxel edge (line integrals in pixels)",
        "timings_s": timings,
        "warnings": list(warnings or []),
        "versions": software_versions(),
        "host": socket.gethostname(),
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
    if extra:
        record["extra"] = jsonable(extra)
    return mask_secrets(record)  # the command line or a source may carry a URI's password


def jsonable(obj: Any) -> Any:
    """NumPy scalars/arrays, tuples and paths -> plain JSON types."""
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    return obj
