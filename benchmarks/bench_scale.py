#!/usr/bin/env python3
"""Peak memory, time per stage and disk of the in-process pipeline from 0.5 GB to a 21 GB scan.

Each size runs in its own process: a real RunEngine fly-scans the ophyd-async simulated detector,
which writes full 2160 x 2560 uint16 frames into HDF5 (the ALS geometry of the seed paper; 21 GB
is all 1969 projections), through ``TomoPipeline`` (embedded Tiled server, TiledWriter, the
tomography callback with the live preview and the full volume at stop). The full volume is the
whole volume by default (every detector row, read back from its file in row slabs), at
``--binning`` 1 (full resolution) or 2; ``--rows N`` keeps N rows around the middle instead (a
quick look). Frames are cheap to make (a two-disc cylinder: one analytic row per angle, broadcast
to every detector row), so the simulator is not the bottleneck.

Printed per size: peak RSS of the process above the baseline taken before the scan (and the
absolute peak), the scan's wall time, stop -> full volume in Tiled and its stages, raw and
volume bytes on disk. Each size's data is deleted after it is measured.

Usage: bench_scale.py [--sizes 0.5 2 8 21] [--repeat 1] [--binning 1] [--rows N] [--budget-mb 2048]
                      [--data-dir DIR] [--json out.json] [--png benchmarks/bench_scale.png]

The ALS scan at stop, whole volume (needs ~22 GB of raw frames plus the volume on disk: 7 GB at
binning 2, 56 GB at full resolution; a quiet machine):
    bench_scale.py --sizes 21 --binning 2 --json als_bin2.json
    bench_scale.py --sizes 21 --binning 1 --json als_full.json
       bench_scale.py --plot-only a.json b.json   # one plot of several runs
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

NY, NX = 2160, 2560
ALS_PROJECTIONS = 1969
N_CALIB = 10  # darks and flats each
FRAME_BYTES = NY * NX * 2


def projections_for(size_gb: float) -> int:
    """Projections that make ``size_gb`` (decimal GB) of raw frames; 21 GB and more: the ALS scan's
    1969 (21.8 GB with its darks and flats)."""
    if size_gb >= 21:
        return ALS_PROJECTIONS
    return max(8, round(size_gb * 1e9 / FRAME_BYTES) - 2 * N_CALIB)


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mib() -> float:
    """This process's peak (VmHWM): ru_maxrss would also count the driver's peak at the spawn."""
    with open("/proc/self/status") as f:
        return next(int(x.split()[1]) for x in f if x.startswith("VmHWM:")) / 1024


def tree_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def install_fast_frames(simulator, offset_px: float) -> None:
    """Replace the simulator's per-frame physics with one analytic row per angle, broadcast."""
    import numpy as np

    s = np.arange(NX) - (NX - 1) / 2 - offset_px
    discs = ((0.0, 0.0, 0.35 * NX, 0.002), (0.15 * NX, 0.05 * NX, 0.08 * NX, 0.004))  # x, y, r, mu
    flat, dark = 20000.0, 100.0

    def acquire(*, angle_deg: float, shutter_open: bool, sample_in: bool):
        if not shutter_open:
            row = np.full(NX, dark)
        elif not sample_in:
            row = np.full(NX, flat + dark)
        else:
            t = np.deg2rad(angle_deg)
            li = np.zeros(NX)
            for x, y, r, mu in discs:
                d = s - (x * np.cos(t) + y * np.sin(t))
                li += mu * 2 * np.sqrt(np.clip(r * r - d * d, 0, None))
            row = flat * np.exp(-li) + dark
        simulator.frames_acquired += 1
        return np.broadcast_to(np.rint(row).astype(np.uint16), (NY, NX))

    simulator.acquire = acquire


