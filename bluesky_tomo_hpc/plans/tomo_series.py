"""``tomo_series``: repeated scans of one sample over time or an in situ condition (4D).

Every scan is an ordinary tomography run (``tomo_scan`` by default) whose start document also
carries ``start["series"]`` (id, index, coordinate) and ``start["sample"]`` with that step's
conditions, so the pipeline groups and reconstructs them alike (same centre, same parameters:
see :mod:`bluesky_tomo_hpc.metadata.pinned_center`) and Tiled finds them by series id.

Everything a user typed (sample, every condition) is validated before the first scan: a bad
condition at step 7 refuses the series at once instead of failing after six scans.

With ``steering`` (a :class:`~bluesky_tomo_hpc.steering.ResultFutures`) and ``stop_when``, the
plan waits after each scan for its preview (or full result) and stops the series as soon as
``stop_when(metrics)`` is true: "stop heating when the pores close".
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from bluesky import plan_stubs as bps
from bluesky.utils import Msg

from ..metadata.sample import SampleMetadata, SampleMetadataError, resolve_sample
from ..metadata.series_point import START_KEY, SeriesPoint

Plan = Generator[Msg, Any, Any]


@dataclass
class SeriesOutcome:
    """What a series did: its id, the uids in order, and why it stopped."""

    series_id: str
    uids: list[str] = field(default_factory=list)
    stopped_early: bool = False
    reason: str = "all planned scans done"
    metrics: list[Any] = field(default_factory=list)


def _steps(sample: SampleMetadata, num_scans: int | None,
           conditions: Sequence[Mapping[str, Any]]) -> list[SampleMetadata | None]:
    """The sample of every step, validated now; None for steps without their own conditions."""
    if conditions:
        out: list[SampleMetadata | None] = []
        for i, cond in enumerate(conditions):
            try:
                out.append(sample.with_conditions(cond))
            except SampleMetadataError as exc:
                raise SampleMetadataError(f"series step {i}: {exc}") from None
        return out
    if num_scans is None or num_scans < 1:
        raise ValueError("tomo_series needs num_scans >= 1 or a list of conditions")
    return [None] * num_scans


def _coordinate(step: SampleMetadata | None, conditions: Mapping[str, Any] | None, elapsed: float) -> dict:
    if step is not None and conditions:
        name = next(iter(conditions))
        quantity = getattr(step.conditions, name, None) if name != "other" else None
        if quantity is not None and hasattr(quantity, "value"):
            return {"name": name, **quantity.model_dump(mode="json")}
    return {"name": "time", "value": elapsed, "units": "second", "si_value": elapsed, "si_units": "s"}


def tomo_series(
    detector: Any,
    stage: Any,
    *,
    sample: Any,
    num_scans: int | None = None,
    conditions: Sequence[Mapping[str, Any]] = (),
    interval_s: float = 0.0,
    series_id: str | None = None,
    scan: Callable[..., Plan] | None = None,
    set_condition: Callable[[Mapping[str, Any]], Plan] | None = None,
    steering: Any = None,
    stop_when: Callable[[Any], bool] | None = None,
    wait_for: str = "preview",
    wait_timeout: float = 120.0,
    metrics_kwargs: Mapping[str, Any] | None = None,
    md: Mapping[str, Any] | None = None,
    **scan_kwargs: Any,
) -> Plan:
    """Scan ``sample`` ``num_scans`` times (time series), or once per entry of ``conditions``
    (e.g. ``[{"temperature": "300 degC"}, {"temperature": "400 degC"}]``, applied by
    ``set_condition(condition)`` before each scan), starting scans ``interval_s`` apart.

    Returns a :class:`SeriesOutcome`.
    """
    if scan is None:
        from ..sim.plans import tomo_scan as scan
    if stop_when is not None and steering is None:
        raise ValueError("stop_when needs steering=ResultFutures(pipeline) to read each scan's result")
    base = resolve_sample(sample)
    steps = _steps(base, num_scans, conditions)
    series_id = series_id or f"{base.name}-{uuid.uuid4().hex[:8]}"
    SeriesPoint.model_validate({"id": series_id, "index": 0, "coordinate": {"name": "time", "value": 0,
                                                                           "units": "s"}, "elapsed_s": 0})
    outcome = SeriesOutcome(series_id)
    t0 = time.time()
    for index, step in enumerate(steps):
        condition = conditions[index] if conditions else None
        if condition is not None and set_condition is not None:
            yield from set_condition(condition)
        wait = t0 + index * interval_s - time.time()
        if wait > 0:
            yield from bps.sleep(wait)
        elapsed = time.time() - t0
        step_sample = (step or base).with_conditions({"elapsed": f"{elapsed:.3f} s"})
        point = {"id": series_id, "index": index, "planned": len(steps),
                 "coordinate": _coordinate(step, condition, elapsed), "elapsed_s": round(elapsed, 3)}
        scan_md = {**dict(md or {}), "sample": step_sample.document(), START_KEY: point}
        uid = yield from scan(detector, stage, md=scan_md, **scan_kwargs)
        outcome.uids.append(uid)
        if stop_when is not None:
            from ..steering.wait import wait_for_metrics

            metrics = yield from wait_for_metrics(steering, uid, wait_for, timeout=wait_timeout,
                                                  **dict(metrics_kwargs or {}))
            outcome.metrics.append(metrics)
            if stop_when(metrics) and index + 1 < len(steps):
                outcome.stopped_early = True
                outcome.reason = f"stop_when was true after scan {index} ({uid[:8]})"
                break
    return outcome
