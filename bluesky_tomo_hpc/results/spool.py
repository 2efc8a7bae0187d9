"""Results that Tiled could not take, kept in the data folder until it can.

When Tiled is unreachable at the end of a scan (killed, restarted, network down), the full
volume is not lost: it is written here as a result folder (:class:`~.volume_files.VolumeWriter`,
all-or-nothing, slab by slab) with a ``record.json`` naming the raw run, the parameters and the
kind, written last; and the failure goes to the run's error list. Whoever owns
a Tiled client (the pipeline's recovery thread, or ``bluesky-tomo-hpc recover``) calls
:meth:`ResultSpool.register_all` to write every spooled result and remove it once written.
Registering is idempotent: a node of the same run, parameters and kind is replaced.

A final live preview Tiled could not take (kind ``preview``: three slices and their metadata) is
kept the same way (:meth:`ResultSpool.put_preview`), its slices in ``preview.npz`` (plain float32
arrays, read back with ``allow_pickle=False``).

Entry folders are named by time and a random suffix, never by a document value, so nothing
from outside builds a path here.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..engine.params import ReconParams
from .tiled_results import recon_key, write_reconstruction
from .volume_files import ResultLayout, VolumeWriter

log = logging.getLogger(__name__)

#: slices written per step (the spool never holds a second copy of the volume)
SLAB = 16
#: the planes a spooled preview may hold (nothing else is read back from ``preview.npz``)
PREVIEW_PLANES = ("xy", "xz", "yz")


@dataclass(frozen=True)
class SpooledResult:
    """One result waiting for Tiled."""

    path: Path
    raw_uid: str
    kind: str
    params: ReconParams
    metadata: dict[str, Any]
    error: str

    @property
    def key(self) -> str:
        return recon_key(self.raw_uid, self.params.params_hash, self.kind)


class ResultSpool:
    """The folder ``directory`` (e.g. ``<data_dir>/spool``) of results waiting for Tiled."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)

    def put(self, *, raw_uid: str, params: ReconParams, volume: Any, metadata: dict[str, Any],
            kind: str, error: str) -> Path:
        """Keep a result whose Tiled write failed with ``error``; returns its folder.

        The record is written last, so a crash (or a full disk) never leaves a half entry that
        looks whole; a failed entry is removed and the error raised."""

        def write_volume(final: Path, record: dict[str, Any]) -> None:
            nz = int(volume.shape[0])
            with VolumeWriter(final / "volume", tuple(volume.shape), tiff=False, levels=1,
                              chunk_z=SLAB) as writer:
                for z0 in range(0, nz, SLAB):
                    writer.write(z0, volume[z0:z0 + SLAB])
                writer.finish(record)

        return self._put(raw_uid, params, metadata, kind, error, write_volume)

    def put_preview(self, *, raw_uid: str, params: ReconParams, slices: Mapping[str, Any],
                    metadata: dict[str, Any], error: str) -> Path:
        """Keep a final preview (its three slices and metadata) whose Tiled write failed."""
        unknown = set(slices) - set(PREVIEW_PLANES)
        if unknown:
            raise ValueError(f"preview planes {sorted(unknown)} are not among {PREVIEW_PLANES}")

        def write_slices(final: Path, record: dict[str, Any]) -> None:
            with open(final / "preview.npz", "wb") as f:
                np.savez(f, **{k: np.asarray(v, np.float32) for k, v in slices.items()})

        return self._put(raw_uid, params, metadata, "preview", error, write_slices)

    def _put(self, raw_uid: str, params: ReconParams, metadata: dict[str, Any], kind: str, error: str,
             write_payload: Callable[[Path, dict[str, Any]], None]) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        name = f"{time.strftime('%Y%m%dT%H%M%S')}-{os.urandom(4).hex()}"
        final = self.directory / name
        record = {"raw_uid": raw_uid, "kind": kind, "params": params.model_dump(mode="json"),
                  "metadata": metadata, "error": error, "spooled_at": time.time()}
        try:
            final.mkdir()
            write_payload(final, record)
            tmp = final / "record.json.tmp"
            tmp.write_text(json.dumps(record, default=str))
            tmp.replace(final / "record.json")  # last: only now is the entry pending
        except BaseException:
            shutil.rmtree(final, ignore_errors=True)
            raise
        log.warning("run %s: %s result kept in %s until Tiled takes it (%s)", raw_uid, kind, final, error)
        return final

    def pending(self) -> list[SpooledResult]:
        """Complete entries, oldest first (unreadable ones are logged and left in place)."""
        out = []
        if not self.directory.is_dir():
            return out
        for path in sorted(p for p in self.directory.iterdir() if (p / "record.json").is_file()):
            try:
                rec = json.loads((path / "record.json").read_text())
                out.append(SpooledResult(path, str(rec["raw_uid"]), str(rec["kind"]),
                                         ReconParams.model_validate(rec["params"]),
                                         dict(rec.get("metadata") or {}), str(rec.get("error", ""))))
            except (OSError, ValueError, KeyError) as exc:
                log.error("spooled result %s is unreadable (%s); left in place", path, exc)
        return out

    def register(self, container: Any, entry: SpooledResult) -> Any:
        """Write one spooled result to Tiled (uploaded: the spool copy is then removed)."""
        payload: dict[str, Any]
        if entry.kind == "preview":
            payload = {"previews": read_preview_slices(entry.path / "preview.npz")}
        else:
            payload = {"volume_zarr": ResultLayout(entry.path / "volume").full_resolution}
        node = write_reconstruction(
            container, raw_uid=entry.raw_uid, params=entry.params,
            metadata={**entry.metadata, "spooled_because": entry.error}, kind=entry.kind, **payload)
        shutil.rmtree(entry.path, ignore_errors=True)
        log.info("run %s: spooled result registered in Tiled as %s", entry.raw_uid, entry.key)
        return node

    def register_all(self, container: Any) -> tuple[list[SpooledResult], list[tuple[SpooledResult, str]]]:
        """Register every pending result; returns (registered, [(failed, reason)])."""
        done, failed = [], []
        for entry in self.pending():
            try:
                self.register(container, entry)
                done.append(entry)
            except Exception as exc:  # Tiled still down: the entry stays for the next try
                failed.append((entry, f"{type(exc).__name__}: {exc}"))
        return done, failed


def read_preview_slices(path: Path) -> dict[str, np.ndarray]:
    """The slices of a spooled preview: 2-D float32 arrays of the known planes, never pickles."""
    with np.load(path, allow_pickle=False) as npz:
        out = {k: npz[k] for k in npz.files if k in PREVIEW_PLANES}
    bad = [k for k, v in out.items() if v.ndim != 2 or v.dtype != np.float32]
    if not out or bad:
        raise ValueError(f"spooled preview {path} holds no usable slices (bad: {bad})")
    return out
