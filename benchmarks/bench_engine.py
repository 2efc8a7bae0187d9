"""Reconstruction speed and accuracy: ours (NUFFT), the FINUFFT floor and PyPI peers, one run.

Input: exact analytic line integrals of the modified Shepp-Logan ellipse phantom (no projector,
no inverse crime), parallel beam over 180 degrees (endpoint excluded), axis at column n/2,
float32 sinograms, ramp filter everywhere.

Accuracy: NRMSE (and SSIM) inside a disc of 0.95 n/2 after a least-squares scale fit against a
4x4-supersampled analytic truth (pixel averages); the fitted scale is printed (1.0 =
quantitative output). Ours is scored exactly as it comes out, against the engine's phantom
(``engine.projector.ellipse_image``: the engine's own orientation), and the scoring checks
itself before any timing: the truth scores 0 against itself, a flipped truth scores badly, and
ours must score best upright; a wrong orientation stops the run with an error. Peers use their
own pixel and angle conventions, so each peer's slice is compared in the orientation (8
flips/rotations) and image centre that fits best.

Timing: every configuration (method x threads) is run ``--repeats`` times, interleaved (round
robin, so slow phases of the shared host hit all alike), after an untimed warm-up that makes
the plans; printed are the median and range of wall seconds per slice, the median CPU seconds per
slice (less sensitive to other jobs on the host) and the load average. ``Nt`` means the
process is pinned to N CPUs (``sched_setaffinity``) and the method is asked for N threads.

Rows:
  * ``ours fourier``: ``engine.fourier.reconstruct_fourier`` (cached plan).
  * ``ours reconstruct_scan``: the entry point every sink calls (``engine.reconstruct``) on a
    ScanData of float32 transmissions (flats 1, darks 0): normalise, -log, reconstruct, mask.
  * ``nufft floor``: the type-1 NUFFT (FINUFFT's spreading + SciPy's FFT + deconvolution) alone
    on the same points (in the same bin order) and grid, one per thread: what the NUFFT step of
    ours pays; the rest of ours (filtering, windowing, reading) is the difference.
  * ``tomopy gridrec``: TomoPy's gridrec as beamlines call it (``tomopy.recon(proj, theta,
    center, algorithm="gridrec", filter_name="ramlak", ncore=N)`` on the projections, no padding
    of our own), and ``tomopy gridrec padded`` through the project's adapter
    (``engine.tomopy_engine.reconstruct_tomopy``: edge-padded to 2n, the fair-accuracy anchor).
    Both run whenever ``import tomopy`` works (TomoPy is not on PyPI: build it from its source or
    take conda-forge's), in the same process, rounds interleaved with ours, same slices per call.
  * peers (``pip install .[bench]``): algotom DFI and FBP, ASTRA CPU FBP (linear projector),
    scikit-image ``iradon``. ASTRA and scikit-image hold the GIL: their 2t runs 2 processes.

    python benchmarks/bench_engine.py --quick          # 180x256 and 360x512, a minute or two
    python benchmarks/bench_engine.py                  # 720x1024 and 1500x2048 (tens of minutes)
    python benchmarks/bench_engine.py --sizes 720x1024 --skip peers --repeats 9 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field

import numpy as np

from bluesky_tomo_hpc.engine.fourier import fourier_plan, fourier_width, reconstruct_fourier
from bluesky_tomo_hpc.engine.params import ReconParams
from bluesky_tomo_hpc.engine.projector import MODIFIED_SHEPP_LOGAN, ellipse_image, ellipse_sinogram
from bluesky_tomo_hpc.engine.reconstruct import reconstruct_scan
from bluesky_tomo_hpc.engine.tomopy_engine import tomopy_available
from bluesky_tomo_hpc.model import ScanData

PEERS = ("algotom dfi", "algotom fbp", "astra cpu fbp", "skimage iradon")
TOMOPY = ("tomopy gridrec", "tomopy gridrec padded")  # fast: timed like ours (same slices, rounds)
PROCESS_PEERS = ("astra cpu fbp", "skimage iradon")  # they hold the GIL: 2t runs 2 processes
TRUTH_SUPERSAMPLE = 4


@dataclass
class Row:
    size: str
    method: str
    threads: int
    slices: int
    repeats: int
    s_per_slice_median: float
    s_per_slice_min: float
    s_per_slice_max: float
    cpu_s_per_slice_median: float
    nrmse: float | None
    ssim: float | None
    scale: float | None
    times: list[float] = field(default_factory=list)


# -- phantom and truth ---------------------------------------------------------------------------
def truth_image(n: int, cx: float, cy: float | None = None, supersample: int = 4) -> np.ndarray:
    """The phantom on an n x n grid centred at pixel (``cy``, ``cx``), box average of s x s samples."""
    s = supersample
    cy = cx if cy is None else cy
    out = np.zeros((n, n), dtype=np.float64)
    sub = (np.arange(n * s) + 0.5) / s - 0.5  # pixel coordinates of sub-samples
    xs, ys = (sub - cx) / (n / 2.0), (sub - cy) / (n / 2.0)
    for r0 in range(0, n, 128):
        r1 = min(n, r0 + 128)
        y = ys[r0 * s : r1 * s][:, None]
        x = xs[None, :]
        block = np.zeros((y.shape[0], x.shape[1]), dtype=np.float64)
        for val, a, b, x0, y0, deg in MODIFIED_SHEPP_LOGAN:
            phi = np.deg2rad(deg)
            xr = (x - x0) * np.cos(phi) + (y - y0) * np.sin(phi)
            yr = -(x - x0) * np.sin(phi) + (y - y0) * np.cos(phi)
            block += val * ((xr / a) ** 2 + (yr / b) ** 2 <= 1.0)
        out[r0:r1] = block.reshape(r1 - r0, s, n, s).mean(axis=(1, 3))
    return out.astype(np.float32)


def disc(n: int, cx: float, cy: float | None = None) -> np.ndarray:
    yy, xx = np.mgrid[:n, :n].astype(np.float64)
    return np.hypot(xx - cx, yy - (cx if cy is None else cy)) < 0.95 * n / 2


def score(rec: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> tuple[float, float, float]:
    """(NRMSE, SSIM, scale) after the least-squares scale fit inside ``mask``."""
    from skimage.metrics import structural_similarity

    r, t = rec[mask].astype(np.float64), truth[mask].astype(np.float64)
    k = float((r @ t) / (r @ r)) if r @ r > 0 else 0.0
    nrmse = float(np.sqrt(np.mean((k * r - t) ** 2)) / np.sqrt(np.mean(t**2)))
    a = np.where(mask, truth, 0.0)
    b = np.where(mask, k * rec, 0.0)
    ssim = float(structural_similarity(a, b, data_range=float(truth.max() - truth.min())))
    return nrmse, ssim, k


ORIENTATIONS = ("as is", "rot90", "rot180", "rot270", "transposed", "rot90 transposed",
                "rot180 transposed", "rot270 transposed")


def oriented(img: np.ndarray, k: int) -> np.ndarray:
    """One of the 8 flips/rotations of a square image (0 = as is)."""
    cand = np.rot90(img, k % 4)
    return np.ascontiguousarray(cand.T if k >= 4 else cand)


def check_scoring(truth: np.ndarray) -> None:
    """The scorer must tell a right image from a wrong one before it scores anything."""
    n = truth.shape[-1]
    m = disc(n, (n - 1) / 2)
    if score(truth, truth, m)[0] > 1e-6:
        raise SystemExit("bench_engine: scoring is broken: the truth does not score 0 against itself")
    flipped = score(np.ascontiguousarray(truth[::-1]), truth, m)[0]
    if flipped < 0.2:
        raise SystemExit(f"bench_engine: scoring cannot see an upside-down slice (NRMSE {flipped:.3f})")


def score_ours(rec: np.ndarray, truth: np.ndarray) -> tuple[float, float, float]:
    """Ours exactly as it comes out; any other orientation scoring better stops the run."""
    n = rec.shape[-1]
    m = disc(n, (n - 1) / 2)
    as_is = score(rec, truth, m)
    for k in range(1, 8):
        other = score(oriented(rec, k), truth, m)[0]
        if other < as_is[0]:
            raise SystemExit(
                f"bench_engine: our slice scores NRMSE {as_is[0]:.3f} as it comes out but {other:.3f} "
                f"{ORIENTATIONS[k]}: the reconstruction (or the benchmark's truth) has the wrong orientation"
            )
    return as_is


def best_score(rec: np.ndarray, truths: dict[tuple[float, float], np.ndarray]) -> tuple[float, float, float]:
    """Peers: best orientation and image centre (their conventions differ from ours)."""
    n = rec.shape[-1]
    best = None
    for (cx, cy), t in truths.items():
        m = disc(n, cx, cy)
        for k in range(8):
            r = oriented(rec, k)
            rough = float(np.sqrt(np.mean((r[m] - t[m]) ** 2)))
            if best is None or rough < best[0]:
                best = (rough, r, t, m)
    _, r, t, m = best
    return score(r, t, m)


# -- runners: (sinos axis n/2, sinos axis (n-1)/2, theta, threads) -> (slices or None, nz) ----------
# each returns a callable that does one timed call; set-up (plans, compilation) happens before


def setup_ours(s_half, s_mid, theta, threads):
    n = s_half.shape[-1]
    fourier_plan(n, theta, fourier_width(n), threads=threads)
    return lambda: reconstruct_fourier(s_half, theta, n / 2, filter_name="ramp", threads=threads)


def setup_entry(s_half, s_mid, theta, threads):
    n, nz = s_half.shape[-1], s_half.shape[0]
    # transmissions down to e^-2 (the phantom's raw line integrals reach ~0.07 n: no detector
    # would see light through that); the scale fit in the scoring absorbs the factor
    k = 2.0 / float(s_half.max())
    proj = np.exp(-k * np.ascontiguousarray(s_half.transpose(1, 0, 2))).astype(np.float32)
    data = ScanData(projections=proj, theta=theta, darks=np.zeros((1, nz, n), np.float32),
                    flats=np.ones((1, nz, n), np.float32))
    params = ReconParams(filter_name="ramp", center=n / 2, chunk_slices=nz, engine="native")
    run = lambda: reconstruct_scan(data, params).volume  # noqa: E731 - threads: the pinned CPUs
    run.output_scale = k  # type: ignore[attr-defined] - the input's attenuation factor
    return run


def setup_floor(s_half, s_mid, theta, threads):
    """The type-1 NUFFT alone as ours runs it (FINUFFT's spreader + SciPy's FFT + deconvolution,
    on the same points and grid), one per thread, each taking whole slice pairs."""
    from bluesky_tomo_hpc.engine.fourier import window_width
    from bluesky_tomo_hpc.engine.nufft_spread import SpreadNUFFT, bin_order, grid_size

    n, nz = s_half.shape[-1], s_half.shape[0]
    L = window_width(n, fourier_width(n))
    omega = 2 * np.pi * np.fft.fftfreq(L)
    wy = (np.sin(theta)[:, None] * omega).ravel().astype(np.float32)
    wx = (np.cos(theta)[:, None] * omega).ravel().astype(np.float32)
    rng = np.random.default_rng(0)
    c = (rng.standard_normal(wx.size) + 1j * rng.standard_normal(wx.size)).astype(np.complex64)
    order = bin_order(wy, wx, grid_size(n))  # as ours hands them to FINUFFT
    plans = [SpreadNUFFT(n, (wy[order], wx[order]), order=order) for _ in range(threads)]
    pairs = (nz + 1) // 2

    def one(k):
        re, im = np.empty((n, n), np.float32), np.empty((n, n), np.float32)
        for _ in range(k, pairs, threads):
            plans[k].execute(c, re, im)

    def run():
        ts = [threading.Thread(target=one, args=(k,)) for k in range(threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        return None

    return run


def setup_tomopy(s_half, s_mid, theta, threads):
    """TomoPy gridrec as beamlines call it: projections in, its own (power-of-two) padding."""
    import tomopy  # type: ignore[import-not-found]

    n = s_half.shape[-1]
    proj = np.ascontiguousarray(s_half.transpose(1, 0, 2))  # what a loader hands TomoPy
    th = theta.astype(np.float32)
    return lambda: tomopy.recon(proj, th, center=n / 2, algorithm="gridrec", filter_name="ramlak",
                                ncore=threads)


def setup_tomopy_padded(s_half, s_mid, theta, threads):
    """TomoPy gridrec edge-padded to 2n through the project's adapter (engine=\"tomopy\")."""
    from bluesky_tomo_hpc.engine.tomopy_engine import reconstruct_tomopy

    n = s_half.shape[-1]
    params = ReconParams(filter_name="ramp", engine="tomopy")
    return lambda: reconstruct_tomopy(s_half, theta, n / 2, params, ncore=threads)


