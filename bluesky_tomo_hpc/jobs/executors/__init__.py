"""Executors: where a batch job runs (local mpiexec, Slurm, NERSC SFAPI, ALCF Globus Compute)."""

from __future__ import annotations

from .executor import Executor, ExecutorError, PermanentError, RemoteState, RemoteStatus, TransientError

__all__ = [
    "Executor",
    "ExecutorError",
    "PermanentError",
    "RemoteState",
    "RemoteStatus",
    "TransientError",
    "make_executor",
]


def make_executor(name: str, options: dict | None = None) -> Executor:
    """The executor called ``name`` ("local", "slurm", "nersc", "alcf") built from ``options``."""
    options = dict(options or {})
    if name == "local":
        from .mpiexec import LocalExecutor

        return LocalExecutor(**options)
    if name == "slurm":
        from .slurm import SlurmExecutor

        return SlurmExecutor(**options)
    if name == "nersc":
        from .nersc import NerscExecutor

        return NerscExecutor.from_environment(**options)
    if name == "alcf":
        from .alcf import AlcfExecutor

        return AlcfExecutor.from_environment(**options)
    raise ValueError(f"unknown executor {name!r}: choose local, slurm, nersc or alcf")
