"""Experiment steering: plans that wait for a scan's live preview or full reconstruction,
read metrics from its slices and decide what to do next, without blocking the RunEngine."""

from ..engine.scan_health_report import ScanHealthReport
from .metrics import SliceMetrics, measure, roi_statistics, sharpness
from .wait import ResultFutures, SteeringTimeout, wait_for_health, wait_for_metrics

__all__ = ["ResultFutures", "ScanHealthReport", "ScanHealthSignals", "SliceMetrics", "SteeringTimeout",
           "measure", "roi_statistics", "sharpness", "wait_for_health", "wait_for_metrics"]


def __getattr__(name: str) -> object:
    """``ScanHealthSignals`` on first use: it imports ophyd-async, which steering itself does not need."""
    if name == "ScanHealthSignals":
        from .scan_health_signals import ScanHealthSignals

        return ScanHealthSignals
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
