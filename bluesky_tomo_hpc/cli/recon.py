"""``bluesky-tomo-hpc recon FILE``: reconstruct a data-exchange or NXtomo file to disk.

Why a CLI: the same program as the HPC batch job (:mod:`bluesky_tomo_hpc.batch.batch_program` on one rank,
no MPI needed), for a file on disk (re-processing, checking a centre, a user's laptop). Rows are
read in slabs sized from the memory budget, reading and writing overlap the reconstruction, and
the result folder (OME-Zarr, TIFF per detector row, provenance JSON) appears only when complete;
``--center try`` writes a contact sheet of candidate centres instead.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from .errors import EXIT_INPUT, EXIT_OUTPUT, CliError, describe, positive_int, writable_folder


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "recon",
        help="reconstruct a data-exchange / NXtomo HDF5 file to Zarr, TIFF and provenance JSON",
        description=(
            "Reconstruct FILE (APS data-exchange or NeXus NXtomo): the batch program on one rank. "
            "Writes OUT/volume.ome.zarr (OME-Zarr multiscales), OUT/tiff/recon_RRRRR.tiff (RRRRR: "
            "detector row) and OUT/provenance.json (parameters and hash, centre and confidence, "
            "input checksum, command line, versions, timings). OUT appears only when complete "
            "(OUT.partial until then); an existing OUT is kept unless --overwrite. Centres are "
            "0-based unbinned detector columns."
        ),
    )
    p.add_argument("file", type=Path, metavar="FILE", help="HDF5 scan file")
    p.add_argument("--out", type=Path, help="output folder (default: ./<FILE stem>_rec)")
    p.add_argument("--params", type=Path, metavar="FILE", help="ReconParams as YAML or JSON")
    p.add_argument("--center", default=None, metavar="auto|try|VALUE",
                   help="rotation axis: auto (find it), try (contact sheet of candidates), or a column")
    p.add_argument("--algorithm", choices=["fourier", "fbp"], help="reconstruction method")
    p.add_argument("--filter", dest="filter_name", metavar="NAME",
                   help="none, ramp, shepp, cosine, hann, hamming, parzen, butterworth")
    p.add_argument("--rows", metavar="START:STOP", help="detector rows [START, STOP) to reconstruct")
    p.add_argument("--binning", type=positive_int, help="average BxB pixels before reconstructing")
    p.add_argument("--try-width", type=float, default=5.0, help="try: px either side of the estimate")
    p.add_argument("--try-step", type=float, default=1.0, help="try: px between candidates")
    p.add_argument("--slab-rows", type=positive_int, metavar="N",
                   help="at most N detector rows read at a time (default: 16 slices, fewer if the "
                        "memory budget needs)")
    p.add_argument("--memory-budget-mb", type=float, metavar="MiB",
                   help="memory for frames and slices; slab sizes derive from it (default: the "
                        "memory_budget_mb setting, else a quarter of this machine's memory)")
    p.add_argument("--pixel-size-um", type=float, metavar="UM",
                   help="detector pixel size (default: from the file's metadata; unknown: pixels)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing result in --out")
    p.add_argument("--no-tiff", action="store_true", help="write the OME-Zarr volume only")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Exit status 0 on success; errors are raised, for ``cli/main.py`` to put in one line with
    an exit code by class (``cli/errors.py``)."""
    from ..results.volume_files import ResultClaimedError, ResultExistsError, ResultLayout, VolumeWriteError

    try:
        return _run(args)
    except ResultClaimedError as exc:  # another process is making it: nothing to do here
        print(f"{exc} (made by another process)")
        return 0
    except ResultExistsError as exc:
        raise CliError(str(exc)) from exc
    except OSError as exc:  # a full disk, a failed write: the result's name was never created
        code, line = describe(exc)
        note = "" if isinstance(exc, VolumeWriteError) or code == EXIT_INPUT else (
            f"; no result was written ({ResultLayout(_out(args)).failure_note} says why)")
        raise CliError(f"{line}{note}", code) from exc


def _out(args: argparse.Namespace) -> Path:
    return (args.out or Path(f"{args.file.stem}_rec")).absolute()


def _params(args: argparse.Namespace) -> Any:
    from ..engine.params import ReconParams

    params = ReconParams.from_file(args.params) if args.params else ReconParams()
    updates: dict[str, Any] = {}
    for key in ("algorithm", "filter_name", "binning"):
        if getattr(args, key, None) is not None:
            updates[key] = getattr(args, key)
    if args.rows:
        try:
            a, b = (int(v) for v in args.rows.split(":"))
        except ValueError:
            raise ValueError(f"--rows must be START:STOP (integers), got {args.rows!r}") from None
        updates["rows"] = (a, b)
    if args.center not in (None, "auto", "try"):
        try:
            updates["center"] = float(args.center)
        except ValueError:
            raise ValueError(f"--center must be auto, try or a number, got {args.center!r}") from None
    elif args.center == "auto":
        updates["center"] = "auto"  # (try keeps a centre given in --params: the sweep centres on it)
    return params.with_updates(**updates) if updates else params


