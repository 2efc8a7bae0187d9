"""Shared helpers for the batch-job tests: a small raw detector file and its FrameBatches."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from bluesky_tomo_hpc.model import FrameBatch, FrameRole, ScanEnd, ScanSpec
from bluesky_tomo_hpc.sim.phantom import shepp_logan_3d

DSET = "/entry/data/data"


def make_raw_scan(
    tmp: Path,
    *,
    ny: int = 16,
    nx: int = 64,
    n_angles: int = 90,
    n_dark: int = 4,
    n_flat: int = 4,
    run_uid: str = "run-jobs-test",
) -> tuple[ScanSpec, list[FrameBatch], ScanEnd]:
    """A raw HDF5 detector file (darks, flats, projections of a Shepp-Logan phantom, in that
    order, in one dataset, as an area detector writes them) and the batches a source would emit."""
    theta = np.linspace(0, np.pi, n_angles, endpoint=False)
    lines = shepp_logan_3d((ny, nx)).sinogram(theta, (ny, nx))
    dark = np.full((n_dark, ny, nx), 50, np.uint16)
    flat = np.full((n_flat, ny, nx), 1050, np.uint16)
    proj = (1000 * np.exp(-lines) + 50).astype(np.uint16)
    raw = tmp / "raw" / f"{run_uid}.h5"
    raw.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(raw, "w") as f:
        f.create_dataset(DSET, data=np.concatenate([dark, flat, proj]))
    t0 = 1.7e9
    spec = ScanSpec(
        run_uid=run_uid,
        frame_shape=(ny, nx),
        n_projections=n_angles,
        n_darks=n_dark,
        n_flats=n_flat,
        raw_files=(str(raw),),
        metadata={"tomo": {"version": 1}},
    )
    batches = [
        FrameBatch(
            FrameRole.DARK,
            np.arange(n_dark),
            dark,
            timestamps=t0 + np.arange(n_dark),
            run_uid=run_uid,
            origin=(str(raw), DSET, 0, n_dark),
        ),
        FrameBatch(
            FrameRole.FLAT,
            np.arange(n_flat),
            flat,
            timestamps=t0 + 10 + np.arange(n_flat),
            run_uid=run_uid,
            origin=(str(raw), DSET, n_dark, n_dark + n_flat),
        ),
    ]
    start = n_dark + n_flat
    for a in range(0, n_angles, 30):  # three batches, as a source would emit them
        b = min(n_angles, a + 30)
        batches.append(
            FrameBatch(
                FrameRole.PROJECTION,
                np.arange(a, b),
                proj[a:b],
                angles=theta[a:b],
                timestamps=t0 + 20 + np.arange(a, b),
                run_uid=run_uid,
                origin=(str(raw), DSET, start + a, start + b),
            )
        )
    end = ScanEnd(run_uid=run_uid, num_frames={"dark": n_dark, "flat": n_flat, "projection": n_angles})
    return spec, batches, end
