"""The scan's health as ophyd-async soft signals: what a plan (or a monitor, or a suspender)
reads with ``bps.rd`` while the scan runs.

Why soft signals: any Bluesky tool reads and subscribes to them (``bps.rd``, ``RE.subscribe`` on
a monitored stream, a ``SuspendWhenChanged`` suspender), and they need no IOC. Updates come from
the pipeline's threads (or a remote worker's preview stream); each is handed to the RunEngine's
event loop (``call_soon_threadsafe``), so a signal changes only on that loop, as ophyd-async expects.

::

    health = ScanHealthSignals(name="scan_health")
    results = ResultFutures(tomo, health=health)      # or ResultFutures.from_preview_stream(addr, ...)
    status = yield from bps.rd(health.status)          # "ok" | "info" | "warning" | "error"
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from ophyd_async.core import StandardReadable, StandardReadableFormat, soft_signal_r_and_setter

from ..engine.scan_health_report import ScanHealthReport


class ScanHealthSignals(StandardReadable):
    """``status``, ``run_uid``, ``projections`` (checked so far), ``alarms`` (warnings + errors),
    ``bad_frames`` (projections named by them, as JSON list) and ``last_alarm`` (its message)."""

    def __init__(self, name: str = "scan_health") -> None:
        self._setters: dict[str, Callable[[Any], None]] = {}
        with self.add_children_as_readables(StandardReadableFormat.HINTED_SIGNAL):
            self.status = self._soft(str, "ok", "status")
            self.alarms = self._soft(int, 0, "alarms")
        with self.add_children_as_readables():
            self.run_uid = self._soft(str, "", "run_uid")
            self.projections = self._soft(int, 0, "projections")
            self.bad_frames = self._soft(str, "[]", "bad_frames")
            self.last_alarm = self._soft(str, "", "last_alarm")
        super().__init__(name=name)
        self.report: ScanHealthReport | None = None

    def _soft(self, datatype: type, initial: Any, key: str) -> Any:
        signal, setter = soft_signal_r_and_setter(datatype, initial_value=initial)
        self._setters[key] = setter
        return signal

    def update(self, report: ScanHealthReport) -> None:
        """Take a report from any thread; the signals change on the RunEngine's loop (or here,
        when no loop runs: scripts and tests without a RunEngine)."""
        self.report = report
        alarms = report.alarms()
        values = {"status": report.status, "run_uid": report.run_uid, "projections": report.n_projections,
                  "alarms": len(alarms), "bad_frames": json.dumps(report.frames()),
                  "last_alarm": str(alarms[-1].get("message", "")) if alarms else ""}
        loop = _bluesky_loop()
        if loop is None:
            self._apply(values)
        else:
            loop.call_soon_threadsafe(self._apply, values)

    def _apply(self, values: dict[str, Any]) -> None:
        for key, value in values.items():
            self._setters[key](value)


def _bluesky_loop() -> asyncio.AbstractEventLoop | None:
    from bluesky.run_engine import get_bluesky_event_loop

    loop = get_bluesky_event_loop()
    return loop if loop is not None and loop.is_running() else None
