"""A simulated tomography beamline: analytic phantom, detector physics, ophyd-async and ophyd v1
devices, and plans that record the agreed ``start["tomo"]`` metadata.

Typical use::

    RE = RunEngine()
    bl = make_sim_beamline(tmp_path, flavour="ophyd_async", shape=(64, 128))
    (uid,) = RE(tomo_scan(bl.detector, bl.stage, num_projections=180))
"""

from .beamline import FLAVOURS, SimBeamline, make_sim_beamline
from .faults import BeamlineFaults
from .hdf5_writer import ANGLE_PATH, DATA_PATH, FrameFile
from .optics import DetectorPhysics, FrameSimulator
from .phantom import Ellipsoid, Phantom, shepp_logan_3d
from .plans import image_key, tomo_dark_flat, tomo_dark_flat_and_scan, tomo_fly_scan, tomo_scan
from .scan_arrays import offset_axis_geometry, simulate_scan
from .stage import SHUTTER_CLOSED, SHUTTER_OPEN, BeamState, TomoStage, make_async_stage, make_v1_stage

__all__ = [
    "BeamlineFaults",
    "ANGLE_PATH",
    "DATA_PATH",
    "FLAVOURS",
    "SHUTTER_CLOSED",
    "SHUTTER_OPEN",
    "BeamState",
    "DetectorPhysics",
    "Ellipsoid",
    "FrameFile",
    "FrameSimulator",
    "Phantom",
    "SimBeamline",
    "TomoStage",
    "image_key",
    "make_async_stage",
    "make_sim_beamline",
    "make_v1_stage",
    "offset_axis_geometry",
    "shepp_logan_3d",
    "simulate_scan",
    "tomo_dark_flat",
    "tomo_dark_flat_and_scan",
    "tomo_fly_scan",
    "tomo_scan",
]
