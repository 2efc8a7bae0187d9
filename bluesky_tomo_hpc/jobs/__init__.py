"""Batch reconstruction after each scan: jobs, executors, movers, the journal and its monitor.

``ReconJob`` (job.py) describes a job; ``HPCSubmitSink`` (submit_sink.py) submits one when a scan
stops; ``JobMonitor`` (monitor.py) follows, retries and registers results in Tiled; the journal
(journal.py, SQLite) remembers everything across restarts; ``python -m bluesky_tomo_hpc.batch``
(batch.py) is the MPI program that runs on the nodes.
"""

from .job import JobOutputs, ReconJob, Resources
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
