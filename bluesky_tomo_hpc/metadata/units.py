"""Physical quantities with units, checked by ``pint``: ``"25 degC"``, ``{"value": 2, "units": "bar"}``.

Why pint: a temperature written in degC, K or degF, or a pressure in bar or kPa, must be
comparable in a query. Every quantity is stored as given *and* in SI base units
(``si_value``/``si_units``), so ``Key("sample.conditions.temperature.si_value") > 500`` finds every
scan hotter than 500 K whatever unit the user typed. Units are parsed by pint's own expression
parser (no Python evaluation), and must have the dimension the field asks for.
"""

from __future__ import annotations

import functools
import math
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

#: dimension name -> (pint dimensionality it must have, SI unit it is also stored in)
DIMENSIONS = {
    "temperature": ("[temperature]", "K"),
    "pressure": ("[pressure]", "Pa"),
    "force": ("[force]", "N"),
    "dimensionless": ("[]", "dimensionless"),
    "time": ("[time]", "s"),
    "voltage": ("[electric_potential]", "V"),
    "current": ("[current]", "A"),
    "length": ("[length]", "m"),
    "magnetic_field": ("[magnetic_field]", "T"),
    "flow": ("[length] ** 3 / [time]", "m ** 3 / s"),
}
MAX_TEXT = 64


@functools.cache
def unit_registry() -> Any:
    """One pint registry per process (building it costs ~0.2 s)."""
    import pint

    return pint.UnitRegistry()


class Quantity(BaseModel):
    """A value with units; ``si_value``/``si_units`` are derived (recomputed on every validation)."""

    model_config = ConfigDict(extra="forbid")

    value: float
    units: str = Field(max_length=MAX_TEXT)
    si_value: float | None = None
    si_units: str | None = None

    def pint(self) -> Any:
        ureg = unit_registry()
        return ureg.Quantity(self.value, ureg.parse_units(self.units))


def _coerce(raw: Any) -> Any:
    """``"25 degC"`` -> ``{"value": 25, "units": "degC"}``; a mapping passes through."""
    if isinstance(raw, str):
        text = raw.strip()
        if len(text) > MAX_TEXT:
            raise ValueError(f"quantity longer than {MAX_TEXT} characters")
        number, _, units = text.partition(" ")
        try:
            value = float(number)
        except ValueError:
            raise ValueError(f"{raw!r} is not '<number> <units>', e.g. '300 K'") from None
        return {"value": value, "units": units.strip() or "dimensionless"}
    if isinstance(raw, int | float) and not isinstance(raw, bool):
        raise ValueError(f"{raw!r} has no units: write e.g. '{raw} K'")
    return raw


def normalised(q: Quantity, dimension: str | None = None) -> Quantity:
    """``q`` with its units spelled out and its SI value filled in; refuses unknown units and,
    when ``dimension`` is given, units of another dimension."""
    import pint

    if not math.isfinite(q.value):
        raise ValueError(f"{q.value!r} is not a finite number")
    try:
        pq = q.pint()
    except (pint.errors.PintError, AssertionError, TypeError, ValueError, AttributeError) as exc:
        raise ValueError(f"unknown units {q.units!r}") from exc
    if dimension is None:
        si = pq.to_base_units()
    elif pq.check(DIMENSIONS[dimension][0]):
        si = pq.to(DIMENSIONS[dimension][1])
    else:
        raise ValueError(f"'{q.value} {q.units}' is not a {dimension.replace('_', ' ')} "
                         f"(its dimension is {pq.dimensionality})")
    return q.model_copy(update={"units": str(pq.units), "si_value": float(si.magnitude),
                                "si_units": f"{si.units:~}" or "1"})


def quantity_of(dimension: str | None) -> Any:
    """The annotated type of a quantity of ``dimension`` (a key of DIMENSIONS; None: any)."""
    return Annotated[Quantity, BeforeValidator(_coerce), AfterValidator(lambda q: normalised(q, dimension))]


AnyQuantity = quantity_of(None)
Temperature = quantity_of("temperature")
Pressure = quantity_of("pressure")
Force = quantity_of("force")
Dimensionless = quantity_of("dimensionless")
Duration = quantity_of("time")
Voltage = quantity_of("voltage")
Current = quantity_of("current")
Length = quantity_of("length")
MagneticField = quantity_of("magnetic_field")
FlowRate = quantity_of("flow")