def _astra_one(args):
    import astra

    sino, theta = args
    n = sino.shape[-1]
    vol_geom = astra.create_vol_geom(n, n)
    proj_geom = astra.create_proj_geom("parallel", 1.0, n, theta)
    pid = astra.create_projector("linear", proj_geom, vol_geom)
    sid = astra.data2d.create("-sino", proj_geom, sino)
    rid = astra.data2d.create("-vol", vol_geom)
    cfg = astra.astra_dict("FBP")
    cfg.update(ReconstructionDataId=rid, ProjectionDataId=sid, ProjectorId=pid)
    cfg["option"] = {"FilterType": "Ram-Lak"}
    alg = astra.algorithm.create(cfg)
    astra.algorithm.run(alg)
    rec = astra.data2d.get(rid)
    astra.algorithm.delete(alg)
    astra.data2d.delete([sid, rid])
    astra.projector.delete(pid)
    return rec.astype(np.float32)


def _skimage_one(args):
    from skimage.transform import iradon

    sino, theta = args
    n = sino.shape[-1]
    rec = iradon(sino.T, np.rad2deg(theta), filter_name="ramp", output_size=n, circle=True)
    return rec.astype(np.float32)


def _per_slice(fn: Callable, sinos: np.ndarray, theta: np.ndarray, threads: int):
    jobs = [(s, theta) for s in sinos]
    if threads == 1:
        return lambda: np.stack([fn(j) for j in jobs])
    pool = ProcessPoolExecutor(threads)  # started here: pool start-up is not timed
    list(pool.map(_noop, range(threads)))
    return lambda: np.stack(list(pool.map(fn, jobs)))


