"""A reconstructed volume on disk, in the formats users open, written all-or-nothing.

One result folder holds::

    <name>/volume.ome.zarr/   OME-Zarr (NGFF multiscales: axes z, y, x with the physical voxel size)
    <name>/tiff/recon_RRRRR.tiff   one float32 TIFF per slice, RRRRR = its (unbinned) detector row,
                                   with resolution tags (pixels per cm, or unitless when unknown)
    <name>/provenance.json    the one provenance record (:mod:`.provenance`)

Why all-or-nothing: a half-written volume that looks finished is worse than none (a re-run with
fewer rows used to leave stale TIFFs beside the new volume). Everything is written into
``<name>.partial/`` and renamed to ``<name>`` when complete; an existing result is refused unless
``overwrite`` is given; a failed write (a full disk included) leaves only ``<name>.partial/FAILED.txt``
saying why, and raises :class:`VolumeWriteError` with the same reason (an interrupt is noted
and propagates as itself).

Why a claim: the writer first claims the result (:mod:`.result_claim`, ``<name>.lock``); another
process making it meanwhile makes this one raise :class:`~.result_claim.ResultClaimedError` (skip,
not a failure). A ``.partial`` found under the claim was left by a process that died (killed,
the node lost): it is replaced, and the new result's provenance records it (``earlier_attempt``).

Why slab by slab: a 2560^3 float32 volume is 67 GB. :class:`VolumeWriter` takes slabs of slices
as they are reconstructed (from any thread, any MPI rank writing whole chunks) and never holds
the volume; the coarser multiscale levels are made from each slab when it is aligned to them,
and read back slab by slab otherwise.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..extras import require
from .provenance import jsonable
from .result_claim import ResultClaim, ResultClaimedError

__all__ = ["ResultClaimedError", "ResultExistsError", "ResultLayout", "VolumeWriteError", "VolumeWriter",
           "is_complete", "tiff_name", "tiffs_after", "write_tiff_slices"]

#: what needs ome-zarr (a core dependency: missing, the installation is damaged)
OME_ZARR_FEATURE = "writing OME-Zarr volumes"

log = logging.getLogger(__name__)

#: Zarr compression of the volume: none. Reconstructed float32 slices barely compress (zstd saves
#: ~10 %) and compressing costs more than the reconstruction itself on a small node.
ZARR_COMPRESSORS: Any = None

#: Zarr's runtime settings for the arrays written here (not stored in the volume). Zarr by default
#: checks every chunk against the fill value to skip writing empty ones; with the NaN fill value that
#: check (``np.array_equal(..., equal_nan=True)``: several full passes and temporaries per chunk) cost
#: about a quarter of level 0's write CPU (measured, 1024^2 slices, chunks 8 x 512 x 512). A
#: reconstructed chunk is never all NaN, and a chunk written anyway reads back the same values.
ZARR_WRITE_CONFIG: dict[str, Any] = {"write_empty_chunks": True}


class ResultExistsError(FileExistsError):
    """A finished result is already there and ``overwrite`` was not given."""


class VolumeWriteError(OSError):
    """Writing the result failed; nothing was presented as complete (the message says why)."""


@dataclass(frozen=True)
class ResultLayout:
    """The names inside one result folder (see the module docstring)."""

    directory: Path

    @property
    def zarr(self) -> Path:
        return self.directory / "volume.ome.zarr"

    @property
    def full_resolution(self) -> Path:
        """Level 0 of the OME-Zarr group: the array Tiled registers."""
        return self.zarr / "0"

    @property
    def tiff_dir(self) -> Path:
        return self.directory / "tiff"

    @property
    def provenance(self) -> Path:
        return self.directory / "provenance.json"

    @property
    def partial(self) -> Path:
        """Where the result is written until it is complete."""
        return self.directory.with_name(self.directory.name + ".partial")

    @property
    def failure_note(self) -> Path:
        return self.partial / "FAILED.txt"


def tiff_name(row: int) -> str:
    """The TIFF of the slice at (unbinned) detector row ``row``."""
    return f"recon_{row:05d}.tiff"


def _downsample(a: np.ndarray) -> np.ndarray:
    """2x mean in every axis (odd edges dropped), for the coarser multiscale levels.

    Pairwise sums axis by axis (z first: the data halves before the strided passes), about 10x
    faster than a reshaped ``mean`` over three axes."""
    nz, ny, nx = (n // 2 for n in a.shape)
    s = a[0 : 2 * nz : 2] + a[1 : 2 * nz : 2]
    s = s[:, 0 : 2 * ny : 2] + s[:, 1 : 2 * ny : 2]
    s = s[:, :, 0 : 2 * nx : 2] + s[:, :, 1 : 2 * nx : 2]
    s *= np.float32(0.125)
    return s


def _raw_chunk_files(arr: Any) -> Path | None:
    """The folder of ``arr``'s chunk files when each holds just its values' bytes (a Zarr v3 array
    in a local folder, uncompressed little-endian float32: the ``bytes`` codec alone); else None."""
    from zarr.codecs import BytesCodec
    from zarr.storage import LocalStore

    meta = arr.metadata
    codecs = getattr(meta, "codecs", ())
    if (meta.zarr_format != 3 or not isinstance(arr.store, LocalStore) or len(codecs) != 1
            or not isinstance(codecs[0], BytesCodec) or codecs[0].endian is None
            or codecs[0].endian.value != "little" or arr.dtype != np.float32):
        return None
    return Path(arr.store.root) / arr.path


def _store_slab(arr: Any, z0: int, vol: np.ndarray) -> None:
    """``arr[z0 : z0 + len(vol)] = vol``, the chunks the slab covers whole in z written straight to
    their files.

    Why: Zarr writes each chunk by allocating it filled with the fill value, copying the slab in and
    passing it through its codec pipeline on its asyncio threads (about as much CPU again as the
    bytes themselves, measured at 1024^2). An uncompressed chunk's file is its values in C order
    (:func:`_raw_chunk_files`), so those bytes are written directly; a chunk at the volume's edge
    is padded with the fill value to the chunk shape, as Zarr stores it. Slices in chunks the slab
    covers only in part, and arrays with other codecs or stores, go through Zarr.
    """
    k, nz = vol.shape[0], arr.shape[0]
    folder = _raw_chunk_files(arr)
    cz, cy, cx = arr.chunks
    start = -(-z0 // cz) * cz  # the first chunk boundary at or after z0
    stop = nz if z0 + k == nz else (z0 + k) // cz * cz  # the last chunk ends at the volume's end
    if folder is None or stop <= start:
        arr[z0 : z0 + k] = vol
        return
    if start > z0:
        arr[z0:start] = vol[: start - z0]
    made: set[Path] = set()
    _, ny, nx = arr.shape
    for z in range(start, stop, cz):
        for y in range(0, ny, cy):
            for x in range(0, nx, cx):
                part = vol[z - z0 : min(z + cz, nz) - z0, y : y + cy, x : x + cx]
                if part.shape != (cz, cy, cx):  # an edge chunk: stored full size
                    chunk = np.full((cz, cy, cx), arr.metadata.fill_value, dtype="<f4")
                    chunk[: part.shape[0], : part.shape[1], : part.shape[2]] = part
                else:
                    chunk = np.ascontiguousarray(part, dtype="<f4")
                path = folder / arr.metadata.encode_chunk_key((z // cz, y // cy, x // cx))
                if path.parent not in made:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    made.add(path.parent)
                with open(path, "wb") as f:
                    f.write(memoryview(chunk).cast("B"))
    if stop < z0 + k:
        arr[stop : z0 + k] = vol[stop - z0 :]


class VolumeWriter:
    """Writes one result folder slab by slab (see the module docstring).

    ``shape`` is the full volume ``(nz, ny, nx)``; slice ``z`` comes from detector row
    ``first_row + z * row_step`` (``row_step`` = binning). ``voxel_size_um`` (detector pixel x
    binning) goes into the NGFF axes and the TIFF resolution tags; ``None`` when unknown.

    One process creates the writer (``create=True``: refuses an existing result unless
    ``overwrite``, clears a stale ``.partial``); other MPI ranks attach with ``create=False`` after
    a barrier and :meth:`write` their own whole chunks; the creator calls :meth:`finish` (or
    :meth:`fail`). Used as a context manager by one process, an exception calls :meth:`fail`.
    """

    def __init__(
        self,
        directory: str | Path,
        shape: tuple[int, int, int],
        *,
        first_row: int = 0,
        row_step: int = 1,
        voxel_size_um: float | None = None,
        tiff: bool = True,
        overwrite: bool = False,
        chunk_z: int = 8,
        levels: int = 3,
        create: bool = True,
    ):
        # before any work: its absence would otherwise surface only at finish(), after every slice
        require("ome_zarr.writer", OME_ZARR_FEATURE)
        self.layout = ResultLayout(Path(directory))
        self.shape = tuple(int(n) for n in shape)
        if len(self.shape) != 3 or min(self.shape) < 1:
            raise ValueError(f"a volume is (nz, ny, nx) with every size >= 1, got {shape}")
        self.first_row, self.row_step = int(first_row), int(row_step)
        self.voxel_size_um = float(voxel_size_um) if voxel_size_um else None
        self.tiff, self.overwrite = tiff, overwrite
        self.chunk_z = max(1, min(int(chunk_z), self.shape[0]))
        self.level_shapes = self._level_shapes(levels)
        self.slices_written = 0
        #: whether every slab so far was aligned so that its coarser levels were written with it
        self.levels_complete = True
        self._arrays: list[Any] = []
        #: this process's claim on the result (the creator's only; see the module docstring)
        self.claim: ResultClaim | None = None
        #: the unfinished result of an earlier attempt that this one replaced (recorded in provenance)
        self.earlier_attempt: dict[str, Any] | None = None
        if create:
            self.claim = ResultClaim.take(self.layout.directory)
            try:
                self._create()
            except BaseException:
                self.release()
                raise
        self._open()

    # -- set-up -----------------------------------------------------------------------------
    def _level_shapes(self, levels: int) -> list[tuple[int, int, int]]:
        shapes = [self.shape]
        while len(shapes) < max(1, levels) and min(shapes[-1]) >= 2:
            shapes.append(tuple(n // 2 for n in shapes[-1]))  # type: ignore[arg-type]
        return shapes

    def _level_chunks(self, i: int) -> tuple[int, int, int]:
        nz, ny, nx = self.level_shapes[i]
        return (max(1, min(nz, self.chunk_z >> i)), min(ny, 512), min(nx, 512))

    def _create(self) -> None:
        import zarr

        final, partial = self.layout.directory, self.layout.partial
        if final.exists() and not self.overwrite:
            raise ResultExistsError(
                f"{final} already holds a result; refusing to replace it (pass --overwrite / overwrite=True)"
            )
        if partial.exists():
            self.earlier_attempt = _earlier_attempt(self.layout)
            log.warning("replacing the unfinished result %s left by an earlier attempt that %s", partial,
                        self.earlier_attempt["how"])
            shutil.rmtree(partial)
        partial.mkdir(parents=True)
        group = zarr.open_group(str(partial / self.layout.zarr.name), mode="w")
        for i, shape in enumerate(self.level_shapes):
            group.create_array(str(i), shape=shape, dtype="float32", chunks=self._level_chunks(i),
                               fill_value=np.nan, compressors=ZARR_COMPRESSORS)
        if self.tiff:
            (partial / self.layout.tiff_dir.name).mkdir()

    def _open(self) -> None:
        import zarr

        group = zarr.open_group(str(self.layout.partial / self.layout.zarr.name), mode="r+")
        self._arrays = [group[str(i)].with_config(ZARR_WRITE_CONFIG) for i in range(len(self.level_shapes))]

    # -- slabs ------------------------------------------------------------------------------
    def write(self, z0: int, slab: Any) -> None:
        """Slices ``z0 .. z0 + len(slab)`` of the volume (float32 ``(k, ny, nx)``), Zarr + TIFF."""
        vol = np.asarray(slab, dtype=np.float32)
        k = vol.shape[0]
        if vol.ndim != 3 or vol.shape[1:] != self.shape[1:] or not 0 <= z0 <= z0 + k <= self.shape[0]:
            raise ValueError(f"slab {vol.shape} at z={z0} does not fit the volume {self.shape}")
        _store_slab(self._arrays[0], z0, vol)
        if self.tiff:
            self._write_tiffs(z0, vol)
        self._write_coarser(z0, vol)
        self.slices_written += k

    def _write_tiffs(self, z0: int, vol: np.ndarray) -> None:
        write_tiff_slices(self.layout.partial / self.layout.tiff_dir.name, z0, vol, first_row=self.first_row,
                          row_step=self.row_step, voxel_size_um=self.voxel_size_um)

    def _write_coarser(self, z0: int, vol: np.ndarray) -> None:
        """Coarser levels straight from the slab when it starts on their grid and ends on it (or
        at the volume's end); otherwise :meth:`finish` makes them by reading level 0 back."""
        step = 2 ** (len(self.level_shapes) - 1)
        end = z0 + vol.shape[0]
        if z0 % step or (vol.shape[0] % step and end != self.shape[0]):
            self.levels_complete = False
            return
        part, z = vol, z0
        for arr in self._arrays[1:]:
            part, z = _downsample(part), z // 2
            n = min(part.shape[0], arr.shape[0] - z)
            if n > 0:
                _store_slab(arr, z, part[:n])

    # -- completion -------------------------------------------------------------------------
    def _levels_by_read_back(self, slab: int) -> None:
        slab = max(2, slab + slab % 2)
        for i in range(1, len(self._arrays)):
            src, dst = self._arrays[i - 1], self._arrays[i]
            for z in range(0, 2 * dst.shape[0], slab):
                part = _downsample(np.asarray(src[z : min(z + slab, 2 * dst.shape[0])]))
                _store_slab(dst, z // 2, part)

    def _ngff_metadata(self) -> None:
        import zarr
        write_multiscales_metadata = require("ome_zarr.writer", OME_ZARR_FEATURE).write_multiscales_metadata
        v = self.voxel_size_um or 1.0
        datasets = [{"path": str(i), "coordinateTransformations": [
            {"type": "scale", "scale": [v * 2**i] * 3}]} for i in range(len(self._arrays))]
        axes = [{"name": a, "type": "space", **({"unit": "micrometer"} if self.voxel_size_um else {})}
                for a in "zyx"]
        group = zarr.open_group(str(self.layout.partial / self.layout.zarr.name), mode="r+")
        write_multiscales_metadata(group, datasets, axes=axes, name="volume")

    def finish(self, provenance: dict[str, Any], *, levels_complete: bool | None = None,
               read_back_slab: int = 16) -> ResultLayout:
        """Coarser levels (if some slab skipped them), NGFF metadata, provenance, then the rename
        that makes the result visible. ``levels_complete`` overrides this writer's own flag (the
        batch program passes whether every rank's slabs were aligned)."""
        try:
            if not (self.levels_complete if levels_complete is None else levels_complete):
                self._levels_by_read_back(read_back_slab)
            self._ngff_metadata()
            if self.earlier_attempt is not None:
                provenance = {**provenance, "earlier_attempt": self.earlier_attempt}
            text = json.dumps(jsonable(provenance), indent=2, sort_keys=True) + "\n"
            (self.layout.partial / self.layout.provenance.name).write_text(text)
            self._swap_in()
        except BaseException as exc:
            raise self.fail(exc) from exc
        self.release()
        return self.layout

    def release(self) -> None:
        """Give up the claim on the result (after :meth:`finish` or :meth:`fail`; idempotent)."""
        if self.claim is not None:
            self.claim.release()

    def _swap_in(self) -> None:
        final, partial = self.layout.directory, self.layout.partial
        old = final.with_name(final.name + ".replaced")
        if final.exists():
            if not self.overwrite:
                raise ResultExistsError(f"{final} appeared while writing; refusing to replace it")
            if old.exists():
                shutil.rmtree(old)
            final.rename(old)
        partial.rename(final)
        if old.exists():
            shutil.rmtree(old)

    def fail(self, exc: BaseException) -> VolumeWriteError:
        """Mark the partial result as failed, saying why; returns the error to raise.

        On a full disk the partial data is deleted first (so the note itself fits and the disk is
        usable again); otherwise it is kept for inspection. The final name is never created.
        """
        if isinstance(exc, VolumeWriteError):
            return exc
        reason = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, KeyboardInterrupt):
            reason = "interrupted (KeyboardInterrupt)"
        full = isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)
        partial = self.layout.partial
        if full:
            reason = f"the disk is full (ENOSPC) writing {partial}: {exc}"
            for name in (self.layout.zarr.name, self.layout.tiff_dir.name):
                shutil.rmtree(partial / name, ignore_errors=True)
        note = (f"FAILED: {reason}\n{self.slices_written} of {self.shape[0]} slices were written by this "
                f"process; this folder is not a result (the result would be {self.layout.directory}).\n")
        try:
            partial.mkdir(parents=True, exist_ok=True)
            self.layout.failure_note.write_text(note)
        except OSError as note_exc:
            log.error("could not write %s: %s", self.layout.failure_note, note_exc)
        msg = f"writing {self.layout.directory} failed: {reason}; nothing was presented as complete"
        log.error(msg)
        self.release()
        return VolumeWriteError(exc.errno if isinstance(exc, OSError) and exc.errno else errno.EIO, msg)

    def __enter__(self) -> VolumeWriter:
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if exc is None or isinstance(exc, VolumeWriteError):
            return
        error = self.fail(exc)
        if isinstance(exc, Exception):
            raise error from exc
        # KeyboardInterrupt, SystemExit: noted, and left to propagate as what they are


