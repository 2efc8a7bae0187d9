"""``bluesky-tomo-hpc watch``: look at the live preview a worker publishes over 0MQ.

A window that refreshes (matplotlib), or, with ``--out DIR``, TIFF files rewritten on each
update (ImageJ: File > Import > Image Sequence, or reopen) and a PNG at the final.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from typing import Any

from .errors import one_line, writable_folder

log = logging.getLogger(__name__)


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "watch", help="show the live three-slice preview a worker publishes (window or files)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("address", help="the worker's preview PUB address, e.g. tcp://127.0.0.1:5600")
    p.add_argument("--out", metavar="DIR", help="write <uid8>_<plane>.tif (live) and a PNG at the final")
    p.add_argument("--until-final", action="store_true", help="exit after the first final preview")
    p.add_argument("--count", type=int, help="exit after this many updates")
    p.add_argument("--timeout", type=float, help="exit after this many seconds")
    p.set_defaults(func=run)


class _Window:
    """One matplotlib figure with three panels, redrawn in place."""

    def __init__(self) -> None:
        import matplotlib.pyplot as plt

        if plt.get_backend().lower() == "agg":
            raise RuntimeError("no interactive display (matplotlib backend Agg); use --out DIR to "
                               "write TIFF/PNG files instead")
        self.plt = plt
        self.fig, self.axes = plt.subplots(1, 3, figsize=(12, 4.4))
        self.images: dict[str, Any] = {}
        plt.ion()
        plt.show(block=False)

    def __call__(self, update: Any) -> None:
        import numpy as np

        values = np.concatenate([a.ravel() for a in update.slices.values()])
        lo, hi = np.percentile(values, [0.5, 99.5])
        for ax, plane in zip(self.axes, ("xy", "xz", "yz"), strict=True):
            img = update.slices.get(plane)
            if img is None:
                continue
            shown = self.images.get(plane)
            if shown is None or shown.get_array().shape != img.shape:
                ax.clear()
                self.images[plane] = ax.imshow(img, cmap="gray", vmin=lo, vmax=hi)
                ax.set_xticks([])
                ax.set_yticks([])
            else:
                shown.set_data(img)
                shown.set_clim(lo, hi)
            ax.set_title(f"{plane} @ {update.indices.get(plane)}")
        md = update.metadata
        flags = ("  FINAL" if update.final else "") + ("  (degraded)" if md.get("degraded") else "")
        health = md.get("scan_health")
        status = health.get("status") if isinstance(health, dict) else None
        flags += f"  health: {status}" if status not in (None, "ok") else ""
        self.fig.suptitle(f"run {update.run_uid[:8]}  {md.get('n_projections_used')}/"
                          f"{md.get('n_projections_expected')} projections{flags}")
        self.fig.canvas.draw_idle()
        self.plt.pause(0.001)


class _Findings:
    """Each scan-health finding printed once, and again when it grows or gets worse."""

    def __init__(self) -> None:
        self._seen: dict[tuple[str, str, object], tuple[object, object]] = {}

    def new_lines(self, run_uid: str, health: dict[str, Any]) -> list[str]:
        lines = []
        for f in health.get("findings", ()):
            if not isinstance(f, dict):
                continue
            key, state = (run_uid, str(f.get("kind")), f.get("first")), (f.get("last"), f.get("severity"))
            if self._seen.get(key) != state:
                self._seen[key] = state
                lines.append(f"  {str(f.get('severity', '?')).upper()} {f.get('kind')}: {f.get('message')}")
        return lines


def run(args: argparse.Namespace) -> int:
    from ..settings import check_zmq_address
    from ..sinks.preview_stream import PreviewProtocolError, PreviewSubscriber

    check_zmq_address(args.address, what="watch address")  # before any window or folder is made
    show: Any
    if args.out:
        from ..sinks.preview_outputs import PreviewFileWriter

        show = PreviewFileWriter(writable_folder(args.out, "--out"))
    else:
        try:
            show = _Window()
        except RuntimeError as exc:
            print(f"watch: {exc}", file=sys.stderr)
            return 2
    sub = PreviewSubscriber(args.address)
    said = _Findings()
    deadline = None if args.timeout is None else time.monotonic() + args.timeout
    n = 0
    try:
        while deadline is None or time.monotonic() < deadline:
            try:
                update = sub.recv(timeout_s=0.2)
            except PreviewProtocolError as exc:  # one bad message (or a hostile sender) is skipped
                print(f"watch: message skipped: {one_line(exc)}", file=sys.stderr)
                continue
            if update is None:
                continue
            n += 1
            md = update.metadata
            health = md.get("scan_health") if isinstance(md.get("scan_health"), dict) else {}
            print(f"run {update.run_uid} seq {update.seq} projections {md.get('n_projections_used')} "
                  f"skipped {md.get('n_projections_skipped')} health {health.get('status', '-')}"
                  f"{' final' if update.final else ''}", flush=True)
            for line in said.new_lines(update.run_uid, health):
                print(line, flush=True)
            show(update)
            done = update.final and not md.get("refinement_pending")
            if (args.until_final and done) or (args.count and n >= args.count):
                return 0
        print(f"watch: timeout after {args.timeout} s ({n} updates)", file=sys.stderr)
        return 1
    finally:
        sub.close()
