"""A remote worker's 0MQ preview stream, feeding :class:`~.wait.ResultFutures` as the
in-process pipeline does: settled final previews resolve ``future(uid, "preview")``; the health
messages on the same socket (and the ``scan_health`` in every preview's metadata) feed
``wait_for_health`` and the health signals.

Why a thread of its own: a plan must not poll a socket; the thread receives (bounded waits of
0.2 s, so ``close`` returns promptly), and each future resolves on the RunEngine's side through
``asyncio.wrap_future``. A malformed message is logged and skipped, never trusted.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from ..engine.scan_health_report import ScanHealthReport
from ..sinks.preview_stream import PreviewProtocolError, PreviewSubscriber

log = logging.getLogger(__name__)


class PreviewStreamFeed:
    """SUB to ``address`` (a worker's ``preview.zmq_address``) in a daemon thread."""

    def __init__(self, futures: Any, address: str):
        self.futures = futures
        self.address = address
        self.received = 0
        self.skipped = 0
        self._sub = PreviewSubscriber(address, health=True)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="preview-feed", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    update = self._sub.recv_any(timeout_s=0.2)
                except PreviewProtocolError as exc:
                    self.skipped += 1
                    log.warning("preview stream %s: message skipped: %s", self.address, exc)
                    continue
                if isinstance(update, tuple):  # a health message
                    self.received += 1
                    uid, summary, final = update
                    self.futures.on_health(ScanHealthReport.from_summary(uid, summary, final))
                elif update is not None:
                    self.received += 1
                    self._dispatch(update)
        finally:
            self._sub.close()

    def _dispatch(self, update: Any) -> None:
        md = update.metadata
        health = md.get("scan_health")
        if isinstance(health, dict):
            settled = bool(update.final and not md.get("refinement_pending"))
            self.futures.on_health(ScanHealthReport.from_summary(update.run_uid, health,
                                                                 bool(health.get("final")) or settled))
        if update.final and not md.get("refinement_pending"):
            self.futures._on_preview(update)

    def close(self, timeout: float = 2.0) -> None:
        self._stop.set()
        self._thread.join(timeout)
