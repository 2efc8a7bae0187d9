"""Tomography plans for the simulated beamline, recording the agreed ``start["tomo"]`` metadata.

Why these shapes of run: they reproduce the two layouts real beamlines use, so every source and
callback is tested against both. ``layout="streams"`` is NSLS-II FXI (dark, flat and primary
streams in one run); ``tomo_dark_flat`` + ``layout="separate"`` is NSLS-II HEX (dark/flat in their
own run, referenced by uid). The detector is re-staged for every stream so that each stream gets
its own StreamResource (TiledWriter attaches a shared one only to the first stream).

Every step is a checkpoint (as in ``bluesky.plans.scan``): a pause or a suspender (beam dump)
rewinds to the point it interrupted and takes it again, never the whole stream; the retaken
point's Event repeats the seq_num of the one it replaces, and consumers keep the last.

The plans work with both flavours: an ophyd-async detector is armed with ``prepare`` (exposure as
``TriggerInfo.livetime``); an ophyd v1 detector gets its ``acquire_time`` set.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from typing import Any

import numpy as np
from bluesky import plan_stubs as bps
from bluesky import preprocessors as bpp
from bluesky.utils import Msg

from .stage import SHUTTER_CLOSED, SHUTTER_OPEN, TomoStage

Plan = Generator[Msg, Any, Any]

LAYOUTS = ("streams", "separate")
FLAT_POSITIONS = ("before", "after", "both")


def image_key(detector: Any) -> str:
    """The data key of the detector's image (``det`` for ophyd-async, ``tomo_det_image`` for v1)."""
    return getattr(detector, "image_key", None) or detector.name


def _is_ophyd_async(obj: Any) -> bool:
    from ophyd_async.core import Device

    return isinstance(obj, Device)


def _arm(detector: Any, exposure: float) -> Plan:
    if _is_ophyd_async(detector):
        from ophyd_async.core import TriggerInfo

        yield from bps.prepare(detector, TriggerInfo(livetime=exposure), wait=True)
    else:
        yield from bps.mv(detector.acquire_time, exposure)


def _step_stream(detector: Any, stream: str, num: int, exposure: float) -> Plan:
    """Stage, arm, take ``num`` frames into ``stream``, unstage: one StreamResource per stream."""
    yield from bps.stage(detector, wait=True)
    yield from _arm(detector, exposure)
    for _ in range(num):
        yield from bps.checkpoint()
        yield from bps.trigger_and_read([detector], name=stream)
    yield from bps.unstage(detector, wait=True)


def _fly_stream(
    detector: Any,
    stream: str,
    num: int,
    exposure: float,
    deadtime: float = 0.0,
    flyers: Sequence[Any] = (),
    declared: set[str] | None = None,
) -> Plan:
    """Stage, prepare ``num`` frames, kickoff, collect into ``stream`` while completing, unstage.

    No Event carries a frame: the stream is declared for collection and filled by StreamDatum.
    ``flyers`` (e.g. a prepared rotation axis) are kicked off first and completed alongside.
    A stream already in ``declared`` (flats after the projections) is not declared again, so
    the run keeps one descriptor per stream name.
    """
    from ophyd_async.core import TriggerInfo

    yield from bps.stage(detector, wait=True)
    info = TriggerInfo(number_of_events=num, livetime=exposure, deadtime=deadtime)
    yield from bps.prepare(detector, info, wait=True)
    if declared is None or stream not in declared:
        yield from bps.declare_stream(detector, name=stream, collect=True)
        if declared is not None:
            declared.add(stream)
    for flyer in flyers:
        yield from bps.kickoff(flyer, wait=True)
    yield from bps.kickoff(detector, wait=True)
    yield from bps.collect_while_completing(
        flyers=[*flyers, detector], dets=[detector], flush_period=0.5, stream_name=stream
    )
    yield from bps.unstage(detector, wait=True)


def _darks(detector: Any, stage: TomoStage, num: int, exposure: float, acquire=_step_stream) -> Plan:
    yield from bps.mv(stage.shutter, SHUTTER_CLOSED)
    yield from acquire(detector, "dark", num, exposure)
    yield from bps.mv(stage.shutter, SHUTTER_OPEN)


