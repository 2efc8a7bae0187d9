"""Soak: many small scans back to back through ONE pipeline; does anything pile up?

    .venv/bin/python benchmarks/bench_soak.py [--scans 200] [--rows 8 --width 32 --angles 30]
                                             [--ranks 2] [--tiled thread|process] [--out soak.json]

One :class:`~bluesky_tomo_hpc.live.session.TomoPipeline` (embedded Tiled, raw runs through
bluesky-tiled-plugins' TiledWriter, live preview, full volume at stop, a batch job per scan on
local MPI) takes ``--scans`` scans from a real RunEngine, alternating the ophyd-async and the
ophyd v1 detector. After each scan it samples the process's resident memory, thread count and
open file descriptors, and the TiledWriter's queue. At the end it checks that every scan was
reconstructed (full volume in Tiled) and its batch job registered, and reports the slope of each
metric per scan (least squares over the second half, after warm-up, and over all scans): flat
means ~0. Numbers depend on the machine's load; ``uptime`` is printed beside them.

``--tiled thread`` (default) serves Tiled from a thread of the scanning process (the demo's and the
notebooks' embedded server: one GIL for the RunEngine, the reconstruction and the server);
``--tiled process`` runs ``bluesky-tomo-hpc serve --no-web`` as its own process, as a beamline runs
Tiled (its own service), so the comparison shows what the in-process server costs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import psutil

from bluesky_tomo_hpc.engine.params import ReconParams
from bluesky_tomo_hpc.live.session import TomoPipeline
from bluesky_tomo_hpc.results.tiled_results import find_reconstructions
from bluesky_tomo_hpc.results.tiled_server import EmbeddedTiledServer
from bluesky_tomo_hpc.settings import Settings
from bluesky_tomo_hpc.sim.beamline import make_sim_beamline
from bluesky_tomo_hpc.sim.plans import tomo_scan

METRICS = ("rss_mb", "threads", "os_threads", "open_fds", "writer_queue")


def slope(values: list[float]) -> float:
    """Least-squares change per scan."""
    if len(values) < 2:
        return 0.0
    return float(np.polyfit(np.arange(len(values)), np.asarray(values, float), 1)[0])


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def tiled_process(root: Path):
    """``bluesky-tomo-hpc serve --no-web`` over ``root`` (Tiled in ``root/tiled``, ``root``
    readable), on a free loopback port; yields a client; the process is stopped at the end."""
    from tiled.client import from_uri

    key, port = secrets.token_hex(16), free_port()
    cli = Path(sys.executable).with_name("bluesky-tomo-hpc")
    log = open(root / "serve.log", "wb")  # noqa: SIM115 - the process owns it
    proc = subprocess.Popen([str(cli), "serve", "--no-web", "--data-dir", str(root), "--port", str(port)],
                            env={**os.environ, "TILED_API_KEY": key}, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 600
        with httpx.Client(trust_env=False) as http:
            while True:
                with contextlib.suppress(httpx.HTTPError):
                    if http.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                        break
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"serve did not come up; see {root / 'serve.log'}")
                time.sleep(0.2)
        yield from_uri(f"http://127.0.0.1:{port}/api/v1", api_key=key)
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scans", type=int, default=200)
    ap.add_argument("--rows", type=int, default=8)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--angles", type=int, default=30)
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--out", type=Path, help="JSON report; samples also go to OUT.samples.jsonl as they come")
    ap.add_argument("--tiled", choices=("thread", "process"), default="thread",
                    help="Tiled on a thread of this process (embedded) or as its own process (serve)")
    ap.add_argument("--minutes", type=float,
                    help="stop taking scans after this long (a partial soak, and the report says so)")
    args = ap.parse_args()


    proc = psutil.Process()
    root = Path(tempfile.mkdtemp(prefix="soak-"))
    with contextlib.ExitStack() as stack:
        if args.tiled == "process":
            client = stack.enter_context(tiled_process(root))
        else:
            server = stack.enter_context(EmbeddedTiledServer(root / "tiled", readable_storage=[root]))
            client = server.client()
        return soak(args, root, client, proc)


def soak(args: argparse.Namespace, root: Path, client: object, proc: psutil.Process) -> int:
    """The scans, the samples and the report (see the module docstring)."""
    from bluesky import RunEngine

    settings = Settings(data_dir=root / "data", recon=ReconParams(filter_name="shepp"),
                        jobs={"executor": "local", "ranks": args.ranks})
    pipe = TomoPipeline(settings, client, server=None)
    RE = RunEngine({}, loop=asyncio.new_event_loop())
    pipe.subscribe(RE)
    beamlines = {f: make_sim_beamline(root / "raw" / f, flavour=f, shape=(args.rows, args.width))
                 for f in ("ophyd_async", "ophyd_v1")}
    samples: list[dict[str, float]] = []
    uids: list[str] = []
    max_queue = 0
    t_start = time.perf_counter()
    samples_file = args.out.with_suffix(".samples.jsonl") if args.out else None
    deadline = None if args.minutes is None else time.monotonic() + 60 * args.minutes
    for i in range(args.scans):
        if deadline is not None and time.monotonic() > deadline:
            print(f"--minutes {args.minutes} reached after {i} scans: stopping early", flush=True)
            break
        flavour = ("ophyd_async", "ophyd_v1")[i % 2]
        bl = beamlines[flavour]
        (uid,) = RE(tomo_scan(bl.detector, bl.stage, num_projections=args.angles, num_darks=2, num_flats=2))
        uids.append(uid)
        max_queue = max(max_queue, pipe.tiled_writer.queued)
        samples.append({"scan": i, "rss_mb": proc.memory_info().rss / 2**20,
                        "threads": threading.active_count(), "os_threads": proc.num_threads(),
                        "open_fds": proc.num_fds(), "writer_queue": pipe.tiled_writer.queued,
                        "children": len(proc.children(recursive=True)), "t": time.perf_counter() - t_start})
        if samples_file is not None:
            with open(samples_file, "a") as f:
                f.write(json.dumps(samples[-1]) + "\n")
        if i % 20 == 0:
            last = samples[-1]
            print(f"scan {i:4d} {flavour:<12} rss {last['rss_mb']:.0f} MB  threads {last['threads']}  "
                  f"fds {last['open_fds']}  queue {last['writer_queue']}", flush=True)
    scans_s = time.perf_counter() - t_start
    pipe.wait(600)
    jobs = pipe.wait_for_jobs(1800)
    pipe.recovery.run_once()  # raw runs that went to the backup while Tiled was too slow
    total_s = time.perf_counter() - t_start
    outcomes = [pipe.service.outcomes.get(u) for u in uids]
    reconstructed = sum(1 for o in outcomes if o is not None and o.ok)
    in_tiled = sum(1 for u in uids if find_reconstructions(pipe.processed, raw_uid=u, kind="full"))
    registered = sum(1 for r in jobs if r.state == "REGISTERED")
    raw_complete = sum(1 for u in uids if u in pipe.raw and (pipe.raw[u].metadata or {}).get("stop"))
    errors = [(u, m) for u, m in pipe.router.errors]
    half = samples[len(samples) // 2:]
    report = {
        "scans": len(uids), "scans_asked": args.scans, "tiled": args.tiled, "shape": [args.rows, args.width],
        "angles": args.angles, "ranks": args.ranks,
        "reconstructed": reconstructed, "full_volumes_in_tiled": in_tiled, "raw_runs_complete": raw_complete,
        "batch_jobs": len(jobs), "batch_registered": registered,
        "batch_states": {s: sum(1 for r in jobs if r.state == s) for s in {r.state for r in jobs}},
        "errors": errors[:20], "n_errors": len(errors),
        "scans_wall_s": round(scans_s, 1), "total_wall_s": round(total_s, 1),
        "writer_queue_max": max_queue,
        "slope_per_scan_second_half": {k: slope([s[k] for s in half]) for k in METRICS},
        "slope_per_scan_all": {k: slope([s[k] for s in samples]) for k in METRICS},
        "first": samples[0], "last": samples[-1],
        "uptime": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
        "cpus": os.cpu_count(),
    }
    print(json.dumps(report, indent=1, default=str))
    if args.out:
        args.out.write_text(json.dumps({"report": report, "samples": samples}, indent=1, default=str))
    pipe.close()
    ok = reconstructed == in_tiled == registered == raw_complete == len(uids) == args.scans
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
