"""The live preview for browsers: one 0MQ subscriber per web app, fanned out over server-sent events.

A thread reads the preview stream (:mod:`bluesky_tomo_hpc.sinks.preview_stream`), turns each update
into a small JSON message (three PNG slices as data URLs, progress, centre, warnings) and hands it
to every connected browser's queue. A browser that falls behind loses old updates, never delays
the others (the same policy as the 0MQ publisher's high-water mark).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import Any

from ..results.pictures import grey_limits
from .images import png_data_url, shrink, to_png

log = logging.getLogger(__name__)

#: per-browser queue length: older updates are dropped beyond it
QUEUE = 4
#: browsers listening at once (each holds a connection and a queue): bounded, the next is told to wait
MAX_LISTENERS = 64


def warnings_of(md: dict[str, Any]) -> list[str]:
    """What a person should know about this preview, in words."""
    out = []
    if md.get("n_projections_skipped"):
        out.append(f"{md['n_projections_skipped']} projections skipped by the preview (it could not "
                   "keep up); the full reconstruction uses every one")
    if md.get("n_projections_before_flat"):
        out.append(f"{md['n_projections_before_flat']} projections arrived before the first flat")
    check = md.get("center_check") or {}
    if check.get("done") is False:
        out.append(f"centre not checked at stop: {check.get('why', 'no reason given')}")
    elif check.get("recomputed"):
        out.append(f"centre moved by {check.get('shift_binned_px')} binned px at the 0/180 check; "
                   f"{', '.join(check['recomputed'])} rebuilt at {check.get('center')} px")
    return out


def message_from_update(update: Any, *, max_side: int = 512) -> dict[str, Any]:
    """The JSON a browser gets for one preview update (slices share one grey scale)."""
    md = dict(update.metadata or {})
    planes = [p for p in ("xy", "xz", "yz") if p in update.slices]
    # shrink first: a full-size slice (2560 x 2560) is strided to max_side before anything else
    small = {p: shrink(update.slices[p], max_side) for p in planes}
    limits = grey_limits(list(small.values())) if planes else (0.0, 1.0)
    check = md.get("center_check") or {}
    center, source = md.get("center"), md.get("center_source")  # every slice is at this centre
    return {
        "run_uid": update.run_uid, "seq": update.seq, "final": bool(update.final), "time": update.time,
        "received": time.time(),
        "progress": {"used": md.get("n_projections_used"), "expected": md.get("n_projections_expected"),
                     "skipped": md.get("n_projections_skipped")},
        "center": center, "center_source": source,
        "center_confidence": check.get("peak"), "binning": md.get("binning"),
        "stop_to_final_s": md.get("stop_to_final_s"),
        "refinement_pending": bool(md.get("refinement_pending")),
        "warnings": warnings_of(md), "limits": list(limits),
        # findings and timeline of the scan's health (static/health_timeline.js draws them)
        "scan_health": md.get("scan_health") if isinstance(md.get("scan_health"), dict) else None,
        "slices": {p: {"png": png_data_url(to_png(small[p], limits=limits)),
                       "index": update.indices.get(p), "shape": list(update.slices[p].shape)}
                   for p in planes},
    }


class LiveFeedFull(RuntimeError):
    """As many browsers as allowed already follow the live preview."""


class LiveFeed:
    """Subscribes to the preview stream at ``address`` (None: no live preview) on a daemon thread."""

    def __init__(self, address: str | None, *, keep_finals: int = 20, max_side: int = 512,
                 control_address: str | None = None, max_listeners: int = MAX_LISTENERS):
        self.address = address
        self.max_listeners = max_listeners
        #: where the running scan's slices are moved (sinks.preview_control); None: they cannot be
        self.control_address = control_address or None
        self.max_side = max_side
        self.keep_finals = keep_finals
        #: the newest message of any run, sent first to a browser that connects
        self.latest: dict[str, Any] | None = None
        #: run uid -> its last final message, newest last
        self.finals: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.received = 0
        self.last_error = ""
        self._listeners: set[tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if address:
            self._thread = threading.Thread(target=self._run, name="web-live-feed", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        from ..sinks.preview_stream import PreviewProtocolError, PreviewSubscriber

        sub = PreviewSubscriber(self.address)  # type: ignore[arg-type]
        try:
            while not self._stop.is_set():
                try:
                    update = sub.recv(timeout_s=0.25)
                except PreviewProtocolError as exc:  # a bad message is reported, never fatal
                    self.last_error = str(exc)
                    log.warning("preview stream %s: %s", self.address, exc)
                    continue
                if update is not None:
                    try:
                        self.publish(message_from_update(update, max_side=self.max_side))
                    except Exception as exc:
                        self.last_error = f"{type(exc).__name__}: {exc}"
                        log.exception("could not show a preview update of run %s", update.run_uid)
        finally:
            sub.close()

    def publish(self, message: dict[str, Any]) -> None:
        """Remember ``message`` and hand it to every browser (from any thread)."""
        with self._lock:
            self.received += 1
            self.latest = message
            if message["final"]:
                self.finals.pop(message["run_uid"], None)
                self.finals[message["run_uid"]] = message
                while len(self.finals) > self.keep_finals:
                    self.finals.popitem(last=False)
            listeners = list(self._listeners)
        for loop, queue in listeners:
            with contextlib.suppress(RuntimeError):  # that browser's loop is closing
                loop.call_soon_threadsafe(_offer, queue, message)

    @contextlib.asynccontextmanager
    async def listen(self) -> AsyncIterator[asyncio.Queue]:
        """A queue of messages for one browser, for as long as the ``async with`` lasts."""
        entry = (asyncio.get_running_loop(), asyncio.Queue(maxsize=QUEUE))
        with self._lock:
            if len(self._listeners) >= self.max_listeners:
                raise LiveFeedFull(f"{self.max_listeners} browsers already follow the live preview")
            self._listeners.add(entry)
        try:
            yield entry[1]
        finally:
            with self._lock:
                self._listeners.discard(entry)

    @property
    def full(self) -> bool:
        """No room for another browser now (:data:`MAX_LISTENERS`)."""
        with self._lock:
            return len(self._listeners) >= self.max_listeners

    def status(self) -> dict[str, Any]:
        return {"address": self.address, "received": self.received, "last_error": self.last_error,
                "listeners": len(self._listeners), "control": self.control_address}

    def move_slices(self, run_uid: str, wanted: dict[str, int]) -> dict[str, int]:
        """Ask the preview to move run ``run_uid``'s slices (blocking: call it from a worker
        thread). ``ValueError`` (one line) when that run is not live here or the move is refused."""
        from ..sinks.preview_control import request_move

        if not self.control_address:
            raise ValueError("slice positions cannot be set from this page: no preview control address "
                             "(set preview.control_address, or serve --preview-control ADDRESS)")
        latest = self.latest
        if latest is None or latest["run_uid"] != run_uid or latest["final"]:
            raise ValueError(f"run {run_uid} is not the scan running now: only its slices can move")
        shapes = {p: s["shape"] for p, s in latest["slices"].items()}
        # the live slices' own shape bounds each index: xy moves along z (xz's rows), xz along y
        # (xy's rows) and yz along x (xy's columns)
        bounds = {"xy": (shapes.get("xz") or [0])[0], "xz": (shapes.get("xy") or [0, 0])[0],
                  "yz": (shapes.get("xy") or [0, 0])[1]}
        for plane, value in wanted.items():
            if not 0 <= value < bounds[plane]:
                raise ValueError(f"the {plane} index must be from 0 to {bounds[plane] - 1} for run "
                                 f"{run_uid}, got {value}")
        return request_move(self.control_address, run_uid, wanted)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


def _offer(queue: asyncio.Queue, message: dict[str, Any]) -> None:
    """Put without waiting; when the browser is behind, its oldest message goes."""
    if queue.full():
        with contextlib.suppress(asyncio.QueueEmpty):
            queue.get_nowait()
    queue.put_nowait(message)
