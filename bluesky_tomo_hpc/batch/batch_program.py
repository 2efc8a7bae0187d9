"""The batch program: ``mpiexec -n N python -m bluesky_tomo_hpc.batch JOB.json``, and
``recon FILE`` as the same program on one rank (:class:`SingleRank`, no MPI needed).

Rank 0 plans the job (rows, the rotation centre found once, slab size from the memory budget) and
creates the result's ``.partial`` folder (:class:`~..results.volume_files.VolumeWriter`); ranks
split the slices in whole Zarr chunks (so no two ranks ever write the same chunk) and each streams
its rows through :mod:`.slab_pipeline` (reader and writer threads around the reconstruction) into
the OME-Zarr levels and TIFFs. After a barrier rank 0 writes the NGFF metadata and the provenance
record, renames the result into place and, last, ``result.json``: the job's own proof that it
finished.

A failure on any rank is logged with the rank and the reason and ends the whole job through
``MPI.Abort`` with a sysexits-style code, so schedulers and the journal can tell a permanent
fault (bad input: 64-66, 77) from a transient one (75) or a bug (70); the unfinished result
never carries the result's name.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..engine.params import ReconParams
from ..model import TomoDataError
from ..results.provenance import CenterChoice, provenance_record
from ..results.volume_files import ResultClaimedError, ResultLayout, VolumeWriter
from .job import ReconJob, Resources
from .slab_pipeline import RankReport, reconstruct_rows, slab_rows

log = logging.getLogger("bluesky_tomo_hpc.batch")

EX_USAGE = 64  # bad job file
EX_DATAERR = 65  # the data cannot be reconstructed (TomoDataError)
EX_NOINPUT = 66  # input file missing
EX_SOFTWARE = 70  # anything else: a bug
EX_TEMPFAIL = 75  # I/O trouble that may pass (retry)
EX_NOPERM = 77  # permission denied
#: exit codes that a retry cannot fix
PERMANENT_EXIT_CODES = frozenset({EX_USAGE, EX_DATAERR, EX_NOINPUT, EX_NOPERM})
#: detector rows (x binning) the centre is found from, in the middle of the reconstructed rows
CENTER_ROWS = 8


def exit_code_for(exc: BaseException) -> int:
    """Map an exception to the exit code the job ends with."""
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


class SingleRank:
    """The slice of ``mpi4py``'s communicator the batch program uses, for one process without MPI
    (``recon FILE``): the same program, one rank."""

    def Get_rank(self) -> int:  # noqa: N802 - mpi4py's names
        return 0

    def Get_size(self) -> int:  # noqa: N802
        return 1

    def bcast(self, obj: Any, root: int = 0) -> Any:
        return obj

    def gather(self, obj: Any, root: int = 0) -> list[Any]:
        return [obj]

    def Barrier(self) -> None:  # noqa: N802
        return None


def scan_params(job: ReconJob) -> ReconParams:
    """The job's parameters as the scan's own metadata settles them: ``half_acquisition: auto``
    follows the start document's ``tomo.half_acquisition`` (``job.metadata["tomo"]``) when it
    states it, as the in-memory path does; the result keeps the parameters as given."""
    from ..engine.reconstruct import with_half_acquisition_hint

    return with_half_acquisition_hint(job.params, job.metadata)


def choose_center(job: ReconJob, rows: tuple[int, int]) -> CenterChoice:
    """Rank 0: the given centre, or one found from a few rows in the middle of ``rows``."""
    from ..engine.center import resolve_uncertain_center
    from ..engine.reconstruct import (
        center_summary,
        find_center,
        preprocess_projections,
        to_binned,
        to_unbinned,
    )
    from ..sources.raw_files import load_scan

    if job.params.center != "auto":
        return CenterChoice(float(job.params.center), 1.0, "given")
    b = job.params.binning
    half = min(CENTER_ROWS * b, rows[1] - rows[0]) // 2 // b * b or b
    mid = (rows[0] + rows[1]) // 2
    r0 = max(rows[0], mid - half)
    r1 = min(rows[1], r0 + max(2 * half, b))
    params = scan_params(job).with_updates(rows=None)
    proj_log, theta, _ = preprocess_projections(load_scan(job.input_path, rows=(r0, r1)), params)
    # below the confidence threshold, with a warning (never a silent guess): the estimate, or the
    # job's fallback (the full volume at stop passes its detector's last confident centre) where
    # it fits the data as well (engine.center_estimate.resolve_uncertain_center)
    fallback = job.metadata.get("fallback_center")
    fb = None if fallback is None else to_binned(float(fallback), b)
    est = resolve_uncertain_center(find_center(proj_log, theta, params), proj_log.shape[2], fb, b)
    details = center_summary(est, b)
    if est.details.get("uncertain"):
        details["warning"] = est.details["warning"]
    return CenterChoice(to_unbinned(est.center, b), est.confidence, est.method, details)


def field_of_view(job: ReconJob, plan: dict[str, Any], center: CenterChoice) -> int:
    """Width (binned columns) of the slices at this centre, given or found: the detector's, or the
    stitched field of view of a half acquisition (offset axis), which the slab pipeline makes of
    every slab. Recorded in the centre's details when it differs."""
    from ..engine.halfturn import output_width
    from ..engine.preprocess import to_binned

    nx = plan["shape"][1]
    width = output_width(nx, to_binned(center.value, job.params.binning), plan["theta"],
                         scan_params(job).half_acquisition)
    if width != nx:
        center.details.update(half_acquisition=True, field_of_view_px=width)
    return width


