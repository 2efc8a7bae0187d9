"""The batch reconstruction program an HPC job runs, and what it reads.

``python -m bluesky_tomo_hpc.batch JOB.json`` (``__main__.py``) runs :mod:`.batch_program` under
``mpiexec``/``srun``: a :class:`~.job.ReconJob` names the data-exchange input (written by
:mod:`.staging`), the parameters and the outputs; each rank streams its detector rows through
:mod:`.slab_pipeline`. The same program makes the full volume at a scan's stop
(:mod:`.volume_at_stop`) and ``recon FILE``; :mod:`.sizing` says how big an allocation a job needs.
Tracking, retrying and moving data for those jobs is :mod:`bluesky_tomo_hpc.jobs`.
"""
