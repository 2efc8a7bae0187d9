"""Size a job from its dataset: ranks, nodes and wall time from the volume and a measured cost.

The cost model is deliberately simple and *measured*, not guessed: seconds per
(output voxel x projection), taken from a small reconstruction on the machine that will run the
job (:func:`measure_voxel_cost`). A request that cannot fit the allocation (too long even on
every core allowed, or too much memory per node) is refused with the numbers that say why,
before anything is queued.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass

import numpy as np

from ..engine.fourier import plan_bytes
from ..engine.params import ReconParams
from .job import Resources


class SizingError(ValueError):
    """The job cannot fit the allocation; the message gives the numbers."""


@dataclass(frozen=True)
class Allocation:
    """What the job may use: the limits a request is checked against."""

    max_nodes: int = 1
    cores_per_node: int = os.cpu_count() or 1
    max_walltime_s: int = 3600
    memory_mb_per_node: int = 8192
    partition: str | None = None
    qos: str | None = None
    account: str | None = None
    container_image: str | None = None


@dataclass(frozen=True)
class CostModel:
    """Measured cost: seconds per output voxel per projection, plus a fixed start-up overhead."""

    seconds_per_voxel_projection: float
    overhead_s: float = 20.0
    #: bytes held per input pixel of a rank's slab (raw + float copies + padding), and per voxel
    bytes_per_input_pixel: float = 24.0
    bytes_per_output_voxel: float = 8.0


def measure_voxel_cost(
    params: ReconParams | None = None, n: int = 64, n_angles: int = 90, rows: int = 8, repeat: int = 2
) -> CostModel:
    """Time the engine on a synthetic ``rows`` x ``n`` x ``n`` scan (best of ``repeat``)."""
    from ..engine.reconstruct import reconstruct_scan
    from ..model import ScanData

    params = (params or ReconParams()).with_updates(center=(n - 1) / 2, rows=None, binning=1)
    rng = np.random.default_rng(0)
    data = ScanData(
        projections=rng.uniform(500, 1000, (n_angles, rows, n)).astype(np.float32),
        theta=np.linspace(0, np.pi, n_angles, endpoint=False),
        darks=np.zeros((2, rows, n), np.float32),
        flats=np.full((2, rows, n), 1100, np.float32),
    )
    best = math.inf
    for _ in range(repeat):
        t = time.perf_counter()
        reconstruct_scan(data, params, center=(n - 1) / 2)
        best = min(best, time.perf_counter() - t)
    return CostModel(seconds_per_voxel_projection=best / (rows * n * n * n_angles))


def size_job(
    shape: tuple[int, int, int],
    params: ReconParams,
    cost: CostModel,
    allocation: Allocation,
    *,
    target_s: float = 300.0,
    safety: float = 2.0,
    chunk_z: int = 8,
) -> Resources:
    """Resources for a scan of ``shape`` = (projections, rows, columns) under ``allocation``.

    Ranks: enough to finish in about ``target_s``, at most one per Zarr chunk and per core allowed.
    Wall time: overhead + ``safety`` x the predicted compute time.
    """
    nproj, ny, nx = shape
    b = params.binning
    r0, r1 = params.rows if params.rows is not None else (0, ny)
    nz, n = (min(r1, ny) - r0) // b, nx // b
    if nz < 1 or n < 1:
        raise SizingError(f"nothing to reconstruct: rows {r0}:{r1} of {ny} with binning {b}")
    serial_s = nz * n * n * nproj * cost.seconds_per_voxel_projection
    max_ranks = allocation.max_nodes * allocation.cores_per_node
    ranks = max(1, min(math.ceil(serial_s / target_s), -(-nz // chunk_z), max_ranks))
    walltime = int(cost.overhead_s + safety * serial_s / ranks) + 1
    if walltime > allocation.max_walltime_s:
        raise SizingError(
            f"a {nz}x{n}x{n} volume from {nproj} projections needs ~{serial_s:.0f} core-seconds: "
            f"{walltime} s on {ranks} ranks exceeds the allocation's {allocation.max_walltime_s} s wall time "
            f"({allocation.max_nodes} nodes x {allocation.cores_per_node} cores)"
        )
    nodes = -(-ranks // allocation.cores_per_node)
    ranks_per_node = -(-ranks // nodes)
    rows_per_rank = -(-nz // ranks) * b
    per_rank = (
        nproj * rows_per_rank * nx * cost.bytes_per_input_pixel
        + (rows_per_rank // b) * n * n * cost.bytes_per_output_voxel
        + plan_bytes(n, nproj, threads=1)  # the engine's NUFFT plan, one worker a rank
    )
    mem_mb = int(math.ceil(ranks_per_node * per_rank / 2**20)) + 256
    if mem_mb > allocation.memory_mb_per_node:
        raise SizingError(
            f"{ranks_per_node} ranks per node need ~{mem_mb} MB each node, more than the allocation's "
            f"{allocation.memory_mb_per_node} MB: use more nodes, binning or fewer rows"
        )
    return Resources(
        ranks=ranks,
        nodes=nodes,
        cpus_per_rank=1,
        walltime_s=max(walltime, 60),
        memory_mb=mem_mb,
        partition=allocation.partition,
        qos=allocation.qos,
        account=allocation.account,
        container_image=allocation.container_image,
    )
