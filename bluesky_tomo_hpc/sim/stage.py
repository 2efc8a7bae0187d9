"""The sample side of the simulated beamline: rotation axis, sample translation and shutter.

Why separate top-level devices (``rot``, ``sample_x``, ``shutter``) rather than one nested
Device: their data keys are then the plain names real beamlines use ("rot", not "stage-rot"),
and the same plans drive the ophyd-async and the ophyd v1 flavours.

The detector reads the stage at exposure time: the shutter closed gives a dark frame, the
sample translated out of the beam gives a flat, otherwise a projection at the current angle.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass
from functools import cache
from typing import Any

SHUTTER_OPEN = "Open"
SHUTTER_CLOSED = "Closed"


@dataclass(frozen=True)
class BeamState:
    """What the detector sees during one exposure."""

    angle_deg: float
    shutter_open: bool
    sample_in: bool


@dataclass
class TomoStage:
    """Rotation axis (deg), sample translation (mm) and shutter of one flavour.

    ``sample_in_position``/``sample_out_position`` are where the plans move ``sample_x``; the sample
    counts as in the beam within ``in_beam_tolerance`` of the in position.
    """

    rot: Any
    sample_x: Any
    shutter: Any
    flavour: str
    sample_in_position: float = 0.0
    sample_out_position: float = 25.0
    in_beam_tolerance: float = 1.0

    @property
    def devices(self) -> tuple[Any, Any, Any]:
        return (self.rot, self.sample_x, self.shutter)

    def _state(self, angle: float, x: float, shutter: str) -> BeamState:
        if shutter not in (SHUTTER_OPEN, SHUTTER_CLOSED):
            raise ValueError(f"shutter state must be {SHUTTER_OPEN!r} or {SHUTTER_CLOSED!r}, got {shutter!r}")
        return BeamState(
            angle_deg=float(angle),
            shutter_open=shutter == SHUTTER_OPEN,
            sample_in=abs(float(x) - self.sample_in_position) <= self.in_beam_tolerance,
        )

    async def read_state_async(self) -> BeamState:
        """Beam state from ophyd-async devices (call in the RunEngine loop)."""
        if self.flavour != "ophyd_async":
            raise TypeError(f"read_state_async needs the ophyd_async stage, this one is {self.flavour!r}")
        angle = await self.rot.user_readback.get_value()
        x = await self.sample_x.user_readback.get_value()
        shutter = await self.shutter.get_value()
        return self._state(angle, x, shutter)

    def read_state(self) -> BeamState:
        """Beam state from ophyd v1 devices."""
        if self.flavour != "ophyd_v1":
            raise TypeError(f"read_state needs the ophyd_v1 stage, this one is {self.flavour!r}")
        return self._state(self.rot.readback.get(), self.sample_x.readback.get(), self.shutter.get())


def trapezoid_position(distance: float, speed: float, accel_time: float, t: float) -> tuple[float, float]:
    """Distance covered at ``t`` by a trapezoidal move, and the move's total time.

    Velocity ramps linearly to ``speed`` in ``accel_time`` (a triangle if ``distance`` is short).
    """
    if accel_time <= 0:
        total = distance / speed
        return min(distance, speed * t), total
    accel = speed / accel_time
    v_max = min(speed, math.sqrt(distance * accel))
    t_ramp = v_max / accel
    total = 2 * t_ramp + (distance - v_max * t_ramp) / v_max
    if t >= total:
        return distance, total
    if t < t_ramp:
        return 0.5 * accel * t * t, total
    if t < total - t_ramp:
        return 0.5 * accel * t_ramp**2 + v_max * (t - t_ramp), total
    return distance - 0.5 * accel * (total - t) ** 2, total


@cache
def _rotation_motor_class() -> type:
    """``SimMotor`` whose readback updates every ``update_period`` s (SimMotor: 0.1 s).

    Why: in a fly scan the detector reads the angle at each exposure; 10 Hz updates would give
    runs of identical angles. Built lazily so that ophyd v1 users need not import ophyd-async.
    """
    from ophyd_async.sim import SimMotor
    from ophyd_async.sim._motor import SimMotorMoveLogic

    class _FineMoveLogic(SimMotorMoveLogic):
        update_period: float = 0.002

        async def _internal_sim_move(self, new_position: float) -> None:
            velocity, old = await asyncio.gather(self.velocity.get_value(), self.readback.get_value())
            if old == new_position:
                return
            await self.setpoint.set(new_position)
            if velocity == 0:
                self.readback_set(new_position)
                return
            accel_time = abs(await self.acceleration_time.get_value())
            sign = 1.0 if new_position > old else -1.0
            distance = abs(new_position - old)
            start = time.monotonic()
            while True:
                done, total = trapezoid_position(
                    distance, abs(velocity), accel_time, time.monotonic() - start
                )
                if done >= distance:
                    break
                self.readback_set(old + sign * done)
                await asyncio.sleep(self.update_period)
            self.readback_set(new_position)

    class RotationMotor(SimMotor):
        """Instant in step scans (velocity 0); a smooth trapezoid when flown."""

        @property
        def movable_logic(self) -> SimMotorMoveLogic:
            # SimMotor caches its logic; ours must be the fine-grained one.
            if "_fine_logic" not in self.__dict__:
                self.__dict__["_fine_logic"] = _FineMoveLogic(
                    readback=self.user_readback,
                    readback_set=self._user_readback_set,
                    setpoint=self.user_setpoint,
                    velocity=self.velocity,
                    acceleration_time=self.acceleration_time,
                )
            return self.__dict__["_fine_logic"]

    return RotationMotor


def make_async_stage(**kwargs: float) -> TomoStage:
    """ophyd-async SimMotors ``rot`` (deg, instant) and ``sample_x`` (mm) plus a soft ``shutter``.

    Devices are not connected here; :func:`bluesky_tomo_hpc.sim.beamline.make_sim_beamline` does it.
    """
    from ophyd_async.core import soft_signal_rw
    from ophyd_async.sim import SimMotor

    rot = _rotation_motor_class()(name="rot", units="deg")
    sample_x = SimMotor(name="sample_x", units="mm")
    shutter = soft_signal_rw(str, SHUTTER_OPEN, name="shutter")
    return TomoStage(rot, sample_x, shutter, flavour="ophyd_async", **kwargs)


def make_v1_stage(**kwargs: float) -> TomoStage:
    """ophyd v1 ``SynAxis`` ``rot`` and ``sample_x`` plus a ``Signal`` shutter (instant moves)."""
    from ophyd import Signal
    from ophyd.sim import SynAxis

    rot = SynAxis(name="rot", labels={"motors"})
    sample_x = SynAxis(name="sample_x", labels={"motors"})
    shutter = Signal(name="shutter", value=SHUTTER_OPEN, kind="normal")
    return TomoStage(rot, sample_x, shutter, flavour="ophyd_v1", **kwargs)
