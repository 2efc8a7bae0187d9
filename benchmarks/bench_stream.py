#!/usr/bin/env python3
"""Live-preview speed on the ALS case: 1969 projections of 2160 x 2560 uint16 frames.

Measures, for the :class:`PreviewSink` (the CPU-bound part of the worker; transport is measured
separately by the PVA and 0MQ recipes):
  * ``max``: frames offered as fast as the preview absorbs them without skipping (a 2-frame
    queue; the producer waits for room): the sustained ingest rate;
  * ``paced``: frames offered at --fps (11 = ALS, one every 91 ms) into the default bounded
    queue: frames skipped (must be 0) and the lag;
  * stop-to-final latency (``close`` to the final three slices out), and peak memory (RSS above
    the baseline after the test frames exist, sampled every 20 ms) and the queue's peak bytes.

Frames: --distinct phantom frames (exact line integrals, flat field, dark) cycled over the 1969
angles; what is reconstructed is then meaningless but the work per frame is the real one.
Usage: bench_stream.py [--binning 2 4] [--frames 1969] [--mode max paced] [--fps 11] [--json out]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import threading
import time

import numpy as np

from bluesky_tomo_hpc.model import FrameBatch, FrameRole, ScanEnd, ScanSpec
from bluesky_tomo_hpc.sinks.preview import PreviewSink

NY, NX = 2160, 2560


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRss:
    """Samples the resident set size in a thread; ``peak`` above the baseline at start."""

    def __init__(self, period: float = 0.02):
        self.base = rss_bytes()
        self.peak = self.base
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, args=(period,), daemon=True)
        self._t.start()

    def _run(self, period: float) -> None:
        while not self._stop.wait(period):
            self.peak = max(self.peak, rss_bytes())

    def stop(self) -> int:
        self._stop.set()
        self._t.join()
        return self.peak - self.base


def make_frames(k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from bluesky_tomo_hpc.engine.projector import ellipse_sinogram

    theta = np.linspace(0, np.pi, k, endpoint=False)
    sino = ellipse_sinogram(NX, theta) * (2.0 / NX)  # peak line integral ~ 2
    flat = 3000.0 * (1 + 0.2 * np.sin(np.linspace(0, np.pi, NX)))[None, :].repeat(NY, 0)
    frames = np.empty((k, NY, NX), np.uint16)
    for i in range(k):
        frames[i] = flat * np.exp(-sino[i])[None, :] + 100
    return frames, np.full((NY, NX), 100, np.uint16), (flat + 100).astype(np.uint16)


def run_once(frames, dark, flat, *, binning: int, n: int, mode: str, fps: float) -> dict:
    k = len(frames)
    theta = np.linspace(0, np.pi, n, endpoint=False)
    # max: a 2-frame queue and a producer that waits for room, so nothing is skipped at stop
    queue = 2 * frames[0].nbytes if mode == "max" else 256 * 2**20
    sink = PreviewSink(binning=binning, publish_interval_s=0.5, max_queue_bytes=queue)
    spec = ScanSpec(run_uid=f"bench-{mode}-{binning}", frame_shape=(NY, NX), n_projections=n, n_darks=4,
                    n_flats=4, angle_units="rad")
    mem = PeakRss()
    sink.open(spec)
    sink.add(FrameBatch(FrameRole.DARK, np.arange(4), np.repeat(dark[None], 4, 0)))
    sink.add(FrameBatch(FrameRole.FLAT, np.arange(4), np.repeat(flat[None], 4, 0)))
    t0 = time.perf_counter()
    max_lag = 0.0
    for i in range(n):
        if mode == "max":
            while sink._queued_bytes + frames[0].nbytes > sink.max_queue_bytes:
                time.sleep(0.0005)
        else:
            due = t0 + i / fps
            now = time.perf_counter()
            if due > now:
                time.sleep(due - now)
            max_lag = max(max_lag, (sink._queued_bytes // frames[0].nbytes) / fps)
        sink.add(FrameBatch(FrameRole.PROJECTION, np.array([i]), frames[i % k][None], theta[i:i + 1]))
    t_offered = time.perf_counter() - t0
    t_stop = time.perf_counter()
    sink.close(ScanEnd(spec.run_uid))
    final = sink.wait_final(600)
    latency = time.perf_counter() - t_stop
    t_total = time.perf_counter() - t0
    peak = mem.stop()
    md = final.metadata
    return {
        "mode": mode, "binning": binning, "frames": n, "frame": [NY, NX, "uint16"],
        "offered_fps": round(n / t_offered, 2),
        "sustained_fps": round(md["n_projections_used"] / t_total, 2),
        "preview_busy_fps": round(md["n_projections_used"] / max(md["ingest_s"], 1e-9), 2),
        "used": md["n_projections_used"], "skipped": md["n_projections_skipped"],
        "stop_to_final_s": round(latency, 4), "stop_to_final_in_sink_s": md["stop_to_final_s"],
        "max_queue_lag_s": round(max_lag, 3) if mode == "paced" else None,
        "peak_rss_above_baseline_MB": round(peak / 2**20, 1),
        "peak_queue_MB": round(md["peak_queued_bytes"] / 2**20, 1),
        "slices": {p: list(a.shape) for p, a in final.slices.items()},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--binning", type=int, nargs="+", default=[2, 4])
    p.add_argument("--frames", type=int, default=1969)
    p.add_argument("--mode", nargs="+", default=["max", "paced"], choices=["max", "paced"])
    p.add_argument("--fps", type=float, default=11.0)
    p.add_argument("--distinct", type=int, default=16)
    p.add_argument("--json", help="append results here (JSON lines)")
    a = p.parse_args()
    frames, dark, flat = make_frames(a.distinct)
    info = {"host": platform.node(), "cpus": os.cpu_count(), "load": os.getloadavg()}
    print(json.dumps(info), flush=True)
    for b in a.binning:
        for mode in a.mode:
            res = {**run_once(frames, dark, flat, binning=b, n=a.frames, mode=mode, fps=a.fps),
                   "load_after": [round(x, 2) for x in os.getloadavg()]}
            print(json.dumps(res), flush=True)
            if a.json:
                with open(a.json, "a") as f:
                    f.write(json.dumps({**info, **res}) + "\n")


if __name__ == "__main__":
    main()
