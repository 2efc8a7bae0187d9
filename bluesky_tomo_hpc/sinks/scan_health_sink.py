"""The scan's health in the live path: a sink that looks at every frame as it comes.

Why inline (on the caller's thread, no queue of its own): a frame costs about a millisecond here
(two strided profiles and the extremes, :mod:`bluesky_tomo_hpc.engine.scan_health_measures`),
far less than a queue hand-off of an 11 MB frame is worth, and so the findings are complete the
moment the scan's stop reaches this sink. Put it before the preview in a
:class:`~bluesky_tomo_hpc.sinks.sink.SinkFanout`: the preview's final then carries the final
health (``PreviewSink(extra_metadata=health.metadata)``), and with it the Tiled preview node,
the 0MQ preview stream (``watch``, a remote plan) and the Live page.

``outputs`` are called with a :class:`HealthUpdate` after every batch of frames (its summary
without the timeline: a few hundred bytes, so a plan waiting for "health of all N projections"
always hears about the last one), and once at the end (``final``, timeline included). A failing
output is logged and the others still run.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..engine.scan_health import HealthThresholds, ScanHealth
from ..model import FrameBatch, FrameRole, ScanEnd, ScanSpec, TomoDataError

log = logging.getLogger(__name__)

#: where a scan may state its detector's saturation (counts), when under the dtype's maximum
SATURATION_KEY = "saturation_counts"
#: ``ScanSpec.metadata`` key (and preview metadata key) of the scan's health summary
HEALTH_METADATA_KEY = "scan_health"


@dataclass(frozen=True)
class HealthUpdate:
    """The health of one run now: ``summary`` is :meth:`ScanHealth.summary` (JSON-ready)."""

    run_uid: str
    summary: dict[str, Any]
    final: bool = False
    time: float = field(default_factory=time.time)

    @property
    def status(self) -> str:
        return str(self.summary.get("status", "ok"))


HealthOutput = Callable[[HealthUpdate], None]


def saturation_for(spec: ScanSpec) -> float | None:
    """The counts at which the detector saturates: ``start["tomo"]["saturation_counts"]``, else
    the integer dtype's maximum; None for float frames (already normalised: nothing to clip)."""
    tomo = spec.metadata.get("tomo") if isinstance(spec.metadata, dict) else None
    value = tomo.get(SATURATION_KEY) if isinstance(tomo, dict) else None
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return float(value)
    try:
        dtype = np.dtype(spec.dtype)
    except TypeError:
        return None
    return float(np.iinfo(dtype).max) if dtype.kind in "ui" else None


class ScanHealthSink:
    """A :class:`~bluesky_tomo_hpc.sinks.sink.Sink` that keeps a :class:`ScanHealth` per run."""

    def __init__(self, outputs: Iterable[HealthOutput] = (), *, thresholds: HealthThresholds | None = None):
        self.outputs = list(outputs)
        self.thresholds = thresholds or HealthThresholds()
        self._lock = threading.Lock()
        self.health: ScanHealth | None = None
        self.run_uid = ""
        self.final: HealthUpdate | None = None

    # -- Sink protocol --------------------------------------------------------------------
    def open(self, spec: ScanSpec) -> None:
        with self._lock:
            self.spec = spec
            self.run_uid = spec.run_uid
            self.health = ScanHealth(spec.frame_shape, n_projections=spec.n_projections,
                                     saturation=saturation_for(spec), thresholds=self.thresholds)
            self.final = None
        self._publish(final=False)

    def add(self, batch: FrameBatch) -> None:
        health = self.health
        if health is None:
            raise RuntimeError("ScanHealthSink.add before open")
        if tuple(batch.frames.shape[1:]) != health.shape:
            raise TomoDataError(f"run {self.run_uid}: {batch.role.value} frames of shape "
                                f"{tuple(batch.frames.shape[1:])}, the scan declared {health.shape}")
        with self._lock:
            if batch.role is FrameRole.DARK:
                health.add_darks(batch.frames)
            elif batch.role is FrameRole.FLAT:
                health.add_flats(batch.frames, np.asarray(batch.indices))
            else:
                if batch.angles is None:
                    raise TomoDataError(f"run {self.run_uid}: projections {batch.indices[:1]}... "
                                        "came without angles; their health cannot be judged")
                health.add_projections(batch.frames, np.asarray(batch.indices), np.asarray(batch.angles))
        self._publish(final=False)

    def close(self, end: ScanEnd) -> None:
        if self.health is None:
            return
        with self._lock:
            self.health.finish()
        self.final = self._publish(final=True)
        # the run's other sinks close after this one (it comes first in the fan-out): the full
        # volume and the batch job find the findings here and put them in their provenance
        if isinstance(self.spec.metadata, dict):
            self.spec.metadata[HEALTH_METADATA_KEY] = self.summary(with_timeline=False)

    # -- output ---------------------------------------------------------------------------
    def summary(self, with_timeline: bool = True) -> dict[str, Any]:
        """The health now (thread-safe; the preview thread asks while frames come)."""
        with self._lock:
            if self.health is None:
                return {"status": "ok", "findings": []}
            return self.health.summary(with_timeline=with_timeline)

    def metadata(self) -> dict[str, Any]:
        """What the preview adds to each update's metadata: ``{"scan_health": summary}``."""
        return {HEALTH_METADATA_KEY: self.summary()}

    def _publish(self, final: bool) -> HealthUpdate:
        update = HealthUpdate(self.run_uid, self.summary(with_timeline=final), final=final)
        for out in self.outputs:
            try:
                out(update)
            except Exception:  # a listener's fault must not stop the scan's health
                log.exception("scan health output %r failed for run %s", out, self.run_uid)
        return update
