"""Adaptive plans: decide the next scan from the last one's reconstruction.

Two examples the facilities asked for, both built on
:func:`~bluesky_tomo_hpc.steering.wait.wait_for_metrics` (which never blocks the RunEngine):

* :func:`centre_then_scan`: a quick scan finds the rotation centre, and the main scan is
  reconstructed with it (``start["tomo"]["rotation_center"]``) instead of searching again;
* :func:`roi_change_above`: a ``stop_when`` for :func:`~bluesky_tomo_hpc.plans.tomo_series.tomo_series`
  that stops an in situ series once the region of interest has changed enough (a reaction
  started, pores closed) since the first scan.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass
from typing import Any

from bluesky.utils import Msg

from ..steering.metrics import SliceMetrics
from ..steering.wait import ResultFutures, wait_for_metrics

log = logging.getLogger(__name__)
Plan = Generator[Msg, Any, Any]


@dataclass(frozen=True)
class CentredScan:
    """What :func:`centre_then_scan` did."""

    alignment_uid: str
    uid: str
    center: float | None
    center_confidence: float | None
    pinned: bool


def centre_then_scan(
    detector: Any,
    stage: Any,
    steering: ResultFutures,
    *,
    quick_projections: int = 60,
    min_confidence: float = 0.5,
    timeout: float = 120.0,
    scan: Callable[..., Plan] | None = None,
    md: Mapping[str, Any] | None = None,
    **scan_kwargs: Any,
) -> Plan:
    """A quick scan (``quick_projections``) whose full reconstruction finds the centre; then the
    main scan, with the centre pinned when its confidence is at least ``min_confidence`` (else
    the main scan searches its own, and the log says why). Returns a :class:`CentredScan`."""
    if scan is None:
        from ..sim.plans import tomo_scan as scan
    quick_kwargs = {**scan_kwargs, "num_projections": quick_projections}
    quick_md = {**dict(md or {}), "purpose": "alignment"}
    quick = yield from scan(detector, stage, md=quick_md, **quick_kwargs)
    metrics = yield from wait_for_metrics(steering, quick, "full", timeout=timeout)
    confident = metrics.center is not None and (metrics.center_confidence or 0.0) >= min_confidence
    main_md = dict(md or {})
    if confident:
        main_md["tomo"] = {**dict(main_md.get("tomo", {})), "rotation_center": float(metrics.center),
                           "rotation_center_hint": float(metrics.center)}
    else:
        log.warning("alignment scan %s: centre confidence %.2f below %.2f; the main scan searches its own",
                    quick[:8], metrics.center_confidence or 0.0, min_confidence)
    uid = yield from scan(detector, stage, md=main_md, **scan_kwargs)
    return CentredScan(quick, uid, metrics.center, metrics.center_confidence, confident)


def roi_change_above(fraction: float, statistic: str = "mean") -> Callable[[SliceMetrics], bool]:
    """``stop_when`` for a series: true once ``roi[statistic]`` differs from the first scan's by
    more than ``fraction`` of it (the first scan of the series is the reference)."""
    if fraction <= 0:
        raise ValueError(f"fraction must be > 0, got {fraction}")
    reference: list[float] = []

    def changed(metrics: SliceMetrics) -> bool:
        value = float(metrics.roi[statistic])
        if not reference:
            reference.append(value)
            return False
        ref = reference[0]
        change = abs(value - ref) / max(abs(ref), 1e-12)
        log.info("run %s: roi %s %.4g, %.1f%% from the first scan", metrics.run_uid[:8], statistic, value,
                 100 * change)
        return change > fraction

    return changed
