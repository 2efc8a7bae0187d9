"""The remote data path of a batch job: stage-in -> run -> stage-out -> register.

A :class:`DataPlan` says how one remote site sees this machine's files: everything under
``local_root`` here is under ``remote_root`` there, and (for Globus) which two collections the
movers copy between. The monitor uses it to copy the (self-contained) input out, to hand the
executor a job whose paths are valid *at the site*, and to bring the outputs back.

Every transfer is a row in the journal's ``transfers`` table (task id, direction, times, bytes),
so a monitor in a new process finds a transfer under way and follows or cancels it, and
:func:`~bluesky_tomo_hpc.jobs.journal.stage_statistics` reports transfer-in and transfer-out next
to queue, run and register, as in Table 2 of the ALS paper.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..batch.job import ReconJob
from .movers.mover import StagedMover


class DataPlan(BaseModel):
    """Local root <-> remote root of one site, and the Globus collections that join them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    site: str = Field(..., description="location name in the journal's copies table (e.g. nersc)")
    local_root: Path = Field(..., description="a folder here holding the jobs' inputs and outputs")
    remote_root: PurePosixPath = Field(..., description="the same folder as the site's nodes see it")
    mover: Literal["globus", "local"] = "globus"
    source_endpoint: str | None = Field(None, description="Globus collection of local_root")
    destination_endpoint: str | None = Field(None, description="Globus collection of remote_root")
    #: Globus collection paths, when a collection's root is not '/' (default: the roots above)
    source_path_root: PurePosixPath | None = None
    destination_path_root: PurePosixPath | None = None

    def model_post_init(self, __context: Any) -> None:
        if self.mover == "globus" and not (self.source_endpoint and self.destination_endpoint):
            raise ValueError(
                f"site {self.site!r}: a Globus data plan needs source_endpoint and destination_endpoint"
            )

    @classmethod
    def split_options(cls, options: dict[str, Any] | None) -> tuple[DataPlan | None, dict[str, Any]]:
        """Split executor ``options`` (Settings.jobs.options) into a plan and the executor's own.

        ``{site: nersc, globus: {source_endpoint, destination_endpoint, source_root,
        destination_root}}`` makes a Globus plan; ``transfer: {mover: local, source_root,
        destination_root}`` a local one (two folders standing for two sites). No ``site``: None.
        """
        rest = dict(options or {})
        site = rest.pop("site", None)
        spec = rest.pop("globus", None)
        mover = "globus"
        if spec is None and "transfer" in rest:
            spec = dict(rest.pop("transfer"))
            mover = spec.pop("mover", "local")
        if site is None:
            if spec is not None:
                raise ValueError("jobs.options has transfer settings but no 'site' to name the remote site")
            return None, rest
        if spec is None:
            raise ValueError(f"jobs.options names site {site!r} but has no 'globus' (or 'transfer') settings")
        spec = dict(spec)
        try:
            local_root, remote_root = spec.pop("source_root"), spec.pop("destination_root")
        except KeyError as exc:
            raise ValueError(f"site {site!r}: transfer settings need {exc.args[0]!r}") from None
        plan = cls(site=site, local_root=local_root, remote_root=remote_root, mover=mover, **spec)
        return plan, rest

    # -- path mapping -----------------------------------------------------------------------
    def to_remote(self, path: str | Path) -> PurePosixPath:
        """The site's path of local ``path`` (which must lie under ``local_root``)."""
        p = Path(path).absolute()
        root = self.local_root.absolute()
        if not p.is_relative_to(root):
            raise ValueError(f"{p} is outside {root}, the local root of site {self.site!r}: it cannot travel")
        return self.remote_root / PurePosixPath(p.relative_to(root).as_posix())

    def to_local(self, path: str | PurePosixPath) -> Path:
        """This machine's path of the site's ``path`` (under ``remote_root``)."""
        p = PurePosixPath(path)
        if not p.is_relative_to(self.remote_root):
            raise ValueError(f"{p} is outside {self.remote_root}, the remote root of site {self.site!r}")
        return self.local_root / p.relative_to(self.remote_root)

    def endpoint_path(self, path: str | PurePosixPath, *, at: Literal["local", "remote"]) -> str:
        """``path`` as the mover names it: a collection path for Globus, the path itself locally."""
        p = PurePosixPath(path)
        local = at == "local"
        base = self.local_root if local else self.remote_root
        root = self.source_path_root if local else self.destination_path_root
        if root is None:
            return str(p)
        return str(root / p.relative_to(PurePosixPath(base)))

    def remote_job(self, job: ReconJob) -> ReconJob:
        """``job`` with its input and outputs where they are at the site (the JSON the site runs)."""
        outputs = job.outputs.model_copy(update={"directory": Path(self.to_remote(job.outputs.directory))})
        return job.model_copy(update={"input_path": Path(self.to_remote(job.input_path)), "outputs": outputs})

    def localize(self, value: Any) -> Any:
        """``value`` (a result record) with every string path under ``remote_root`` mapped here."""
        if isinstance(value, dict):
            return {k: self.localize(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.localize(v) for v in value]
        if isinstance(value, str) and value.startswith(str(self.remote_root) + "/"):
            return str(self.to_local(value))
        return value


@dataclass(frozen=True)
class RemoteSite:
    """A plan with its two movers: out to the site (stage-in) and back (stage-out)."""

    plan: DataPlan
    mover_in: StagedMover
    mover_out: StagedMover

    @classmethod
    def from_plan(cls, plan: DataPlan, transfer_client: Any | None = None) -> RemoteSite:
        """Movers for ``plan``; a Globus client comes from the environment unless given."""
        if plan.mover == "local":
            from .movers.copy import LocalMover

            return cls(plan, LocalMover(), LocalMover())
        from .movers.globus import GlobusMover, transfer_client_from_environment

        client = transfer_client if transfer_client is not None else transfer_client_from_environment()
        out = GlobusMover(client, str(plan.source_endpoint), str(plan.destination_endpoint))
        return cls(plan, out, out.reversed())
