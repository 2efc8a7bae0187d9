"""An example of steering on the scan's health: re-take the projections a beam dump spoiled.

The plan takes the scan as ``tomo_scan`` does (darks, flats, projections at each angle), then
waits (without blocking the RunEngine) until the scan's health has looked at every projection,
asks it which projections a ``beam_loss`` or ``shutter_closed`` finding names, and takes those
angles again in the same run, up to ``max_rounds`` times while findings remain. The health is the
same whether the pipeline runs in this process or in a remote worker
(``ResultFutures.from_preview_stream``).

Both the spoiled projections and their re-takes are in the run (raw data are never dropped); the
health's findings name the spoiled ones (``first``..``last``), and staging
(:func:`bluesky_tomo_hpc.batch.staging.write_exchange_file`) leaves them out of every
reconstruction of the run.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import numpy as np
from bluesky import plan_stubs as bps
from bluesky.utils import Msg

from ..engine.scan_health_report import BEAM_KINDS
from ..sim.plans import _arm, _darks, _flats, _merge_md, _scan_md
from ..sim.stage import SHUTTER_OPEN, TomoStage
from ..steering.wait import ResultFutures, wait_for_health

Plan = Generator[Msg, Any, Any]



def _take(detector: Any, stage: TomoStage, angles: np.ndarray, exposure: float) -> Plan:
    yield from bps.mv(stage.shutter, SHUTTER_OPEN, stage.sample_x, stage.sample_in_position)
    yield from bps.stage(detector, wait=True)
    yield from _arm(detector, exposure)
    for angle in angles:
        yield from bps.mv(stage.rot, float(angle))
        yield from bps.trigger_and_read([detector, stage.rot], name="primary")
    yield from bps.unstage(detector, wait=True)


def tomo_scan_retaking_lost_frames(
    detector: Any, stage: TomoStage, results: ResultFutures, *, num_projections: int = 180,
    num_darks: int = 10, num_flats: int = 10, start: float = 0.0, stop: float = 180.0,
    exposure: float = 0.01, max_rounds: int = 2, health_timeout: float = 60.0,
    md: dict[str, Any] | None = None,
) -> Plan:
    """A step scan that re-takes the projections its health found without beam. Returns
    ``(run uid, [projection indices re-taken, per round])``. Raises ``SteeringTimeout`` when the
    health does not cover the scan within ``health_timeout`` seconds (the run is closed first)."""
    if max_rounds < 0:
        raise ValueError(f"max_rounds must be >= 0, got {max_rounds}")
    base = _scan_md(detector, plan_name="tomo_scan_retaking_lost_frames", rotation_axis=stage.rot.name,
                    motor=stage.rot.name, num_projections=num_projections, num_darks=num_darks,
                    num_flats=num_flats, start=start, stop=stop, exposure=exposure, layout="streams",
                    dark_flat_uid=None, flat_position="before", plan_args={"max_rounds": max_rounds})
    angles = np.linspace(start, stop, num_projections, endpoint=False)
    uid = yield from bps.open_run(md=_merge_md(base, md))
    retaken: list[list[int]] = []
    try:
        if num_darks:
            yield from _darks(detector, stage, num_darks, exposure)
        if num_flats:
            yield from _flats(detector, stage, num_flats, exposure)
        yield from _take(detector, stage, angles, exposure)
        taken = list(angles)  # projection index -> angle, re-takes included
        handled: set[int] = set()
        for _ in range(max_rounds):
            report = yield from wait_for_health(results, uid, projections=len(taken), timeout=health_timeout)
            lost = [i for i in report.frames(BEAM_KINDS) if i not in handled and i < len(taken)]
            if not lost:
                break
            handled.update(lost)
            again = np.asarray([taken[i] for i in lost])
            yield from _take(detector, stage, again, exposure)
            taken.extend(again)
            retaken.append(lost)
    finally:
        yield from bps.close_run()
    return uid, retaken
