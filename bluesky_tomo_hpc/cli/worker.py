"""``bluesky-tomo-hpc worker``: the streaming worker (live preview + full volume) as a service."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
from typing import Any

from .errors import one_line

log = logging.getLogger(__name__)

EPILOG = """\
examples:
  bluesky-0MQ-proxy --in-address tcp://127.0.0.1:5577 --out-address tcp://127.0.0.1:5578 &
  bluesky-tomo-hpc worker --zmq tcp://127.0.0.1:5578 --preview-zmq tcp://127.0.0.1:5600
  bluesky-tomo-hpc worker --pva 13SIM1:Pva1:Image --angle-pv 13BMD:rot.RBV --png-dir previews/
  bluesky-tomo-hpc watch tcp://127.0.0.1:5600          # look at the live slices

The worker prints READY when it listens, then one JSON line per finished scan. With --journal
a worker killed mid-scan and restarted rebuilds the open run from its HDF5 file.
"""


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "worker", help="live preview and full volume for scans streamed over 0MQ or PV Access",
        description=__doc__, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    feed = p.add_mutually_exclusive_group(required=True)
    feed.add_argument("--zmq", metavar="ADDRESS", help="bluesky-0MQ-proxy out address (tcp://HOST:PORT)")
    feed.add_argument("--pva", metavar="CHANNEL", help="areaDetector NTNDArray PV Access channel")
    p.add_argument("--prefix", default="", help="0MQ document prefix to accept (default: all)")
    p.add_argument("--preview-zmq", metavar="ADDRESS", help="publish previews on this PUB address")
    p.add_argument("--preview-control", metavar="ADDRESS",
                   help="take slice positions for the running scan here (the web page moves them)")
    p.add_argument("--png-dir", metavar="DIR", help="write preview TIFF/PNG files here")
    p.add_argument("--binning", type=int, help="preview binning (default from settings)")
    p.add_argument("--positions", type=float, nargs=3, metavar=("Z", "Y", "X"),
                   help="slice positions as fractions (default 0.5 0.5 0.5)")
    p.add_argument("--center", type=float, help="rotation axis column (default: scan hint or middle)")
    p.add_argument("--tiled-uri", help="Tiled server for results (default from settings)")
    p.add_argument("--journal", metavar="DIR", help="journal of open runs, for restarts")
    p.add_argument("--no-full-volume", action="store_true", help="preview only")
    p.add_argument("--max-runs", type=int, help="exit after this many scans")
    p.add_argument("--timeout", type=float,
                   help="exit after this many seconds, whatever the worker is doing")
    p.add_argument("--stop-timeout", type=float, default=300.0,
                   help="give up a run with no new frame for this long whose stop document never "
                        "came (and that Tiled has no stop for); default 300 s")
    pva = p.add_argument_group("PV Access frames")
    pva.add_argument("--kind-attribute", default="frame_type", help="NDArray attribute of the frame kind")
    pva.add_argument("--angle-attribute", default="rotation_angle", help="NDArray attribute of the angle")
    pva.add_argument("--angle-pv", help="companion PV of the rotation angle")
    pva.add_argument("--kind-pv", help="companion PV of the frame kind")
    pva.add_argument("--angle-units", choices=("deg", "rad"), default="deg")
    pva.add_argument("--n-projections", type=int, help="projections per scan (ends the scan)")
    pva.add_argument("--idle-timeout", type=float, default=5.0, help="end a scan after this idle time (s)")
    p.set_defaults(func=run)


def settings_from_args(args: argparse.Namespace) -> Any:
    """Settings from the file/environment, overridden by the command line."""
    from ..settings import Settings, load_settings

    data = load_settings().model_dump()
    preview = data["preview"]
    if args.preview_zmq:
        preview["zmq_address"] = args.preview_zmq
    if args.preview_control:
        preview["control_address"] = args.preview_control
    if args.png_dir:
        preview["png_dir"] = args.png_dir
    if args.binning:
        preview["binning"] = args.binning
    if args.positions:
        preview["positions"] = tuple(args.positions)
    if args.center is not None:
        data["recon"]["center"] = args.center
    if args.tiled_uri:
        data["tiled"]["uri"] = args.tiled_uri
    if args.no_full_volume:
        data["full_volume"] = False
    return Settings.model_validate(data)


def run(args: argparse.Namespace) -> int:
    """Serve until ``--max-runs``, ``--timeout``, SIGINT or SIGTERM, whatever the worker is doing
    (rebuilding runs from the journal, waiting for documents, finishing volumes); runs still
    open at the end are given up, saying so. A second signal exits at once."""
    import os
    import signal
    import time

    from ..extras import require
    from ..live.stream_worker import StreamWorker
    from ..sources.pva import PVA_FEATURE

    if args.pva:  # pvapy is the pva extra: say so before the worker opens anything
        require("pvaccess", PVA_FEATURE)
    deadline = None if args.timeout is None else time.monotonic() + args.timeout

    def remaining(default: float | None = None) -> float | None:
        return default if deadline is None else max(0.0, deadline - time.monotonic())

    settings = settings_from_args(args)
    worker = StreamWorker(settings, journal_dir=args.journal, stop_timeout_s=args.stop_timeout)

    def on_signal(signum: int, frame: Any) -> None:
        if worker.interrupted is not None:
            os._exit(128 + signum)  # a second signal: the user means it
        print(f"{signal.Signals(signum).name}: stopping (again to exit at once)", file=sys.stderr, flush=True)
        worker.interrupt(signum)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    if deadline is not None:  # --timeout counts from here, in every state
        timer = threading.Timer(args.timeout, lambda: worker.interrupt(0))
        timer.daemon = True
        timer.start()

    def ready() -> None:
        print("READY", flush=True)

    try:
        if args.zmq:
            worker.serve_zmq(args.zmq, prefix=args.prefix.encode(), max_runs=args.max_runs,
                             timeout_s=remaining(), ready=ready)
        else:
            worker.serve_pva(args.pva, max_runs=args.max_runs, timeout_s=remaining(), ready=ready,
                             kind_attribute=args.kind_attribute, angle_attribute=args.angle_attribute,
                             angle_pv=args.angle_pv, kind_pv=args.kind_pv, angle_units=args.angle_units,
                             n_projections=args.n_projections, idle_timeout_s=args.idle_timeout)
        worker.expire_stale_runs(all_open=True)  # nothing more will come for them
        # interrupted (a signal, or --timeout: 0): a short grace for what is in flight
        finish = 10.0 if worker.interrupted is not None else remaining(600.0)
        finished = worker.wait(timeout=finish)
        for sink in worker.previews:
            if sink.final is not None:
                print(json.dumps({"run_uid": sink.final.run_uid, "preview": sink.final.metadata},
                                 default=str), flush=True)
        for uid, outcome in worker.service.outcomes.items():
            print(json.dumps({"run_uid": uid, "full_volume": {
                "ok": outcome.ok, "message": outcome.message, "location": outcome.location,
                "seconds": round(outcome.seconds, 3)}}), flush=True)
        if worker.router.errors:
            for uid, msg in worker.router.errors:
                print(one_line(f"run {uid}: {msg}"), file=sys.stderr)
        if worker.interrupted:
            return 128 + worker.interrupted
        return 0 if finished else 1
    finally:
        worker.close()
        for s, handler in previous.items():
            signal.signal(s, handler)