def _noop(_):
    return None


def setup_astra(s_half, s_mid, theta, threads):
    return _per_slice(_astra_one, s_mid, theta, threads)


def setup_skimage(s_half, s_mid, theta, threads):
    return _per_slice(_skimage_one, s_half, theta, threads)


def _algotom(kind, s_half, theta, threads):
    import algotom.rec.reconstruction as rec

    n = s_half.shape[-1]
    data = np.ascontiguousarray(s_half.transpose(1, 0, 2))  # algotom: (M, nz, n)
    kw = {"angles": theta, "apply_log": False, "ncore": threads}
    if kind == "fbp":
        fn = rec.fbp_reconstruction
        kw.update(filter_name=None, gpu=False)
    else:
        fn = rec.dfi_reconstruction
        kw.update(filter_name=None)
    fn(data[:, :1], n / 2, **kw)  # numba compilation is not timed

    def run():
        out = np.asarray(fn(data, n / 2, **kw))
        return (out.transpose(1, 0, 2) if out.ndim == 3 else out[None]).astype(np.float32)

    return run


def setup_algotom_fbp(s_half, s_mid, theta, threads):
    return _algotom("fbp", s_half, theta, threads)


def setup_algotom_dfi(s_half, s_mid, theta, threads):
    return _algotom("dfi", s_half, theta, threads)


