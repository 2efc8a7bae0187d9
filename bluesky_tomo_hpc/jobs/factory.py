"""Build the job machinery from :class:`~bluesky_tomo_hpc.config.Settings` (one place, so the
pipeline, the CLI and profile startup files wire it the same way)."""

from __future__ import annotations

from typing import Any

from ..config import Settings
from .executors import make_executor
from .journal import Journal
from .monitor import JobMonitor, tiled_container
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
    """The on-stop sink for ``settings`` (ranks from ``jobs.ranks``, else one per scan)."""
    from .job import Resources

    return HPCSubmitSink(
        monitor,
        settings.data_dir / "jobs",
        params=settings.recon,
        executor=settings.jobs.executor,
        resources=Resources(ranks=settings.jobs.ranks or 1),
    )
