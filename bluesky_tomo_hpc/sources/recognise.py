"""Deciding from a start document whether a run is tomography, and how it is laid out.

Runs that carry ``start["tomo"]`` (the project's metadata convention) describe themselves.
Facilities that predate the convention are recognised by *presets*: small functions that map a
start document of a known plan to the same ``tomo`` dict. Recognition must be cheap, since it
runs for every run a RunEngine emits.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

LAYOUTS = ("streams", "separate", "dark_flat")
DEFAULT_STREAMS = {"projection": "primary", "dark": "dark", "flat": "flat"}

#: A preset maps a start document to a ``tomo`` dict (the convention), or None if not its run.
Preset = Callable[[Mapping[str, Any]], dict[str, Any] | None]


@dataclass(frozen=True)
class TomoLayout:
    """The parsed ``start["tomo"]`` of one run (or what a preset made of its start doc)."""

    layout: str
    detector: str | None
    rotation_axis: str | None
    angle_units: str
    streams: dict[str, str]
    dark_flat_uid: str | None = None
    num_projections: int | None = None
    num_darks: int | None = None
    num_flats: int | None = None
    angles: dict[str, Any] | None = None
    preset: str | None = None
    tomo: dict[str, Any] = field(default_factory=dict)

    def role_of_stream(self, stream: str) -> str | None:
        for role, name in self.streams.items():
            if name == stream:
                return role
        return None

    def planned_angles(self) -> np.ndarray | None:
        """Angles (radians) from ``tomo["angles"]``: used when no event carries the angle."""
        spec = self.angles
        if not spec:
            return None
        num = int(spec.get("num", self.num_projections or 0))
        if num <= 0:
            return None
        values = np.linspace(float(spec.get("start", 0.0)), float(spec.get("stop", 180.0)), num,
                             endpoint=bool(spec.get("endpoint", False)))
        return values if self.angle_units == "rad" else np.radians(values)


class TomoMetadataError(ValueError):
    """``start["tomo"]`` is present but cannot be understood; the message says why."""


def _int_or_none(value: Any) -> int | None:
    return None if value is None else int(value)


def parse_tomo(tomo: Mapping[str, Any], *, preset: str | None = None) -> TomoLayout:
    """Validate a ``tomo`` dict of the convention (version 1)."""
    if not isinstance(tomo, Mapping):
        raise TomoMetadataError(f"start['tomo'] must be a dict, got {type(tomo).__name__}")
    version = tomo.get("version", 1)
    if version != 1:
        raise TomoMetadataError(f"start['tomo'] version {version!r} is not supported (only 1)")
    layout = tomo.get("layout", "streams")
    if layout not in LAYOUTS:
        raise TomoMetadataError(f"start['tomo']['layout'] {layout!r} is not one of {LAYOUTS}")
    units = tomo.get("angle_units", "deg")
    if units not in ("deg", "rad"):
        raise TomoMetadataError(f"start['tomo']['angle_units'] {units!r} is not 'deg' or 'rad'")
    streams = dict(DEFAULT_STREAMS)
    given = tomo.get("streams") or {}
    if not isinstance(given, Mapping):
        raise TomoMetadataError("start['tomo']['streams'] must map role -> stream name")
    # accept "projections" (plural) as written in early notes
    for role, name in given.items():
        streams["projection" if role == "projections" else role] = str(name)
    if layout == "dark_flat":
        streams.pop("projection", None)
    dark_flat_uid = tomo.get("dark_flat_uid")
    if layout == "separate" and not dark_flat_uid:
        raise TomoMetadataError("start['tomo'] layout 'separate' needs 'dark_flat_uid'")
    if layout == "separate":
        streams.pop("dark", None)
        streams.pop("flat", None)
    angles = tomo.get("angles")
    if angles is not None and not isinstance(angles, Mapping):
        raise TomoMetadataError("start['tomo']['angles'] must be {start, stop, num, endpoint}")
    return TomoLayout(
        layout=layout,
        detector=tomo.get("detector"),
        rotation_axis=tomo.get("rotation_axis"),
        angle_units=units,
        streams=streams,
        dark_flat_uid=dark_flat_uid,
        num_projections=_int_or_none(tomo.get("num_projections")),
        num_darks=_int_or_none(tomo.get("num_darks")),
        num_flats=_int_or_none(tomo.get("num_flats")),
        angles=dict(angles) if angles else None,
        preset=preset,
        tomo=dict(tomo),
    )


# -- presets --------------------------------------------------------------------------------

def fxi_preset(start: Mapping[str, Any]) -> dict[str, Any] | None:
    """NSLS-II FXI ``tomo_scan``/``fly_scan``: dark, flat ("bkg") and primary streams in one run;
    image key ``<detector>_image``; angle from ``zps_pi_r`` (or its ``*_monitor`` stream)."""
    if start.get("plan_name") not in ("tomo_scan", "fly_scan"):
        return None
    detectors = start.get("detectors") or []
    if not detectors:
        return None
    args = start.get("plan_args") or {}
    tomo: dict[str, Any] = {
        "version": 1, "layout": "streams", "detector": f"{detectors[0]}_image",
        "rotation_axis": "zps_pi_r", "angle_units": "deg", "streams": dict(DEFAULT_STREAMS),
        "num_darks": start.get("num_dark_images"), "num_flats": start.get("num_bkg_images"),
    }
    try:
        a0 = float(args["start_angle"])
        tomo["angles"] = {"start": a0, "stop": a0 + float(args["relative_rot_angle"]),
                          "num": int(start["num_points"]) if "num_points" in start else 0,
                          "endpoint": True}
    except (KeyError, TypeError, ValueError):
        pass
    return tomo


def hex_preset(start: Mapping[str, Any]) -> dict[str, Any] | None:
    """NSLS-II HEX: ``tomo_flyscan`` (one "tomo" stream; dark/flat in the run named by
    ``current_dark_flat_scan_uid``; angle from the PandA "Angle" dataset) and
    ``tomo_dark_flat`` (the dark/flat run itself)."""
    plan = start.get("plan_name")
    if plan == "tomo_dark_flat":
        return {"version": 1, "layout": "dark_flat", "detector": None, "angle_units": "deg",
                "streams": {"dark": "dark", "flat": "flat"}}
    if plan != "tomo_flyscan":
        return None
    uid = start.get("current_dark_flat_scan_uid")
    tomo: dict[str, Any] = {
        "version": 1, "detector": None, "rotation_axis": "Angle", "angle_units": "deg",
        "streams": {"projection": "tomo"}, "num_projections": start.get("num_points"),
    }
    if uid:
        tomo.update(layout="separate", dark_flat_uid=uid)
    else:
        tomo.update(layout="streams", streams={"projection": "tomo", "dark": "dark", "flat": "flat"})
    return tomo


DEFAULT_PRESETS: dict[str, Preset] = {"nsls2-fxi": fxi_preset, "nsls2-hex": hex_preset}


def recognise(start: Mapping[str, Any],
              presets: Mapping[str, Preset] | Sequence[Preset] | None = None) -> TomoLayout | None:
    """The run's TomoLayout, or None for a run that is not tomography.

    Raises TomoMetadataError when ``start["tomo"]`` exists but is malformed (the caller reports
    that: a user meant this run to be reconstructed).
    """
    tomo = start.get("tomo")
    if tomo is not None:
        return parse_tomo(tomo)
    if presets is None:
        presets = DEFAULT_PRESETS
    items = presets.items() if isinstance(presets, Mapping) else (
        (getattr(p, "__name__", repr(p)), p) for p in presets)
    for name, preset in items:
        made = preset(start)
        if made is not None:
            return parse_tomo(made, preset=name)
    return None
