#!/usr/bin/env python3
"""The full volume of a streamed scan, in one process: grown during the scan vs made at the stop.

Feeds ALS-sized frames (2160 x 2560 uint16; --distinct simulated projections cycled over the
scan's angles, darks and flats first) at --fps into the two full-volume sinks, each fed the same
frames with their origin in a raw HDF5 file written as they come (as a detector does):

  streaming: :class:`bluesky_tomo_hpc.sinks.streaming_volume.StreamingVolumeSink` (frames binned on
             arrival, blocks of angles summed during the scan);
  at-stop:   :class:`bluesky_tomo_hpc.sinks.full_volume.FullVolumeSink` + ``VolumeAtStop`` (the raw
             file staged and reconstructed after the stop), the path before issue 24.

Reported per sink and repeat: stop -> volume written (no Tiled: the sink's own result folder), the
CPU seconds of this process during the scan (feed included) and after the stop (what a shared host
does not distort: on an idle 2-core host the stop takes at least half of it),
how it was made, its stage timings, the peak RSS growth of this process during the run, and the
load average. Median and range over --repeats; the ratio at-stop / streaming.

    python benchmarks/bench_stream_volume.py --frames 300 --repeats 3
    python benchmarks/bench_stream_volume.py --frames 1969 --repeats 1 --binning 4
    python benchmarks/bench_stream_volume.py --stop-phase --frames 1969 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

NY, NX = 2160, 2560


def vm_hwm() -> int:
    with open("/proc/self/status") as f:
        return next(int(x.split()[1]) * 1024 for x in f if x.startswith("VmHWM:"))


def reset_hwm() -> None:
    """Peak RSS from here on (Linux: writing 5 to clear_refs resets VmHWM)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def frames_for(distinct: int) -> tuple[list[np.ndarray], np.ndarray, np.ndarray, float]:
    from bluesky_tomo_hpc.sim.optics import DetectorPhysics, FrameSimulator
    from bluesky_tomo_hpc.sim.phantom import shepp_logan_3d

    sim = FrameSimulator(shepp_logan_3d((NY, NX)), DetectorPhysics(shape=(NY, NX)))
    angles = np.linspace(0, 180, distinct, endpoint=False)
    proj = [sim.acquire(angle_deg=float(a), shutter_open=True, sample_in=True) for a in angles]
    dark = sim.acquire(angle_deg=0.0, shutter_open=False, sample_in=False)
    flat = sim.acquire(angle_deg=0.0, shutter_open=True, sample_in=False)
    return proj, dark, flat, (NX - 1) / 2.0 + sim.rotation_offset_px