METHODS: dict[str, Callable] = {
    "ours fourier": setup_ours,
    "ours reconstruct_scan": setup_entry,
    "nufft floor": setup_floor,
    "tomopy gridrec": setup_tomopy,
    "tomopy gridrec padded": setup_tomopy_padded,
    "algotom dfi": setup_algotom_dfi,
    "algotom fbp": setup_algotom_fbp,
    "astra cpu fbp": setup_astra,
    "skimage iradon": setup_skimage,
}


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def pinned(threads: int) -> set[int]:
    """Pin this thread (and the threads and processes it starts) to ``threads`` CPUs."""
    cpus = sorted(os.sched_getaffinity(0) if not hasattr(pinned, "all") else pinned.all)
    pinned.all = cpus  # type: ignore[attr-defined]
    if threads > len(cpus):
        raise SystemExit(f"bench_engine: {threads} threads asked, {len(cpus)} CPUs available")
    want = set(cpus[:threads])
    os.sched_setaffinity(0, want)
    return want


def run_size(m: int, n: int, methods: list[str], threads_list: list[int], repeats: int,
             slices: dict[str, int], save: str | None) -> list[Row]:
    theta = np.linspace(0, np.pi, m, endpoint=False)
    s_half = ellipse_sinogram(n, theta, center=n / 2)
    s_mid = ellipse_sinogram(n, theta, center=(n - 1) / 2)
    # the engine's orientation (engine.projector.ellipse_image: y up the rows), computed in row
    # blocks; 4x4 samples per pixel (2x2 leaves ~0.04 of error in the truth itself at 1024)
    c = (n - 1) / 2
    truth = np.ascontiguousarray(truth_image(n, c, c, supersample=TRUTH_SUPERSAMPLE)[::-1])
    if n <= 512:  # the shortcut above is the engine's phantom, pixel for pixel
        assert np.abs(truth - ellipse_image(n, MODIFIED_SHEPP_LOGAN, TRUTH_SUPERSAMPLE)).max() < 1e-5
    check_scoring(truth)
    centres = ((n - 1) / 2, n / 2)
    peer_truths = {(cx, cy): truth_image(n, cx, cy, TRUTH_SUPERSAMPLE) for cx in centres for cy in centres}
    size = f"{m}x{n}"
    configs = []  # (method, threads, nz, run)
    for name in methods:
        for t in threads_list:
            peer = name in PEERS or name in TOMOPY
            nz = max(slices["peer"], t) if name in PEERS else slices["ours"]
            sh = np.repeat(s_half[None], nz, axis=0)
            sm = np.repeat(s_mid[None], nz, axis=0)
            pinned(t)
            t0 = time.perf_counter()
            run = METHODS[name](sh, sm, theta, t)
            vol = run()  # warm-up; also the slice that is scored
            setup = time.perf_counter() - t0
            if vol is not None:
                vol = np.asarray(vol)
                nrmse, ssim, k = best_score(vol[0], peer_truths) if peer else score_ours(vol[0], truth)
                k *= getattr(run, "output_scale", 1.0)
                if save:
                    os.makedirs(save, exist_ok=True)
                    np.save(os.path.join(save, f"{size}_{name.replace(' ', '_')}_{t}t.npy"), vol[0])
            else:
                nrmse = ssim = k = None
            print(f"  set-up {size} {name} {t}t: {setup:.1f} s (plans, warm-up call)", flush=True)
            configs.append([name, t, nz, run, [], [], (nrmse, ssim, k)])
    peer_rounds = max(1, min(repeats, slices["peer_repeats"]))
    n_rep = {c[0]: (peer_rounds if c[0] in PEERS else repeats) for c in configs}
    for rep in range(repeats):
        for c in configs:
            name, t, nz, run, wall, cpu, _ = c
            if rep >= n_rep[name]:
                continue
            pinned(t)
            w0, c0 = time.perf_counter(), time.process_time()
            run()
            wall.append((time.perf_counter() - w0) / nz)
            # CPU time of this process; peers in worker processes (2t ASTRA / scikit-image): n/a
            in_children = name in PROCESS_PEERS and t > 1
            cpu.append(float("nan") if in_children else (time.process_time() - c0) / nz)
        print(f"  {size}: round {rep + 1}/{repeats} done, load {load()}", flush=True)
    pinned(max(threads_list))
    rows = []
    for name, t, nz, _, wall, cpu, (nrmse, ssim, k) in configs:
        rows.append(Row(size, name, t, nz, len(wall), statistics.median(wall), min(wall), max(wall),
                        statistics.median(cpu), nrmse, ssim, k, wall))
    return rows


