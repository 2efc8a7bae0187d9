"""Experiment steering: plans that wait for a scan's live preview or full reconstruction,
read metrics from its slices and decide what to do next, without blocking the RunEngine."""

from .metrics import SliceMetrics, measure, roi_statistics, sharpness
from .scan_health_report import ScanHealthReport
from .scan_health_signals import ScanHealthSignals
from .wait import ResultFutures, SteeringTimeout, wait_for_health, wait_for_metrics

__all__ = ["ResultFutures", "ScanHealthReport", "ScanHealthSignals", "SliceMetrics", "SteeringTimeout",
           "measure", "roi_statistics", "sharpness", "wait_for_health", "wait_for_metrics"]
