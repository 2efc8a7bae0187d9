"""The MPI batch program: ``mpiexec -n N python -m bluesky_tomo_hpc.batch JOB.json``.

Ranks split the sinogram rows in whole Zarr chunks (so no two ranks ever write the same chunk),
each reads only its slab of the data-exchange input, reconstructs it and writes it into level 0
of one OME-Zarr group. Rank 0 finds the rotation centre once and broadcasts it, and after a
barrier writes the coarser levels, the NGFF metadata (through ``ome-zarr``), a TIFF stack, the
provenance record and, last, ``result.json``: the job's own proof that it finished.

A failure on any rank is logged with the rank and the reason and ends the whole job through
``MPI.Abort`` with a sysexits-style code, so schedulers and the journal can tell a permanent
fault (bad input: 64-66, 77) from a transient one (75) or a bug (70).
"""

from __future__ import annotations

import json
import logging
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

from .job import ReconJob

log = logging.getLogger("bluesky_tomo_hpc.batch")

EX_USAGE = 64  # bad job file
EX_DATAERR = 65  # the data cannot be reconstructed (TomoDataError)
EX_NOINPUT = 66  # input file missing
EX_SOFTWARE = 70  # anything else: a bug
EX_TEMPFAIL = 75  # I/O trouble that may pass (retry)
EX_NOPERM = 77  # permission denied
#: exit codes that a retry cannot fix
PERMANENT_EXIT_CODES = frozenset({EX_USAGE, EX_DATAERR, EX_NOINPUT, EX_NOPERM})


def exit_code_for(exc: BaseException) -> int:
    """Map an exception to the exit code the job ends with."""
    from ..model import TomoDataError

    if isinstance(exc, FileNotFoundError):
        return EX_NOINPUT
    if isinstance(exc, PermissionError):
        return EX_NOPERM
    if isinstance(exc, TomoDataError | ValueError):  # TomoDataError is a ValueError; named for the reader
        return EX_DATAERR
    if isinstance(exc, OSError):
        return EX_TEMPFAIL
    return EX_SOFTWARE


