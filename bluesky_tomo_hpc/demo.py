"""The end-to-end demo: a simulated scan through a real RunEngine, reconstructed and served.

simulated beamline -> RunEngine (TiledWriter + tomography callback) -> live preview
-> full volume at stop -> MPI batch job (local ``mpiexec``) -> results in the embedded Tiled.
Used by ``bluesky-tomo-hpc demo``, the example notebook and the tests.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .config import Settings
from .engine.params import ReconParams

Say = Callable[[str], None]


@dataclass
class DemoReport:
    """Where everything went and how long it took."""

    data_dir: Path
    tiled_uri: str = ""
    api_key: str = ""
    raw_uid: str = ""
    scan_id: int | None = None
    raw_node: str = ""
    nodes: dict[str, str] = field(default_factory=dict)
    pngs: dict[str, Path] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    center: float | None = None
    center_confidence: float | None = None
    volume_shape: tuple[int, ...] = ()
    volume_bytes: int = 0
    phantom_correlation: float | None = None
    errors: list[str] = field(default_factory=list)


def phantom_correlation(volume: np.ndarray, phantom: Any, mask_ratio: float = 0.9) -> float:
    """Pearson correlation of a reconstruction with the voxelised phantom inside a disc."""
    truth = np.asarray(phantom.voxelise(volume.shape), dtype=np.float64)
    nz, ny, nx = volume.shape
    yy, xx = np.mgrid[:ny, :nx]
    r = np.hypot(yy - (ny - 1) / 2, xx - (nx - 1) / 2)
    mask = np.broadcast_to(r <= mask_ratio * min(ny, nx) / 2, volume.shape)
    a, b = volume[mask].astype(np.float64), truth[mask]
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def demo_settings(data_dir: Path, *, executor: str = "local", ranks: int = 2) -> Settings:
    """Embedded defaults: a Tiled server over ``data_dir``, shepp filter, automatic centre."""
    return Settings(
        data_dir=data_dir,
        recon=ReconParams(filter_name="shepp", center="auto"),
        jobs={"executor": executor, "ranks": ranks},
    )