def rank_budget_bytes(resources: Resources, size: int) -> int:
    """One rank's share of its node's memory budget (``Resources.memory_budget_mb``, else the
    node's default): ranks on one node share it, so N ranks never take N budgets."""
    from ..engine.memory import budget_bytes

    per_node = -(-min(size, resources.ranks) // resources.nodes)
    return budget_bytes(resources.memory_budget_mb) // max(1, per_node)


def _plan(job: ReconJob, size: int) -> dict[str, Any]:
    """Rank 0: what the ranks share (shape, rows, slab size, voxel size; the centre comes next)."""
    from ..sources.raw_files import describe_scan

    path = Path(job.input_path)
    if not path.exists():
        raise FileNotFoundError(f"input {path} does not exist")
    desc = describe_scan(path)
    nproj, (ny, nx) = desc.n_projections, desc.frame_shape
    b = job.params.binning
    r0, r1 = job.params.rows if job.params.rows is not None else (0, ny)
    if not 0 <= r0 < r1 <= ny:
        raise TomoDataError(f"rows {r0}:{r1} outside the detector's {ny} rows")
    nz = (r1 - r0) // b
    if nz < 1:
        raise TomoDataError(f"rows {r0}:{r1} with binning {b} leave no slice to reconstruct")
    chunk = min(job.outputs.zarr_chunk_z, nz)
    slab = slab_rows(rank_budget_bytes(job.resources, size), nproj, nx, b, chunk_slices=chunk,
                     cap_slices=job.outputs.slab_slices)
    pixel = (job.outputs.pixel_size_um or job.metadata.get("pixel_size_um")
             or desc.metadata.get("pixel_size_um"))
    return {"rows": (r0, r0 + nz * b), "shape": (nz, nx // b, nx // b), "chunk": chunk, "slab": slab,
            "theta": desc.theta, "format": desc.format, "voxel_size_um": float(pixel) * b if pixel else None,
            "warnings": list(desc.metadata.get("warnings", []))}  # frames the file's keys left out


def _writer(job: ReconJob, plan: dict[str, Any], create: bool) -> VolumeWriter:
    return VolumeWriter(
        job.outputs.result_dir, plan["shape"], first_row=plan["rows"][0], row_step=job.params.binning,
        voxel_size_um=plan["voxel_size_um"], tiff=job.outputs.tiff, overwrite=job.outputs.overwrite,
        chunk_z=plan["chunk"], levels=job.outputs.multiscale_levels, create=create,
    )


def run(
    job: ReconJob,
    comm: Any,
    *,
    call: list[str] | str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """The work of one rank; rank 0 returns the result record, others an empty dict.

    Rank 0 plans (centre, slab size from the memory budget) and creates the result's
    ``.partial`` folder; every rank reconstructs its whole chunks of slices through
    :func:`.slab_pipeline.reconstruct_rows` into it; rank 0 then finishes the result (levels,
    metadata, provenance) and renames it into place. ``call`` is recorded in the provenance (the
    command line by default); ``progress(slices_done, slices_total)`` is called on rank 0.
    """
    from ..engine.backend import choose_device
    from ..engine.tomopy_engine import resolve_engine
    from ..results.provenance import command_line, file_sha256

    # what the parameters ask for (device: gpu, engine: tomopy) is there, or one line: before any work
    choose_device(job.params.device)
    resolve_engine(job.params)
    rank, size = comm.Get_rank(), comm.Get_size()
    t0 = time.perf_counter()
    plan: dict[str, Any] | None = None
    writer: VolumeWriter | None = None
    checksum: dict[str, str] = {}
    hasher = None
    if rank == 0:
        hasher = threading.Thread(target=lambda: checksum.update(sha256=file_sha256(job.input_path)),
                                  name="input-checksum", daemon=True)
        plan = _plan(job, size)
        log.info("job %s: %d ranks, volume %s (z, y, x) from detector rows %s, slabs of %d rows; "
                 "finding the centre", job.job_id, size, plan["shape"], plan["rows"], plan["slab"])
        try:
            writer = _writer(job, plan, create=True)  # refuses an existing result before any work
        except ResultClaimedError as exc:  # every rank skips (below), none is left waiting
            plan = {"claimed_elsewhere": str(exc)}
    if writer is not None:
        hasher.start()  # after the input was found; overlaps the centre search and reconstruction
        t = time.perf_counter()
        try:
            plan["center"] = choose_center(job, plan["rows"])
        except BaseException as exc:
            writer.fail(exc)
            raise
        plan["center_s"] = time.perf_counter() - t
        log.info("centre %.2f px (confidence %.2f) in %.1f s", plan["center"].value,
                 plan["center"].confidence, plan["center_s"])
        width = field_of_view(job, plan, plan["center"])
        if width != plan["shape"][1]:  # half acquisition: a wider volume than planned
            writer.release()
            shutil.rmtree(writer.layout.partial)
            plan["shape"] = (plan["shape"][0], width, width)
            try:
                writer = _writer(job, plan, create=True)
            except ResultClaimedError as exc:
                plan = {"claimed_elsewhere": str(exc)}
    plan = comm.bcast(plan, root=0)
    if "claimed_elsewhere" in plan:
        raise ResultClaimedError(plan["claimed_elsewhere"])
    comm.Barrier()  # the .partial folder exists
    if writer is None:
        writer = _writer(job, plan, create=False)
    b, (r0, _), nz = job.params.binning, plan["rows"], plan["shape"][0]
    z0, z1 = chunk_split(nz, plan["chunk"], size)[rank]
    center: CenterChoice = plan["center"]
    report = RankReport()
    t = time.perf_counter()
    try:
        if z1 > z0:
            done, logged = [0], [time.monotonic()]

            def tick(k: int) -> None:
                done[0] += k
                if progress is not None and rank == 0:
                    progress(done[0], z1 - z0)
                if rank == 0 and (time.monotonic() - logged[0] > 2.0 or done[0] >= z1 - z0):
                    logged[0] = time.monotonic()  # the job's log tells how far it is while it runs
                    log.info("slices %d / %d of this rank reconstructed", done[0], z1 - z0)

            report = reconstruct_rows(job.input_path, scan_params(job), (r0 + z0 * b, r0 + z1 * b),
                                      center.value, writer.write, slab=plan["slab"], z_offset=z0,
                                      progress=tick)
    except BaseException as exc:
        if rank == 0:  # the note says why; the original error keeps its exit code
            writer.fail(exc)
        raise
    info = {"rank": rank, "rows": (z0, z1), "seconds": time.perf_counter() - t, "timings": report.timings,
            "engine": report.engine, "warnings": report.warnings, "levels_complete": writer.levels_complete}
    infos = comm.gather(info, root=0)
    comm.Barrier()
    if rank != 0:
        return {}
    assert writer is not None and hasher is not None
    hasher.join()
    busiest = {k: max(i["timings"].get(k, 0.0) for i in infos) for k in report.timings}
    timings = {**busiest, "center": plan["center_s"]}
    log.info("reconstructed in %.1f s; writing levels, metadata and provenance",
             max(i["seconds"] for i in infos))
    t = time.perf_counter()
    layout = ResultLayout(job.outputs.result_dir)
    result = {
        "job_id": job.job_id,
        "run_uid": job.run_uid,
        "params_hash": job.params.params_hash,
        "shape": list(plan["shape"]),
        "center": center.value,
        "engine": report.engine,
        "ranks": size,
        "slabs": [{"rank": i["rank"], "rows": list(i["rows"]), "seconds": i["seconds"]} for i in infos],
        "timings": {"center_s": plan["center_s"], "reconstruct_s": max(i["seconds"] for i in infos)},
        "warnings": sorted({w for i in infos for w in i["warnings"]} | set(plan.get("warnings", [])) | (
            {center.details["warning"]} if "warning" in center.details else set())),
        "center_confidence": center.confidence,
        "center_details": dict(center.details),
        "volume_zarr": str(layout.full_resolution),
        "ome_zarr": str(layout.zarr),
        "tiff_dir": str(layout.tiff_dir) if job.outputs.tiff else None,
        "provenance": str(layout.provenance),
    }
    timings["total"] = time.perf_counter() - t0  # up to the finish, which the record cannot time
    record = provenance_record(
        params=job.params, center=center,
        source={"path": str(Path(job.input_path).resolve()), "sha256": checksum.get("sha256"),
                "format": plan["format"], "run_uid": job.run_uid},
        call=call if call is not None else command_line(), timings_s=timings, shape=plan["shape"],
        rows=plan["rows"], voxel_size_um=plan["voxel_size_um"], engine=report.engine,
        warnings=result["warnings"],
        extra={"job_id": job.job_id, "ranks": size, "slabs": result["slabs"], "slab_rows": plan["slab"],
               "sample": job.metadata.get("sample"), "series": job.metadata.get("series"),
               "scan_health": job.metadata.get("scan_health"),
               "timing_note": "per stage: seconds in that stage on the busiest rank; stages overlap "
                              "(reader and writer threads), so they add up to more than total"},
    )
    writer.finish(record, levels_complete=all(i["levels_complete"] for i in infos))
    result["timings"]["finish_s"] = time.perf_counter() - t
    result["timings"]["total_s"] = time.perf_counter() - t0
    return result


def write_result_record(job: ReconJob, result: dict[str, Any]) -> None:
    """``result.json`` beside the job file, written last: the job's own proof that it finished."""
    tmp = job.outputs.result_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(job.outputs.result_path)


def made_elsewhere_record(job: ReconJob, exc: ResultClaimedError) -> dict[str, Any]:
    """``result.json`` of a job whose result another process claimed: finished, nothing made here,
    and where the other process puts the result (the monitor reports the job done, not failed)."""
    return {"job_id": job.job_id, "run_uid": job.run_uid, "params_hash": job.params.params_hash,
            "made_elsewhere": True, "result_dir": str(job.outputs.result_dir),
            "message": f"made by another process: {exc}"}


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
    from ..engine.backend import use_gpu_of_local_rank

    # every GPU of a node: launch one rank per GPU; each keeps to the device of its node-local rank
    gpu = use_gpu_of_local_rank(comm.Split_type(MPI.COMM_TYPE_SHARED).Get_rank())
    if gpu is not None:
        log.info("rank %d uses GPU %d", rank, gpu)
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
        if rank == 0:
            write_result_record(job, result)
    except ResultClaimedError as exc:  # made by another process: not this job's failure
        if rank == 0:
            log.info("job %s: %s (made by another process)", job.job_id, exc)
            write_result_record(job, made_elsewhere_record(job, exc))
        return 0
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
