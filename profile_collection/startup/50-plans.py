"""The plans users run. Only real plans are imported by name: the queue server offers every
generator function it finds in this namespace as a plan, so plan stubs stay behind ``bps``."""

import bluesky.plan_stubs as bps  # noqa: F401  (as a module: its stubs are not offered as plans)
import bluesky.plans as bp  # noqa: F401

from bluesky_tomo_hpc.sim import tomo_dark_flat, tomo_dark_flat_and_scan, tomo_scan  # noqa: F401
from bluesky_tomo_hpc.sim.plans import tomo_fly_scan  # noqa: F401