def child(size_gb: float, root: Path, rows: int, budget_mb: float, preview: bool, binning: int = 1) -> dict:
    """One size, in this process; returns the measurements."""

    from bluesky import RunEngine

    from bluesky_tomo_hpc.live.session import TomoPipeline
    from bluesky_tomo_hpc.settings import Settings
    from bluesky_tomo_hpc.sim.beamline import make_sim_beamline
    from bluesky_tomo_hpc.sim.plans import tomo_fly_scan

    n_proj = projections_for(size_gb)
    mid = NY // 2
    recon = {"binning": binning, "rows": (mid - rows // 2, mid + rows - rows // 2) if rows else None}
    settings = Settings(data_dir=root, memory_budget_mb=budget_mb, jobs={"executor": "none"},
                        preview={"enabled": preview, "binning": 4}, recon=recon)
    RE = RunEngine({})
    pipe = TomoPipeline.from_settings(settings)
    bl = make_sim_beamline(root / "raw", shape=(NY, NX))
    install_fast_frames(bl.simulator, offset_px=3.5)
    pipe.subscribe(RE)
    baseline = rss_mib()
    t0 = time.perf_counter()
    (uid,) = RE(tomo_fly_scan(bl.detector, bl.stage, num_projections=n_proj, num_darks=N_CALIB,
                              num_flats=N_CALIB, exposure=0.01))
    t_stop = time.perf_counter()
    pipe.callback.flush(3600)
    scan_peak = peak_rss_mib()
    ok = pipe.wait(7200)
    t_done = time.perf_counter()
    peak = peak_rss_mib()
    outcome = pipe.service.outcomes.get(uid)
    result = {
        "size_gb": size_gb, "projections": n_proj, "frame": [NY, NX], "rows": rows or NY, "binning": binning,
        "volume_shape": list(outcome.shape) if outcome and outcome.ok else None, "budget_mb": budget_mb,
        "preview": preview, "raw_bytes": tree_bytes(root / "raw"),
        "volume_bytes": tree_bytes(root / "volumes"),
        "scratch_bytes": tree_bytes(root / "scratch"), "baseline_mib": baseline, "peak_mib": peak,
        "peak_above_baseline_mib": peak - baseline, "scan_peak_above_baseline_mib": scan_peak - baseline,
        "scan_s": t_stop - t0, "stop_to_volume_s": t_done - t_stop, "ok": bool(ok and outcome and outcome.ok),
        "message": outcome.message if outcome else "no outcome",
        "timings_s": dict(outcome.timings) if outcome else {},
        "center": outcome.center if outcome else None,
    }
    pipe.close()
    return result


def plot(results: list[dict], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    sizes = sorted({r["size_gb"] for r in results})
    for key, label in (("peak_above_baseline_mib", "peak above baseline"), ("peak_mib", "peak (absolute)")):
        med = [sorted(r[key] for r in results if r["size_gb"] == s)[len([r for r in results
               if r["size_gb"] == s]) // 2] / 1024 for s in sizes]
        ax.plot(sizes, med, "o-", label=label)
    ax.axhline(4.0, color="grey", ls="--", label="target 4 GB")
    ax.set_xscale("log")
    ax.set_xticks(sizes, [f"{s:g}" for s in sizes])
    ax.set_xlabel("raw scan size (GB, 2160 x 2560 uint16 frames)")
    ax.set_ylabel("resident memory (GiB)")
    ax.set_title("in-process pipeline: full volume at stop")
    ax.legend()
    fig.tight_layout()
    fig.savefig(png)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=float, nargs="+", default=[0.5, 2, 8, 21])
    ap.add_argument("--repeat", type=int, default=1, help="interleaved repeats of every size")
    ap.add_argument("--rows", type=int, default=0, help="detector rows in the full volume (0: all, default)")
    ap.add_argument("--binning", type=int, default=1, help="binning of the full volume (default 1)")
    ap.add_argument("--budget-mb", type=float, default=2048)
    ap.add_argument("--no-preview", action="store_true")
    ap.add_argument("--data-dir", type=Path, default=Path("benchmarks/_scale_data"))
    ap.add_argument("--json", type=Path)
    ap.add_argument("--png", type=Path, default=Path(__file__).with_name("bench_scale.png"))
    ap.add_argument("--plot-only", type=Path, nargs="+", metavar="JSON",
                    help="no run: plot (and print) the results of earlier --json files together")
    ap.add_argument("--child", type=float, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.plot_only:
        results = [r for f in args.plot_only for r in json.loads(f.read_text())]
        plot(results, args.png)
        print(f"plot: {args.png}")
        return 0
    if args.child is not None:
        print("RESULT " + json.dumps(child(args.child, args.data_dir, args.rows, args.budget_mb,
                                           not args.no_preview, args.binning)), flush=True)
        return 0
    results = []
    for rep in range(args.repeat):
        for size in args.sizes:
            root = args.data_dir / f"{size:g}GB-{rep}"
            shutil.rmtree(root, ignore_errors=True)
            cmd = [sys.executable, __file__, "--child", str(size), "--data-dir", str(root), "--rows",
                   str(args.rows), "--binning", str(args.binning), "--budget-mb", str(args.budget_mb)]
            cmd += ["--no-preview"] * args.no_preview
            load = os.getloadavg()
            proc = subprocess.run(cmd, capture_output=True, text=True)
            shutil.rmtree(root, ignore_errors=True)  # /work is shared: never keep a size's data
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode != 0 or not lines:
                print(f"{size:g} GB failed:\n{proc.stderr[-3000:]}", file=sys.stderr)
                continue
            r = json.loads(lines[-1][len("RESULT "):])
            r["load_before"] = load
            r["load_after"] = os.getloadavg()
            results.append(r)
            t = r["timings_s"]
            print(f"{size:5g} GB  {r['projections']:5d} proj  peak +{r['peak_above_baseline_mib']:7.0f} MiB "
                  f"(abs {r['peak_mib']:6.0f}; scan +{r['scan_peak_above_baseline_mib']:5.0f})  "
                  f"scan {r['scan_s']:6.1f} s  stop->volume {r['stop_to_volume_s']:6.1f} s "
                  f"(stage {t.get('stage', 0):.1f} centre {t.get('center', 0):.1f} "
                  f"preprocess {t.get('preprocess', 0):.1f} recon {t.get('reconstruct', 0):.1f})  "
                  f"raw {r['raw_bytes'] / 1e9:6.2f} GB  "
                  f"volume {r['volume_shape']} {r['volume_bytes'] / 1e6:6.0f} MB  "
                  f"ok={r['ok']}  load {r['load_before'][0]:.1f}", flush=True)
            if not r["ok"]:
                print(f"  {r['message']}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    if results:
        plot(results, args.png)
        print(f"plot: {args.png}")
    return 0 if results and all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
