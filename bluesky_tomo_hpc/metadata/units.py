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
#: SI values accepted per dimension: the physical limits (absolute zero, no negative absolute
#: pressure or elapsed time) and, above them, caps no beamline experiment reaches (10 TPa, 1e5 K)
SI_BOUNDS = {
    "temperature": (0.0, 1e5),
    "pressure": (0.0, 1e13),
    "force": (-1e9, 1e9),
    "dimensionless": (-1e9, 1e9),
    "time": (0.0, 3.2e9),
    "voltage": (-1e7, 1e7),
    "current": (-1e6, 1e6),
    "length": (0.0, 1e4),
    "magnetic_field": (-1e3, 1e3),
    "flow": (-1e3, 1e3),
}
#: the largest power of a base dimension in any unit ("m**99999999" is refused; m**3 is a volume)
MAX_UNIT_POWER = 8


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


def normalised(q: Quantity, dimension: str | None = None,
               bounds: tuple[float, float] | None = None) -> Quantity:
    """``q`` with its units spelled out and its SI value filled in; refuses unknown units, units
    with a power beyond :data:`MAX_UNIT_POWER`, units of another ``dimension`` (when given), an SI
    value that is not finite, and one outside ``bounds`` (default: :data:`SI_BOUNDS` of the
    dimension)."""
    import pint

    if not math.isfinite(q.value):
        raise ValueError(f"{q.value!r} is not a finite number")
    try:
        pq = q.pint()
    except (pint.errors.PintError, AssertionError, TypeError, ValueError, AttributeError,
            OverflowError) as exc:
        raise ValueError(f"unknown units {q.units!r}") from exc
    if any(abs(power) > MAX_UNIT_POWER for power in pq.dimensionality.values()):
        raise ValueError(f"units {q.units!r:.40} raise a dimension beyond the power {MAX_UNIT_POWER}")
    if dimension is not None and not pq.check(DIMENSIONS[dimension][0]):
        raise ValueError(f"'{q.value} {q.units}' is not a {dimension.replace('_', ' ')} "
                         f"(its dimension is {pq.dimensionality})")
    try:
        si = pq.to_base_units() if dimension is None else pq.to(DIMENSIONS[dimension][1])
        si_value = float(si.magnitude)
    except (OverflowError, ZeroDivisionError):
        si_value, si = math.inf, pq.to_base_units() if dimension is None else None
    si_units = f"{si.units:~}" if si is not None else DIMENSIONS[str(dimension)][1]
    if not math.isfinite(si_value):
        raise ValueError(f"'{q.value:g} {q.units}' is not finite in SI units ({si_units})")
    lo, hi = bounds or SI_BOUNDS.get(str(dimension), (-math.inf, math.inf))
    if not lo <= si_value <= hi:
        unit = f" {si_units}" if si_units else ""
        raise ValueError(f"'{q.value:g} {q.units}' is {si_value:.4g}{unit}, outside the physical range "
                         f"{lo:g} to {hi:g}{unit} for this field")
    return q.model_copy(update={"units": str(pq.units), "si_value": si_value, "si_units": si_units or "1"})


def quantity_of(dimension: str | None, bounds: tuple[float, float] | None = None) -> Any:
    """The annotated type of a quantity of ``dimension`` (a key of DIMENSIONS; None: any), its SI
    value within ``bounds`` (default: :data:`SI_BOUNDS` of the dimension; finite for any)."""
    return Annotated[Quantity, BeforeValidator(_coerce),
                     AfterValidator(lambda q: normalised(q, dimension, bounds))]


AnyQuantity = quantity_of(None)
Temperature = quantity_of("temperature")
Pressure = quantity_of("pressure")
Force = quantity_of("force")
Dimensionless = quantity_of("dimensionless")
#: a fraction of a whole: relative humidity 0-100 %
Fraction = quantity_of("dimensionless", (0.0, 1.0))
#: a relative change of length: a sample cannot shrink below nothing (-1)
Strain = quantity_of("dimensionless", (-1.0, 1e3))
Duration = quantity_of("time")
Voltage = quantity_of("voltage")
Current = quantity_of("current")
Length = quantity_of("length")
MagneticField = quantity_of("magnetic_field")
FlowRate = quantity_of("flow")
