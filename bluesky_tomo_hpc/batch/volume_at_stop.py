"""The full volume at stop: stage the scan, then the batch program on one rank, in a budget.

Why: the full volume at stop must not hold the scan or the volume (a 21 GB scan makes a 56 GB
float32 volume). The scan is staged as one data-exchange file of HDF5 virtual views onto the raw
and scratch files (:mod:`bluesky_tomo_hpc.sinks.frame_store`, :func:`.staging.write_exchange_file`)
and reconstructed by the same program as ``recon FILE`` and every batch rank
(:func:`.batch_program.run` on a :class:`~.batch_program.SingleRank`): slabs of detector rows
sized by the memory budget, written straight into the OME-Zarr + TIFF result with its provenance,
all or nothing. The volume is never assembled in memory.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..engine.params import ReconParams
from ..engine.reconstruct import ReconResult
from .staging import write_exchange_file


class VolumeAtStop:
    """What a :class:`~bluesky_tomo_hpc.sinks.full_volume.FullVolumeSink` runs at stop: stage the
    frame store, reconstruct it into ``out_dir/result`` within ``budget`` bytes, and return the
    result (the volume read lazily from its Zarr array) and that array's path."""

    def __init__(self, budget: int, *, tiff: bool = True):
        self.budget = budget
        self.tiff = tiff

    def __call__(self, store: Any, params: ReconParams, out_dir: Path,
                 progress: Callable[[int, int], None] | None = None, *,
                 center: float | None = None, fallback: float | None = None) -> tuple[ReconResult, Path]:
        import zarr

        from .batch_program import SingleRank, run
        from .job import JobOutputs, ReconJob, Resources

        t0 = time.perf_counter()
        store.close_spill()
        store.check()
        spec = store.spec
        staged = write_exchange_file(spec, store.batches(), store.staged_path)
        staging_s = time.perf_counter() - t0
        out_dir = Path(out_dir)
        # a pinned centre runs as a given one; the result keeps the requested parameters (and hash)
        run_params = params if center is None else params.with_updates(center=float(center))
        job = ReconJob(
            run_uid=spec.run_uid, input_path=staged, params=run_params,
            outputs=JobOutputs(directory=out_dir, result_folder=out_dir / "result", tiff=self.tiff),
            resources=Resources(ranks=1, memory_budget_mb=self.budget / 2**20),
            metadata={"scan_id": spec.scan_id, "plan_name": spec.plan_name, "fallback_center": fallback,
                      "scan_health": spec.metadata.get("scan_health"), "tomo": spec.metadata.get("tomo", {})},
        )
        record = run(job, SingleRank(), call=f"full volume at stop of run {spec.run_uid}", progress=progress)
        provenance = json.loads(Path(record["provenance"]).read_text())
        chosen = provenance["center"]
        zarr_path = Path(record["volume_zarr"])
        result = ReconResult(
            volume=zarr.open_array(str(zarr_path), mode="r"), center=float(chosen["value"]),
            center_confidence=float(chosen["confidence"]), center_method=str(chosen["method"]),
            center_details=dict(chosen.get("details") or {}),
            timings={"stage": staging_s, **provenance["timings_s"]}, params=params,
            warnings=list(record["warnings"]), rows=tuple(provenance["rows"]), engine=record["engine"],
        )
        return result, zarr_path
