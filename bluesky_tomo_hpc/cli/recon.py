"""``bluesky-tomo-hpc recon FILE``: reconstruct a data-exchange or NXtomo file to Zarr + TIFF.

Why a CLI: the same engine the live sinks use, for a file on disk (re-processing, checking a
centre, a user's laptop). The file is read in slabs of detector rows, so memory stays bounded
whatever its size; ``--center try`` writes a contact sheet of candidate centres instead.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_SLAB_ROWS = 64


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "recon",
        help="reconstruct a data-exchange / NXtomo HDF5 file to Zarr, TIFF and provenance JSON",
        description=(
            "Reconstruct FILE (APS data-exchange or NeXus NXtomo) with the native engine. Writes "
            "OUT/recon.zarr, OUT/tiff/recon_NNNNN.tiff and OUT/provenance.json (every parameter, "
            "its hash, the centre and its confidence, timings, versions). Centres are 0-based "
            "unbinned detector columns."
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
    p.add_argument("--binning", type=int, help="average BxB pixels before reconstructing")
    p.add_argument("--try-width", type=float, default=5.0, help="try: px either side of the estimate")
    p.add_argument("--try-step", type=float, default=1.0, help="try: px between candidates")
    p.add_argument("--slab-rows", type=int, default=DEFAULT_SLAB_ROWS,
                   help=f"detector rows read at a time (memory bound; default {DEFAULT_SLAB_ROWS})")
    p.add_argument("--no-tiff", action="store_true", help="write the Zarr volume only")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Exit status 0 on success, 2 for bad input (the message names the problem)."""
    from pydantic import ValidationError

    from ..model import TomoDataError

    try:
        return _run(args)
    except (TomoDataError, ValidationError, ValueError, FileNotFoundError, KeyError) as exc:
        print(f"recon: {exc}", file=sys.stderr)
        return 2


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


def _slabs(r0: int, r1: int, size: int, binning: int) -> list[tuple[int, int]]:
    size = max(binning, size - size % binning)
    return [(a, min(a + size, r1)) for a in range(r0, r1, size) if min(a + size, r1) - a >= binning]


def _estimate_center(path: Path, rows: tuple[int, int], params: Any, slab: int) -> Any:
    """Centre from (at most) one slab of rows in the middle of the range: a
    :class:`~bluesky_tomo_hpc.engine.center.CenterEstimate` in binned columns, resolved (a
    low confidence falls back, with ``details["warning"]``), ``details["seconds"]`` its time."""
    from ..engine.center import resolve_uncertain_center
    from ..engine.reconstruct import find_center, preprocess_projections
    from ..sources.raw_files import load_scan

    r0, r1 = rows
    if r1 - r0 > slab:
        mid = (r0 + r1) // 2
        r0 = max(rows[0], mid - slab // 2)
        r1 = min(rows[1], r0 + slab)
    data = load_scan(path, rows=(r0, r1))
    proj_log, theta, _ = preprocess_projections(data, params, rows=(r0, r1))
    return resolve_uncertain_center(find_center(proj_log, theta, params), proj_log.shape[2], None,
                                    params.binning)


def _run(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from ..engine.halfturn import output_width
    from ..engine.reconstruct import ReconResult, center_summary, reconstruct_scan, to_binned, to_unbinned
    from ..model import TomoDataError
    from ..results.volume_files import create_zarr_volume, write_provenance, write_tiff_stack
    from ..sources.raw_files import describe_scan

    path: Path = args.file
    if not path.is_file():
        raise FileNotFoundError(f"no such scan file: {path}")
    params = _params(args)
    desc = describe_scan(path)
    ny, nx = desc.frame_shape
    rows = params.rows or (0, ny)
    if not (0 <= rows[0] < rows[1] <= ny):
        raise TomoDataError(f"--rows {rows[0]}:{rows[1]} outside the detector's {ny} rows")
    out: Path = args.out or Path(f"{path.stem}_rec")
    out.mkdir(parents=True, exist_ok=True)
    b = params.binning

    timings: dict[str, float] = {}
    warnings: list[str] = []
    center_info: dict[str, Any] = {}
    if params.center == "auto":
        est = _estimate_center(path, rows, params, args.slab_rows)
        center, conf, method = to_unbinned(est.center, b), est.confidence, est.method
        timings["center"] = float(est.details["seconds"])
        center_info = center_summary(est, b)
        print(f"centre {center:.2f} px (confidence {conf:.2f}, {method})", file=sys.stderr)
        if est.details.get("uncertain"):
            print(f"recon: WARNING {est.details['warning']}", file=sys.stderr)
            warnings.append(est.details["warning"])
            if args.center != "try":  # the sheet a person needs to decide, written without asking
                _try(path, rows, params, center_info["estimate"], conf, method, args, out, also=[center])
    else:
        center, conf, method = float(params.center), 1.0, "given"

    if args.center == "try":
        return _try(path, rows, params, center, conf, method, args, out)

    slabs = _slabs(rows[0], rows[1], args.slab_rows, b)
    nz = sum((s1 - s0) // b for s0, s1 in slabs)
    n = output_width(nx // b, to_binned(center, b), desc.theta, params.half_acquisition)
    zarr_path = out / "recon.zarr"
    volume = create_zarr_volume(zarr_path, (nz, n, n), attrs={"params_hash": params.params_hash})
    written = 0
    columns = (TextColumn("[bold]recon"), BarColumn(), TextColumn("{task.completed}/{task.total} slices"),
               TimeElapsedColumn(), TimeRemainingColumn())
    from ..sources.raw_files import load_scan

    with Progress(*columns, transient=False) as bar:
        task = bar.add_task("recon", total=nz)
        for s0, s1 in slabs:
            data = load_scan(path, rows=(s0, s1))
            res = reconstruct_scan(
                data, params, rows=(s0, s1), center=center,
                progress=lambda done, _total, base=written: bar.update(task, completed=base + done),
            )
            k = res.volume.shape[0]
            volume[written : written + k] = res.volume
            if not args.no_tiff:
                write_tiff_stack(out / "tiff", res.volume, start=written)
            for key, val in res.timings.items():
                if key != "center" or "center" not in timings:  # (the slabs' centre is given: 0 s)
                    timings[key] = timings.get(key, 0.0) + val
            center_info.update({k: v for k, v in res.center_details.items() if k not in center_info})
            warnings.extend(w for w in res.warnings if w not in warnings)
            written += k
    summary = ReconResult(volume=volume, center=center, center_confidence=conf, center_method=method,
                          timings=timings, params=params, warnings=warnings, rows=(rows[0], rows[1]),
                          engine=res.engine, center_details=center_info)
    extra = {"input": str(path.resolve()), "format": desc.format, "outputs": {
        "zarr": str(zarr_path), "tiff_dir": None if args.no_tiff else str(out / "tiff")}}
    prov = write_provenance(out / "provenance.json", summary, extra)
    print(f"wrote {nz} slices of {n} x {n} to {zarr_path}; provenance {prov}", file=sys.stderr)
    return 0


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