def _flats(detector: Any, stage: TomoStage, num: int, exposure: float, acquire=_step_stream) -> Plan:
    yield from bps.mv(stage.shutter, SHUTTER_OPEN, stage.sample_x, stage.sample_out_position)
    yield from acquire(detector, "flat", num, exposure)
    yield from bps.mv(stage.sample_x, stage.sample_in_position)


def _projections(detector: Any, stage: TomoStage, angles: np.ndarray, exposure: float) -> Plan:
    yield from bps.mv(stage.shutter, SHUTTER_OPEN, stage.sample_x, stage.sample_in_position)
    yield from bps.stage(detector, wait=True)
    yield from _arm(detector, exposure)
    for angle in angles:
        yield from bps.checkpoint()
        yield from bps.mv(stage.rot, float(angle))
        yield from bps.trigger_and_read([detector, stage.rot], name="primary")
    yield from bps.unstage(detector, wait=True)


def _fly_projections(
    detector: Any, stage: TomoStage, num: int, start: float, stop: float, exposure: float, deadtime: float
) -> Plan:
    """Rotate at constant speed through ``[start, stop)`` while the detector free-runs.

    The axis runs half an exposure ahead so that mid-exposure angles are ``start + i * step``.
    """
    from ophyd_async.core import FlyMotorInfo

    period = exposure + deadtime
    step = (stop - start) / num
    lead = 0.5 * exposure * step / period
    info = FlyMotorInfo(start_position=start - lead, end_position=stop - lead, time_for_move=num * period)
    velocity = yield from bps.rd(stage.rot.velocity)

    def fly() -> Plan:
        yield from bps.mv(stage.shutter, SHUTTER_OPEN, stage.sample_x, stage.sample_in_position)
        yield from bps.prepare(stage.rot, info, wait=True)
        yield from _fly_stream(detector, "primary", num, exposure, deadtime, flyers=[stage.rot])

    def restore() -> Plan:
        yield from bps.mv(stage.rot.velocity, velocity)

    yield from bpp.finalize_wrapper(fly(), restore())


def _check_counts(**counts: int) -> None:
    for name, value in counts.items():
        if int(value) < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")


def _merge_md(base: dict[str, Any], md: dict[str, Any] | None) -> dict[str, Any]:
    """User md wins, except ``md["tomo"]`` which extends (not replaces) the generated one."""
    out = {**base, **(md or {})}
    if md and "tomo" in md:
        out["tomo"] = {**base["tomo"], **md["tomo"]}
    return out


