"""bluesky_tomo_hpc: every Bluesky tomography scan reconstructed automatically.

Live preview during the scan, a full reconstruction after it (in-process or as an HPC batch
job), results in Tiled next to the raw run. See ``bluesky_tomo_hpc.configure`` for the two lines
a beamline profile needs.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .engine.params import PhaseRetrieval, ReconParams, RingRemoval  # noqa: E402
from .model import FrameBatch, FrameRole, ScanData, ScanEnd, ScanSpec  # noqa: E402
from .untrusted.secrets_mask import mask_package_logs  # noqa: E402

mask_package_logs()  # every log record of this package has its secrets masked (untrusted/secrets_mask)


def configure(RE, settings=None, **kwargs):  # type: ignore[no-untyped-def]
    """Subscribe raw-data writing and automatic reconstruction to ``RE``; returns the
    :class:`~bluesky_tomo_hpc.live.session.TomoPipeline` (see ``live.session.configure``)."""
    from .live.session import configure as _configure

    return _configure(RE, settings, **kwargs)


__all__ = [
    "configure",
    "FrameBatch",
    "FrameRole",
    "PhaseRetrieval",
    "ReconParams",
    "RingRemoval",
    "ScanData",
    "ScanEnd",
    "ScanSpec",
    "__version__",
]
