#!/usr/bin/env python3
"""Scan health in the live path at the ALS frame size: does the preview still keep 11 fps?

Two measurements, on 2160 x 2560 uint16 frames (--distinct phantom frames cycled, as
bench_stream.py does):

  * ``health alone``: CPU and wall milliseconds per frame of :class:`ScanHealth` (profiles,
    extremes, registrations, findings), i.e. what the health sink adds on the caller's thread;
  * ``live path``: frames offered at --fps (11 = ALS) to the fan-out the SinkFactory builds,
    ``[ScanHealthSink, PreviewSink(binning)]`` ("health on") and ``[PreviewSink(binning)]``
    ("health off"), interleaved round robin: frames the preview skipped (must be 0), the offered
    rate achieved by the producer (the health runs on its thread), stop -> final, and the health's
    own CPU per frame.

Prints one JSON line per run, then median [min-max] per configuration, and the load average.
Usage: bench_scan_health.py [--frames 300] [--repeats 3] [--binning 2] [--fps 11]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import numpy as np

from bluesky_tomo_hpc.engine.scan_health import ScanHealth
from bluesky_tomo_hpc.model import FrameBatch, FrameRole, ScanEnd, ScanSpec
from bluesky_tomo_hpc.sinks.preview import PreviewSink
from bluesky_tomo_hpc.sinks.scan_health_sink import ScanHealthSink
from bluesky_tomo_hpc.sinks.sink import SinkFanout

NY, NX = 2160, 2560


def make_frames(k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from bench_stream import make_frames as frames_of  # same frames as the preview benchmark

    return frames_of(k)


def health_alone(frames, dark, flat, n: int) -> dict:
    h = ScanHealth((NY, NX), n_projections=n, saturation=65535)
    h.add_darks(np.repeat(dark[None], 4, 0))
    h.add_flats(np.repeat(flat[None], 4, 0), np.arange(4))
    theta = np.linspace(0, np.pi, n, endpoint=False)
    wall, cpu = [], []
    for i in range(n):
        w0, c0 = time.perf_counter(), time.process_time()
        h.add_projections(frames[i % len(frames)][None], np.array([i]), theta[i:i + 1])
        wall.append(time.perf_counter() - w0)
        cpu.append(time.process_time() - c0)
    w0 = time.perf_counter()
    h.summary()
    return {"what": "health alone", "frames": n, "wall_ms_median": round(1e3 * statistics.median(wall), 3),
            "cpu_ms_median": round(1e3 * statistics.median(cpu), 3),
            "wall_ms_p95": round(1e3 * float(np.percentile(wall, 95)), 3),
            "summary_ms": round(1e3 * (time.perf_counter() - w0), 2)}


def live_path(frames, dark, flat, *, health: bool, n: int, binning: int, fps: float) -> dict:
    preview = PreviewSink(binning=binning, publish_interval_s=0.5)
    sinks: list = [preview]
    hsink = None
    if health:
        hsink = ScanHealthSink()
        preview.extra_metadata = hsink.metadata
        sinks.insert(0, hsink)
    fan = SinkFanout(sinks)
    spec = ScanSpec(run_uid=f"bench-health-{health}", frame_shape=(NY, NX), n_projections=n, n_darks=4,
                    n_flats=4, angle_units="rad")
    theta = np.linspace(0, np.pi, n, endpoint=False)
    fan.open(spec)
    fan.add(FrameBatch(FrameRole.DARK, np.arange(4), np.repeat(dark[None], 4, 0)))
    fan.add(FrameBatch(FrameRole.FLAT, np.arange(4), np.repeat(flat[None], 4, 0)))
    t0 = time.perf_counter()
    add_cpu = 0.0
    for i in range(n):
        due = t0 + i / fps
        now = time.perf_counter()
        if due > now:
            time.sleep(due - now)
        c0 = time.thread_time()
        frame = frames[i % len(frames)][None]
        fan.add(FrameBatch(FrameRole.PROJECTION, np.array([i]), frame, theta[i:i + 1]))
        add_cpu += time.thread_time() - c0
    offered = n / (time.perf_counter() - t0)
    t_stop = time.perf_counter()
    fan.close(ScanEnd(spec.run_uid))
    final = preview.wait_final(600)
    md = final.metadata
    return {"what": "live path", "health": health, "binning": binning, "frames": n,
            "offered_fps": round(offered, 2), "used": md["n_projections_used"],
            "skipped": md["n_projections_skipped"], "stop_to_final_s": round(time.perf_counter() - t_stop, 3),
            "caller_cpu_ms_per_frame": round(1e3 * add_cpu / n, 3),
            "health_status": md.get("scan_health", {}).get("status"), "fanout_errors": len(fan.errors)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=300)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--binning", type=int, default=2)
    p.add_argument("--fps", type=float, default=11.0)
    p.add_argument("--distinct", type=int, default=16)
    a = p.parse_args()
    frames, dark, flat = make_frames(a.distinct)
    print(json.dumps({"cpus": os.cpu_count(), "load": os.getloadavg()}), flush=True)
    rows: dict[str, list[dict]] = {}
    for r in range(a.repeats):
        for name, run in (("health alone", lambda: health_alone(frames, dark, flat, a.frames)),
                          ("health on", lambda: live_path(frames, dark, flat, health=True, n=a.frames,
                                                          binning=a.binning, fps=a.fps)),
                          ("health off", lambda: live_path(frames, dark, flat, health=False, n=a.frames,
                                                           binning=a.binning, fps=a.fps))):
            res = {**run(), "round": r, "load": [round(x, 2) for x in os.getloadavg()]}
            rows.setdefault(name, []).append(res)
            print(json.dumps(res), flush=True)
    for name, runs in rows.items():
        keys = [k for k, v in runs[0].items() if isinstance(v, int | float) and not isinstance(v, bool)
                and k not in ("round", "frames", "binning")]
        parts = [f"{k} {statistics.median(x[k] for x in runs):g} [{min(x[k] for x in runs):g}-"
                 f"{max(x[k] for x in runs):g}]" for k in keys]
        print(f"{name}: " + ", ".join(parts))
    print(json.dumps({"load_end": os.getloadavg()}))


if __name__ == "__main__":
    main()