def _scan_md(
    detector: Any,
    *,
    plan_name: str,
    rotation_axis: str,
    motor: str,
    num_projections: int,
    num_darks: int,
    num_flats: int,
    start: float,
    stop: float,
    exposure: float,
    layout: str,
    dark_flat_uid: str | None,
    flat_position: str,
    plan_args: dict[str, Any],
) -> dict[str, Any]:
    """Validate the scan arguments and build the start document (with ``start["tomo"]``)."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if flat_position not in FLAT_POSITIONS:
        raise ValueError(f"flat_position must be one of {FLAT_POSITIONS}, got {flat_position!r}")
    if layout == "separate" and not dark_flat_uid:
        raise ValueError("layout='separate' needs dark_flat_uid, the uid of a tomo_dark_flat run")
    if layout == "streams" and dark_flat_uid:
        raise ValueError("dark_flat_uid is only meaningful with layout='separate'")
    _check_counts(num_darks=num_darks, num_flats=num_flats)
    if num_projections < 1:
        raise ValueError(f"num_projections must be >= 1, got {num_projections}")
    tomo: dict[str, Any] = {
        "version": 1,
        "layout": layout,
        "detector": image_key(detector),
        "rotation_axis": rotation_axis,
        "angle_units": "deg",
        "streams": {"projection": "primary", "dark": "dark", "flat": "flat"},
        "num_projections": int(num_projections),
        "angles": {
            "start": float(start),
            "stop": float(stop),
            "num": int(num_projections),
            "endpoint": False,
        },
        "exposure_s": float(exposure),
    }
    if layout == "streams":
        flat_sets = 2 if flat_position == "both" else 1
        tomo.update(num_darks=int(num_darks), num_flats=int(num_flats) * flat_sets)
        tomo["flat_position"] = flat_position
    else:
        # the dark and flat streams live in the dark/flat run
        tomo["dark_flat_uid"] = dark_flat_uid
    base = {
        "plan_name": plan_name,
        "detectors": [detector.name],
        "motors": [motor],
        "num_points": int(num_projections),
        "plan_args": {
            "num_projections": num_projections,
            "num_darks": num_darks,
            "num_flats": num_flats,
            "start": start,
            "stop": stop,
            "exposure": exposure,
            "layout": layout,
            "flat_position": flat_position,
            **plan_args,
        },
        "plan_pattern": "linspace",
        "plan_pattern_args": {"start": start, "stop": stop, "num": num_projections, "endpoint": False},
        "hints": {"dimensions": [([rotation_axis], "primary")]},
        "tomo": tomo,
    }
    if dark_flat_uid:
        # HEX names the reference this way; sources that know HEX find it too.
        base["current_dark_flat_scan_uid"] = dark_flat_uid
    return base


def tomo_scan(
    detector: Any,
    stage: TomoStage,
    *,
    num_projections: int = 180,
    num_darks: int = 10,
    num_flats: int = 10,
    start: float = 0.0,
    stop: float = 180.0,
    exposure: float = 0.01,
    layout: str = "streams",
    dark_flat_uid: str | None = None,
    flat_position: str = "before",
    md: dict[str, Any] | None = None,
) -> Plan:
    """Step-scan tomography: projections at ``linspace(start, stop, num, endpoint=False)`` degrees.

    ``layout="streams"``: darks (shutter closed) into "dark", flats (sample out) into "flat"
    before and/or after the projections (``flat_position``), projections into "primary".
    ``layout="separate"``: projections only; ``dark_flat_uid`` names the dark/flat run.
    ``num_flats`` in the metadata counts all flat frames (twice the per-set number for "both").
    Returns the run uid.
    """
    base = _scan_md(
        detector,
        plan_name="tomo_scan",
        rotation_axis=stage.rot.name,
        motor=stage.rot.name,
        num_projections=num_projections,
        num_darks=num_darks,
        num_flats=num_flats,
        start=start,
        stop=stop,
        exposure=exposure,
        layout=layout,
        dark_flat_uid=dark_flat_uid,
        flat_position=flat_position,
        plan_args={},
    )
    angles = np.linspace(start, stop, num_projections, endpoint=False)

    def body() -> Plan:
        if layout == "streams":
            if num_darks:
                yield from _darks(detector, stage, num_darks, exposure)
            if num_flats and flat_position in ("before", "both"):
                yield from _flats(detector, stage, num_flats, exposure)
        yield from _projections(detector, stage, angles, exposure)
        if layout == "streams" and num_flats and flat_position in ("after", "both"):
            yield from _flats(detector, stage, num_flats, exposure)

    return (yield from bpp.run_wrapper(body(), md=_merge_md(base, md)))


def tomo_fly_scan(
    detector: Any,
    stage: TomoStage,
    *,
    num_projections: int = 180,
    num_darks: int = 10,
    num_flats: int = 10,
    start: float = 0.0,
    stop: float = 180.0,
    exposure: float = 0.01,
    deadtime: float = 0.0,
    layout: str = "streams",
    dark_flat_uid: str | None = None,
    flat_position: str = "before",
    md: dict[str, Any] | None = None,
) -> Plan:
    """Fly-scan tomography (ophyd-async only): continuous rotation, no Events for frames.

    Every stream is declared and collected (``declare_stream``/``kickoff``/
    ``collect_while_completing``), frames and angles come as StreamDatum. The measured angle of
    each frame is the external data key ``<detector>-rotation_angle`` (HDF5
    ``/entry/instrument/NDAttributes/rotation_angle``), which ``start["tomo"]["rotation_axis"]``
    names; ``start["tomo"]["angles"]`` is the nominal trajectory. Returns the run uid.
    """
    if not _is_ophyd_async(detector):
        raise TypeError(f"tomo_fly_scan needs an ophyd-async detector, got {type(detector).__name__}")
    if exposure + deadtime <= 0:
        raise ValueError("tomo_fly_scan needs exposure + deadtime > 0 to set the rotation speed")
    from .ophyd_async_detector import ANGLE_SUFFIX

    base = _scan_md(
        detector,
        plan_name="tomo_fly_scan",
        rotation_axis=f"{detector.name}{ANGLE_SUFFIX}",
        motor=stage.rot.name,
        num_projections=num_projections,
        num_darks=num_darks,
        num_flats=num_flats,
        start=start,
        stop=stop,
        exposure=exposure,
        layout=layout,
        dark_flat_uid=dark_flat_uid,
        flat_position=flat_position,
        plan_args={"deadtime": deadtime},
    )

    declared: set[str] = set()

    def collect(det: Any, stream: str, num: int, exp: float) -> Plan:
        return (yield from _fly_stream(det, stream, num, exp, deadtime, declared=declared))

    def body() -> Plan:
        if layout == "streams":
            if num_darks:
                yield from _darks(detector, stage, num_darks, exposure, acquire=collect)
            if num_flats and flat_position in ("before", "both"):
                yield from _flats(detector, stage, num_flats, exposure, acquire=collect)
        yield from _fly_projections(detector, stage, num_projections, start, stop, exposure, deadtime)
        if layout == "streams" and num_flats and flat_position in ("after", "both"):
            yield from _flats(detector, stage, num_flats, exposure, acquire=collect)

    return (yield from bpp.run_wrapper(body(), md=_merge_md(base, md)))


def tomo_dark_flat(
    detector: Any,
    stage: TomoStage,
    *,
    num_darks: int = 10,
    num_flats: int = 10,
    exposure: float = 0.01,
    md: dict[str, Any] | None = None,
) -> Plan:
    """A run of only darks ("dark") and flats ("flat"), as NSLS-II HEX ``tomo_dark_flat``.

    Returns its uid, for ``tomo_scan(layout="separate", dark_flat_uid=uid)``.
    """
    _check_counts(num_darks=num_darks, num_flats=num_flats)
    if num_darks + num_flats == 0:
        raise ValueError("tomo_dark_flat needs num_darks or num_flats > 0")
    tomo = {
        "version": 1,
        "layout": "dark_flat",
        "detector": image_key(detector),
        "streams": {"dark": "dark", "flat": "flat"},
        "num_darks": int(num_darks),
        "num_flats": int(num_flats),
        "exposure_s": float(exposure),
        "flat_position": "before",
    }
    base = {
        "plan_name": "tomo_dark_flat",
        "detectors": [detector.name],
        "num_points": int(num_darks + num_flats),
        "plan_args": {"num_darks": num_darks, "num_flats": num_flats, "exposure": exposure},
        "tomo": tomo,
    }

    def body() -> Plan:
        if num_darks:
            yield from _darks(detector, stage, num_darks, exposure)
        if num_flats:
            yield from _flats(detector, stage, num_flats, exposure)

    return (yield from bpp.run_wrapper(body(), md=_merge_md(base, md)))


def tomo_dark_flat_and_scan(
    detector: Any,
    stage: TomoStage,
    *,
    num_darks: int = 10,
    num_flats: int = 10,
    exposure: float = 0.01,
    md: dict[str, Any] | None = None,
    **scan_kwargs: Any,
) -> Plan:
    """HEX style in one plan: a ``tomo_dark_flat`` run, then a ``layout="separate"`` scan.

    Returns ``(dark_flat_uid, scan_uid)``.
    """
    df_uid = yield from tomo_dark_flat(
        detector, stage, num_darks=num_darks, num_flats=num_flats, exposure=exposure, md=md
    )
    uid = yield from tomo_scan(
        detector, stage, exposure=exposure, layout="separate", dark_flat_uid=df_uid, md=md, **scan_kwargs
    )
    return df_uid, uid
