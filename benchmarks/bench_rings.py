"""Ring (stripe) removal on real and simulated data: which method should be the default.

Real: the PSI neutron sinogram ``../shared/data/muhrec_wood360`` (360 degrees, many detector
stripes), reconstructed at its reference centre 284. No truth exists, so the figure is the
*ring residual*: the azimuthal mean of the slice around the axis, minus its running median
over 9 px of radius (a ring is a bump in that profile; the wood's structure averages out over
a full circle), RMS over radii 5 .. 0.9 R, relative to the slice's RMS; and the *arc
residual*, the same per 10-degree sector (partial rings count; the wood's structure counts
too, so it never reaches 0). Lower is better.
Simulated: a Shepp-Logan scan (``sim.scan_arrays``, 256 px, 360 angles over 180 degrees) with
30 non-linear ring columns, one dead column and one column bad for a third of the scan
(partial: an arc); the figure is the RMS of (slice - slice of the stripe-free scan) inside
the circle, relative to the slice's RMS: what the stripes and the filter together leave.

    python benchmarks/bench_rings.py            # median and range over --repeat runs (time)
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
from scipy.ndimage import median_filter

from bluesky_tomo_hpc.engine.params import ReconParams, RingRemoval
from bluesky_tomo_hpc.engine.preprocess import circular_mask
from bluesky_tomo_hpc.engine.reconstruct import preprocess_projections, reconstruct_sinograms
from bluesky_tomo_hpc.engine.stripes import remove_rings
from bluesky_tomo_hpc.sim.scan_arrays import simulate_scan
from bluesky_tomo_hpc.sources.raw_files import load_scan

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
METHODS = ("none", "fw", "sort", "all")


def ring_residual(img: np.ndarray) -> float:
    n = img.shape[0]
    yy, xx = np.indices(img.shape)
    r = np.hypot(yy - (n - 1) / 2, xx - (n - 1) / 2).round().astype(int)
    prof = np.bincount(r.ravel(), img.ravel()) / np.maximum(np.bincount(r.ravel()), 1)
    hi = int(0.9 * n / 2)
    bump = (prof - median_filter(prof, 9, mode="nearest"))[5:hi]
    return float(np.sqrt(np.mean(bump**2)) / np.sqrt(np.mean(img[r < hi] ** 2)))


def arc_residual(img: np.ndarray, sectors: int = 36) -> float:
    """As :func:`ring_residual` but per 10-degree sector: partial rings (arcs) count too, and a
    filter that spreads an arc into a full ring is not rewarded for it."""
    from scipy.ndimage import map_coordinates

    n = img.shape[0]
    hi = int(0.9 * n / 2)
    rr = np.arange(5, hi, dtype=float)
    out = []
    for k in range(sectors):
        phis = np.deg2rad(np.linspace(k * 360 / sectors, (k + 1) * 360 / sectors, 16, endpoint=False))
        ys = (n - 1) / 2 + rr[:, None] * np.sin(phis)[None, :]
        xs = (n - 1) / 2 + rr[:, None] * np.cos(phis)[None, :]
        prof = map_coordinates(img, [ys.ravel(), xs.ravel()], order=1).reshape(ys.shape).mean(axis=1)
        out.append(prof - median_filter(prof, 9, mode="nearest"))
    yy, xx = np.indices(img.shape)
    inside = np.hypot(yy - (n - 1) / 2, xx - (n - 1) / 2) < hi
    return float(np.sqrt(np.mean(np.square(out))) / np.sqrt(np.mean(img[inside] ** 2)))


def _filtered(proj_log: np.ndarray, method: str) -> tuple[np.ndarray, float]:
    t = time.perf_counter()
    out = proj_log if method == "none" else remove_rings(proj_log, RingRemoval(method=method))
    return out, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    print(f"load average {os.getloadavg()}")
    wood = load_scan(DATA / "muhrec_wood360" / "muhrec_wood360.h5")
    wlog, wtheta, _ = preprocess_projections(wood, ReconParams())
    nx = 256
    cols = {int(c): 0.05 for c in np.random.default_rng(3).choice(np.arange(10, nx - 10), 30, replace=False)}
    clean_scan = simulate_scan((4, nx), n_angles=360, rotation_offset_px=0.0)
    ringed = simulate_scan((4, nx), n_angles=360, rotation_offset_px=0.0, ring_columns=cols)
    clean, stheta, _ = preprocess_projections(clean_scan, ReconParams())
    bad, _, _ = preprocess_projections(ringed, ReconParams())
    bad[:, :, 60] = 0.05  # dead column
    bad[120:240, :, 170] += 0.3  # partial stripe (an arc)
    c_sim = (nx - 1) / 2
    ref = circular_mask(reconstruct_sinograms(clean[:, 1:2], stheta, c_sim, ReconParams())[0], 0.95)
    print("| method | wood360 ring residual | wood360 arc residual | simulated artefact RMS "
          "| filter time wood360 (s) |")
    print("|---|---|---|---|---|")
    for method in METHODS:
        times = []
        for _ in range(args.repeat):
            wf, dt = _filtered(wlog, method)
            times.append(dt)
        img = circular_mask(reconstruct_sinograms(wf, wtheta, 284.0, ReconParams())[0], 0.95)
        sf, _ = _filtered(bad[:, 1:2], method)
        simg = circular_mask(reconstruct_sinograms(sf, stheta, c_sim, ReconParams())[0], 0.95)
        art = float(np.sqrt(np.mean((simg - ref) ** 2)) / np.sqrt(np.mean(ref**2)))
        print(f"| {method} | {ring_residual(img):.4f} | {arc_residual(img):.4f} | {art:.4f} "
              f"| {np.median(times):.3f} ({min(times):.3f}-{max(times):.3f}) |")


if __name__ == "__main__":
    main()