def run_once(kind: str, work: Path, a: argparse.Namespace, cached: tuple) -> dict:
    from bluesky_tomo_hpc.batch.volume_at_stop import VolumeAtStop
    from bluesky_tomo_hpc.engine.memory import budget_bytes
    from bluesky_tomo_hpc.engine.params import ReconParams
    from bluesky_tomo_hpc.model import FrameBatch, FrameRole, ScanEnd, ScanSpec
    from bluesky_tomo_hpc.sinks.full_volume import FullVolumeSink, ReconService
    from bluesky_tomo_hpc.sinks.streaming_volume import StreamingVolumeSink

    proj, dark, flat, center = cached
    params = ReconParams(binning=a.binning, center=center if a.center == "given" else "auto")
    budget = budget_bytes(a.budget_mb)
    service = ReconService()
    if kind == "streaming":
        sink = StreamingVolumeSink(params, service, data_dir=work, budget=budget)
    else:
        sink = FullVolumeSink(params, service, VolumeAtStop(budget), data_dir=work)
    spec = ScanSpec(run_uid=f"{kind}-{time.time_ns()}", frame_shape=(NY, NX), n_projections=a.frames,
                    n_darks=a.darks, n_flats=a.flats, metadata={"tomo": {"rotation_center_hint": center}})
    raw = work / "raw.h5"
    theta = np.linspace(0, np.pi, a.frames, endpoint=False)
    reset_hwm()
    hwm0 = vm_hwm()
    cpu0 = time.process_time()
    sink.open(spec)
    with h5py.File(raw, "w") as f:
        for role, frame, n in ((FrameRole.DARK, dark, a.darks), (FrameRole.FLAT, flat, a.flats)):
            f.create_dataset(role.value, data=np.repeat(frame[None], n, axis=0))
            sink.add(FrameBatch(role, np.arange(n), f[role.value][()], origin=(str(raw), role.value, 0, n)))
        ds = f.create_dataset("projection", shape=(a.frames, NY, NX), dtype=np.uint16, chunks=(1, NY, NX))
        t0 = time.perf_counter()
        for i in range(a.frames):
            delay = t0 + i / a.fps - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            frame = proj[i % len(proj)]
            ds[i] = frame
            f.flush()
            sink.add(FrameBatch(FrameRole.PROJECTION, np.array([i]), frame[None], angles=theta[i:i + 1],
                                timestamps=np.array([time.time()]),
                                origin=(str(raw), "projection", i, i + 1)))
    written_fps = (a.frames - 1) / (time.perf_counter() - t0)
    load = os.getloadavg()[0]
    t_stop, cpu_stop = time.perf_counter(), time.process_time()
    sink.close(ScanEnd(spec.run_uid))
    service.wait()
    stop_to_volume = time.perf_counter() - t_stop
    cpu_after = time.process_time() - cpu_stop
    service.shutdown()
    outcome = service.outcomes[spec.run_uid]
    raw.unlink()
    out = {"kind": kind, "ok": outcome.ok, "message": outcome.message[:200],
           "stop_to_volume_s": round(stop_to_volume, 2), "written_fps": round(written_fps, 2),
           "cpu_s_during_scan": round(cpu_stop - cpu0, 1), "cpu_s_after_stop": round(cpu_after, 1),
           "timings_s": {k: round(v, 2) for k, v in outcome.timings.items()},
           "peak_rss_growth_gib": round((vm_hwm() - hwm0) / 2**30, 2), "load_at_stop": round(load, 2)}
    print(json.dumps(out), flush=True)
    return out


