"""Batch-job benchmarks (not tests): stop-to-volume-in-Tiled, and MPI strong scaling.

    .venv/bin/python benchmarks/bench_jobs.py [--rows 64 --width 128 --angles 180] [--slurm] [--repeat 3]

1. stop -> volume in Tiled: from ``HPCSubmitSink.close()`` (the scan's stop) until the journal
   says REGISTERED (the volume node is in Tiled, registered in place), on the local executor
   with 2 MPI ranks and, with ``--slurm``, through the local Slurm (tests/services/slurm_up.sh).
2. strong scaling: the batch program alone on a larger scan with 1 and 2 ranks (reconstruction
   phase, max over ranks, from result.json), efficiency = T1 / (2 T2).
Numbers on a 2-core machine shared with other work are noisy: report medians.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

from bluesky_tomo_hpc.batch.job import JobOutputs, ReconJob, Resources
from bluesky_tomo_hpc.batch.staging import write_exchange_file
from bluesky_tomo_hpc.engine.params import ReconParams
from bluesky_tomo_hpc.jobs.executors.mpiexec import LocalExecutor
from bluesky_tomo_hpc.jobs.journal import Journal
from bluesky_tomo_hpc.jobs.monitor import JobMonitor
from bluesky_tomo_hpc.jobs.submit_sink import HPCSubmitSink
from bluesky_tomo_hpc.model import FrameBatch, FrameRole, ScanEnd, ScanSpec
from bluesky_tomo_hpc.results.tiled_results import processed_container
from bluesky_tomo_hpc.sim.phantom import shepp_logan_3d


def demo_scan(
    tmp: Path, ny: int, nx: int, n_angles: int, uid: str
) -> tuple[ScanSpec, list[FrameBatch], ScanEnd]:
    """A raw detector file (10 darks, 10 flats, projections) and its batches with origins."""
    theta = np.linspace(0, np.pi, n_angles, endpoint=False)
    proj = (1000 * np.exp(-shepp_logan_3d((ny, nx)).sinogram(theta, (ny, nx))) + 50).astype(np.uint16)
    dark, flat = np.full((10, ny, nx), 50, np.uint16), np.full((10, ny, nx), 1050, np.uint16)
    raw = tmp / f"{uid}.h5"
    with h5py.File(raw, "w") as f:
        f.create_dataset("data", data=np.concatenate([dark, flat, proj]), chunks=(1, ny, nx))
    spec = ScanSpec(
        run_uid=uid,
        frame_shape=(ny, nx),
        n_projections=n_angles,
        n_darks=10,
        n_flats=10,
        raw_files=(str(raw),),
    )
    batches = [
        FrameBatch(FrameRole.DARK, np.arange(10), dark, origin=(str(raw), "data", 0, 10)),
        FrameBatch(FrameRole.FLAT, np.arange(10), flat, origin=(str(raw), "data", 10, 20)),
        FrameBatch(
            FrameRole.PROJECTION,
            np.arange(n_angles),
            proj,
            angles=theta,
            origin=(str(raw), "data", 20, 20 + n_angles),
        ),
    ]
    return spec, batches, ScanEnd(run_uid=uid)


def stop_to_tiled(executor, tmp: Path, args, container, label: str) -> list[float]:
    times = []
    for i in range(args.repeat):
        spec, batches, end = demo_scan(tmp, args.rows, args.width, args.angles, f"{label}-{i}")
        mon = JobMonitor(Journal(tmp / f"{label}.sqlite"), executor, tiled=container, poll_s=0.1)
        sink = HPCSubmitSink(
            mon, tmp / label, params=ReconParams(), resources=Resources(ranks=2, walltime_s=600)
        )
        sink.open(spec)
        for b in batches:
            sink.add(b)
        t = time.perf_counter()
        sink.close(end)
        rec = mon.wait(sink.job_ids[-1], timeout=600)
        dt = time.perf_counter() - t
        if rec.state != "REGISTERED":
            raise SystemExit(f"{label}: job ended {rec.state}: {rec.error}")
        stages = mon.journal.stage_durations(rec.job_id)
        print(
            f"  {label} run {i}: stop->Tiled {dt:6.2f} s  (queue {stages.get('queue', 0):.2f}, "
            f"run {stages.get('run', 0):.2f}, register {stages.get('register', 0):.2f})",
            flush=True,
        )
        times.append(dt)
    return times


def scaling(tmp: Path, args) -> None:
    spec, batches, _ = demo_scan(tmp, args.scale_rows, args.scale_width, args.scale_angles, "scaling")
    inp = write_exchange_file(spec, batches, tmp / "scaling_input.h5")
    mpiexec = str(Path(sys.executable).with_name("mpiexec"))
    res: dict[int, list[float]] = {}
    for ranks in (1, 2):
        for i in range(args.repeat):
            job = ReconJob(
                run_uid="scaling",
                input_path=inp,
                params=ReconParams(center=(args.scale_width - 1) / 2),
                outputs=JobOutputs(directory=tmp / f"scale{ranks}-{i}", tiff=False),
                resources=Resources(ranks=ranks),
            )
            job.write()
            t = time.perf_counter()
            subprocess.run(
                [
                    mpiexec,
                    "-n",
                    str(ranks),
                    sys.executable,
                    "-m",
                    "bluesky_tomo_hpc.batch",
                    str(job.job_file),
                ],
                check=True,
                capture_output=True,
                env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
            )
            wall = time.perf_counter() - t
            rec = json.loads(job.outputs.result_path.read_text())["timings"]["reconstruct_s"]
            res.setdefault(ranks, []).append(rec)
            print(f"  {ranks} rank(s) run {i}: reconstruct {rec:6.2f} s, wall {wall:6.2f} s", flush=True)
    t1, t2 = statistics.median(res[1]), statistics.median(res[2])
    print(
        f"strong scaling {args.scale_rows}x{args.scale_width}x{args.scale_width} from {args.scale_angles} "
        f"angles: T1 {t1:.2f} s, T2 {t2:.2f} s, speed-up {t1 / t2:.2f}, efficiency {t1 / (2 * t2):.0%}"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=64)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--angles", type=int, default=180)
    p.add_argument("--scale-rows", type=int, default=64)
    p.add_argument("--scale-width", type=int, default=512)
    p.add_argument("--scale-angles", type=int, default=720)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--slurm", action="store_true", help="also through the local Slurm")
    p.add_argument("--skip-scaling", action="store_true")
    args = p.parse_args()
    from tiled.client import from_uri
    from tiled.server import SimpleTiledServer

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        with SimpleTiledServer(tmp / "tiled", readable_storage=[tmp]) as server:
            container = processed_container(from_uri(server.uri))
            print(
                f"stop -> volume in Tiled, demo scan {args.rows}x{args.width} px, "
                f"{args.angles} angles, 2 ranks"
            )
            local = stop_to_tiled(LocalExecutor(ranks=2), tmp, args, container, "local")
            print(
                f"local MPI: median {statistics.median(local):.2f} s "
                f"(range {min(local):.2f}-{max(local):.2f})"
            )
            if args.slurm:
                from bluesky_tomo_hpc.jobs.executors.slurm import SlurmExecutor

                sl = stop_to_tiled(SlurmExecutor(), tmp, args, container, "slurm")
                print(
                    f"local Slurm: median {statistics.median(sl):.2f} s (range {min(sl):.2f}-{max(sl):.2f})"
                )
        if not args.skip_scaling:
            scaling(tmp, args)


if __name__ == "__main__":
    main()
