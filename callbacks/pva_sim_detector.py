#!/usr/bin/env python3
"""A simulated areaDetector PVA plugin: publishes one tomography scan as NTNDArray frames.

Frames are exact line integrals of a z-modulated Shepp-Logan phantom (no noise) on a smooth
flat field, with NDArray attributes ``frame_type`` (dark/flat/projection), ``rotation_angle``
(degrees), ``scan_uid`` and ``num_projections``: what ``bluesky-tomo-hpc worker --pva`` reads.

Protocol on stdin/stdout (for tests and benchmarks): prints READY once the PV is served, waits
for a line GO, publishes darks, flats, projections at --fps (0 = as fast as possible), prints
``DONE {json}``, then waits for QUIT (or end of input). Run it with loopback EPICS settings, e.g.
EPICS_PVAS_INTF_ADDR_LIST=127.0.0.1 EPICS_PVA_SERVER_PORT=... EPICS_PVAS_BROADCAST_PORT=...
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np


def phantom_frames(nx: int, ny: int, n_angles: int, center: float, mu: float = 0.02):
    """(theta_deg, frame(i) -> uint16 image, dark, flat): the phantom of tests/test_preview.py."""
    from bluesky_tomo_hpc.engine.projector import ellipse_sinogram

    theta = np.linspace(0.0, 180.0, n_angles, endpoint=False)
    sino = ellipse_sinogram(nx, np.deg2rad(theta), n_det=nx, center=center) * mu
    z = np.arange(ny)
    prof = np.where(np.abs(z - (ny - 1) / 2) < ny / 4, 1.0, 0.5).astype(np.float32)
    flat = (3000.0 * (1.0 + 0.2 * np.sin(np.linspace(0, np.pi, nx))))[None, :] * np.ones((ny, 1))
    dark = np.full((ny, nx), 100.0)

    def frame(i: int) -> np.ndarray:
        return (flat * np.exp(-prof[:, None] * sino[i][None, :]) + dark).astype(np.uint16)

    return theta, frame, dark.astype(np.uint16), (flat + dark).astype(np.uint16)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--channel", default="tomo:sim:image")
    p.add_argument("--nx", type=int, default=64)
    p.add_argument("--ny", type=int, default=16)
    p.add_argument("--angles", type=int, default=90)
    p.add_argument("--darks", type=int, default=4)
    p.add_argument("--flats", type=int, default=4)
    p.add_argument("--fps", type=float, default=0.0)
    p.add_argument("--center", type=float, help="rotation axis column (default: the middle)")
    p.add_argument("--scan-uid", default="pva-sim-scan")
    p.add_argument("--no-go", action="store_true", help="publish at once instead of waiting for GO")
    p.add_argument("--distinct", type=int, default=0,
                   help="precompute this many projections and cycle them (benchmarks at real frame "
                        "sizes: the simulator must not be the bottleneck); 0: every angle computed")
    p.add_argument("--times", help="write each frame's publish time (time.time()) as JSON here at DONE")
    a = p.parse_args(argv)

    from bluesky_tomo_hpc.sources.pva import NtndArrayPublisher

    center = (a.nx - 1) / 2.0 if a.center is None else a.center
    theta, frame, dark, flat = phantom_frames(a.nx, a.ny, a.angles, center)
    if a.distinct > 0:
        cached = [frame(i) for i in range(min(a.distinct, a.angles))]

        def frame(i: int) -> np.ndarray:  # noqa: F811 - the cycled stand-in
            return cached[i % len(cached)]
    pub = NtndArrayPublisher(a.channel)
    print("READY", flush=True)
    if not a.no_go and sys.stdin.readline().strip() != "GO":
        pub.stop()
        return 1
    common = {"scan_uid": a.scan_uid, "num_projections": a.angles, "rotation_center_hint": center}
    period = 1.0 / a.fps if a.fps > 0 else 0.0
    t0 = time.perf_counter()
    k = 0
    plan = ([("dark", dark, None)] * a.darks + [("flat", flat, None)] * a.flats
            + [("projection", None, i) for i in range(a.angles)])
    sent: list[float] = []
    for kind, image, i in plan:
        attrs = {**common, "frame_type": kind}
        if i is not None:
            image = frame(i)
            attrs["rotation_angle"] = float(theta[i])
        pub.publish(image, attrs)
        sent.append(time.time())
        k += 1
        if period:
            delay = t0 + k * period - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
    dt = time.perf_counter() - t0
    done = {"published": k, "seconds": round(dt, 3), "fps": round(k / dt, 1)}
    if a.times:
        with open(a.times, "w") as f:
            json.dump({"darks": a.darks, "flats": a.flats, "published": sent}, f)
    print("DONE " + json.dumps(done), flush=True)
    sys.stdin.readline()  # QUIT or EOF
    pub.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
