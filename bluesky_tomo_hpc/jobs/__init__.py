"""Tracking batch reconstructions after each scan: submission, executors, movers, the journal and its monitor.

``HPCSubmitSink`` (submit_sink.py) submits a :class:`~bluesky_tomo_hpc.batch.job.ReconJob` when a
scan stops; an executor (executors/) runs it where the site says (local mpiexec, Slurm, NERSC,
ALCF); movers (movers/) carry its data; ``JobMonitor`` (monitor.py) follows, retries and registers
results in Tiled; the journal (journal.py, SQLite) remembers everything across restarts. The
program the job runs on the nodes is :mod:`bluesky_tomo_hpc.batch`.
"""

from ..batch.job import JobOutputs, ReconJob, Resources
from .journal import Journal, stage_statistics
from .monitor import JobMonitor
from .submit_sink import HPCSubmitSink

__all__ = [
    "HPCSubmitSink",
    "JobMonitor",
    "JobOutputs",
    "Journal",
    "ReconJob",
    "Resources",
    "stage_statistics",
]