def stop_phase(a: argparse.Namespace) -> dict:
    """What is left at the stop of a summed scan, alone (no feed, no other thread of this process):
    the last block of END_BLOCK angles spread into the running grids on every core, then each slice
    pair's grid transformed, scaled, masked and written (the ALS-sized binned volume into its
    result folder: Zarr levels + TIFF + provenance). Wall and CPU seconds of each, so a quiet 2-core
    figure can be bounded on a shared host."""
    from bluesky_tomo_hpc.engine.params import ReconParams
    from bluesky_tomo_hpc.model import ScanSpec
    from bluesky_tomo_hpc.results.provenance import CenterChoice
    from bluesky_tomo_hpc.sinks.grid_sum import GridSum
    from bluesky_tomo_hpc.sinks.streamed_result import slabs_from_sum, write_volume
    from bluesky_tomo_hpc.sinks.streaming_volume import END_BLOCK

    class Store:  # what write_volume reads of a BinnedScanStore
        binning, shape, slots = a.binning, (NY // a.binning, NX // a.binning), dict.fromkeys(range(a.frames))
        angles = dict(enumerate(np.linspace(0, np.pi, a.frames, endpoint=False)))

        @staticmethod
        def order() -> list[int]:
            return list(range(a.frames))

    nz, nx = Store.shape
    params = ReconParams(binning=a.binning, center=(NX - 1) / 2)
    rng = np.random.default_rng(0)
    proj_log = rng.random((END_BLOCK, nz, nx), dtype=np.float32)
    theta = np.linspace(0, np.pi, a.frames, endpoint=False)[-END_BLOCK:]
    out: dict = {"load_before": round(os.getloadavg()[0], 2)}
    grids = GridSum(nz, nx, params, (nx - 1) / 2)
    grids.grids[...] = 1.0  # the earlier blocks' sum (its pages touched, as during a scan)
    t, c = time.perf_counter(), time.process_time()
    grids.add(proj_log, theta, None)  # the last block, every core
    out["last_block"] = {"wall_s": round(time.perf_counter() - t, 2),
                         "cpu_s": round(time.process_time() - c, 2)}
    base = Path(tempfile.mkdtemp(prefix="stop-phase-", dir=os.environ.get("TMPDIR")))
    spec = ScanSpec(run_uid="stop-phase", frame_shape=(NY, NX))
    try:
        t, c = time.perf_counter(), time.process_time()
        write_volume(spec, Store, params, base / "result", CenterChoice(params.center, 1.0, "given"),  # type: ignore[arg-type]
                     slabs_from_sum(grids, a.frames, params), how={}, warnings=[], timings={})  # type: ignore[arg-type]
        out["fft_scale_mask_write"] = {"wall_s": round(time.perf_counter() - t, 2),
                                       "cpu_s": round(time.process_time() - c, 2)}
    finally:
        shutil.rmtree(base, ignore_errors=True)
    out["load_after"] = round(os.getloadavg()[0], 2)
    print(json.dumps(out), flush=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=300, help="projections (ALS: 1969)")
    ap.add_argument("--darks", type=int, default=10)
    ap.add_argument("--flats", type=int, default=10)
    ap.add_argument("--fps", type=float, default=11.0)
    ap.add_argument("--distinct", type=int, default=8)
    ap.add_argument("--binning", type=int, default=4)
    ap.add_argument("--budget-mb", type=float, default=4096)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--center", default="given", choices=["given", "auto"],
                    help="given: the simulated axis; auto: found from the data (cycled frames do not match "
                         "their angles: the found centre is meaningless, a streamed sum rarely confirmed)")
    ap.add_argument("--kinds", nargs="+", default=["streaming", "at-stop"], choices=["streaming", "at-stop"])
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--stop-phase", action="store_true", help="only what is left at a summed scan's stop")
    a = ap.parse_args()
    if a.stop_phase:
        runs = [stop_phase(a) for _ in range(a.repeats)]
        for stage in ("last_block", "fft_scale_mask_write"):
            w = [r[stage]["wall_s"] for r in runs]
            c = [r[stage]["cpu_s"] for r in runs]
            print(f"{stage}: wall median {statistics.median(w)} s [{min(w)}-{max(w)}], "
                  f"cpu median {statistics.median(c)} s [{min(c)}-{max(c)}]")
        if a.json:
            Path(a.json).write_text(json.dumps({"args": vars(a), "stop_phase": runs}, indent=1))
        return 0
    cached = frames_for(a.distinct)
    base = Path(tempfile.mkdtemp(prefix="stream-volume-", dir=os.environ.get("TMPDIR")))
    runs: dict[str, list[dict]] = {k: [] for k in a.kinds}
    try:
        for r in range(a.repeats):  # interleaved: both kinds see the same load drift
            for kind in a.kinds:
                work = base / f"{kind}-{r}"
                work.mkdir()
                runs[kind].append(run_once(kind, work, a, cached))
                shutil.rmtree(work, ignore_errors=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    summary = {}
    for kind, rs in runs.items():
        t = [x["stop_to_volume_s"] for x in rs if x["ok"]]
        s = summary[kind] = {"median_s": statistics.median(t) if t else None,
                             "range_s": [min(t), max(t)] if t else None,
                             "loads": [x["load_at_stop"] for x in rs]}
        print(f"{kind:10s} stop -> volume: median {s['median_s']} s, range {s['range_s']}, "
              f"loads {s['loads']}")
    if all(summary.get(k, {}).get("median_s") for k in ("streaming", "at-stop")):
        ratio = summary["at-stop"]["median_s"] / summary["streaming"]["median_s"]
        print(f"ratio at-stop / streaming: {ratio:.1f}x")
    if a.json:
        Path(a.json).write_text(json.dumps({"args": vars(a), "runs": runs, "summary": summary}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