def write_tiff_slices(folder: Path, z0: int, vol: np.ndarray, *, first_row: int, row_step: int,
                      voxel_size_um: float | None) -> None:
    """Slices ``z0 ..`` of ``vol`` as float32 TIFFs in ``folder``, named by detector row, with
    resolution tags."""
    import tifffile

    if voxel_size_um:
        per_cm = 1e4 / voxel_size_um
        res: dict[str, Any] = {"resolution": (per_cm, per_cm), "resolutionunit": "CENTIMETER"}
    else:
        res = {"resolution": (1.0, 1.0), "resolutionunit": "NONE"}
    for i in range(vol.shape[0]):
        row = first_row + (z0 + i) * row_step
        note = json.dumps({"detector_row": row, "slice": z0 + i, "voxel_size_um": voxel_size_um})
        tifffile.imwrite(folder / tiff_name(row), vol[i], description=note, metadata=None, **res)


def tiffs_after(directory: str | Path, *, first_row: int, row_step: int, voxel_size_um: float | None,
                slab: int = 16) -> int:
    """The TIFF slices of a finished result written from its Zarr level 0, ``slab`` slices at a
    time. Why after: a volume is looked at first in Tiled (its Zarr), so its TIFFs need not stand
    between the stop and the volume there. Written into ``tiff.partial/``, renamed to ``tiff/``
    when whole (a folder named ``tiff`` is always complete). Returns the slices written."""
    import zarr

    layout = ResultLayout(Path(directory))
    array = zarr.open_array(str(layout.full_resolution), mode="r")
    tmp = layout.tiff_dir.with_name(layout.tiff_dir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for z0 in range(0, array.shape[0], slab):
        write_tiff_slices(tmp, z0, np.asarray(array[z0:z0 + slab], dtype=np.float32), first_row=first_row,
                          row_step=row_step, voxel_size_um=voxel_size_um)
    if layout.tiff_dir.exists():
        shutil.rmtree(layout.tiff_dir)
    tmp.rename(layout.tiff_dir)
    return int(array.shape[0])


def _earlier_attempt(layout: ResultLayout) -> dict[str, Any]:
    """What is known of an unfinished result found under the claim: its maker is gone."""
    partial = layout.partial
    try:
        note = layout.failure_note.read_text(errors="replace")[:2000]
    except OSError:
        note = ""
    how = ("failed" if note else "was interrupted (its process ended without finishing or noting a "
           "failure: killed, or its node lost)")
    return {"path": str(partial), "how": how, "failure_note": note or None,
            "modified": os.stat(partial).st_mtime}


def is_complete(directory: str | Path) -> bool:
    """Whether ``directory`` is a finished result (only a finished one carries that name)."""
    layout = ResultLayout(Path(directory))
    return layout.provenance.is_file() and layout.zarr.is_dir() and not os.path.exists(layout.failure_note)
