"""The beamline's devices. This profile builds the simulated tomography beamline of
``bluesky_tomo_hpc.sim`` (phantom, detector physics, rotation stage, shutter); a real beamline
replaces this file with its own ophyd / ophyd-async devices named ``det`` and ``stage``.

The simulated detector writes its HDF5 files under the pipeline's data folder, so the same
settings (``$BLUESKY_TOMO_HPC_CONFIG`` and ``BLUESKY_TOMO_HPC__*`` variables) place everything.
"""

import os

from bluesky_tomo_hpc.settings import load_settings
from bluesky_tomo_hpc.sim import make_sim_beamline

settings = load_settings()

_shape = tuple(int(n) for n in os.environ.get("TOMO_SIM_SHAPE", "64x128").split("x"))
sim_beamline = make_sim_beamline(
    settings.data_dir / "raw",
    flavour=os.environ.get("TOMO_SIM_FLAVOUR", "ophyd_async"),
    shape=_shape,
)
det = sim_beamline.detector
stage = sim_beamline.stage
rot = stage.rot
shutter = stage.shutter
del _shape
