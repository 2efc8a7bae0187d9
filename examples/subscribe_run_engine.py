"""Subscribe automatic reconstruction to a RunEngine and take one simulated scan.

What a beamline profile does, as one script: a RunEngine, the simulated beamline of
``bluesky_tomo_hpc.sim``, ``bluesky_tomo_hpc.configure(RE, settings)`` (raw runs into Tiled,
full volume at stop, batch job if ``--executor`` asks), one ``tomo_scan``, then the
reconstruction read back from Tiled::

    python examples/subscribe_run_engine.py --data-dir /tmp/tomo --projections 180

With no ``tiled.uri`` in the settings an embedded Tiled server starts over the data folder; the
catalog stays there after the script ends (``bluesky-tomo-hpc serve`` opens it again).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bluesky import RunEngine

import bluesky_tomo_hpc
from bluesky_tomo_hpc.results.tiled_results import latest_reconstruction
from bluesky_tomo_hpc.settings import load_settings
from bluesky_tomo_hpc.sim import make_sim_beamline, tomo_scan


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default="tomo_data", help="raw HDF5, results, Tiled catalog")
    parser.add_argument("--projections", type=int, default=90)
    parser.add_argument("--shape", default="32x64", help="detector rows x columns of the simulation")
    parser.add_argument("--executor", default="none", choices=["none", "local", "slurm", "nersc", "alcf"],
                        help="batch job after the scan (default none)")
    args = parser.parse_args(argv)

    data_dir = Path(args.data_dir).resolve()
    # the settings file and BLUESKY_TOMO_HPC__* variables still apply; these two are explicit
    settings = load_settings()
    jobs = settings.jobs.model_copy(update={"executor": args.executor})
    settings = settings.model_copy(update={"data_dir": data_dir, "jobs": jobs})

    RE = RunEngine()  # first: the ophyd-async devices connect in its event loop
    rows, cols = (int(n) for n in args.shape.split("x"))
    beamline = make_sim_beamline(data_dir / "raw", shape=(rows, cols))
    tomo = bluesky_tomo_hpc.configure(RE, settings)
    try:
        (uid,) = RE(tomo_scan(beamline.detector, beamline.stage, num_projections=args.projections,
                              num_darks=5, num_flats=5))
        if not tomo.wait(timeout=300):
            raise SystemExit("the reconstruction did not finish within 300 s")
        node = latest_reconstruction(tomo.processed, uid, kind="full")
        if node is None:
            raise SystemExit(f"no reconstruction of run {uid} in Tiled; errors: {tomo.router.errors}")
        summary = {
            "raw_uid": uid,
            "node": node.item["id"],
            "volume_shape": list(node["volume"].shape),
            "center": round(node.metadata["center"], 2),
            "true_center": beamline.rotation_center_px,
            "preview_png": str(tomo.result_writer.pngs.get(uid, "")),
            "tiled_uri": getattr(tomo.server, "uri", None),
        }
        print(json.dumps(summary, indent=2))
        return summary
    finally:
        tomo.close()


if __name__ == "__main__":
    main()
