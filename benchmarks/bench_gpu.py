#!/usr/bin/env python3
"""The three GPU figures of issue 12, on one GPU (CuPy + cuFINUFFT; ``pip install .[gpu]``).

  preview: ``PreviewSink(device="gpu")`` fed 2160 x 2560 uint16 frames (--distinct cycled) as
           fast as it takes them (the producer waits for room, nothing is skipped): frames per
           second, and stop -> final (the sink's own ``stop_to_final_s``). Target >= 100 fps,
           final <= 1 s.
  volume:  ``reconstruct_scan`` of a 2048-angle scan of 2048 x 2048 uint16 frames into a host
           2048^3 float32 volume: host -> device of raw slabs, normalise / -log / NUFFT
           reconstruction on the device, device -> host, overlapped (engine/volume.py conveyor).
           Target <= 5 s.
  als:     the same for the ALS scan, 1969 projections of 2160 x 2560 (21 GB raw, a 56 GB
           volume in host memory). Target <= 8 s.

Frames of the scans are one phantom sinogram repeated along the rows as a zero-copy broadcast
view (the host holds one frame's worth); flats/darks are constant. Times exclude plan set-up
(one untimed slab first) and include every transfer. Writes a JSON report.
This has not run on a GPU yet: no GPU machine was lent to the task that wrote it.

    python benchmarks/bench_gpu.py --out gpu_report.json [--only preview volume als] [--small]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np


def device_info() -> dict:
    import cupy as cp

    props = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)
    return {"gpu": props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"]),
            "memory_gib": round(props["totalGlobalMem"] / 2**30, 1), "cupy": cp.__version__,
            "n_gpus": cp.cuda.runtime.getDeviceCount()}


def scan_data(n_angles: int, ny: int, nx: int):
    """A ScanData whose projections are a broadcast view of one uint16 sinogram row stack."""
    from bluesky_tomo_hpc.engine.projector import ellipse_sinogram
    from bluesky_tomo_hpc.model import ScanData

    theta = np.linspace(0, np.pi, n_angles, endpoint=False)
    sino = ellipse_sinogram(nx, theta, center=nx / 2)  # (angles, nx)
    frames = (40000 * np.exp(-2.0 * sino / sino.max()) + 100).astype(np.uint16)
    proj = np.broadcast_to(frames[:, None, :], (n_angles, ny, nx))
    flats = np.full((2, ny, nx), 40100, np.uint16)
    darks = np.full((2, ny, nx), 100, np.uint16)
    return ScanData(projections=proj, theta=theta, darks=darks, flats=flats, run_uid="gpu-bench")


def bench_volume(n_angles: int, ny: int, nx: int, chunk: int, device: str) -> dict:
    from bluesky_tomo_hpc.engine.params import ReconParams
    from bluesky_tomo_hpc.engine.reconstruct import reconstruct_scan

    data = scan_data(n_angles, ny, nx)
    params = ReconParams(device=device, center=nx / 2, filter_name="shepp", chunk_slices=chunk,
                         engine="native")
    warm = np.empty((chunk, nx, nx), np.float32)
    t0 = time.perf_counter()
    reconstruct_scan(data, params, rows=(0, chunk), out=warm)  # plans, kernels, pinned buffers
    setup = time.perf_counter() - t0
    out = np.empty((ny, nx, nx), np.float32)
    out[::64] = 0  # touch a little; the rest faults in during the run, as a real output would
    t0 = time.perf_counter()
    res = reconstruct_scan(data, params, out=out)  # returns once the last slab is on the host
    dt = time.perf_counter() - t0
    mid = out[ny // 2]
    return {"shape_in": [n_angles, ny, nx], "shape_out": list(out.shape), "seconds": round(dt, 3),
            "setup_s": round(setup, 3), "slices_per_s": round(ny / dt, 1),
            "raw_gb": round(n_angles * ny * nx * 2 / 1e9, 2), "volume_gb": round(out.nbytes / 1e9, 2),
            "timings": {k: round(v, 3) for k, v in res.timings.items()},
            "finite": bool(np.isfinite(mid).all()), "mid_slice_max": float(np.abs(mid).max())}


def bench_preview(n_frames: int, distinct: int, binning: int, batch: int, device: str) -> dict:
    from bluesky_tomo_hpc.model import FrameBatch, FrameRole, ScanEnd, ScanSpec
    from bluesky_tomo_hpc.sinks.preview import PreviewSink

    ny, nx = 2160, 2560
    data = scan_data(distinct, ny, nx)
    frames = np.ascontiguousarray(data.projections)  # (distinct, ny, nx) uint16
    theta = np.linspace(0, np.pi, n_frames, endpoint=False)
    sink = PreviewSink([], binning=binning, device=device, center=nx / 2, publish_interval_s=0.5,
                       max_queue_bytes=4 * batch * frames[0].nbytes, refine_center=False)
    spec = ScanSpec(run_uid="gpu-preview", frame_shape=(ny, nx), n_projections=n_frames, n_darks=2,
                    n_flats=2, angle_units="rad", metadata={})
    sink.open(spec)
    sink.add(FrameBatch(FrameRole.DARK, np.arange(2), data.darks, None, run_uid=spec.run_uid))
    sink.add(FrameBatch(FrameRole.FLAT, np.arange(2), data.flats, None, run_uid=spec.run_uid))
    t0 = time.perf_counter()
    for start in range(0, n_frames, batch):
        idx = np.arange(start, min(n_frames, start + batch))
        while sink._queued_bytes + len(idx) * frames[0].nbytes > sink.max_queue_bytes:
            time.sleep(0.001)  # the producer waits for room: nothing is skipped
        sink.add(FrameBatch(FrameRole.PROJECTION, idx, frames[idx % distinct], theta[idx],
                            run_uid=spec.run_uid))
    while sink.n_used + sink.n_skipped < n_frames and sink.error is None:
        time.sleep(0.001)  # every frame through before the stop, as in a paced scan
    dt = time.perf_counter() - t0
    sink.close(ScanEnd(spec.run_uid))
    final = sink.wait_final(120)
    md = final.metadata
    return {"frames": n_frames, "frame_shape": [ny, nx], "binning": binning, "batch": batch,
            "fps": round(n_frames / dt, 1), "stop_to_final_s": md.get("stop_to_final_s"),
            "used": md["n_projections_used"], "skipped": md["n_projections_skipped"],
            "ingest_s": md.get("ingest_s")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="gpu_report.json")
    ap.add_argument("--only", nargs="+", default=["preview", "volume", "als"])
    ap.add_argument("--small", action="store_true", help="a quarter-size smoke run of each")
    ap.add_argument("--preview-binning", type=int, default=1)
    ap.add_argument("--chunk", type=int, default=32, help="rows per conveyor slab")
    ap.add_argument("--device", default="gpu", choices=["gpu", "cpu"],
                    help="cpu: a sanity run of this script's logic on NumPy (small sizes)")
    a = ap.parse_args()
    report: dict = {"host": platform.node(), "cpus": os.cpu_count(), "started": time.time()}
    try:
        report["device"] = device_info() if a.device == "gpu" else "cpu (sanity run)"
    except Exception as exc:  # no CuPy / no GPU: say so in the report
        report["error"] = f"no usable GPU: {type(exc).__name__}: {exc}"
        open(a.out, "w").write(json.dumps(report, indent=1))
        print(report["error"])
        return 1
    s = 4 if a.small else 1
    jobs = {
        "preview": lambda: bench_preview(400 // s, 16, a.preview_binning, 32, a.device),
        "volume": lambda: bench_volume(2048 // s, 2048 // s, 2048 // s, a.chunk, a.device),
        "als": lambda: bench_volume(1969 // s, 2160 // s, 2560 // s, a.chunk, a.device),
    }
    for name in a.only:
        try:
            report[name] = jobs[name]()
        except Exception as exc:  # one failing figure must not hide the others
            report[name] = {"error": f"{type(exc).__name__}: {exc}"}
        print(name, json.dumps(report[name]), flush=True)
        open(a.out, "w").write(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
