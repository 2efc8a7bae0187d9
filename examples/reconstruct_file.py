"""Reconstruct a scan file with the engine, no RunEngine involved.

Reads an APS data-exchange (or NeXus/NXtomo) HDF5 file, finds the rotation centre, reconstructs
every detector row in memory and writes the result folder every path writes (OME-Zarr, TIFF
per detector row, provenance JSON; see ``results.volume_files``) and a PNG of three orthogonal
slices. For files larger than memory use ``bluesky-tomo-hpc recon FILE`` (slabs, same outputs).
By default it uses TomoPy's tooth (181 angles, 2 rows, 640 columns), whose centre peers put at
296 px::

    python examples/reconstruct_file.py                       # ../shared/data/tomopy_tooth/tooth.h5
    python examples/reconstruct_file.py scan.h5 --out rec --filter hann --center 1023.5

The same engine call (``reconstruct_scan``) serves the live callback, the batch job and
``bluesky-tomo-hpc recon``, so a result here is the result there for the same parameters hash.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bluesky_tomo_hpc import ReconParams
from bluesky_tomo_hpc.engine.reconstruct import reconstruct_scan
from bluesky_tomo_hpc.results.pictures import save_orthoslices_png
from bluesky_tomo_hpc.results.provenance import CenterChoice, command_line, file_sha256, provenance_record
from bluesky_tomo_hpc.results.tiled_results import preview_slices
from bluesky_tomo_hpc.results.volume_files import VolumeWriter
from bluesky_tomo_hpc.sources.raw_files import load_scan

TOOTH = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "tomopy_tooth" / "tooth.h5"


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("file", nargs="?", default=str(TOOTH.resolve()), help="HDF5 scan file")
    parser.add_argument("--out", default="tooth_rec", help="output folder")
    parser.add_argument("--filter", default="shepp", help="FBP filter (see ReconParams.filter_name)")
    parser.add_argument("--center", default="auto", help="'auto' or a 0-based detector column")
    args = parser.parse_args(argv)

    center = args.center if args.center == "auto" else float(args.center)
    params = ReconParams(filter_name=args.filter, center=center)
    scan = load_scan(args.file)  # theta in radians, frames as stored
    print(f"{args.file}: {scan.projections.shape[0]} projections of {scan.projections.shape[1:]} px, "
          f"{scan.flats.shape[0]} flats, {scan.darks.shape[0]} darks")

    result = reconstruct_scan(scan, params)
    out = Path(args.out)
    with VolumeWriter(out, result.volume.shape, first_row=result.rows[0], row_step=params.binning,
                      voxel_size_um=scan.metadata.get("pixel_size_um"), overwrite=True) as writer:
        writer.write(0, result.volume)
        writer.finish(provenance_record(
            params=params, center=CenterChoice(result.center, result.center_confidence, result.center_method),
            source={"path": str(Path(args.file).resolve()), "sha256": file_sha256(args.file)},
            call=command_line(), timings_s=result.timings, shape=result.volume.shape, rows=result.rows,
            voxel_size_um=scan.metadata.get("pixel_size_um"), engine=result.engine, warnings=result.warnings))
    png = save_orthoslices_png(preview_slices(result.volume), out.with_name(out.name + "_slices.png"),
                               f"centre {result.center:.2f} px")
    summary = {
        "center": round(result.center, 2),
        "center_confidence": round(result.center_confidence, 3),
        "center_method": result.center_method,
        "shape": list(result.volume.shape),
        "params_hash": params.params_hash,
        "seconds": round(result.timings["total"], 2),
        "png": str(png),
    }
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