def _job(args: argparse.Namespace, params: Any, out: Path) -> Any:
    from ..batch.job import JobOutputs, ReconJob, Resources
    from ..settings import load_settings
    from ..sources.raw_files import file_run_uid

    budget = args.memory_budget_mb if args.memory_budget_mb is not None else load_settings().memory_budget_mb
    slab_slices = max(1, args.slab_rows // params.binning) if args.slab_rows else JobOutputs.model_fields[
        "slab_slices"].default
    return ReconJob(
        run_uid=file_run_uid(args.file), input_path=args.file.resolve(), params=params,
        outputs=JobOutputs(directory=out.parent, result_folder=out, tiff=not args.no_tiff,
                           overwrite=args.overwrite, slab_slices=slab_slices,
                           pixel_size_um=args.pixel_size_um),
        resources=Resources(ranks=1, memory_budget_mb=budget),
    )


def _run(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from ..batch.batch_program import SingleRank, run
    from ..sources.raw_files import describe_scan

    path: Path = args.file
    if not path.is_file():
        raise CliError(f"no such scan file: {path}; give the path of an HDF5 scan", EXIT_INPUT)
    params = _params(args)
    ny, nx = describe_scan(path).frame_shape
    if isinstance(params.center, float) and not -nx <= params.center <= 2 * nx:
        raise CliError(f"--center {params.center:g} is far outside the detector's {nx} columns; "
                       "give a column (0-based) near the rotation axis, or auto")
    rows = params.rows or (0, ny)
    if not (0 <= rows[0] < rows[1] <= ny):
        raise CliError(f"--rows {rows[0]}:{rows[1]} outside the detector's {ny} rows; "
                       f"give START:STOP with 0 <= START < STOP <= {ny}")
    out = _out(args)
    if out.exists() and not out.is_dir():
        raise CliError(f"cannot write to --out {out}: a file is in the way; choose another folder",
                       EXIT_OUTPUT)
    writable_folder(out.parent, "--out")  # before any work (out itself appears when complete)

    if args.center == "try":
        center, conf, method = _estimate_center(path, rows, params)
        print(f"centre {center:.2f} px (confidence {conf:.2f}, {method})", file=sys.stderr)
        writable_folder(out, "--out")
        return _try(path, rows, params, center, conf, method, args, out)

    columns = (TextColumn("[bold]recon"), BarColumn(), TextColumn("{task.completed}/{task.total} slices"),
               TimeElapsedColumn(), TimeRemainingColumn())
    # 2 Hz, not rich's 10: each refresh renders the bar under the GIL (measured ~22 ms CPU/s at 10 Hz,
    # ~5 at 2 Hz), CPU the reconstruction uses
    with Progress(*columns, transient=False, refresh_per_second=2) as bar:
        task = bar.add_task("recon", total=None)
        result = run(_job(args, params, out), SingleRank(), call=["bluesky-tomo-hpc", *sys.argv[1:]],
                     progress=lambda done, total: bar.update(task, completed=done, total=total))
    c = result["center"]
    print(f"centre {c:.2f} px; wrote {result['shape'][0]} slices of {result['shape'][1]} x "
          f"{result['shape'][2]} to {out} (OME-Zarr, {'no TIFF' if args.no_tiff else 'TIFF'}, "
          f"provenance.json)", file=sys.stderr)
    for warning in result.get("warnings", ()):  # also in provenance.json; said so nobody has to look
        print(f"warning: {warning}", file=sys.stderr)
    details = result.get("center_details") or {}
    if details.get("uncertain"):  # the warning is above; write the sheet a person needs to decide
        _try(path, rows, params, float(details["estimate"]), result["center_confidence"],
             str(details.get("estimate_method")), args, out, also=[c])
    return 0


def _estimate_center(path: Path, rows: tuple[int, int], params: Any) -> tuple[float, float, str]:
    """The centre the batch program would use for these rows (given, or found)."""
    from ..batch.batch_program import choose_center
    from ..batch.job import JobOutputs, ReconJob

    job = ReconJob(run_uid="try", input_path=path, params=params, outputs=JobOutputs(directory=Path(".")))
    found = choose_center(job, rows)
    return found.value, found.confidence, found.method


def _try(path: Path, rows: tuple[int, int], params: Any, center: float, conf: float, method: str,
         args: argparse.Namespace, out: Path, also: list[float] | None = None) -> int:
    """Contact sheet of centres ``center +/- width`` (plus the centres in ``also``, e.g. a
    fallback) at the middle row of ``rows``; ``center`` is the estimate or the given centre."""
    from ..engine.center import try_centers
    from ..engine.reconstruct import preprocess_projections, to_binned
    from ..results.pictures import save_center_sheet_png
    from ..sources.raw_files import load_scan

    b = params.binning
    mid = (rows[0] + rows[1]) // 2
    r0 = max(rows[0], mid - mid % b) if b > 1 else mid
    r1 = min(r0 + b, rows[1]) if b > 1 else mid + 1
    data = load_scan(path, rows=(r0, r1))
    proj_log, theta, _ = preprocess_projections(data, params, rows=(r0, r1))
    steps = np.arange(-args.try_width, args.try_width + 1e-9, args.try_step)
    candidates = sorted({round(center + s, 3) for s in steps} | {round(c, 3) for c in also or []})
    slices = try_centers(proj_log, theta, [to_binned(c, b) for c in candidates], params, row=0)
    png = save_center_sheet_png(dict(zip(candidates, slices.values(), strict=True)), out / "center_try.png",
                                row=r0, highlight=round(center, 3))
    record = {"estimate": center, "confidence": conf, "method": method, "row": r0,
              "candidates": candidates, "png": str(png)}
    (out / "center_try.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"contact sheet of {len(candidates)} centres: {png}", file=sys.stderr)
    return 0
