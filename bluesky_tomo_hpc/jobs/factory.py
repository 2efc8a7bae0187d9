"""Build the job machinery from :class:`~bluesky_tomo_hpc.settings.Settings` (one place, so the
pipeline, the CLI and profile startup files wire it the same way)."""

from __future__ import annotations

from typing import Any

from ..results.batch_registration import tiled_container
from ..settings import Settings
from .executors import make_executor
from .journal import Journal
from .monitor import JobMonitor
from .submit_sink import HPCSubmitSink
from .transfer_plan import DataPlan, RemoteSite


def make_monitor(
    settings: Settings,
    tiled: Any | None = None,
    *,
    start: bool = True,
    register_in_place: bool | None = None,
    readable_roots: list[Any] | None = None,
) -> JobMonitor:
    """A monitor on ``settings.journal_path`` with the configured executor; ``tiled`` (a container)
    wins over ``settings.tiled.uri``. Started on its thread unless ``start=False``.
    ``register_in_place``/``readable_roots``: see :class:`JobMonitor`. A ``site`` in
    ``jobs.options`` (see :meth:`DataPlan.split_options`) sends the jobs' data there and back."""
    if settings.jobs.executor == "none":
        raise ValueError("jobs.executor is 'none': batch jobs are switched off in these settings")
    plan, options = DataPlan.split_options(settings.jobs.options)
    executor = make_executor(settings.jobs.executor, options)
    sites = {executor.name: RemoteSite.from_plan(plan)} if plan is not None else None
    if tiled is None and settings.tiled.uri:
        tiled = tiled_container(
            settings.tiled.uri, settings.tiled.api_key, settings.tiled.processed_container
        )
    if register_in_place is None:
        register_in_place = settings.tiled.register_in_place
    mon = JobMonitor(
        Journal(settings.journal_path),
        executor,
        tiled=tiled,
        max_retries=settings.jobs.max_retries,
        register_in_place=register_in_place,
        readable_roots=readable_roots,
        sites=sites,
    )
    return mon.start() if start else mon


def make_submit_sink(settings: Settings, monitor: JobMonitor) -> HPCSubmitSink:
    """The on-stop sink for ``settings``: ``jobs.ranks`` if given, else resources sized from each
    scan's shape against the allocation (a job too big for it is refused with the reason)."""
    from ..batch.job import Resources

    jobs = settings.jobs
    # the memory budget is this machine's: it bounds the ranks of jobs that run here
    budget = settings.memory_budget_mb if jobs.executor == "local" else None
    sized = _sizer(settings)
    resources: Any = (Resources(ranks=jobs.ranks, memory_budget_mb=budget) if jobs.ranks else
                      lambda shape: sized(shape).model_copy(update={"memory_budget_mb": budget}))
    return HPCSubmitSink(
        monitor,
        settings.data_dir / "jobs",
        params=settings.recon,
        executor=jobs.executor,
        resources=resources,
    )


_MEASURED_COST: dict[str, float] = {}


def _sizer(settings: Settings) -> Any:
    """``shape -> Resources`` from the allocation settings and a per-voxel cost (measured once)."""
    import os

    from ..batch.sizing import Allocation, CostModel, measure_voxel_cost, size_job

    jobs = settings.jobs
    memory = jobs.memory_mb_per_node or os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
    allocation = Allocation(max_nodes=jobs.max_nodes,
                            cores_per_node=jobs.cores_per_node or os.cpu_count() or 1,
                            max_walltime_s=jobs.max_walltime_s, memory_mb_per_node=int(memory))

    def resources(shape: tuple[int, int, int]) -> Any:
        cost = jobs.seconds_per_voxel_projection
        if cost is None:
            key = settings.recon.params_hash
            if key not in _MEASURED_COST:
                _MEASURED_COST[key] = measure_voxel_cost(settings.recon).seconds_per_voxel_projection
            cost = _MEASURED_COST[key]
        return size_job(shape, settings.recon, CostModel(seconds_per_voxel_projection=cost), allocation)

    return resources
