"""``bluesky-tomo-hpc demo``: a simulated scan reconstructed end to end on embedded defaults."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from .errors import positive_int, writable_folder


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="simulated scan -> preview -> full volume -> batch job -> results in Tiled",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Run a simulated tomography scan (a 3D Shepp-Logan phantom seen by a simulated detector:\n"
            "Poisson noise, dark current, non-uniform flat field, off-centre rotation axis) through a\n"
            "real Bluesky RunEngine with this library's callbacks. Raw data and reconstructions go to\n"
            "an embedded Tiled server over the data folder; a PNG of three orthogonal slices is saved.\n"
            "The web page runs beside Tiled and shows the scan live: its address, with the key, is\n"
            "printed first. With --serve it keeps running afterwards. Settings come from the same\n"
            "loader as every command (file, BLUESKY_TOMO_HPC__* environment); the live preview goes to\n"
            "preview.zmq_address, or a free loopback port. Everything stays on this machine (127.0.0.1)."
        ),
    )
    p.add_argument("--data-dir", type=Path, default=Path("tomo_hpc_data"),
                   help="where raw HDF5, Tiled catalog, results and previews go (default ./tomo_hpc_data)")
    p.add_argument("--projections", type=positive_int, default=180,
                   help="number of projections (default 180)")
    p.add_argument("--rows", type=positive_int, default=64, help="detector rows (default 64)")
    p.add_argument("--columns", type=positive_int, default=128, help="detector columns (default 128)")
    p.add_argument("--flavour", choices=["ophyd_async", "ophyd_v1"], default="ophyd_async",
                   help="simulated detector: ophyd-async (HDF5 + StreamResource) or ophyd v1 "
                        "(images in events)")
    p.add_argument("--executor", choices=["auto", "local", "none"], default="auto",
                   help="batch job after the scan: local mpiexec, none, or auto (default): local "
                        "where mpiexec is found (the core install has it), else none, saying so")
    p.add_argument("--ranks", type=positive_int, default=2, help="MPI ranks of the batch job (default 2)")
    p.add_argument("--serve", action="store_true",
                   help="keep Tiled and the web page running afterwards until Ctrl-C")
    p.add_argument("--port", type=int, default=0,
                   help="TCP port on 127.0.0.1 for Tiled and the web page (default: any free port)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ..live.demo_run import run_demo
    from ..settings import load_settings
    from ..web.server import web_mounts

    writable_folder(args.data_dir, "--data-dir")
    settings = load_settings()

    console = Console(soft_wrap=True)  # long paths stay on one line, for copy and paste
    console.rule("[bold]bluesky_tomo_hpc demo")
    executor = _executor(args.executor, console)
    progress = Progress(TextColumn("[cyan]{task.description:<16}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), console=console, transient=False)
    task = progress.add_task("frames", total=None)

    def on_progress(done: int, total: int, stream: str) -> None:
        progress.update(task, completed=done, total=total or None, description=f"frames ({stream})")

    with progress:
        report, pipeline = run_demo(
            args.data_dir, num_projections=args.projections, shape=(args.rows, args.columns),
            flavour=args.flavour, executor=executor, ranks=args.ranks,
            say=lambda m: console.print(m, highlight=False), on_progress=on_progress,
            keep_server=args.serve, settings=settings, mounts=web_mounts, port=args.port,
        )
    _print_report(console, report)
    if pipeline is not None:
        console.print(f"Serving until Ctrl-C: web page {report.web_url}?api_key={report.api_key}  "
                      f"Tiled {report.tiled_uri}", highlight=False)
        try:
            while True:
                time.sleep(1)
        except KeyboardInterrupt:
            pass
        finally:
            pipeline.close()
    return 1 if report.errors else 0


def _executor(choice: str, console: Any) -> str:
    """``auto``: the local executor where ``mpiexec`` is found, else no batch job, with the line
    that says how to get it (a demo without MPI still shows the scan, preview and full volume)."""
    if choice != "auto":
        return choice
    from ..extras import how_to_install
    from ..jobs.executors.mpiexec import find_mpiexec

    if find_mpiexec():
        return "local"
    console.print(f"Batch job        skipped: no mpiexec here ({how_to_install('mpiexec')})", highlight=False)
    return "none"


def _print_report(console, report) -> None:  # type: ignore[no-untyped-def]
    t = report.timings
    console.rule("[bold]results")
    if report.center is not None:
        console.print(f"Reconstruction   volume {report.volume_shape} float32 "
                      f"({report.volume_bytes / 1e6:.1f} MB) in {t.get('reconstruction', 0):.2f} s; "
                      f"rotation centre {report.center:.2f} px (confidence {report.center_confidence:.2f})")
    if report.phantom_correlation is not None:
        console.print(f"Quality          correlation with the phantom: {report.phantom_correlation:.3f}")
    console.print(f"Tiled URI        {report.tiled_uri}")
    if report.web_url:
        console.print(f"Web page         {report.web_url}?api_key={report.api_key}", highlight=False)
    console.print(f"Raw run          {report.raw_node}  (scan_id {report.scan_id})")
    for kind, node in sorted(report.nodes.items()):
        console.print(f"Result ({kind:<5})   {node}")
    if report.batch:
        console.print(f"OME-Zarr         {report.batch['ome_zarr']}")
        console.print(f"TIFF stack       {report.batch['tiff_dir']}")
        console.print(f"Provenance       {report.batch['provenance']}")
    for kind, png in sorted(report.pngs.items()):
        console.print(f"PNG ({kind:<5})      {png}")
    console.print(f"Timings          scan {t.get('scan', 0):.1f} s, "
                  f"after scan {t.get('after_scan', 0):.1f} s, total {t.get('total', 0):.1f} s "
                  f"(Tiled start {t.get('tiled_start', 0):.1f} s)")
    for err in report.errors:
        console.print(f"[red]problem[/red]          {err}")
    console.print(
        "\nRead it from another process (server running: bluesky-tomo-hpc serve --data-dir "
        f"{report.data_dir}):\n"
        "  import os; from tiled.client import from_uri\n"
        "  c = from_uri('http://127.0.0.1:8000/api/v1', api_key=os.environ['TILED_API_KEY'])\n"
        f"  vol = c['{next(iter(report.nodes.values()), 'processed/...')}']['volume'][10]",
        highlight=False,
    )
    sys.stdout.flush()
