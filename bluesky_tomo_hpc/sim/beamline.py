"""One call that builds a connected simulated tomography beamline, for tests, demos and profiles."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .faults import BeamlineFaults
from .optics import DetectorPhysics, FrameSimulator
from .phantom import Phantom, shepp_logan_3d
from .scan_arrays import offset_axis_geometry
from .stage import TomoStage, make_async_stage, make_v1_stage

FLAVOURS = ("ophyd_async", "ophyd_v1")


@dataclass
class SimBeamline:
    """The devices plus the ground truth behind them (phantom, physics, axis offset)."""

    detector: Any
    stage: TomoStage
    phantom: Phantom
    physics: DetectorPhysics
    simulator: FrameSimulator
    data_dir: Path
    flavour: str
    half_acquisition: bool = False

    @property
    def rotation_offset_px(self) -> float:
        return self.simulator.rotation_offset_px

    @property
    def rotation_center_px(self) -> float:
        """Detector column (0-based, fractional) on which the rotation axis projects."""
        return (self.physics.shape[1] - 1) / 2.0 + self.simulator.rotation_offset_px

    def expected_line_integrals(self, angle_deg: float) -> np.ndarray:
        """Noiseless -log(normalised projection) at ``angle_deg``: what a reduction should give."""
        return self.simulator.expected_line_integrals(angle_deg) * self.physics.scale

    @property
    def field_of_view_px(self) -> int:
        """Width of the reconstructed slices: the detector's, or for a half acquisition the
        stitched width ``2 * round(centre) + 1`` (the axis in the middle of it)."""
        nx = self.physics.shape[1]
        if not self.half_acquisition:
            return nx
        return nx + abs(int(round(2 * self.rotation_center_px - (nx - 1))))

    def ground_truth(self, n: int | None = None, supersample: int = 2) -> np.ndarray:
        """The phantom voxelised on (ny, n, n) (default n = nx), centred on the rotation axis."""
        ny, nx = self.physics.shape
        return self.phantom.voxelise((ny, n or nx, n or nx), supersample=supersample) * self.physics.scale


def _connect_async(devices: list[Any], timeout: float, rot: Any, accel_time: float) -> None:
    import asyncio

    from bluesky.run_engine import call_in_bluesky_event_loop, get_bluesky_event_loop

    loop = get_bluesky_event_loop()
    if loop is None or not loop.is_running():
        raise RuntimeError(
            "the ophyd_async sim beamline must be connected in a running RunEngine event loop: "
            "create the RunEngine before calling make_sim_beamline"
        )

    async def connect() -> None:
        await asyncio.gather(*(d.connect(mock=False, timeout=timeout) for d in devices))
        await rot.acceleration_time.set(accel_time)

    call_in_bluesky_event_loop(connect(), timeout=timeout + 5)


def make_sim_beamline(
    data_dir: Path | str,
    *,
    flavour: str = "ophyd_async",
    shape: tuple[int, int] = (64, 128),
    rotation_offset_px: float = 3.5,
    seed: int = 0,
    photons: float = 2.0e4,
    flat_nonuniformity: float = 0.2,
    flat_drift_per_frame: float = 0.0,
    dark_offset: float = 100.0,
    read_noise: float = 2.0,
    ring_columns: dict[int, float] | None = None,
    peak_line_integral: float = 1.5,
    detector_name: str | None = None,
    external_files: bool = False,
    connect_timeout: float = 10.0,
    rotation_accel_time: float = 0.05,
    half_acquisition: bool = False,
    faults: BeamlineFaults | None = None,
) -> SimBeamline:
    """Build the phantom, the detector physics and connected devices of one ``flavour``.

    ``ophyd_async``: :class:`SimTomoDetector` "det" writing HDF5 under ``data_dir`` (streamed);
    needs a RunEngine created beforehand (devices connect in its event loop); its rotation
    axis ramps up in ``rotation_accel_time`` seconds in fly scans.
    ``ophyd_v1``: :class:`SimTomoDetectorV1` "tomo_det" with images in events, or, with
    ``external_files=True``, AD_HDF5 files under ``data_dir`` referenced by Resource/Datum.
    ``half_acquisition=True``: offset-axis mode for 360-degree scans of a sample wider than the
    detector (:func:`~.scan_arrays.offset_axis_geometry`: the axis nx / 8 from the right edge,
    ``rotation_offset_px`` ignored); scan 0..360 degrees and say so in the plan's metadata
    (``md={"tomo": {"half_acquisition": True}}``), or let the pipeline find it in the data.
    ``faults``: beam dumps, sample drift and jumps, overexposure (:class:`~.faults.BeamlineFaults`).
    """
    if flavour not in FLAVOURS:
        raise ValueError(f"flavour must be one of {FLAVOURS}, got {flavour!r}")
    data_dir = Path(data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    fill = 0.85
    if half_acquisition:
        rotation_offset_px, fill = offset_axis_geometry(shape[1])
    phantom = shepp_logan_3d(shape, peak_line_integral=peak_line_integral, fill=fill)
    physics = DetectorPhysics(
        shape=tuple(shape),
        photons=photons,
        flat_nonuniformity=flat_nonuniformity,
        flat_drift_per_frame=flat_drift_per_frame,
        dark_offset=dark_offset,
        read_noise=read_noise,
        ring_columns=dict(ring_columns or {}),
    )
    simulator = FrameSimulator(phantom, physics, rotation_offset_px=rotation_offset_px, seed=seed,
                               faults=faults)
    if flavour == "ophyd_async":
        from .ophyd_async_detector import SimTomoDetector

        stage = make_async_stage()
        detector = SimTomoDetector(simulator, stage, data_dir, name=detector_name or "det")
        _connect_async([detector, *stage.devices], connect_timeout, stage.rot, rotation_accel_time)
    else:
        from .ophyd_v1_detector import SimTomoDetectorV1

        stage = make_v1_stage()
        detector = SimTomoDetectorV1(
            simulator,
            stage,
            name=detector_name or "tomo_det",
            data_dir=data_dir if external_files else None,
        )
    return SimBeamline(detector, stage, phantom, physics, simulator, data_dir, flavour, half_acquisition)