def chunk_split(n_rows: int, chunk: int, size: int) -> list[tuple[int, int]]:
    """[start, stop) rows per rank, in whole chunks, as even as chunks allow (may be empty)."""
    n_chunks = -(-n_rows // chunk)
    per = np.array_split(np.arange(n_chunks), size)
    out = []
    for c in per:
        if len(c) == 0:
            out.append((n_rows, n_rows))
        else:
            out.append((int(c[0]) * chunk, min(n_rows, (int(c[-1]) + 1) * chunk)))
    return out


def _input_shape(path: Path) -> tuple[int, int, int]:
    """(projections, rows, columns) of the input, read from its description (no frames)."""
    from ..sources.raw_files import describe_scan

    if not path.exists():
        raise FileNotFoundError(f"input {path} does not exist")
    desc = describe_scan(path)
    return desc.n_projections, desc.frame_shape[0], desc.frame_shape[1]


def _reconstruct_rows(job: ReconJob, rows: tuple[int, int], center: float | None) -> Any:
    from ..engine.reconstruct import reconstruct_scan
    from ..sources.raw_files import load_scan

    # rows are unbinned; the engine bins (so the loader must not)
    data = load_scan(job.input_path, rows=rows, binning=1)
    return reconstruct_scan(data, job.params.with_updates(rows=None), center=center)


def _find_center(job: ReconJob, n_rows: int) -> float | None:
    """Rank 0: the centre from a few middle rows (None lets each slab find its own)."""
    if job.params.center != "auto":
        return float(job.params.center)
    b = job.params.binning
    mid = n_rows // 2
    rows = (max(0, mid - 2 * b), min(n_rows, mid + 2 * b))
    return float(_reconstruct_rows(job, rows, None).center)


def _downsample(a: np.ndarray) -> np.ndarray:
    """2x mean in every axis (odd edges dropped), for the coarser multiscale levels."""
    s = tuple(slice(0, (n // 2) * 2) for n in a.shape)
    a = a[s]
    nz, ny, nx = a.shape
    return a.reshape(nz // 2, 2, ny // 2, 2, nx // 2, 2).mean(axis=(1, 3, 5)).astype(np.float32)


def write_levels(job: ReconJob, slab: int = 32) -> list[dict[str, Any]]:
    """Rank 0: coarser levels and the NGFF multiscales metadata written by ``ome-zarr``.

    Each level is made from the one above in z-slabs of ``slab`` slices (even), so memory stays
    bounded by a slab, not the volume.
    """
    import zarr
    from ome_zarr.writer import write_multiscales_metadata

    group = zarr.open_group(str(job.outputs.zarr_path), mode="r+")
    datasets = [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1.0, 1.0, 1.0]}]}]
    slab += slab % 2
    prev = group["0"]
    for i in range(1, job.outputs.multiscale_levels):
        if min(prev.shape) < 2:
            break
        shape = tuple(n // 2 for n in prev.shape)
        arr = group.create_array(
            str(i),
            shape=shape,
            dtype="float32",
            chunks=(max(1, min(job.outputs.zarr_chunk_z, shape[0])), *shape[1:]),
            overwrite=True,
        )
        for z in range(0, 2 * shape[0], slab):
            part = _downsample(np.asarray(prev[z : min(z + slab, 2 * shape[0])]))
            arr[z // 2 : z // 2 + part.shape[0]] = part
        f = float(2**i)
        datasets.append(
            {"path": str(i), "coordinateTransformations": [{"type": "scale", "scale": [f, f, f]}]}
        )
        prev = arr
    write_multiscales_metadata(group, datasets, axes="zyx", name="volume")
    return datasets


def write_tiffs(job: ReconJob) -> int:
    """Rank 0: one float32 TIFF per slice (what TomoPy users and Fiji expect)."""
    import tifffile
    import zarr

    vol = zarr.open_array(str(job.outputs.full_resolution), mode="r")
    out = job.outputs.tiff_dir
    out.mkdir(parents=True, exist_ok=True)
    for z in range(vol.shape[0]):
        tifffile.imwrite(out / f"recon_{z:05d}.tiff", np.asarray(vol[z], dtype=np.float32))
    return int(vol.shape[0])


def run(job: ReconJob, comm: Any) -> dict[str, Any]:
    """The work of one rank; rank 0 returns the result record, others an empty dict."""
    import zarr

    rank, size = comm.Get_rank(), comm.Get_size()
    t0 = time.time()
    timings: dict[str, float] = {}
    header = None
    if rank == 0:
        nproj, n_rows_raw, nx_raw = _input_shape(Path(job.input_path))
        if job.params.rows is not None:
            r0, r1 = job.params.rows[0], min(job.params.rows[1], n_rows_raw)
        else:
            r0, r1 = 0, n_rows_raw
        t = time.time()
        center = _find_center(job, n_rows_raw)
        timings["center_s"] = time.time() - t
        header = {"shape": (nproj, n_rows_raw, nx_raw), "rows": (r0, r1), "center": center}
    header = comm.bcast(header, root=0)
    b = job.params.binning
    r0, r1 = header["rows"]
    nz = (r1 - r0) // b
    if nz < 1:
        raise ValueError(f"rows {header['rows']} with binning {b} leave no slice to reconstruct")
    nx = header["shape"][2] // b
    chunk = job.outputs.zarr_chunk_z
    if rank == 0:
        job.outputs.directory.mkdir(parents=True, exist_ok=True)
        group = zarr.open_group(str(job.outputs.zarr_path), mode="w")
        group.create_array(
            "0", shape=(nz, nx, nx), dtype="float32", chunks=(chunk, nx, nx), fill_value=np.nan
        )
    comm.Barrier()
    z0, z1 = chunk_split(nz, chunk, size)[rank]
    rec_info: dict[str, Any] = {}
    t = time.time()
    if z1 > z0:
        res = _reconstruct_rows(job, (r0 + z0 * b, r0 + z1 * b), header["center"])
        vol = np.asarray(res.volume, dtype=np.float32)
        if vol.shape != (z1 - z0, nx, nx):
            raise ValueError(f"rank {rank}: engine returned {vol.shape}, expected {(z1 - z0, nx, nx)}")
        zarr.open_array(str(job.outputs.full_resolution), mode="r+")[z0:z1] = vol
        rec_info = {
            "center": float(res.center),
            "timings": dict(res.timings),
            "engine": res.engine,
            "warnings": list(res.warnings),
        }
    slab_s = time.time() - t
    infos = comm.gather({"rank": rank, "rows": (z0, z1), "seconds": slab_s, **rec_info}, root=0)
    comm.Barrier()
    if rank != 0:
        return {}
    timings["reconstruct_s"] = max(i["seconds"] for i in infos)
    t = time.time()
    write_levels(job)
    timings["multiscale_s"] = time.time() - t
    if job.outputs.tiff:
        t = time.time()
        write_tiffs(job)
        timings["tiff_s"] = time.time() - t
    timings["total_s"] = time.time() - t0
    warnings = sorted({w for i in infos for w in i.get("warnings", [])})
    result = {
        "job_id": job.job_id,
        "run_uid": job.run_uid,
        "params_hash": job.params.params_hash,
        "shape": [nz, nx, nx],
        "center": header["center"]
        if header["center"] is not None
        else next((i["center"] for i in infos if "center" in i), None),
        "engine": next((i["engine"] for i in infos if "engine" in i), None),
        "ranks": size,
        "slabs": [{"rank": i["rank"], "rows": list(i["rows"]), "seconds": i["seconds"]} for i in infos],
        "timings": timings,
        "warnings": warnings,
        "volume_zarr": str(job.outputs.full_resolution),
        "ome_zarr": str(job.outputs.zarr_path),
        "tiff_dir": str(job.outputs.tiff_dir) if job.outputs.tiff else None,
    }
    write_provenance(job, result)
    tmp = job.outputs.result_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(job.outputs.result_path)
    return result


def write_provenance(job: ReconJob, result: dict[str, Any]) -> None:
    """What was run, on what, with which software: enough to reproduce the volume."""
    import platform

    from ..results.tiled_results import software_versions

    record = {
        "job": json.loads(job.model_dump_json()),
        "params_hash": job.params.params_hash,
        "params": job.params.model_dump(mode="json"),
        "input": str(job.input_path),
        "host": platform.node(),
        "software": software_versions(),
        "result": result,
        "finished_at": time.time(),
    }
    job.outputs.provenance_path.write_text(json.dumps(record, indent=2, default=str))


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns 0, or aborts every rank with a non-zero code on any failure."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        from mpi4py import MPI
    except ImportError as exc:  # the batch program is an MPI program: say what is missing
        print(f"bluesky_tomo_hpc.batch needs mpi4py: {exc}", file=sys.stderr)
        return EX_SOFTWARE
    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s rank {rank}: %(message)s", stream=sys.stderr)
    if len(argv) != 1:
        if rank == 0:
            print("usage: python -m bluesky_tomo_hpc.batch JOB.json", file=sys.stderr)
        return EX_USAGE
    try:
        job = ReconJob.read(argv[0])
    except Exception as exc:
        print(f"rank {rank}: cannot read job file {argv[0]}: {exc}", file=sys.stderr, flush=True)
        code = EX_NOINPUT if isinstance(exc, FileNotFoundError) else EX_USAGE
        comm.Abort(code)
        return code
    try:
        result = run(job, comm)
    except BaseException as exc:  # noqa: BLE001 - every failure must end all ranks
        code = exit_code_for(exc)
        print(
            f"JOB FAILED: rank {rank}/{comm.Get_size()} of job {job.job_id}: "
            f"{type(exc).__name__}: {exc} (exit {code})\n{traceback.format_exc()}",
            file=sys.stderr,
            flush=True,
        )
        comm.Abort(code)
        return code
    if rank == 0:
        log.info("job %s done in %.2f s: %s", job.job_id, result["timings"]["total_s"], job.outputs.directory)
    return 0