def print_table(rows: list[Row]) -> None:
    by = {(r.size, r.method, r.threads): r for r in rows}
    for size in dict.fromkeys(r.size for r in rows):
        print(f"\n| {size} | threads | s/slice median [min-max] | CPU s/slice | speed-up vs 1t "
              "| time / ours 1t | TomoPy gridrec / this (wall, CPU) | NRMSE | SSIM | scale |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        ref = by.get((size, "ours fourier", 1))
        for r in rows:
            if r.size != size:
                continue
            one = by.get((size, r.method, 1))
            speed = f"{one.s_per_slice_median / r.s_per_slice_median:.2f}x" if one and r.threads > 1 else ""
            rel = f"{r.s_per_slice_median / ref.s_per_slice_median:.2f}" if ref else ""
            acc = (f"{r.nrmse:.3f} | {r.ssim:.3f} | {r.scale:.3f}" if r.nrmse is not None else "- | - | -")
            tp = by.get((size, "tomopy gridrec", r.threads))
            vs = (f"{tp.s_per_slice_median / r.s_per_slice_median:.2f}x, "
                  f"{tp.cpu_s_per_slice_median / r.cpu_s_per_slice_median:.2f}x" if tp else "")
            timing = (f"{r.s_per_slice_median:.4f} [{r.s_per_slice_min:.4f}-{r.s_per_slice_max:.4f}] "
                      f"| {r.cpu_s_per_slice_median:.4f}")
            print(f"| {r.method} | {r.threads} | {timing} | {speed} | {rel} | {vs} | {acc} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes (180x256, 360x512)")
    ap.add_argument("--sizes", help="comma-separated MxN (angles x detector), e.g. 720x1024,1500x2048")
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts (default 1,2)")
    ap.add_argument("--repeats", type=int, default=7, help="timed rounds per configuration (default 7)")
    ap.add_argument("--peer-repeats", type=int, default=2, help="rounds for the (slow) peers (default 2)")
    ap.add_argument("--slices", type=int, default=8, help="slices per timed call for ours and the floor")
    ap.add_argument("--skip", default="", help="comma-separated method names to leave out, or 'peers'")
    ap.add_argument("--json", help="also write the rows to this JSON file")
    ap.add_argument("--save", metavar="DIR", help="save each method's first slice as .npy here")
    args = ap.parse_args()
    threads_list = [int(t) for t in args.threads.split(",")]
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    if "peers" in skip:
        skip |= set(PEERS)
    if not tomopy_available():
        print("bench_engine: TomoPy is not importable here: its rows are left out", flush=True)
        skip |= set(TOMOPY)
    methods = [m for m in METHODS if m not in skip]
    if args.sizes:
        sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    else:
        sizes = [(180, 256), (360, 512)] if args.quick else [(720, 1024), (1500, 2048)]
    slices = {"ours": args.slices, "peer": 1, "peer_repeats": args.peer_repeats}
    from importlib.metadata import version

    # the versions that set the figures: FINUFFT 2.5 spreads ~1.2x slower than 2.4 here (nufft_spread)
    print(f"cpus {os.cpu_count()}, affinity {len(os.sched_getaffinity(0))}, load {load()}; "
          f"{args.repeats} interleaved rounds; Nt = pinned to N CPUs; finufft {version('finufft')}, "
          f"numpy {np.__version__}, scipy {version('scipy')}", flush=True)
    rows: list[Row] = []
    for m, n in sizes:
        size_rows = run_size(m, n, methods, threads_list, args.repeats, slices, args.save)
        print_table(size_rows)  # each size as soon as it is done
        rows += size_rows
        if args.json:
            with open(args.json, "w") as f:
                json.dump([asdict(r) for r in rows], f, indent=2)
    print(f"\nload at the end {load()}")


if __name__ == "__main__":
    main()
