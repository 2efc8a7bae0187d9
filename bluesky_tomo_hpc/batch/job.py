"""``ReconJob``: everything a batch reconstruction needs, as one JSON file.

The file travels to wherever the job runs (a local ``mpiexec``, a Slurm node, NERSC, ALCF), so it
holds paths and numbers only, never live objects or secrets. ``key`` (run uid + parameters hash)
identifies the *result*: two jobs with the same key produce the same volume, which is what makes
resubmission idempotent.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ..engine.params import ReconParams
from ..results.volume_files import ResultLayout


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Resources(_Model):
    """What the job asks the scheduler for; filled by :mod:`bluesky_tomo_hpc.batch.sizing`."""

    ranks: int = Field(1, ge=1, description="MPI ranks in total")
    nodes: int = Field(1, ge=1)
    cpus_per_rank: int = Field(1, ge=1)
    walltime_s: int = Field(600, ge=30)
    memory_mb: int | None = Field(None, ge=1, description="per node; None = scheduler default")
    partition: str | None = None
    qos: str | None = None
    account: str | None = None
    container_image: str | None = Field(None, description="run the batch program inside this image")
    memory_budget_mb: float | None = Field(
        None, gt=0, description="per node, shared by its ranks: slab sizes derive from it; None: the "
        "node's default budget (engine.memory)")


class JobOutputs(_Model):
    """Where and what the batch program writes: ``directory`` holds the job file and
    ``result.json``; the result folder (:class:`~..results.volume_files.ResultLayout`) is
    ``result_folder``, by default ``directory/result``."""

    directory: Path
    result_folder: Path | None = Field(None, description="the result folder; None: directory/result")
    zarr_chunk_z: int = Field(8, ge=1, description="slices per Zarr chunk; rank slabs align to it")
    multiscale_levels: int = Field(3, ge=1, le=8, description="OME-Zarr levels incl. full resolution")
    tiff: bool = True
    overwrite: bool = Field(True, description="replace an existing result (a job re-run replaces its own)")
    slab_slices: int | None = Field(16, ge=1, description="most slices a rank reads at a time (the "
                                    "memory budget may allow fewer); None: as many as the budget allows")
    pixel_size_um: float | None = Field(None, gt=0, description="detector pixel; None: from the scan")

    @property
    def result_dir(self) -> Path:
        return self.result_folder or self.directory / "result"

    @property
    def zarr_path(self) -> Path:
        return ResultLayout(self.result_dir).zarr

    @property
    def full_resolution(self) -> Path:
        """Level 0 of the OME-Zarr group: the array the ranks write and Tiled registers."""
        return ResultLayout(self.result_dir).full_resolution

    @property
    def tiff_dir(self) -> Path:
        return ResultLayout(self.result_dir).tiff_dir

    @property
    def provenance_path(self) -> Path:
        return ResultLayout(self.result_dir).provenance

    @property
    def result_path(self) -> Path:
        """Written last by rank 0: its presence is the job's own proof of completion."""
        return self.directory / "result.json"


class ReconJob(_Model):
    """A batch reconstruction of one raw run (see the module docstring)."""

    job_id: str = Field(default_factory=lambda: uuid.uuid4().hex[:12])
    run_uid: str
    input_path: Path = Field(..., description="data-exchange HDF5 (see batch.staging)")
    params: ReconParams = ReconParams()
    outputs: JobOutputs
    resources: Resources = Resources()
    created: float = Field(default_factory=time.time)
    metadata: dict[str, Any] = Field(default_factory=dict, description="scan metadata for provenance")

    @property
    def key(self) -> str:
        return f"{self.run_uid}:{self.params.params_hash}"

    @property
    def job_file(self) -> Path:
        return self.outputs.directory / "job.json"

    def write(self, path: Path | None = None) -> Path:
        """Write the job as JSON (default: ``outputs.directory/job.json``); returns the path."""
        path = Path(path or self.job_file)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(self.model_dump_json(indent=2))
        tmp.replace(path)
        return path

    @classmethod
    def read(cls, path: str | Path) -> ReconJob:
        """Read a job file; a missing file or unknown field is a clear error."""
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"job file {p} does not exist")
        return cls.model_validate(json.loads(p.read_text()))
