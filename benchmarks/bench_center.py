"""The automatic rotation centre on every reference dataset and on simulated scans of each hard
kind: reference, found, confidence, uncertainty, time; and what the centre costs.

Datasets (``../shared/data``; centres are 0-based pixel-index columns, references from each
folder's README): the TomoPy tooth (296), the PSI neutron wood 360 (284), its half-acquisition
crop (284) and interior crop (100), the Diamond STXM sinogram (no peer reference; our own
44.8 +/- 1.5 with sample drift). Simulated (``sim.scan_arrays.simulate_scan``, known centre,
Poisson noise, 256 px): 180 degrees; few projections (45); low contrast; rings; axis far from
the middle; interior (sample 1.8x the detector); 360 degrees; half acquisition; no sample.

Speed (``--speed``): a simulated 720 x 64 x 1024 scan reconstructed with the centre given and
with ``auto`` (the centre on all 64 rows, as ``recon`` does on one slab); and the live
preview's stop-time check on 2048-wide frames (0/180 pair registration + one-row slice).

Every figure is the median and (min-max) over ``--repeat`` interleaved runs; the load average
is printed: the machine is shared.

    python benchmarks/bench_center.py                 # datasets + simulated, 3 repeats
    python benchmarks/bench_center.py --speed         # + the 720 x 64 x 1024 timing
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bluesky_tomo_hpc.engine.center import CONFIDENCE_THRESHOLD, center_from_pair
from bluesky_tomo_hpc.engine.fourier import reconstruct_fourier
from bluesky_tomo_hpc.engine.params import ReconParams
from bluesky_tomo_hpc.engine.reconstruct import find_center, preprocess_projections, reconstruct_scan
from bluesky_tomo_hpc.model import ScanData
from bluesky_tomo_hpc.sim.scan_arrays import offset_axis_geometry, simulate_scan
from bluesky_tomo_hpc.sources.raw_files import load_scan

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
REAL = {
    "tooth (X-ray, 180, APS)": ("tomopy_tooth/tooth.h5", 296.0),
    "wood 360 (neutron, stripes, PSI)": ("muhrec_wood360/muhrec_wood360.h5", 284.0),
    "wood 360 half acquisition": ("muhrec_wood360_halfacq/muhrec_wood360_halfacq.h5", 284.0),
    "wood 180 interior": ("muhrec_wood180_interior/muhrec_wood180_interior.h5", 100.0),
    "STXM 360 (52 angles, drift)": ("savu_i18_stxm360/savu_i18_stxm360.h5", None),
}
_HALF = offset_axis_geometry(256)
SIM: dict[str, dict] = {
    "sim 180": {"rotation_offset_px": 7.3},
    "sim few projections (45)": {"rotation_offset_px": -4.6, "n_angles": 45},
    "sim low contrast": {"rotation_offset_px": 3.2, "peak_line_integral": 0.03, "photons": 5e3},
    "sim rings (30 columns)": {"rotation_offset_px": 5.7,
                               "ring_columns": dict.fromkeys(range(12, 250, 8), 0.05)},
    "sim axis far from the middle (+41 px)": {"rotation_offset_px": 41.3, "fill": 0.45},
    "sim interior (sample 1.8x detector)": {"rotation_offset_px": 2.4, "fill": 1.8},
    "sim 360": {"rotation_offset_px": -12.6, "span_deg": 360, "n_angles": 720},
    "sim half acquisition": {"rotation_offset_px": _HALF[0] + 0.3, "fill": _HALF[1], "span_deg": 360,
                             "n_angles": 720},
    "sim no sample": {"peak_line_integral": 1e-4},
}


def _cases() -> dict[str, tuple[Callable[[], ScanData], float | None]]:
    out: dict[str, tuple[Callable[[], ScanData], float | None]] = {}
    for name, (rel, ref) in REAL.items():
        if (DATA / rel).is_file():
            out[name] = (lambda rel=rel: load_scan(DATA / rel), ref)
    for name, kw in SIM.items():
        scan = simulate_scan((4, 256), **{"n_angles": 360, **kw})
        ref = None if "no sample" in name else scan.metadata["true_center"]
        out[name] = (lambda scan=scan: scan, ref)
    return out


def accuracy(repeat: int) -> None:
    cases = _cases()
    params = ReconParams()
    prepared = {}
    for name, (load, ref) in cases.items():
        proj_log, theta, _ = preprocess_projections(load(), params)
        prepared[name] = (proj_log, theta, ref)
    runs: dict[str, list] = {name: [] for name in cases}
    for _ in range(repeat):  # interleaved: every case once per round
        for name, (proj_log, theta, _) in prepared.items():
            t = time.perf_counter()
            est = find_center(proj_log, theta, params)
            runs[name].append((est, time.perf_counter() - t))
    print(f"\nload average before/after: see below; threshold {CONFIDENCE_THRESHOLD}")
    print("| dataset | shape | reference | found | error | confidence | uncertainty (px) | method "
          "| time (s) median (range) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, rs in runs.items():
        proj_log, _, ref = prepared[name]
        est = rs[0][0]
        ts = [t for _, t in rs]
        err = f"{est.center - ref:+.2f}" if ref is not None else "n/a"
        shown_ref = "none" if ref is None else f"{ref:.2f}"
        print(f"| {name} | {proj_log.shape[0]}x{proj_log.shape[1]}x{proj_log.shape[2]} "
              f"| {shown_ref} | {est.center:.2f} | {err} | {est.confidence:.2f} "
              f"| {est.details.get('uncertainty_px', 0.0):.2f} | {est.method} "
              f"| {np.median(ts):.2f} ({min(ts):.2f}-{max(ts):.2f}) |")


def speed(repeat: int) -> None:
    scan = simulate_scan((64, 1024), n_angles=720, rotation_offset_px=9.3)
    given, auto, share = [], [], []
    for _ in range(repeat):
        t = time.perf_counter()
        reconstruct_scan(scan, ReconParams(), center=scan.metadata["true_center"])
        given.append(time.perf_counter() - t)
        t = time.perf_counter()
        res = reconstruct_scan(scan, ReconParams())
        auto.append(time.perf_counter() - t)
        share.append(res.timings["center"] / given[-1])
        print(f"  given {given[-1]:.2f} s, auto {auto[-1]:.2f} s (centre {res.timings['center']:.2f} s, "
              f"{res.center:.2f} vs true {scan.metadata['true_center']:.2f})")
    ratio = [(a - g) / g for a, g in zip(auto, given, strict=True)]
    print(f"720x64x1024: given {np.median(given):.2f} s ({min(given):.2f}-{max(given):.2f}), auto "
          f"{np.median(auto):.2f} s ({min(auto):.2f}-{max(auto):.2f}); the centre adds "
          f"{100 * np.median(ratio):.0f} % ({100 * min(ratio):.0f}-{100 * max(ratio):.0f}); the centre's "
          f"own time is {100 * np.median(share):.0f} % ({100 * min(share):.0f}-{100 * max(share):.0f}) "
          "of the given-centre run")
def preview(repeat: int) -> None:
    """The live preview's stop-time centre check on 2048-wide frames: the 0/180 pair registration
    (always), and the one-row xy recompute (only when the check finds the centre wrong)."""
    rng = np.random.default_rng(0)
    p0 = rng.random((2048, 2048), dtype=np.float32)
    p180 = np.fliplr(np.roll(p0, 6, axis=1)).copy()
    row = rng.random((1, 1500, 2048), dtype=np.float32)
    theta = np.linspace(0, np.pi, 1500, endpoint=False)
    pair, recompute = [], []
    for _ in range(repeat):
        t = time.perf_counter()
        c, _ = center_from_pair(p0, p180)
        pair.append(time.perf_counter() - t)
        t = time.perf_counter()
        reconstruct_fourier(row, theta, c, threads=1)
        recompute.append(time.perf_counter() - t)
    print(f"preview centre check, 2048x2048 frames: pair {np.median(pair):.2f} s "
          f"({min(pair):.2f}-{max(pair):.2f}); xy recompute, 1500 angles: {np.median(recompute):.2f} s "
          f"({min(recompute):.2f}-{max(recompute):.2f})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--speed", action="store_true", help="also time the 720 x 64 x 1024 scan and the preview")
    ap.add_argument("--preview-only", action="store_true", help="only the preview's centre check timing")
    args = ap.parse_args()
    print(f"load average at start {os.getloadavg()}")
    if not args.preview_only:
        accuracy(args.repeat)
    if args.speed and not args.preview_only:
        speed(args.repeat)
    if args.speed or args.preview_only:
        preview(args.repeat)
    print(f"load average at end {os.getloadavg()}")


if __name__ == "__main__":
    main()
