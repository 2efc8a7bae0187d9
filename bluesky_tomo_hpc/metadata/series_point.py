"""``start["series"]``: which time series (4D experiment) a scan belongs to, and where in it.

Why in the start document: a series is found in Tiled by ``Key("series.id") == id`` without any
other bookkeeping, every scan says its place (``index``) and coordinate (time or an in situ
condition), and a re-processed catalog groups the same way as the live one did.

::

    start["series"] = {
        "id": "heating-ti64-3f9c2a",      # letters, digits, ._- ; one per series
        "index": 3,                        # 0-based position in the series
        "planned": 10,                     # scans planned (None: until stopped)
        "coordinate": {"name": "temperature", "value": 450.0, "units": "degree_Celsius",
                       "si_value": 723.15, "si_units": "K"},
        "elapsed_s": 812.4,                # since the series' first scan started
    }
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .sample import NAME_PATTERN
from .units import Quantity

START_KEY = "series"


class SeriesCoordinate(Quantity):
    """The coordinate of one scan along its series (``time`` in s, or a condition's name)."""

    name: str = Field(max_length=64, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")


class SeriesPoint(BaseModel):
    """``start["series"]``."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=NAME_PATTERN)
    index: int = Field(ge=0, le=1_000_000)
    planned: int | None = Field(None, ge=1)
    coordinate: SeriesCoordinate
    elapsed_s: float = Field(ge=0)


def series_point(metadata: Mapping[str, Any] | None) -> SeriesPoint | None:
    """The series of a start document (or a ScanSpec's metadata); None when it has none or it
    is malformed (a malformed one is the caller's to report: it came from a run, not a user)."""
    raw = (metadata or {}).get(START_KEY)
    if not isinstance(raw, Mapping):
        return None
    try:
        return SeriesPoint.model_validate(dict(raw))
    except ValidationError:
        return None
